"""Read-only questions about a CA directory that need no token and no cryptography.

Kept apart from `api` (which re-exports them) so that `hsmca list` and `hsmca check-expiry`,
which monitoring runs often, start without importing the signing stack.
"""

from __future__ import annotations

from pathlib import Path

from . import db, store


def read_database(ca_dir: Path):
    """The CA database of an existing CA directory (an error if it is not one)."""
    store.load_config(Path(ca_dir))
    return db.open_database(Path(ca_dir), create=False)


def list_certificates(
    ca_dir: Path, status: str = "active", expiring_within: int | None = None
) -> list[db.CertificateRecord]:
    """The CA's certificates, oldest first."""
    with read_database(ca_dir) as database:
        return database.list(status=status, expiring_within_days=expiring_within)


def expiring_certificates(ca_dir: Path, within_days: int) -> list[db.CertificateRecord]:
    """Active certificates that expire within `within_days` days, or have expired already."""
    with read_database(ca_dir) as database:
        return database.expiring(within_days)


def verify_audit_log(ca_dir: Path):
    """Check every line of CA_DIR/audit.jsonl, the chain, and the anchor kept in the database."""
    from . import audit  # here: check-expiry and list never read the log

    with read_database(ca_dir) as database:
        anchor = database.audit_anchor()
    return audit.verify(audit.audit_path(Path(ca_dir)), anchor=anchor)

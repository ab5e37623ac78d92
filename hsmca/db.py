"""The CA database: every certificate the CA signed, at CA_DIR/ca.sqlite3.

An embedded SQLite database (standard library `sqlite3`) in WAL mode with a busy timeout, so two
hsmca processes on one CA_DIR wait for each other instead of failing. Writers take the write lock
at the start of a transaction (BEGIN IMMEDIATE), so a serial is checked and inserted atomically
and a duplicate is refused by the UNIQUE constraint, never silently replaced.

The schema is versioned with PRAGMA user_version: `MIGRATIONS[i]` takes a database from version i
to i + 1, all pending steps run in one transaction, and a database written by a newer hsmca is
refused rather than damaged.

Times are stored as RFC 3339 UTC text ("2030-01-31T12:00:00Z"), which sorts like the instants it
names; serials as lowercase hex without prefix or leading zeros. This module imports asn1crypto
and hashlib only when it records a certificate, so read-only commands (list, check-expiry) start
fast.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import HsmcaError, IntegrityError, InvalidRequest

DATABASE_NAME = "ca.sqlite3"
DATABASE_MODE = 0o600
BUSY_TIMEOUT = 30.0
"""Seconds a connection waits for another process's write transaction before giving up."""

STATUSES = ("active", "superseded", "revoked")
LIST_STATUSES = ("active", "superseded", "revoked", "expired", "all")
OUTPUT_STATES = ("pending", "written", "failed")

REVOCATION_REASONS = (
    "unspecified",
    "keyCompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
)
"""The reasons `revoke` accepts: crlbuild.RevocationReason's spellings, repeated here so that
list and check-expiry need not import crlbuild (and asn1crypto); crlbuild has their codes."""

_REASON_BY_LOWER = {name.lower(): name for name in REVOCATION_REASONS}
_PROFILE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_HEX = re.compile(r"^[0-9a-f]+$")
_HEX_GROUP = re.compile(r"^[0-9a-f]{1,2}$")
_DAY = dt.timedelta(days=1)


class CertificateNotFound(InvalidRequest):
    """No certificate in the CA database matches what the user asked for."""


class DuplicateSerial(IntegrityError):
    """A certificate with this serial number is already recorded; serials are never reused."""


# --- times and serials -------------------------------------------------------------------------


def utc(value: dt.datetime | None = None) -> dt.datetime:
    """`value` (or now) in UTC, to the second; a naive datetime is refused as ambiguous."""
    if value is None:
        value = dt.datetime.now(dt.UTC)
    elif value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"a timezone-aware datetime is needed, not {value!r}")
    return value.astimezone(dt.UTC).replace(microsecond=0)


def rfc3339(value: dt.datetime) -> str:
    """'2030-01-31T12:00:00Z' for an aware datetime (seconds precision, UTC)."""
    value = utc(value)
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}Z"
    )


def parse_rfc3339(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)


def serial_hex(serial: int) -> str:
    """The database spelling of a serial number: lowercase hex, no prefix, no leading zeros."""
    if isinstance(serial, bool) or not isinstance(serial, int) or serial < 0:
        raise InvalidRequest(f"a serial number is a non-negative integer, not {serial!r}")
    return format(serial, "x")


def parse_serial(text: str) -> tuple[str, bool] | None:
    """Normalise a serial as people write it: '0x7A3F', '7a:3f', '00 7a 3f', '7A3F'.

    Returns (lowercase hex without leading zeros, explicit) where `explicit` says the text can
    only be a serial (it had a 0x prefix or byte separators), or None if it is not hex at all.
    """
    candidate = text.strip().lower()
    explicit = False
    if candidate.startswith("0x"):
        candidate, explicit = candidate[2:], True
    if ":" in candidate or " " in candidate:
        groups = re.split(r"[: ]+", candidate)
        if not all(_HEX_GROUP.match(group) for group in groups):
            return None
        candidate, explicit = "".join(groups), True
    if not _HEX.match(candidate):
        return None
    return format(int(candidate, 16), "x"), explicit


def _lookup_name(text: str) -> tuple[str, str] | None:
    """('ip', compressed address) or ('dns', lowercase A-label name) for a name lookup."""
    candidate = text.strip()
    try:
        return "ip", ipaddress.ip_address(candidate).compressed
    except ValueError:
        pass
    candidate = candidate.rstrip(".").lower()
    if not candidate or any(ch.isspace() for ch in candidate):
        return None
    if not candidate.isascii():
        import idna  # only for a non-ASCII name typed by a person

        try:
            candidate = idna.encode(candidate, uts46=True).decode("ascii").lower()
        except (idna.IDNAError, UnicodeError):
            return None
    return "dns", candidate


# --- what a certificate says about itself ------------------------------------------------------

_RFC4514_NAMES = {
    "2.5.4.3": "CN",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.6": "C",
    "2.5.4.9": "STREET",
    "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
}
_CURVES = {"secp256r1": "p256", "secp384r1": "p384", "secp521r1": "p521"}
_SAN_OID = "2.5.29.17"


def _escape_dn_value(value: str) -> str:
    """RFC 4514 2.4 escaping, the same as cryptography's Name.rfc4514_string()."""
    if not value:
        return ""
    for special in ("\\", '"', "+", ",", ";", "<", ">"):
        value = value.replace(special, "\\" + special)
    value = value.replace("\0", "\\00")
    if value[0] == "#" or (value[0] == " " and len(value) > 1):
        value = "\\" + value
    if value[-1] == " ":
        value = value[:-1] + "\\ "
    return value


def rfc4514(name) -> str:
    """An asn1crypto x509.Name as RFC 4514 text, most specific RDN first ('CN=a,O=b')."""
    rdns = []
    for rdn in name.chosen:
        parts = []
        for attribute in rdn:
            oid = attribute["type"].dotted
            label = _RFC4514_NAMES.get(oid, oid)
            value = attribute["value"].native
            if isinstance(value, str):
                text = _escape_dn_value(value)
            else:
                text = "#" + attribute["value"].dump().hex()
            parts.append(f"{label}={text}")
        rdns.append("+".join(parts))
    return ",".join(reversed(rdns))


@dataclass(frozen=True)
class CertificateFacts:
    """The columns of a certificate's row that come from the certificate itself."""

    serial: str
    subject: str
    common_name: str | None
    dns: tuple[str, ...]
    ip: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    key_type: str
    """'rsa2048', 'p256'... (KeyType values) for the key the certificate certifies."""


def certificate_facts(der: bytes) -> CertificateFacts:
    """Read serial, subject, names, validity and key type from a DER certificate (asn1crypto)."""
    from asn1crypto import x509

    try:
        tbs = x509.Certificate.load(der)["tbs_certificate"]
        serial = tbs["serial_number"].native
        subject = tbs["subject"]
        common_name = None
        for rdn in subject.chosen:
            for attribute in rdn:
                if attribute["type"].dotted == "2.5.4.3":
                    common_name = attribute["value"].native
        dns: list[str] = []
        ip: list[str] = []
        for extension in tbs["extensions"]:
            if extension["extn_id"].dotted != _SAN_OID:
                continue
            for general_name in extension["extn_value"].parsed:
                if general_name.name == "dns_name":
                    # The A-label as encoded (asn1crypto's .native would decode to U-labels).
                    dns.append(general_name.chosen.contents.decode("ascii", "backslashreplace"))
                elif general_name.name == "ip_address":
                    ip.append(ipaddress.ip_address(general_name.native).compressed)
        validity = tbs["validity"]
        public_key = tbs["subject_public_key_info"]
        algorithm = public_key.algorithm
        if algorithm == "rsa":
            key_type = f"rsa{public_key.bit_size}"
        elif algorithm == "ec":
            curve = public_key.curve[1]
            key_type = _CURVES.get(curve, curve)
        else:
            key_type = algorithm
        facts = CertificateFacts(
            serial=serial_hex(serial),
            subject=rfc4514(subject),
            common_name=common_name,
            dns=tuple(dns),
            ip=tuple(ip),
            not_before=utc(validity["not_before"].native),
            not_after=utc(validity["not_after"].native),
            key_type=key_type,
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InvalidRequest(f"not a DER X.509 certificate that hsmca can record: {exc}") from None
    return facts


# --- records -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateRecord:
    """One row of the `certificates` table."""

    serial: str
    """Lowercase hex, no prefix, no separators, no leading zeros."""
    subject: str
    common_name: str | None
    dns: tuple[str, ...]
    ip: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    sha256: str
    sha1: str
    profile: str
    key_type: str | None
    days: int | None
    """The validity length that was asked for (renew asks for it again)."""
    status: str
    """'active', 'superseded' or 'revoked' as stored; see effective_status() for 'expired'."""
    revoked_at: dt.datetime | None
    revocation_reason: str | None
    superseded_by: str | None
    output_path: str | None
    output_state: str
    created_at: dt.datetime
    der: bytes

    @property
    def serial_number(self) -> int:
        return int(self.serial, 16)

    @property
    def thumbprint(self) -> str:
        """SHA-1 in the uppercase form Windows shows."""
        return self.sha1.upper()

    def days_left(self, now: dt.datetime | None = None) -> int:
        """Whole days until notAfter, rounded down (negative once expired)."""
        return (self.not_after - utc(now)) // _DAY

    def is_expired(self, now: dt.datetime | None = None) -> bool:
        return self.not_after <= utc(now)

    def effective_status(self, now: dt.datetime | None = None) -> str:
        """The stored status, except 'expired' for an active certificate past its notAfter."""
        if self.status == "active" and self.is_expired(now):
            return "expired"
        return self.status

    def to_dict(self, now: dt.datetime | None = None) -> dict[str, Any]:
        """A JSON-ready summary (no DER) for `list --json` and monitoring."""
        now = utc(now)
        return {
            "serial": self.serial,
            "subject": self.subject,
            "common_name": self.common_name,
            "dns": list(self.dns),
            "ip": list(self.ip),
            "not_before": rfc3339(self.not_before),
            "not_after": rfc3339(self.not_after),
            "days_left": self.days_left(now),
            "status": self.effective_status(now),
            "sha1": self.sha1,
            "sha256": self.sha256,
            "profile": self.profile,
            "key_type": self.key_type,
            "days": self.days,
            "revoked_at": rfc3339(self.revoked_at) if self.revoked_at else None,
            "revocation_reason": self.revocation_reason,
            "superseded_by": self.superseded_by,
            "output_path": self.output_path,
            "output_state": self.output_state,
            "created_at": rfc3339(self.created_at),
        }


_COLUMNS = (
    "serial, subject, common_name, dns, ip, not_before, not_after, sha256, sha1, profile, "
    "key_type, days, status, revoked_at, revocation_reason, superseded_by, output_path, "
    "output_state, created_at, der"
)
_C_COLUMNS = ", ".join(f"c.{name.strip()}" for name in _COLUMNS.split(","))


def _record(row: tuple) -> CertificateRecord:
    (
        serial,
        subject,
        common_name,
        dns,
        ip,
        not_before,
        not_after,
        sha256,
        sha1,
        profile,
        key_type,
        days,
        status,
        revoked_at,
        reason,
        superseded_by,
        output_path,
        output_state,
        created_at,
        der,
    ) = row
    return CertificateRecord(
        serial=serial,
        subject=subject,
        common_name=common_name,
        dns=tuple(json.loads(dns)),
        ip=tuple(json.loads(ip)),
        not_before=parse_rfc3339(not_before),
        not_after=parse_rfc3339(not_after),
        sha256=sha256,
        sha1=sha1,
        profile=profile,
        key_type=key_type,
        days=days,
        status=status,
        revoked_at=parse_rfc3339(revoked_at) if revoked_at else None,
        revocation_reason=reason,
        superseded_by=superseded_by,
        output_path=output_path,
        output_state=output_state,
        created_at=parse_rfc3339(created_at),
        der=bytes(der),
    )


# --- schema and migrations ---------------------------------------------------------------------


def _migrate_to_v1(conn: sqlite3.Connection) -> None:
    """The first schema: certificates and the CRL number."""
    conn.execute(
        """
        CREATE TABLE certificates (
            id INTEGER PRIMARY KEY,
            serial TEXT NOT NULL UNIQUE
                CHECK (serial <> '' AND serial NOT GLOB '*[^0-9a-f]*'
                       AND (serial = '0' OR serial NOT GLOB '0*')),
            subject TEXT NOT NULL,
            common_name TEXT,
            dns TEXT NOT NULL DEFAULT '[]',
            ip TEXT NOT NULL DEFAULT '[]',
            not_before TEXT NOT NULL,
            not_after TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            sha1 TEXT NOT NULL,
            profile TEXT NOT NULL,
            key_type TEXT,
            days INTEGER CHECK (days IS NULL OR days >= 1),
            status TEXT NOT NULL DEFAULT 'active'
                CHECK (status IN ('active', 'superseded', 'revoked')),
            revoked_at TEXT,
            revocation_reason TEXT,
            superseded_by TEXT REFERENCES certificates (serial),
            output_path TEXT,
            output_state TEXT NOT NULL DEFAULT 'pending'
                CHECK (output_state IN ('pending', 'written', 'failed')),
            created_at TEXT NOT NULL,
            der BLOB NOT NULL,
            CHECK ((status = 'revoked') = (revoked_at IS NOT NULL)),
            CHECK ((revoked_at IS NULL) = (revocation_reason IS NULL)),
            CHECK (status <> 'superseded' OR superseded_by IS NOT NULL)
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE crl_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            last_number INTEGER NOT NULL CHECK (last_number >= 0)
        )
        """
    )
    conn.execute("INSERT INTO crl_state (id, last_number) VALUES (1, 0)")


def _migrate_to_v2(conn: sqlite3.Connection) -> None:
    """Names indexed for `find` (backfilled from v1 rows), list indexes, the audit anchor."""
    conn.execute(
        """
        CREATE TABLE certificate_names (
            name TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('cn', 'dns', 'ip')),
            certificate_id INTEGER NOT NULL REFERENCES certificates (id),
            PRIMARY KEY (name, kind, certificate_id)
        ) WITHOUT ROWID
        """
    )
    conn.execute("CREATE INDEX certificates_status_not_after ON certificates (status, not_after)")
    conn.execute("CREATE INDEX certificates_output_path ON certificates (output_path)")
    conn.execute(
        """
        CREATE TABLE audit_anchor (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq INTEGER NOT NULL CHECK (seq >= 0),
            line_sha256 TEXT NOT NULL
        )
        """
    )
    rows = conn.execute("SELECT id, common_name, dns, ip FROM certificates").fetchall()
    for certificate_id, cn, dns, ip in rows:
        _insert_names(conn, certificate_id, cn, json.loads(dns), json.loads(ip))


def _migrate_to_v3(conn: sqlite3.Connection) -> None:
    """The SHA-256 of each output file's bytes, known before the file is written, so a rerun
    can tell a file that was written but not yet marked 'written' from a stranger's file."""
    conn.execute(
        """
        CREATE TABLE output_digests (
            serial TEXT PRIMARY KEY REFERENCES certificates(serial),
            sha256 TEXT NOT NULL
        )
        """
    )


def _migrate_to_v4(conn: sqlite3.Connection) -> None:
    """A covering index for CRLs: the revoked entries are read without touching the rows."""
    conn.execute(
        "CREATE INDEX certificates_revoked "
        "ON certificates (status, serial, revoked_at, revocation_reason)"
    )


def _migrate_to_v5(conn: sqlite3.Connection) -> None:
    """Each revoked certificate's CRL entry, encoded once when it is revoked (backfilled here),
    keyed so that key order is serial order: a CRL of 100,000 entries is one ordered scan."""
    conn.execute(
        """
        CREATE TABLE crl_entries (
            serial_key BLOB PRIMARY KEY CHECK (length(serial_key) = 20),
            serial TEXT NOT NULL UNIQUE REFERENCES certificates (serial),
            entry BLOB NOT NULL
        ) WITHOUT ROWID
        """
    )
    rows = conn.execute(
        "SELECT serial, revoked_at, revocation_reason FROM certificates WHERE status = 'revoked'"
    ).fetchall()
    for serial, revoked_at, reason in rows:
        _insert_crl_entry(conn, serial, parse_rfc3339(revoked_at), reason)


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _migrate_to_v1,
    _migrate_to_v2,
    _migrate_to_v3,
    _migrate_to_v4,
    _migrate_to_v5,
]
"""MIGRATIONS[i] upgrades a database at user_version i to i + 1. Append; never edit a step."""


def schema_version() -> int:
    return len(MIGRATIONS)


def _insert_crl_entry(
    conn: sqlite3.Connection, serial: str, revoked_at: dt.datetime, reason: str
) -> None:
    from . import crlbuild  # here: list and check-expiry never encode CRL entries

    number = int(serial, 16)
    conn.execute(
        "INSERT INTO crl_entries (serial_key, serial, entry) VALUES (?, ?, ?)",
        (
            number.to_bytes(20, "big"),
            serial,
            crlbuild.encode_entry(number, revoked_at, reason),
        ),
    )


def _insert_names(
    conn: sqlite3.Connection,
    certificate_id: int,
    common_name: str | None,
    dns: Iterable[str],
    ip: Iterable[str],
) -> None:
    names = {("dns", name.lower().rstrip(".")) for name in dns}
    names |= {("ip", ipaddress.ip_address(address).compressed) for address in ip}
    if common_name:
        names.add(("cn", common_name.lower().rstrip(".")))
    conn.executemany(
        "INSERT INTO certificate_names (name, kind, certificate_id) VALUES (?, ?, ?)",
        [(name, kind, certificate_id) for kind, name in sorted(names)],
    )


# --- the database ------------------------------------------------------------------------------


class CaDatabase:
    """An open CA database. Not thread-safe: one per thread (or process), used as a context."""

    def __init__(self, connection: sqlite3.Connection, path: Path):
        self._conn = connection
        self.path = path
        self._depth = 0

    # connection and transactions

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> CaDatabase:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return self._conn.execute("PRAGMA user_version").fetchone()[0]

    @contextlib.contextmanager
    def _sql_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError:
            raise
        except sqlite3.OperationalError as exc:
            raise _operational_error(self.path, exc) from None
        except sqlite3.DatabaseError as exc:
            raise HsmcaError(
                f"the CA database {self.path} is damaged ({exc}); restore it from a backup"
            ) from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[CaDatabase]:
        """One write transaction; nested use joins it (a savepoint undoes a failed inner part).

        Group many record_issued() calls in one transaction to pay for one commit (fsync).
        """
        with self._sql_errors():
            if self._depth:
                savepoint = f"nested_{self._depth}"
                self._conn.execute(f"SAVEPOINT {savepoint}")
                self._depth += 1
                try:
                    yield self
                except BaseException:
                    self._conn.execute(f"ROLLBACK TO {savepoint}")
                    self._conn.execute(f"RELEASE {savepoint}")
                    raise
                else:
                    self._conn.execute(f"RELEASE {savepoint}")
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self
            except BaseException:
                self._depth = 0
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
            self._depth = 0
            try:
                self._conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        with self._sql_errors():
            return self._conn.execute(sql, parameters).fetchall()

    # recording

    def record_issued(
        self,
        der: bytes,
        profile: str,
        key_type: Any,
        days: int | None,
        output_path: os.PathLike | str | None,
        *,
        output_state: str = "pending",
        facts: CertificateFacts | None = None,
        output_sha256: str | None = None,
    ) -> CertificateRecord:
        """Record a certificate just signed, with output_state 'pending' until its file is in place.

        `key_type` is a KeyType, its value ('rsa2048'...), or None to take it from the certificate.
        `facts` skips parsing the DER (asn1crypto, about a millisecond) when the caller already
        knows them; they must describe `der`. Raises DuplicateSerial if the serial is recorded.
        """
        der = bytes(der)
        if not _PROFILE.match(profile or ""):
            raise InvalidRequest(f"invalid certificate profile {profile!r}")
        if output_state not in OUTPUT_STATES:
            raise InvalidRequest(f"output state must be one of {', '.join(OUTPUT_STATES)}")
        if days is not None and (isinstance(days, bool) or not isinstance(days, int) or days < 1):
            raise InvalidRequest(f"days must be a whole number of at least 1, not {days!r}")
        import hashlib  # here, like asn1crypto: list and check-expiry never hash

        facts = facts or certificate_facts(der)
        key_type = getattr(key_type, "value", key_type) or facts.key_type
        path = os.path.abspath(os.fspath(output_path)) if output_path is not None else None
        created_at = utc()
        record = CertificateRecord(
            serial=facts.serial,
            subject=facts.subject,
            common_name=facts.common_name,
            dns=tuple(facts.dns),
            ip=tuple(facts.ip),
            not_before=facts.not_before,
            not_after=facts.not_after,
            sha256=hashlib.sha256(der).hexdigest(),
            sha1=hashlib.sha1(der, usedforsecurity=False).hexdigest(),
            profile=profile,
            key_type=str(key_type),
            days=days,
            status="active",
            revoked_at=None,
            revocation_reason=None,
            superseded_by=None,
            output_path=path,
            output_state=output_state,
            created_at=created_at,
            der=der,
        )
        try:
            with self.transaction():
                cursor = self._conn.execute(
                    f"INSERT INTO certificates ({_COLUMNS}) "  # noqa: S608 (constant columns)
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.serial,
                        record.subject,
                        record.common_name,
                        json.dumps(list(record.dns)),
                        json.dumps(list(record.ip)),
                        rfc3339(record.not_before),
                        rfc3339(record.not_after),
                        record.sha256,
                        record.sha1,
                        record.profile,
                        record.key_type,
                        record.days,
                        record.status,
                        None,
                        None,
                        None,
                        record.output_path,
                        record.output_state,
                        rfc3339(created_at),
                        der,
                    ),
                )
                _insert_names(
                    self._conn, cursor.lastrowid, record.common_name, record.dns, record.ip
                )
                if output_sha256 is not None:
                    self._conn.execute(
                        "INSERT INTO output_digests (serial, sha256) VALUES (?, ?)",
                        (record.serial, output_sha256),
                    )
        except sqlite3.IntegrityError as exc:
            if "certificates.serial" in str(exc):
                existing = self.get(record.serial)
                when = (
                    f" on {rfc3339(existing.created_at)} for {existing.subject}" if existing else ""
                )
                raise DuplicateSerial(
                    f"serial {record.serial} is already in the CA database (recorded{when}); "
                    "a serial number is never reused: sign again with a new random serial"
                ) from None
            raise IntegrityError(f"cannot record certificate {record.serial}: {exc}") from None
        return record

    def mark_output(self, serial: str | int, state: str) -> CertificateRecord:
        """Say whether the certificate's output file was written ('written') or not ('failed')."""
        if state not in OUTPUT_STATES:
            raise InvalidRequest(f"output state must be one of {', '.join(OUTPUT_STATES)}")
        serial = self._serial_argument(serial)
        with self.transaction():
            cursor = self._conn.execute(
                "UPDATE certificates SET output_state = ? WHERE serial = ?", (state, serial)
            )
            if cursor.rowcount == 0:
                raise self._not_found(serial)
            return self._get(serial)

    # looking up

    def get(self, serial: str | int) -> CertificateRecord | None:
        """The certificate with exactly this serial (any spelling parse_serial accepts), or None."""
        return self._get(self._serial_argument(serial))

    def _get(self, serial: str) -> CertificateRecord | None:
        rows = self._query(
            f"SELECT {_COLUMNS} FROM certificates WHERE serial = ?",  # noqa: S608
            (serial,),
        )
        return _record(rows[0]) if rows else None

    def find(self, serial_or_name: str) -> CertificateRecord:
        """The certificate a person means by a serial or by a name (DNS name, CN or IP address).

        A serial (hex, any case, with or without 0x or ':'/' ' byte separators) finds that
        certificate whatever its status. A name finds the newest active (possibly expired)
        certificate carrying it. Raises CertificateNotFound, or InvalidRequest when ambiguous.
        """
        text = (serial_or_name or "").strip()
        if not text:
            raise InvalidRequest("give a serial number or a DNS name")
        parsed = parse_serial(text)
        by_serial = self._get(parsed[0]) if parsed else None
        if parsed and parsed[1]:
            if by_serial is None:
                raise self._not_found(parsed[0])
            return by_serial
        lookup = _lookup_name(text)
        try:
            by_name = self._find_by_name(text, *lookup) if lookup else None
        except CertificateNotFound:
            if by_serial is None:
                raise
            by_name = None  # only retired certificates carry the name; the serial is meant
        if by_serial and by_name and by_serial.serial != by_name.serial:
            raise InvalidRequest(
                f"{text!r} is both the serial number of a certificate for {by_serial.subject} "
                f"and a name of certificate {by_name.serial}; write 0x{text} for the serial, "
                f"or give the serial {by_name.serial}"
            )
        found = by_serial or by_name
        if found is None:
            raise CertificateNotFound(
                f"no certificate with serial number or name {text!r} in {self.path.parent}; "
                "'hsmca list --status all' shows what this CA issued"
            )
        return found

    def _find_by_name(self, text: str, kind: str, name: str) -> CertificateRecord | None:
        kinds = ("ip",) if kind == "ip" else ("dns", "cn")
        rows = self._query(
            f"SELECT {_C_COLUMNS} FROM certificates AS c WHERE c.id IN ("  # noqa: S608
            "SELECT certificate_id FROM certificate_names WHERE name = ? AND kind IN (?, ?)) "
            "ORDER BY c.id DESC",
            (name, kinds[0], kinds[-1]),
        )
        records = [_record(row) for row in rows]
        active = [record for record in records if record.status == "active"]
        if not active:
            if records:
                newest = records[0]
                state = (
                    f"superseded by {newest.superseded_by}"
                    if newest.status == "superseded"
                    else "revoked"
                )
                raise CertificateNotFound(
                    f"no active certificate is named {text!r}: the newest one, serial "
                    f"{newest.serial}, was {state}; give a serial number to choose one"
                )
            return None
        identities: dict[tuple, CertificateRecord] = {}
        for record in active:  # newest first, so each identity keeps its newest certificate
            identities.setdefault((record.subject, record.dns, record.ip), record)
        if len(identities) > 1:
            choices = "; ".join(
                f"{record.serial} ({record.subject}, {', '.join(record.dns + record.ip)})"
                for record in list(identities.values())[:10]
            )
            raise InvalidRequest(
                f"{text!r} names {len(identities)} different active certificates: {choices}; "
                "give the serial number of the one you mean"
            )
        return active[0]

    def list(
        self,
        status: str = "active",
        expiring_within_days: int | None = None,
        now: dt.datetime | None = None,
    ) -> list[CertificateRecord]:
        """Certificates by status, soonest notAfter first.

        'active' means recorded active and not yet expired; 'expired' means recorded active and
        past notAfter; 'superseded', 'revoked' are as recorded; 'all' is everything. With
        `expiring_within_days`, only those whose notAfter is at most that many days from `now`.
        """
        if status not in LIST_STATUSES:
            raise InvalidRequest(
                f"unknown status {status!r}; choose one of {', '.join(LIST_STATUSES)}"
            )
        now = utc(now)
        clauses, parameters = [], []
        if status == "active":
            clauses.append("status = 'active' AND not_after > ?")
            parameters.append(rfc3339(now))
        elif status == "expired":
            clauses.append("status = 'active' AND not_after <= ?")
            parameters.append(rfc3339(now))
        elif status != "all":
            clauses.append("status = ?")
            parameters.append(status)
        if expiring_within_days is not None:
            clauses.append("not_after <= ?")
            parameters.append(rfc3339(now + _within(expiring_within_days)))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM certificates{where} ORDER BY not_after, id",  # noqa: S608
            tuple(parameters),
        )
        return [_record(row) for row in rows]

    def expiring(self, within_days: int, now: dt.datetime | None = None) -> list[CertificateRecord]:
        """What check-expiry reports: active certificates already expired or expiring within
        `within_days` days of `now` (superseded and revoked ones are done with)."""
        now = utc(now)
        rows = self._query(
            f"SELECT {_COLUMNS} FROM certificates "  # noqa: S608
            "WHERE status = 'active' AND not_after <= ? ORDER BY not_after, id",
            (rfc3339(now + _within(within_days)),),
        )
        return [_record(row) for row in rows]

    def find_output(self, path: os.PathLike | str) -> CertificateRecord | None:
        """The newest certificate recorded for the output file `path` (for batch --resume)."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM certificates WHERE output_path = ? "  # noqa: S608
            "ORDER BY id DESC LIMIT 1",
            (os.path.abspath(os.fspath(path)),),
        )
        return _record(rows[0]) if rows else None

    def set_output_digest(self, serial: str | int, sha256: str) -> None:
        """Record the SHA-256 of an output file's bytes once they are known (before writing)."""
        with self._sql_errors(), self.transaction():
            self._conn.execute(
                "INSERT OR REPLACE INTO output_digests (serial, sha256) VALUES (?, ?)",
                (self._serial_argument(serial), sha256),
            )

    def output_digest(self, serial: str | int) -> str | None:
        """The SHA-256 of the bytes that were to be written for `serial`'s output file."""
        rows = self._query(
            "SELECT sha256 FROM output_digests WHERE serial = ?", (self._serial_argument(serial),)
        )
        return rows[0][0] if rows else None

    def active_for_output(self, path: os.PathLike | str) -> list[CertificateRecord]:
        """Active certificates recorded for the output file `path`, oldest first."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM certificates "  # noqa: S608
            "WHERE output_path = ? AND status = 'active' ORDER BY id",
            (os.path.abspath(os.fspath(path)),),
        )
        return [_record(row) for row in rows]

    def unfinished_outputs(self) -> list[CertificateRecord]:
        """Active certificates whose output file is 'pending' or 'failed' (interrupted runs)."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM certificates "  # noqa: S608
            "WHERE status = 'active' AND output_state <> 'written' ORDER BY id"
        )
        return [_record(row) for row in rows]

    def count(self) -> int:
        return self._query("SELECT count(*) FROM certificates")[0][0]

    # lifecycle

    def supersede(self, old_serial: str | int, new_serial: str | int) -> CertificateRecord:
        """Mark `old_serial` superseded by `new_serial` (renewal); returns the old record.

        A revoked certificate keeps status 'revoked' and only gains superseded_by. Repeating the
        same call is harmless; superseding by a different certificate is refused.
        """
        old_serial = self._serial_argument(old_serial)
        new_serial = self._serial_argument(new_serial)
        if old_serial == new_serial:
            raise InvalidRequest(f"certificate {old_serial} cannot supersede itself")
        with self.transaction():
            old, new = self._get(old_serial), self._get(new_serial)
            if old is None:
                raise self._not_found(old_serial)
            if new is None:
                raise self._not_found(new_serial)
            if old.superseded_by == new_serial:
                return old
            if old.superseded_by is not None:
                raise InvalidRequest(
                    f"certificate {old_serial} was already superseded by {old.superseded_by}"
                )
            status = "revoked" if old.status == "revoked" else "superseded"
            self._conn.execute(
                "UPDATE certificates SET status = ?, superseded_by = ? WHERE serial = ?",
                (status, new_serial, old_serial),
            )
            return self._get(old_serial)

    def revoke(
        self,
        serial: str | int,
        reason: str = "unspecified",
        when: dt.datetime | None = None,
    ) -> CertificateRecord:
        """Mark a certificate revoked (it appears on the next CRL); returns the updated record."""
        canonical = _REASON_BY_LOWER.get((reason or "").strip().lower())
        if canonical is None:
            raise InvalidRequest(
                f"unknown revocation reason {reason!r}; choose one of "
                f"{', '.join(REVOCATION_REASONS)}"
            )
        serial = self._serial_argument(serial)
        revoked_at = utc(when)
        with self.transaction():
            record = self._get(serial)
            if record is None:
                raise self._not_found(serial)
            if record.status == "revoked":
                raise InvalidRequest(
                    f"certificate {serial} ({record.subject}) was already revoked on "
                    f"{rfc3339(record.revoked_at)} (reason {record.revocation_reason})"
                )
            if record.profile == "ca":
                raise InvalidRequest(
                    f"certificate {serial} is the CA's own certificate; a CRL it signs cannot "
                    "revoke it. Retire the CA instead"
                )
            self._conn.execute(
                "UPDATE certificates SET status = 'revoked', revoked_at = ?, "
                "revocation_reason = ? WHERE serial = ?",
                (rfc3339(revoked_at), canonical, serial),
            )
            _insert_crl_entry(self._conn, serial, revoked_at, canonical)
            return self._get(serial)

    def crl_entries(self) -> list[bytes]:
        """Every revoked certificate's CRL entry (crlbuild.encode_entry), in serial order."""
        with self._sql_errors():
            entries = [
                entry
                for (entry,) in self._conn.execute(
                    "SELECT entry FROM crl_entries ORDER BY serial_key"
                )
            ]
            (revoked,) = self._conn.execute(
                "SELECT count(*) FROM certificates WHERE status = 'revoked'"
            ).fetchone()
        if len(entries) != revoked:
            raise IntegrityError(
                f"the CA database lists {revoked} revoked certificates but {len(entries)} CRL "
                "entries; it is damaged, restore it from a backup"
            )
        return entries

    def next_crl_number(self) -> int:
        """Take the next cRLNumber (1, 2, 3...): never handed out twice, even across processes."""
        with self.transaction():
            (number,) = self._conn.execute(
                "UPDATE crl_state SET last_number = last_number + 1 WHERE id = 1 "
                "RETURNING last_number"
            ).fetchone()
        return number

    def last_crl_number(self) -> int:
        """The last cRLNumber handed out (0 before the first CRL)."""
        return self._query("SELECT last_number FROM crl_state WHERE id = 1")[0][0]

    # audit anchor

    def audit_anchor(self) -> tuple[int, str] | None:
        """(seq, line SHA-256) of the last audit entry recorded here, for audit.verify()."""
        rows = self._query("SELECT seq, line_sha256 FROM audit_anchor WHERE id = 1")
        return (rows[0][0], rows[0][1]) if rows else None

    def set_audit_anchor(self, seq: int, line_sha256: str) -> None:
        with self.transaction():
            self._conn.execute(
                "INSERT INTO audit_anchor (id, seq, line_sha256) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, "
                "line_sha256 = excluded.line_sha256 WHERE excluded.seq >= audit_anchor.seq",
                (seq, line_sha256),
            )

    # checks

    def integrity_check(self) -> list[str]:
        """SQLite's integrity and foreign-key checks; an empty list means all is well."""
        problems = [row[0] for row in self._query("PRAGMA integrity_check") if row[0] != "ok"]
        problems += [f"foreign key: {row}" for row in self._query("PRAGMA foreign_key_check")]
        return problems

    # helpers

    def _serial_argument(self, serial: str | int) -> str:
        if isinstance(serial, int) and not isinstance(serial, bool):
            return serial_hex(serial)
        parsed = parse_serial(str(serial))
        if parsed is None:
            raise InvalidRequest(
                f"{serial!r} is not a serial number; give it in hex as 'hsmca list' shows it"
            )
        return parsed[0]

    def _not_found(self, serial: str) -> CertificateNotFound:
        return CertificateNotFound(
            f"no certificate with serial number {serial} in {self.path.parent}; "
            "'hsmca list --status all' shows what this CA issued"
        )


def _within(days: int) -> dt.timedelta:
    if isinstance(days, bool) or not isinstance(days, int) or days < 0:
        raise InvalidRequest(
            f"the number of days must be a whole number of 0 or more, not {days!r}"
        )
    return dt.timedelta(days=days)


def _operational_error(path: Path, exc: sqlite3.OperationalError) -> HsmcaError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return HsmcaError(
            f"the CA database {path} stayed busy for more than {BUSY_TIMEOUT:g} seconds: another "
            "hsmca process is writing to it; try again when it has finished"
        )
    if "readonly" in text or "unable to open" in text or "permission" in text.lower():
        return HsmcaError(
            f"cannot write the CA database {path} ({text}); run hsmca as the user that owns "
            "the CA directory or fix its permissions"
        )
    return HsmcaError(f"the CA database {path} failed: {text}")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    current = len(MIGRATIONS)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == current:
        return
    if version > current:
        raise HsmcaError(
            f"the CA database {path} has schema version {version}, newer than this hsmca "
            f"understands ({current}); upgrade hsmca"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Re-read under the write lock: another process may have migrated meanwhile.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for step in MIGRATIONS[version:]:
            step(conn)
        conn.execute(f"PRAGMA user_version = {current:d}")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def database_path(ca_dir: Path | str) -> Path:
    return Path(ca_dir) / DATABASE_NAME


def open_database(
    ca_dir: Path | str, *, create: bool = True, busy_timeout: float = BUSY_TIMEOUT
) -> CaDatabase:
    """Open (creating with mode 0600 and migrating as needed) CA_DIR/ca.sqlite3.

    With create=False a missing database is an InvalidRequest instead (read-only commands should
    not leave a database in a directory that is not a CA directory).
    """
    ca_dir = Path(ca_dir)
    path = database_path(ca_dir)
    if not ca_dir.is_dir():
        raise InvalidRequest(
            f"CA directory {ca_dir} does not exist; pass --ca-dir or set HSMCA_DIR"
        )
    if not path.exists():
        if not create:
            raise InvalidRequest(
                f"{ca_dir} has no certificate database ({DATABASE_NAME}): nothing was issued "
                "with this CA directory yet, or it is not an hsmca CA directory"
            )
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DATABASE_MODE))
        except FileExistsError:
            pass
        except OSError as exc:
            raise HsmcaError(
                f"cannot create the CA database {path}: {exc.strerror}; run hsmca as the user "
                "that owns the CA directory or fix its permissions"
            ) from None
    try:
        conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    except sqlite3.Error as exc:
        raise HsmcaError(f"cannot open the CA database {path}: {exc}") from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000):d}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        _migrate(conn, path)
    except sqlite3.OperationalError as exc:
        conn.close()
        raise _operational_error(path, exc) from None
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise HsmcaError(
            f"{path} is not an hsmca CA database or is damaged ({exc}); restore it from a backup"
        ) from None
    except BaseException:
        conn.close()
        raise
    return CaDatabase(conn, path)

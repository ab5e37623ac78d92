"""The library facade: what the CLI calls, and what a Python caller can call directly.

Each operation validates everything it can before the token is touched, logs in once, and
writes its outputs only after every signature has been verified.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from asn1crypto import keys, pem, x509

from . import audit, db, lint, locking, pfx, signing, store, token, x509build
from .errors import IntegrityError, InvalidRequest
from .models import (
    DEFAULT_CA_DAYS,
    DEFAULT_CA_SUBJECT,
    DEFAULT_KEY_LABEL,
    DEFAULT_SERVER_DAYS,
    CaConfig,
    KeyType,
    ServerRequest,
)
from .p11uri import TokenSelector, parse_token_spec
from .queries import expiring_certificates, list_certificates, read_database, verify_audit_log

__all__ = [
    "expiring_certificates",
    "init_ca",
    "issue_server",
    "list_certificates",
    "open_ca",
    "renew",
    "revoke",
    "verify_audit_log",
]

KEY_CHECK_MESSAGE = b"hsmca: proof that the new CA key signs and the host can verify it"


@dataclass(frozen=True)
class CaCreated:
    ca_dir: Path
    certificate_der: bytes
    thumbprint: str
    token: token.TokenInfo
    key_id: bytes
    key_attributes: dict[str, bool]


@dataclass(frozen=True)
class ServerIssued:
    path: Path
    certificate_der: bytes
    serial: int
    not_after: dt.datetime
    notes: list[str] = field(default_factory=list)
    """Things the user should know (tolerated lint findings, shortened validity)."""


def _pem(der: bytes) -> bytes:
    return pem.armor("CERTIFICATE", der)


def init_ca(
    ca_dir: Path,
    *,
    module: str,
    token_spec: str,
    pin_source: token.PinSource,
    key_label: str = DEFAULT_KEY_LABEL,
    key_type: KeyType = KeyType.RSA3072,
    subject: str = DEFAULT_CA_SUBJECT,
    days: int = DEFAULT_CA_DAYS,
    always_authenticate: bool = False,
) -> CaCreated:
    """Generate the CA key on the token, self-sign the root there, and create CA_DIR.

    `token_spec` is a token label or a PKCS#11 URI; a URI's module-path stands in for an
    empty `module`.
    """
    ca_dir = Path(ca_dir)
    store.check_new_ca_dir(ca_dir)
    subject_name = x509build.parse_subject(subject)
    x509build.validate_days(days)
    if not key_label.strip():
        raise InvalidRequest("the key label is empty; give one with --key-label")
    selector = parse_token_spec(token_spec)
    module = module or selector.module_path or ""
    device = token.find_token(module, selector)
    info = token.token_info(device)
    with token.open_session(device, pin_source, rw=True) as session:
        generated = token.generate_ca_key(session, key_type, key_label, always_authenticate)
        try:
            public_key = keys.PublicKeyInfo.load(generated.public_key_der)
            private_key = token.find_private_key(session, generated.key_id, key_label)
            signer = token.TokenSigner(session, private_key, key_type, pin_source)
            signing.verify_signature(
                public_key, key_type, KEY_CHECK_MESSAGE, signer.sign(KEY_CHECK_MESSAGE)
            )
            not_before, not_after = x509build.validity(days)
            tbs = x509build.ca_tbs(
                subject_name,
                public_key,
                key_type,
                x509build.random_serial(),
                not_before,
                not_after,
            )
            certificate, _ = signing.sign_certificate(tbs, signer, public_key)
            der = certificate.dump()
            token.store_certificate(
                session,
                der,
                key_label,
                generated.key_id,
                subject=certificate.subject.dump(),
                issuer=certificate.issuer.dump(),
                serial=certificate["tbs_certificate"]["serial_number"].dump(),
            )
            config = CaConfig(
                module=str(Path(module).absolute()),
                token_label=info.label,
                token_serial=info.serial,
                key_label=key_label,
                key_id=generated.key_id,
                key_type=key_type,
            )
            thumbprint = x509build.sha1_thumbprint(der)

            def record_root(staging: Path) -> None:
                with db.open_database(staging) as database, database.transaction():
                    database.record_issued(
                        der,
                        "ca",
                        key_type,
                        days,
                        staging / store.CA_CERT_DER_NAME,
                        output_state="written",
                    )
                    _audit(
                        database,
                        staging,
                        "init",
                        certificate,
                        info.serial,
                        key_label=key_label,
                        key_id=generated.key_id.hex(),
                        key_attributes=generated.attributes,
                    )

            store.create_ca_dir(
                ca_dir,
                {
                    store.CONFIG_NAME: (store.render_config(config), store.PUBLIC_MODE),
                    store.CA_CERT_DER_NAME: (der, store.PUBLIC_MODE),
                    store.CA_CERT_PEM_NAME: (_pem(der), store.PUBLIC_MODE),
                    store.THUMBPRINT_NAME: (f"{thumbprint}\n".encode(), store.PUBLIC_MODE),
                },
                populate=record_root,
            )
        except BaseException:
            # Nothing half-made stays behind: a key without its CA directory is useless.
            with contextlib.suppress(Exception):
                token.destroy_key(session, generated.key_id)
            raise
    return CaCreated(ca_dir, der, thumbprint, info, generated.key_id, generated.attributes)


def _audit(database, ca_dir: Path, operation: str, certificate, token_serial: str, **extra):
    """One audit line for a signature, anchored in the database so truncation shows."""
    entry = audit.append(
        ca_dir,
        operation,
        certificate.serial_number,
        db.rfc4514(certificate.subject),
        token_serial,
        sha256=certificate.sha256.hex(),
        **extra,
    )
    database.set_audit_anchor(entry.seq, entry.line_sha256)


class OpenCa:
    """A CA directory, locked, with its token logged in: where certificates get signed."""

    def __init__(self, ca_dir: Path, config: CaConfig, certificate_der: bytes, signer, database):
        self.ca_dir = ca_dir
        self.config = config
        self.certificate_der = certificate_der
        self.certificate = x509.Certificate.load(certificate_der)
        self.signer = signer
        self.db = database

    @property
    def chain_der(self) -> list[bytes]:
        """The certificates above a leaf, issuing CA first."""
        return [self.certificate_der]

    def sign_server(
        self, request: ServerRequest, public_key: keys.PublicKeyInfo
    ) -> tuple[x509.Certificate, list[str]]:
        """Sign a server certificate for `public_key`; returns it with notes for the user."""
        issuer = self.certificate
        not_before, not_after = x509build.validity(
            request.days, not_after_limit=issuer.not_valid_after
        )
        notes = []
        if not_after == issuer.not_valid_after:
            notes.append(
                f"validity shortened to end with the CA certificate on {not_after:%Y-%m-%d}"
            )
        tbs = x509build.server_tbs(
            request,
            public_key,
            issuer,
            self.config.key_type,
            x509build.random_serial(),
            not_before,
            not_after,
        )
        certificate, tolerated = signing.sign_certificate(
            tbs,
            self.signer,
            issuer.public_key,
            lint.single_label_allowances(request.dns_names),
        )
        notes += [
            f"allowed on purpose for a workgroup host name: {finding.code} ({finding.message})"
            for finding in tolerated
        ]
        return certificate, notes

    def deliver(
        self,
        certificate: x509.Certificate,
        *,
        profile: str,
        request: ServerRequest,
        out: Path,
        data: bytes,
        mode: int,
        force: bool = False,
        operation: str = "issue",
    ):
        """Record and audit a signed certificate, then write its output file.

        The row is committed (output 'pending') before the file is renamed into place; it says
        'written' after, or 'failed' if writing failed, so a rerun knows what happened. Earlier
        unfinished rows for the same file are superseded by this one.
        """
        der = certificate.dump()
        out = Path(out).absolute()
        with self.db.transaction():
            record = self.db.record_issued(der, profile, request.key_type, request.days, out)
            _audit(
                self.db,
                self.ca_dir,
                operation,
                certificate,
                self.config.token_serial,
                output=str(out),
            )
        try:
            store.write_file(out, data, mode=mode, force=force)
        except BaseException:
            self.db.mark_output(record.serial, "failed")
            raise
        with self.db.transaction():
            record = self.db.mark_output(record.serial, "written")
            for earlier in self.db.unfinished_outputs():
                if Path(earlier.output_path or "") == out and earlier.serial != record.serial:
                    self.db.supersede(earlier.serial, record.serial)
        return record

    def issue_server(
        self,
        request: ServerRequest,
        *,
        password: str,
        out: Path,
        legacy: bool = False,
        force: bool = False,
        operation: str = "issue",
        private_key=None,
    ) -> ServerIssued:
        """A new host-side key, a token-signed certificate, and an encrypted PFX at `out`."""
        if private_key is None:
            private_key = signing.generate_private_key(request.key_type)
        certificate, notes = self.sign_server(request, pfx.public_key_info(private_key))
        der = certificate.dump()
        data = pfx.pkcs12_bytes(private_key, der, self.chain_der, password, legacy=legacy)
        self.deliver(
            certificate,
            profile="server",
            request=request,
            out=out,
            data=data,
            mode=store.SECRET_MODE,
            force=force,
            operation=operation,
        )
        return ServerIssued(
            Path(out), der, certificate.serial_number, certificate.not_valid_after, notes
        )


@contextlib.contextmanager
def open_ca(ca_dir: Path, pin_source: token.PinSource, on_wait=None) -> Iterator[OpenCa]:
    """Lock CA_DIR, log in to its token once and find the key that matches its certificate."""
    ca_dir = Path(ca_dir)
    config = store.load_config(ca_dir)
    with locking.ca_lock(ca_dir, on_wait=on_wait):
        certificate_der = store.read_ca_certificate(ca_dir)
        try:
            certificate = x509.Certificate.load(certificate_der)
            public_key = certificate.public_key
        except ValueError:
            raise InvalidRequest(
                f"{ca_dir / store.CA_CERT_DER_NAME} is not a DER certificate; restore it"
            ) from None
        device = token.find_token(
            config.module, TokenSelector(label=config.token_label, serial=config.token_serial)
        )
        with token.open_session(device, pin_source) as session:
            private_key = token.find_private_key(session, config.key_id, config.key_label)
            signer = token.TokenSigner(session, private_key, config.key_type, pin_source)
            try:
                signing.verify_signature(
                    public_key, config.key_type, KEY_CHECK_MESSAGE, signer.sign(KEY_CHECK_MESSAGE)
                )
            except IntegrityError:
                raise IntegrityError(
                    f"the key on {token.token_info(device)} does not match the CA certificate "
                    f"in {ca_dir}; this CA directory belongs to another key"
                ) from None
            with db.open_database(ca_dir) as database:
                yield OpenCa(ca_dir, config, certificate_der, signer, database)


def default_pfx_path(request: ServerRequest, directory: Path | None = None) -> Path:
    """`<first DNS name>.pfx`, as the Milestone guide's script names it."""
    return (directory or Path.cwd()) / f"{request.common_name}.pfx"


def issue_server(
    ca_dir: Path,
    request: ServerRequest,
    *,
    password: str,
    pin_source: token.PinSource,
    out: Path | None = None,
    legacy: bool = False,
    force: bool = False,
) -> ServerIssued:
    """Issue one recording-server PFX: checks first, then one login, then the file."""
    out = Path(out) if out else default_pfx_path(request)
    store.check_output(out, force)
    pfx.check_password(password)
    with open_ca(ca_dir, pin_source) as ca:
        return ca.issue_server(request, password=password, out=out, legacy=legacy, force=force)


# --- lifecycle: what was issued, renewal, revocation ---------------------------------------------


@dataclass(frozen=True)
class Renewal:
    old_serial: str
    issued: ServerIssued


def renewal_request(ca_dir: Path, serial_or_name: str):
    """The record to renew and the request that repeats it: same names, key type and length."""
    with read_database(ca_dir) as database:
        record = database.find(serial_or_name)
    if record.profile == "ca":
        raise InvalidRequest("that is the CA certificate itself; renew the CA with a new init")
    if record.profile != "server":
        raise InvalidRequest(
            f"certificate {record.serial} was signed from a CSR, so hsmca has no key for it; "
            "sign a new CSR from that server with 'hsmca sign'"
        )
    if record.status == "revoked":
        raise InvalidRequest(f"certificate {record.serial} is revoked; issue a new one instead")
    request = x509build.server_request(
        record.dns, record.ip, record.days or DEFAULT_SERVER_DAYS, KeyType(record.key_type)
    )
    return record, request


def renew(
    ca_dir: Path,
    serial_or_name: str,
    *,
    password: str,
    pin_source: token.PinSource,
    out: Path | None = None,
    legacy: bool = False,
    force: bool = False,
) -> Renewal:
    """A new key and certificate like an old one; the old one becomes 'superseded'."""
    record, request = renewal_request(ca_dir, serial_or_name)
    out = Path(out) if out else default_pfx_path(request)
    store.check_output(out, force)
    pfx.check_password(password)
    with open_ca(ca_dir, pin_source) as ca:
        current = ca.db.find(record.serial)
        if current.status != "active":
            raise InvalidRequest(f"certificate {record.serial} is {current.status} already")
        issued = ca.issue_server(
            request, password=password, out=out, legacy=legacy, force=force, operation="renew"
        )
        ca.db.supersede(record.serial, issued.serial)
    return Renewal(record.serial, issued)


def revoke(ca_dir: Path, serial: str, reason: str = "unspecified"):
    """Mark a certificate revoked; the next CRL lists it. Needs no token."""
    ca_dir = Path(ca_dir)
    config = store.load_config(ca_dir)
    with locking.ca_lock(ca_dir), db.open_database(ca_dir, create=False) as database:
        record = database.find(serial)
        if record.profile == "ca":
            raise InvalidRequest("the CA cannot revoke its own certificate")
        with database.transaction():
            revoked = database.revoke(record.serial, reason)
            entry = audit.append(
                ca_dir,
                "revoke",
                revoked.serial,
                revoked.subject,
                config.token_serial,
                reason=revoked.revocation_reason,
            )
            database.set_audit_anchor(entry.seq, entry.line_sha256)
        return revoked

"""The library facade: what the CLI calls, and what a Python caller can call directly.

Each operation validates everything it can before the token is touched, logs in once, and
writes its outputs only after every signature has been verified.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from asn1crypto import keys, pem, x509
from cryptography.exceptions import InvalidSignature

from . import audit, db, lint, locking, pfx, signing, store, token, workerpool, x509build
from .errors import HsmcaError, IntegrityError, InvalidRequest
from .models import (
    DEFAULT_CA_DAYS,
    DEFAULT_CA_SUBJECT,
    DEFAULT_KEY_LABEL,
    DEFAULT_SERVER_DAYS,
    SERVER_KEY_TYPES,
    SIGNATURE_SCHEMES,
    CaConfig,
    KeyType,
    ServerRequest,
)
from .p11uri import TokenSelector, parse_token_spec
from .queries import expiring_certificates, list_certificates, read_database, verify_audit_log

__all__ = [
    "BatchRow",
    "CaCreated",
    "CrlMade",
    "CsrSigned",
    "OpenCa",
    "Renewal",
    "ServerIssued",
    "SubordinateCompleted",
    "batch_issue",
    "complete_subordinate",
    "default_pfx_path",
    "expiring_certificates",
    "init_ca",
    "issue_server",
    "list_certificates",
    "make_crl",
    "open_ca",
    "plan_batch",
    "read_csrs",
    "renew",
    "renewal_plan",
    "revoke",
    "sign_ca",
    "sign_csrs",
    "verify_audit_log",
]

KEY_CHECK_MESSAGE = b"hsmca: proof that the new CA key signs and the host can verify it"


@dataclass(frozen=True)
class CaCreated:
    ca_dir: Path
    certificate_der: bytes
    """The CA certificate; empty for a subordinate CA that waits for the root."""
    thumbprint: str
    token: token.TokenInfo
    key_id: bytes
    key_attributes: dict[str, bool]
    csr_path: Path | None = None
    """Where a pending subordinate CA's request was written."""


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
    subordinate: bool = False,
    signature_scheme: str = "pkcs1v15",
) -> CaCreated:
    """Generate the CA key on the token and create CA_DIR.

    A root self-signs its certificate on the token. A `subordinate` CA instead writes
    CA_DIR/ca.csr, signed by the new key, and waits (state "pending") until the root has signed
    it and `complete_subordinate` installs the certificate. `token_spec` is a token label or a
    PKCS#11 URI; a URI's module-path stands in for an empty `module`.
    """
    ca_dir = Path(ca_dir)
    store.check_new_ca_dir(ca_dir)
    subject_name = x509build.parse_subject(subject)
    x509build.validate_days(days)
    if not key_label.strip():
        raise InvalidRequest("the key label is empty; give one with --key-label")
    pss = _wants_pss(signature_scheme, key_type)
    if pss and subordinate:
        raise InvalidRequest(
            "a subordinate CA's certificate is signed by the root: give --signature-scheme to "
            "hsmca sign-ca instead"
        )
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
            config = CaConfig(
                module=str(Path(module).absolute()),
                token_label=info.label,
                token_serial=info.serial,
                key_label=key_label,
                key_id=generated.key_id,
                key_type=key_type,
                state="pending" if subordinate else "active",
                public_key=generated.public_key_der,
            )
            key_facts = {
                "key_label": key_label,
                "key_id": generated.key_id.hex(),
                "key_attributes": generated.attributes,
            }
            if subordinate:
                csr_der = _subordinate_csr(subject_name, public_key, signer)
                _create_pending_dir(ca_dir, config, csr_der, subject, info.serial, key_facts)
                return CaCreated(
                    ca_dir,
                    b"",
                    "",
                    info,
                    generated.key_id,
                    generated.attributes,
                    ca_dir / store.CSR_NAME,
                )
            not_before, not_after = x509build.validity(days)
            tbs = x509build.ca_tbs(
                subject_name,
                public_key,
                key_type,
                x509build.random_serial(),
                not_before,
                not_after,
                pss=pss,
            )
            certificate, _ = signing.sign_certificate(
                tbs, signer.with_pss() if pss else signer, public_key
            )
            der = certificate.dump()
            _store_on_token(session, certificate, key_label, generated.key_id)
            thumbprint = x509build.sha1_thumbprint(der)

            def record_root(staging: Path) -> None:
                _record_ca_certificate(
                    staging, certificate, key_type, days, "init", info.serial, key_facts, ca_dir
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


def _wants_pss(signature_scheme: str, key_type: KeyType) -> bool:
    if signature_scheme not in SIGNATURE_SCHEMES:
        raise InvalidRequest(
            f"signature scheme {signature_scheme!r} is not one of {', '.join(SIGNATURE_SCHEMES)}"
        )
    if signature_scheme == "pss" and not key_type.is_rsa:
        raise InvalidRequest(f"RSA-PSS needs an RSA CA key; this one is {key_type.value}")
    return signature_scheme == "pss"


def _store_on_token(session, certificate: x509.Certificate, label: str, key_id: bytes) -> None:
    token.store_certificate(
        session,
        certificate.dump(),
        label,
        key_id,
        subject=certificate.subject.dump(),
        issuer=certificate.issuer.dump(),
        serial=certificate["tbs_certificate"]["serial_number"].dump(),
    )


def _record_ca_certificate(
    ca_dir: Path,
    certificate,
    key_type: KeyType,
    days: int,
    operation: str,
    token_serial: str,
    extra: dict,
    final_dir: Path | None = None,
) -> None:
    """The CA's own certificate as the first row of its database, and its audit line.

    `final_dir` is where `ca_dir` (a staging directory) will be renamed to.
    """
    with db.open_database(ca_dir) as database, database.transaction():
        recorded = database.get(certificate.serial_number)
        if recorded is not None and recorded.der == certificate.dump():
            return  # an interrupted completion recorded and audited it already
        database.record_issued(
            certificate.dump(),
            "ca",
            key_type,
            days,
            (final_dir or ca_dir).absolute() / store.CA_CERT_PEM_NAME,
            output_state="written",
        )
        with audit.AuditLog(ca_dir) as log:
            entry = _audit_signature(log, operation, certificate, token_serial, **extra)
        database.set_audit_anchor(entry.seq, entry.line_sha256)


def _subordinate_csr(subject_name, public_key: keys.PublicKeyInfo, signer) -> bytes:
    """A PKCS#10 request for the subordinate CA, signed by its new key on the token."""
    from . import csr

    info = x509build.certification_request_info(subject_name, public_key)
    signature = signer.sign(info.dump())
    der = x509build.certification_request(info, signer.key_type, signature).dump()
    csr.parse_csr(der, "the new request", for_ca=True)  # proves it verifies before it is written
    return der


def _create_pending_dir(
    ca_dir: Path, config: CaConfig, csr_der: bytes, subject: str, token_serial: str, facts: dict
) -> None:
    def record_request(staging: Path) -> None:
        with db.open_database(staging) as database, audit.AuditLog(staging) as log:
            entry = log.append(
                "subordinate-key",
                None,
                subject,
                token_serial,
                csr_sha256=hashlib.sha256(csr_der).hexdigest(),
                **facts,
            )
            database.set_audit_anchor(entry.seq, entry.line_sha256)

    store.create_ca_dir(
        ca_dir,
        {
            store.CONFIG_NAME: (store.render_config(config), store.PUBLIC_MODE),
            store.CSR_NAME: (pem.armor("CERTIFICATE REQUEST", csr_der), store.PUBLIC_MODE),
        },
        populate=record_request,
    )


def _read_certificates(path: Path) -> list[x509.Certificate]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror}") from None
    try:
        if pem.detect(data):
            ders = [
                der for kind, _, der in pem.unarmor(data, multiple=True) if kind == "CERTIFICATE"
            ]
        else:
            ders = [data]
        certificates = [x509.Certificate.load(der) for der in ders]
        for certificate in certificates:
            certificate.native  # noqa: B018 (parse all of it now, not later)
    except (ValueError, TypeError):
        raise InvalidRequest(f"{path} does not hold PEM or DER certificates") from None
    if not certificates:
        raise InvalidRequest(f"{path} holds no certificate")
    return certificates


def _check_issued_by(certificate: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    from cryptography import x509 as cx509

    try:
        cx509.load_der_x509_certificate(certificate.dump()).verify_directly_issued_by(
            cx509.load_der_x509_certificate(issuer.dump())
        )
    except (ValueError, TypeError, InvalidSignature):
        raise InvalidRequest(
            f"{what} is not signed by {db.rfc4514(issuer.subject)}; give the right chain"
        ) from None


@dataclass(frozen=True)
class SubordinateCompleted:
    ca_dir: Path
    certificate_der: bytes
    thumbprint: str
    root_subject: str


def complete_subordinate(
    ca_dir: Path,
    certificate_file: Path,
    *,
    pin_source: token.PinSource,
    chain_file: Path | None = None,
) -> SubordinateCompleted:
    """Install the root-signed certificate of a pending subordinate CA.

    The certificate must certify the key made by `init --subordinate` (and that key must be on
    the token), be a CA certificate, and chain to a self-signed root given in the file after
    it or in `chain_file`.
    """
    ca_dir = Path(ca_dir)
    config = store.load_config(ca_dir)
    if config.state != "pending":
        raise InvalidRequest(f"{ca_dir} is not waiting for a certificate; it is {config.state}")
    certificate, *above = _read_certificates(certificate_file)
    if chain_file is not None:
        above += _read_certificates(chain_file)
    if certificate.public_key.dump() != config.public_key:
        raise InvalidRequest(
            f"{certificate_file} certifies another key than the one made for {ca_dir}; "
            "nothing was changed. Give the certificate the root signed for this CA's request"
        )
    if not certificate.ca or "key_cert_sign" not in (certificate.key_usage_value.native or []):
        raise InvalidRequest(f"{certificate_file} is not a CA certificate (CA:TRUE, keyCertSign)")
    if not above or not above[-1].self_signed:
        raise InvalidRequest(
            f"{certificate_file} does not reach a self-signed root; give the root with --chain"
        )
    for lower, upper in zip([certificate, *above], above, strict=False):
        _check_issued_by(lower, upper, db.rfc4514(lower.subject))
    _check_issued_by(above[-1], above[-1], "the root")
    now = x509build.utc_now()
    if not certificate.not_valid_before <= now <= certificate.not_valid_after:
        raise InvalidRequest(f"{certificate_file} is not valid now")
    der = certificate.dump()
    with locking.ca_lock(ca_dir):
        with _ca_signer(config, pin_source, certificate.public_key, ca_dir, rw=True) as (
            session,
            _,
        ):
            _store_on_token(session, certificate, config.key_label, config.key_id)
        thumbprint = x509build.sha1_thumbprint(der)
        root = above[-1]
        # A pending directory's certificate files can only be left by an interrupted
        # completion of this same CA: replacing them lets it run again.
        for name, data in (
            (store.CA_CERT_PEM_NAME, _pem(der)),
            (store.CHAIN_PEM_NAME, b"".join(_pem(c.dump()) for c in above)),
            (store.CA_CERT_DER_NAME, root.dump()),
            (store.THUMBPRINT_NAME, f"{thumbprint}\n".encode()),
        ):
            store.write_file(ca_dir / name, data, force=True)
        days = (certificate.not_valid_after - certificate.not_valid_before).days
        _record_ca_certificate(
            ca_dir,
            certificate,
            config.key_type,
            days,
            "subordinate-complete",
            config.token_serial,
            {"root_sha256": root.sha256.hex()},
        )
        # The state flips last: until here, the directory is still pending.
        store.write_file(
            ca_dir / store.CONFIG_NAME,
            store.render_config(dataclasses.replace(config, state="active")),
            force=True,
        )
    return SubordinateCompleted(ca_dir, der, thumbprint, db.rfc4514(root.subject))


DEFAULT_SUBORDINATE_DAYS = 1825


def sign_ca(
    root_dir: Path,
    csr_path: Path,
    *,
    pin_source: token.PinSource,
    path_length: int | None = 0,
    days: int = DEFAULT_SUBORDINATE_DAYS,
    out: Path | None = None,
    force: bool = False,
    signature_scheme: str = "pkcs1v15",
):
    """The root signs a subordinate CA's request; writes the new certificate, then the root's."""
    from . import csr

    x509build.validate_days(days)
    if path_length is not None and path_length < 0:
        raise InvalidRequest("--path-length must be 0 or more")
    try:
        data = Path(csr_path).read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"cannot read the CSR {csr_path}: {exc.strerror}") from None
    parsed = csr.parse_csr(data, str(csr_path), for_ca=True)
    # issuing/ca.csr -> issuing-certificate.pem: the directory names the CA better than "ca".
    stem = Path(csr_path).stem
    if stem == "ca" and Path(csr_path).absolute().parent.name:
        stem = Path(csr_path).absolute().parent.name
    out = Path(out) if out else Path.cwd() / f"{stem}-certificate.pem"
    store.check_output(out, force)
    with open_ca(root_dir, pin_source) as ca:
        pss = _wants_pss(signature_scheme, ca.config.key_type)
        not_before, not_after = x509build.validity(
            days, not_after_limit=ca.certificate.not_valid_after
        )
        notes = []
        if not_after == ca.certificate.not_valid_after:
            notes.append(
                f"validity shortened to end with the root certificate on {not_after:%Y-%m-%d}"
            )
        tbs = x509build.ca_tbs(
            parsed.subject_name,
            parsed.public_key,
            parsed.key_type,
            x509build.random_serial(),
            not_before,
            not_after,
            path_length,
            issuer=ca.certificate,
            issuer_key_type=ca.config.key_type,
            pss=pss,
        )
        signer = ca.signer.with_pss() if pss else ca.signer
        certificate, _ = signing.sign_certificate(tbs, signer, ca.certificate.public_key)
        data = b"".join(_pem(der) for der in [certificate.dump(), *ca.chain_der])
        ca.deliver(
            [
                Delivery(
                    certificate,
                    "subca",
                    parsed.key_type,
                    days,
                    out,
                    data,
                    store.PUBLIC_MODE,
                    force,
                    "sign-ca",
                )
            ]
        )
    return certificate, out, notes


@dataclass(frozen=True)
class CsrSigned:
    source: str
    path: Path
    serial: int
    dns_names: tuple[str, ...]
    not_after: dt.datetime
    notes: list[str] = field(default_factory=list)
    ignored: tuple[str, ...] = ()
    """What the CSR asked for that was not copied into the certificate."""


@dataclass(frozen=True)
class CrlMade:
    path: Path
    crl_number: int
    entries: int
    next_update: dt.datetime


def _audit_signature(log, operation: str, certificate, token_serial: str, **extra):
    """One audit line for a signature: serial, subject, SHA-256 of the certificate."""
    return log.append(
        operation,
        certificate.serial_number,
        db.rfc4514(certificate.subject),
        token_serial,
        sha256=certificate.sha256.hex(),
        **extra,
    )


@dataclass(frozen=True)
class Delivery:
    """A signed certificate and the file that carries it, ready to be recorded and written."""

    certificate: x509.Certificate
    profile: str
    key_type: KeyType
    days: int
    out: Path
    data: bytes | None
    """The output file's bytes; None while a PFX is still being packed (see OpenCa.record)."""
    mode: int
    force: bool = False
    operation: str = "issue"


class OpenCa:
    """A CA directory, locked, with its token logged in: where certificates get signed."""

    def __init__(
        self, ca_dir: Path, config: CaConfig, chain_der: list[bytes], signer, database, audit_log
    ):
        from .leaftemplate import LeafTemplate

        self.ca_dir = ca_dir
        self.config = config
        self.chain_der = chain_der
        """The certificates above a leaf: this CA first, then up to the root."""
        self.certificate_der = chain_der[0]
        self.certificate = x509.Certificate.load(self.certificate_der)
        self.signer = signer
        self.db = database
        self.audit_log = audit_log
        # Everything in a leaf but its serial, validity, names and key is encoded once.
        self.leaf_template = LeafTemplate(self.certificate, config.key_type)

    def leaf_tbs(
        self, request: ServerRequest, public_key: keys.PublicKeyInfo
    ) -> tuple[x509.TbsCertificate, list[str]]:
        """The TBSCertificate of a server certificate for `public_key`, with notes for the user."""
        issuer = self.certificate
        not_before, not_after = x509build.validity(
            request.days, not_after_limit=issuer.not_valid_after
        )
        notes = []
        if not_after == issuer.not_valid_after:
            notes.append(
                f"validity shortened to end with the CA certificate on {not_after:%Y-%m-%d}"
            )
        tbs = self.leaf_template.tbs(
            request, public_key, x509build.random_serial(), not_before, not_after
        )
        return tbs, notes

    def sign_server(
        self,
        request: ServerRequest,
        public_key: keys.PublicKeyInfo,
        prepared: tuple[x509.TbsCertificate, list[str], signing.LintedTbs] | None = None,
    ) -> tuple[x509.Certificate, list[str]]:
        """Sign a server certificate for `public_key`; returns it with notes for the user.

        `prepared` is what `leaf_tbs` made and `signing.lint_tbs` passed, when that was done
        elsewhere (in worker processes for bulk signing).
        """
        if prepared is None:
            tbs, notes = self.leaf_tbs(request, public_key)
            linted = None
        else:
            tbs, notes, linted = prepared
        certificate, tolerated = signing.sign_certificate(
            tbs,
            self.signer,
            self.certificate.public_key,
            lint.single_label_allowances(request.dns_names),
            linted=linted,
        )
        return certificate, notes + [
            f"allowed on purpose for a workgroup host name: {finding.code} ({finding.message})"
            for finding in tolerated
        ]

    def deliver(self, deliveries: list[Delivery]) -> list:
        """Record and audit signed certificates, then write their output files.

        Many deliveries at once share one fsync and two transactions.
        """
        records = self.record(deliveries)
        self.write(list(zip(records, deliveries, strict=True)))
        return records

    @store.interrupts_deferred()
    def record(self, deliveries: list[Delivery]) -> list:
        """Audit and record signed certificates (output 'pending'), before any file exists.

        A delivery's data may still be None (a PFX being packed elsewhere); its digest is then
        recorded by `write`, still before its file is renamed into place.
        """
        items = [(delivery, Path(delivery.out).absolute()) for delivery in deliveries]
        entries = [
            _audit_signature(
                self.audit_log,
                delivery.operation,
                delivery.certificate,
                self.config.token_serial,
                output=str(out),
            )
            for delivery, out in items
        ]
        self.audit_log.flush()
        with self.db.transaction():
            records = [
                self.db.record_issued(
                    delivery.certificate.dump(),
                    delivery.profile,
                    delivery.key_type,
                    delivery.days,
                    out,
                    output_sha256=(
                        hashlib.sha256(delivery.data).hexdigest() if delivery.data else None
                    ),
                )
                for delivery, out in items
            ]
            self.db.set_audit_anchor(entries[-1].seq, entries[-1].line_sha256)
        return records

    @store.interrupts_deferred()
    def write(self, items: list) -> None:
        """Write the output file of each recorded (record, delivery) and mark it written.

        Each row says 'written' after, or 'failed' if its file could not be written, so a
        rerun knows what happened. Earlier unfinished rows for the same file are superseded.
        """
        with self.db.transaction():
            for record, delivery in items:
                if self.db.output_digest(record.serial) is None:
                    self.db.set_output_digest(
                        record.serial, hashlib.sha256(delivery.data).hexdigest()
                    )
        written = []
        try:
            for record, delivery in items:
                out = Path(delivery.out).absolute()
                store.write_file(out, delivery.data, mode=delivery.mode, force=delivery.force)
                written.append((record, out))
        except BaseException:
            self.db.mark_output(items[len(written)][0].serial, "failed")
            raise
        finally:
            self._mark_written(written)

    def _mark_written(self, written) -> None:
        """Mark rows written; a file's earlier certificates (unfinished, or replaced with
        --force) are superseded by the one the file now holds."""
        if not written:
            return
        with self.db.transaction():
            for record, out in written:
                self.db.mark_output(record.serial, "written")
                for earlier in self.db.active_for_output(out):
                    if earlier.serial != record.serial:
                        self.db.supersede(earlier.serial, record.serial)

    def issue_server(
        self,
        request: ServerRequest,
        *,
        password: str,
        out: Path,
        legacy: bool = False,
        force: bool = False,
        operation: str = "issue",
    ) -> ServerIssued:
        """A new host-side key, a token-signed certificate, and an encrypted PFX at `out`."""
        if request.key_type not in SERVER_KEY_TYPES:
            allowed = ", ".join(k.value for k in SERVER_KEY_TYPES)
            raise InvalidRequest(
                f"hsmca does not make {request.key_type.value} server keys; use {allowed}"
            )
        private_key = signing.generate_private_key(request.key_type)
        certificate, notes = self.sign_server(request, pfx.public_key_info(private_key))
        der = certificate.dump()
        data = pfx.pkcs12_bytes(private_key, der, self.chain_der, password, legacy=legacy)
        self.deliver(
            [
                Delivery(
                    certificate,
                    "server",
                    request.key_type,
                    request.days,
                    out,
                    data,
                    store.SECRET_MODE,
                    force,
                    operation,
                )
            ]
        )
        return ServerIssued(
            Path(out), der, certificate.serial_number, certificate.not_valid_after, notes
        )

    def sign_csrs(
        self, prepared, force: bool = False, chunk: int = 64, lint_workers=None
    ) -> list[CsrSigned]:
        """Sign verified CSRs' keys; write each leaf and the chain as PEM, `chunk` at a time.

        With `lint_workers` (a pool from workerpool.lint_workers), the workers lint the next
        chunk while this process, the only one with the token session, signs this one:
        pkilint costs several times a signature.
        """

        def build_and_lint(part):
            leaves = [self.leaf_tbs(request, parsed.public_key) for parsed, request, _ in part]
            jobs = [
                (tbs.dump(), self.config.key_type, lint.single_label_allowances(request.dns_names))
                for (tbs, _), (_, request, _) in zip(leaves, part, strict=True)
            ]
            if lint_workers is None:
                return leaves, [signing.lint_tbs(*job) for job in jobs]
            return leaves, lint_workers.starmap_async(signing.lint_tbs, jobs, chunksize=8)

        signed = []
        parts = [prepared[start : start + chunk] for start in range(0, len(prepared), chunk)]
        ahead = build_and_lint(parts[0]) if parts else None
        for index, part in enumerate(parts):
            leaves, linting = ahead
            if index + 1 < len(parts):
                ahead = build_and_lint(parts[index + 1])
            # Every certificate of the chunk passes lint before the token signs any of it,
            # so a refusal never leaves a signed certificate unrecorded.
            linted = linting if isinstance(linting, list) else linting.get()
            deliveries = []
            for (parsed, request, out), (tbs, notes), passed in zip(
                part, leaves, linted, strict=True
            ):
                certificate, notes = self.sign_server(
                    request, parsed.public_key, (tbs, notes, passed)
                )
                pem_chain = b"".join(_pem(der) for der in [certificate.dump(), *self.chain_der])
                deliveries.append(
                    Delivery(
                        certificate,
                        "csr",
                        request.key_type,
                        request.days,
                        out,
                        pem_chain,
                        store.PUBLIC_MODE,
                        force,
                        "sign",
                    )
                )
                signed.append(
                    CsrSigned(
                        parsed.source,
                        Path(out),
                        certificate.serial_number,
                        request.dns_names,
                        certificate.not_valid_after,
                        notes,
                        parsed.ignored,
                    )
                )
            self.deliver(deliveries)
        return signed

    def make_crl(
        self,
        days: int,
        out: Path,
        pem_output: bool = False,
        replace: bool = True,
        check_crl: Callable[[bytes], None] = lint.check_crl,
    ) -> CrlMade:
        """Sign a CRL of every revoked certificate with the next cRLNumber and write it.

        A CRL is republished in place (`replace`): the newer one, with the higher cRLNumber,
        replaces the older. A ceremony asks for a file that must not exist yet instead.
        `check_crl` runs lint.check_crl, here or in a worker process (workerpool).
        """
        from . import crlbuild

        x509build.validate_days(days, "CRL validity")
        entries = self.db.crl_entries()
        crl_number = self.db.next_crl_number()
        this_update = x509build.utc_now()
        tbs = crlbuild.tbs_cert_list_of_entries(
            self.certificate, self.config.key_type, crl_number, entries, days, this_update
        )
        sample = None
        if len(entries) > LINT_WHOLE_CRL_UP_TO:
            sample = crlbuild.tbs_cert_list_of_entries(
                self.certificate,
                self.config.key_type,
                crl_number,
                crlbuild.lint_sample(entries, limit=LINT_CRL_SAMPLE),
                days,
                this_update,
            )
        signed = signing.sign_crl(tbs, self.signer, self.certificate.public_key, sample, check_crl)
        der = signed.dump()
        entry = self.audit_log.append(
            "crl",
            None,
            db.rfc4514(self.certificate.subject),
            self.config.token_serial,
            crl_number=crl_number,
            entries=len(entries),
            sha256=hashlib.sha256(der).hexdigest(),
        )
        self.audit_log.flush()
        self.db.set_audit_anchor(entry.seq, entry.line_sha256)
        data = pem.armor("X509 CRL", der) if pem_output else der
        store.write_file(out, data, mode=store.PUBLIC_MODE, force=replace)
        return CrlMade(
            Path(out), crl_number, len(entries), signed["tbs_cert_list"]["next_update"].native
        )


@contextlib.contextmanager
def _ca_signer(
    config: CaConfig, pin_source: token.PinSource, public_key, where: Path, rw: bool = False
):
    """Log in to the CA's token and find its key by CKA_ID; prove it matches `public_key`."""
    device = token.find_token(
        config.module, TokenSelector(label=config.token_label, serial=config.token_serial)
    )
    with token.open_session(device, pin_source, rw=rw) as session:
        private_key = token.find_private_key(session, config.key_id, config.key_label)
        signer = token.TokenSigner(session, private_key, config.key_type, pin_source)
        try:
            signing.verify_signature(
                public_key, config.key_type, KEY_CHECK_MESSAGE, signer.sign(KEY_CHECK_MESSAGE)
            )
        except IntegrityError:
            raise IntegrityError(
                f"the key on {token.token_info(device)} does not match the CA certificate "
                f"in {where}; this CA directory belongs to another key"
            ) from None
        yield session, signer


@contextlib.contextmanager
def open_ca(ca_dir: Path, pin_source: token.PinSource, on_wait=None) -> Iterator[OpenCa]:
    """Lock CA_DIR, log in to its token once and find the key that matches its certificate."""
    ca_dir = Path(ca_dir)
    config = store.load_config(ca_dir)
    if config.state != "active":
        raise InvalidRequest(
            f"{ca_dir} is a subordinate CA still waiting for its certificate: have the root sign "
            f"{ca_dir / store.CSR_NAME} (hsmca sign-ca), then run "
            f"'hsmca init {ca_dir} --certificate FILE'"
        )
    with locking.ca_lock(ca_dir, on_wait=on_wait):
        chain_der = store.read_ca_chain(ca_dir)
        try:
            public_key = x509.Certificate.load(chain_der[0]).public_key
        except ValueError:
            raise InvalidRequest(
                f"{ca_dir / store.CA_CERT_PEM_NAME} is not a certificate; restore it"
            ) from None
        with (
            _ca_signer(config, pin_source, public_key, ca_dir) as (_, signer),
            db.open_database(ca_dir) as database,
            audit.AuditLog(ca_dir, sync_each=False) as audit_log,
        ):
            yield OpenCa(ca_dir, config, chain_der, signer, database, audit_log)


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
    if record.profile == "subca":
        raise InvalidRequest(
            f"certificate {record.serial} is a subordinate CA's; renew it with "
            "'hsmca sign-ca' on a new request from that CA"
        )
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


def renewal_plan(ca_dir: Path, serial_or_name: str, out: Path | None, force: bool):
    """What renewing means here: (record, request, output path, may it be replaced).

    The renewed certificate's own file may be replaced without --force: renewal replaces it.
    """
    record, request = renewal_request(ca_dir, serial_or_name)
    out = Path(out) if out else default_pfx_path(request)
    force = force or str(out.absolute()) == record.output_path
    store.check_output(out, force)
    return record, request, out, force


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
    record, request, out, force = renewal_plan(ca_dir, serial_or_name, out, force)
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


# --- CRLs, CSRs, batches -------------------------------------------------------------------------

LINT_WHOLE_CRL_UP_TO = 256
# pkilint takes about 0.5 ms per entry; the sample's extremes and one entry per reason cover
# every shape the encoder makes, and a few dozen more add little but time.
LINT_CRL_SAMPLE = 32
DEFAULT_CRL_DAYS = 30


def make_crl(
    ca_dir: Path,
    *,
    pin_source: token.PinSource,
    days: int = DEFAULT_CRL_DAYS,
    out: Path | None = None,
    pem_output: bool = False,
    replace: bool = True,
) -> CrlMade:
    """Sign and write the CA's CRL (default CA_DIR/ca.crl, DER), replacing the previous one
    unless `replace` is False."""
    ca_dir = Path(ca_dir)
    x509build.validate_days(days, "CRL validity")
    out = Path(out) if out else ca_dir / ("ca.crl.pem" if pem_output else "ca.crl")
    store.check_output(out, replace)
    with workerpool.lint_workers(1) as workers, open_ca(ca_dir, pin_source) as ca:

        def check_in_worker(crl_der: bytes) -> None:
            workers.apply(lint.check_crl, (crl_der,))

        return ca.make_crl(
            days, out, pem_output, replace, check_in_worker if workers else lint.check_crl
        )


def csr_output_path(request: ServerRequest, out_dir: Path | None) -> Path:
    """`<first DNS name>.pem` in `out_dir` (default: the current directory)."""
    return (out_dir or Path.cwd()) / f"{request.common_name}.pem"


def read_csrs(
    paths: list[Path],
    *,
    days: int = DEFAULT_SERVER_DAYS,
    dns: list[str] | None = None,
    ip: list[str] | None = None,
    out_dir: Path | None = None,
    force: bool = False,
):
    """Read and check every CSR and its output path before the token is touched.

    Any refused CSR stops the whole call: nothing is signed, written or recorded.
    """
    from . import csr

    if not paths:
        raise InvalidRequest("no CSR given: name one or more CSR files")
    prepared = []
    outputs: dict[Path, str] = {}
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InvalidRequest(f"cannot read the CSR {path}: {exc.strerror}") from None
        parsed = csr.parse_csr(data, source=str(path))
        request = parsed.server_request(days, dns=dns or None, ip=ip or None)
        out = csr_output_path(request, out_dir)
        if out in outputs:
            raise InvalidRequest(
                f"{path} and {outputs[out]} would both write {out}; sign them in separate calls "
                "or with different names"
            )
        store.check_output(out, force)
        outputs[out] = str(path)
        prepared.append((parsed, request, out))
    return prepared


def sign_csrs(
    ca_dir: Path,
    paths: list[Path],
    *,
    pin_source: token.PinSource,
    days: int = DEFAULT_SERVER_DAYS,
    dns: list[str] | None = None,
    ip: list[str] | None = None,
    out_dir: Path | None = None,
    force: bool = False,
) -> list[CsrSigned]:
    """Sign many CSRs with one login; each gets `<first DNS name>.pem` (leaf, then chain)."""
    with workerpool.lint_workers(workerpool.usable_cores()) as workers:
        prepared = read_csrs(paths, days=days, dns=dns, ip=ip, out_dir=out_dir, force=force)
        with open_ca(ca_dir, pin_source) as ca:
            return ca.sign_csrs(prepared, force, lint_workers=workers)


@dataclass(frozen=True)
class BatchRow:
    """What happened to one inventory row."""

    line: int
    status: str
    """'issued', 'skipped' (already issued, --resume) or 'failed'."""
    message: str
    path: Path | None = None
    serial: int | None = None
    notes: tuple[str, ...] = ()


def _generate_key_der(key_type_value: str) -> bytes:
    """Worker process: a new server key as PKCS#8 DER, returned through a pipe, never a file."""
    from cryptography.hazmat.primitives import serialization

    private_key = signing.generate_private_key(KeyType(key_type_value))
    return private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_own_key(key_der: bytes):
    from cryptography.hazmat.primitives import serialization

    # The key comes from our own worker through a pipe: checking an RSA key's primes again on
    # load would cost more than making it.
    return serialization.load_der_private_key(key_der, None, unsafe_skip_rsa_key_validation=True)


def _pack_pfx(
    key_der: bytes, certificate_der: bytes, chain_der: list[bytes], password: str, legacy: bool
) -> bytes:
    """Worker process: the encrypted PFX (PBKDF2 is the costly part, so it runs beside the
    process that holds the token session)."""
    return pfx.pkcs12_bytes(_load_own_key(key_der), certificate_der, chain_der, password, legacy)


def _finish_interrupted(database, record, path: Path) -> bool:
    """A run killed after renaming a file into place but before marking its row written:
    if the file holds exactly the bytes recorded for it, the row is marked written now."""
    if record.output_state == "written" or record.status != "active":
        return False
    expected = database.output_digest(record.serial)
    if expected is None or hashlib.sha256(path.read_bytes()).hexdigest() != expected:
        return False
    database.mark_output(record.serial, "written")
    return True


def plan_batch(ca_dir: Path, inventory, *, out_dir: Path, resume: bool):
    """Check every row's output before the token is touched.

    Returns (rows to issue as (row, path), results for rows skipped or refused here).
    """
    decided: list[BatchRow] = [
        BatchRow(error.line, "failed", error.message) for error in inventory.errors
    ]
    todo = []
    with locking.ca_lock(ca_dir), read_database(ca_dir) as database:
        for row in inventory.rows:
            path = (out_dir / (row.out or f"{row.request.common_name}.pfx")).absolute()
            if path.is_dir():
                decided.append(BatchRow(row.line, "failed", f"{path} is a directory", path))
            elif path.exists():
                record = database.find_output(path)
                if resume and record is not None and _finish_interrupted(database, record, path):
                    record = database.find_output(path)
                if resume and record is not None and record.output_state == "written":
                    decided.append(
                        BatchRow(
                            row.line,
                            "skipped",
                            f"{path.name} already issued",
                            path,
                            record.serial_number,
                        )
                    )
                elif resume:
                    decided.append(
                        BatchRow(
                            row.line,
                            "failed",
                            f"{path} exists but this CA has no record of writing it; move it away",
                            path,
                        )
                    )
                else:
                    decided.append(
                        BatchRow(
                            row.line,
                            "failed",
                            f"{path} already exists; use --resume to skip servers already issued",
                            path,
                        )
                    )
            else:
                todo.append((row, path))
    decided.sort(key=lambda result: result.line)
    return todo, decided


def batch_issue(
    ca_dir: Path,
    todo,
    *,
    password: str,
    pin_source: token.PinSource,
    legacy: bool = False,
    strict: bool = False,
    progress=None,
    workers: int | None = None,
) -> list[BatchRow]:
    """Issue a PFX for each (row, path) in `todo` with one login.

    Worker processes (both cores) make the server keys and pack the PFX files, while this
    process, the only one that talks to the token, lints, signs and records each certificate
    as soon as it is signed; its file follows when the worker has packed it.
    """
    import collections
    import multiprocessing

    results: list[BatchRow] = []
    if not todo:
        return results
    pfx.check_password(password)
    workers = workers or workerpool.usable_cores()
    # fork: no fresh interpreter to start. The pool forks its workers at its first submit,
    # top_up() below, before open_ca logs in, so that no child holds token state. A process
    # with other threads spawns them instead.
    context = multiprocessing.get_context("fork" if workerpool.fork_is_safe() else "spawn")
    window = 2 * workers + 2

    def report(result: BatchRow) -> None:
        results.append(result)
        if progress is not None:
            progress(result)

    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=workerpool.start_worker, initargs=(os.getpid(),)
    ) as pool:

        def submit(function, *args):
            try:
                return pool.submit(function, *args)
            except concurrent.futures.process.BrokenProcessPool:
                return None  # the workers could not start here: do it in this process

        def outcome(future, function, *args):
            if future is not None:
                with contextlib.suppress(concurrent.futures.process.BrokenProcessPool):
                    return future.result()
            return function(*args)

        keys_ahead: collections.deque = collections.deque()
        packing: collections.deque = collections.deque()
        pending = iter(todo)

        def top_up() -> None:
            for row, path in pending:
                key_type = row.request.key_type.value
                keys_ahead.append((row, path, key_type, submit(_generate_key_der, key_type)))
                if len(keys_ahead) >= window:
                    return

        def finish(ca: OpenCa) -> None:
            row, path, record, delivery, notes, pack_args, future = packing.popleft()
            try:
                data = outcome(future, _pack_pfx, *pack_args)
                ca.write([(record, dataclasses.replace(delivery, data=data))])
            except HsmcaError as exc:
                report(BatchRow(row.line, "failed", str(exc), path))
                return
            report(
                BatchRow(
                    row.line,
                    "issued",
                    path.name,
                    path,
                    delivery.certificate.serial_number,
                    tuple(notes),
                )
            )

        top_up()
        with open_ca(ca_dir, pin_source) as ca:
            stop = False
            while keys_ahead and not stop:
                row, path, key_type, future = keys_ahead.popleft()
                top_up()
                try:
                    key_der = outcome(future, _generate_key_der, key_type)
                    public_key = pfx.public_key_info(_load_own_key(key_der))
                    certificate, notes = ca.sign_server(row.request, public_key)
                    delivery = Delivery(
                        certificate,
                        "server",
                        row.request.key_type,
                        row.request.days,
                        path,
                        None,
                        store.SECRET_MODE,
                        False,
                        "batch",
                    )
                    (record,) = ca.record([delivery])
                except HsmcaError as exc:
                    report(BatchRow(row.line, "failed", str(exc), path))
                    stop = strict
                    continue
                pack_args = (key_der, certificate.dump(), ca.chain_der, password, legacy)
                packing.append(
                    (row, path, record, delivery, notes, pack_args, submit(_pack_pfx, *pack_args))
                )
                while packing and (
                    packing[0][-1] is None or packing[0][-1].done() or len(packing) > window
                ):
                    finish(ca)
                    if strict and results and results[-1].status == "failed":
                        stop = True
                        break
            while packing:
                finish(ca)
            for *_, rest in keys_ahead:
                if rest is not None:
                    rest.cancel()
    return results

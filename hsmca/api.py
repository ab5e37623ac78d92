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

from . import lint, pfx, signing, store, token, x509build
from .errors import IntegrityError, InvalidRequest
from .models import (
    DEFAULT_CA_DAYS,
    DEFAULT_CA_SUBJECT,
    DEFAULT_KEY_LABEL,
    CaConfig,
    KeyType,
    ServerRequest,
)
from .p11uri import TokenSelector, parse_token_spec

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
            store.create_ca_dir(
                ca_dir,
                {
                    store.CONFIG_NAME: (store.render_config(config), store.PUBLIC_MODE),
                    store.CA_CERT_DER_NAME: (der, store.PUBLIC_MODE),
                    store.CA_CERT_PEM_NAME: (_pem(der), store.PUBLIC_MODE),
                    store.THUMBPRINT_NAME: (f"{thumbprint}\n".encode(), store.PUBLIC_MODE),
                },
            )
        except BaseException:
            # Nothing half-made stays behind: a key without its CA directory is useless.
            with contextlib.suppress(Exception):
                token.destroy_key(session, generated.key_id)
            raise
    return CaCreated(ca_dir, der, thumbprint, info, generated.key_id, generated.attributes)


class OpenCa:
    """A CA directory with its token logged in: the place where certificates get signed."""

    def __init__(self, ca_dir: Path, config: CaConfig, certificate_der: bytes, signer):
        self.ca_dir = ca_dir
        self.config = config
        self.certificate_der = certificate_der
        self.certificate = x509.Certificate.load(certificate_der)
        self.signer = signer

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

    def issue_server(
        self,
        request: ServerRequest,
        *,
        password: str,
        out: Path,
        legacy: bool = False,
        force: bool = False,
    ) -> ServerIssued:
        """A new host-side key, a token-signed certificate, and an encrypted PFX at `out`."""
        private_key = signing.generate_private_key(request.key_type)
        certificate, notes = self.sign_server(request, pfx.public_key_info(private_key))
        der = certificate.dump()
        data = pfx.pkcs12_bytes(private_key, der, self.chain_der, password, legacy=legacy)
        store.write_file(out, data, mode=store.SECRET_MODE, force=force)
        return ServerIssued(out, der, certificate.serial_number, certificate.not_valid_after, notes)


@contextlib.contextmanager
def open_ca(ca_dir: Path, pin_source: token.PinSource) -> Iterator[OpenCa]:
    """Log in to the CA's token once and find its key; the key must match the CA certificate."""
    ca_dir = Path(ca_dir)
    config = store.load_config(ca_dir)
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
                f"the key on {token.token_info(device)} does not match the CA certificate in "
                f"{ca_dir}; this CA directory belongs to another key"
            ) from None
        yield OpenCa(ca_dir, config, certificate_der, signer)


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

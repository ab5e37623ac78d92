"""Build, then sign: the Signer protocol and the one path every certificate takes to be signed.

A TBS structure is linted (signed by a throwaway software key of the issuer's type), then signed
by the real signer, then the signature is verified with the issuer's public key. Only then does
the caller get a certificate to write anywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from asn1crypto import keys, x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from . import lint, x509build
from .errors import IntegrityError
from .models import KeyType

_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384}


class Signer(Protocol):
    """Something that holds a private key and returns X.509 signatures (DER ECDSA for EC keys)."""

    @property
    def key_type(self) -> KeyType: ...

    def sign(self, data: bytes) -> bytes: ...


@functools.lru_cache(maxsize=16)
def _load_public_key(der: bytes):
    try:
        return serialization.load_der_public_key(der)
    except ValueError:
        raise IntegrityError("the issuer's public key cannot be read; nothing was signed") from None


def _rsa_padding(digest, pss: bool):
    if pss:
        return padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
    return padding.PKCS1v15()


def verify_signature(
    public_key: keys.PublicKeyInfo,
    key_type: KeyType,
    data: bytes,
    signature: bytes,
    pss: bool = False,
) -> None:
    """Raise IntegrityError unless `signature` over `data` verifies with `public_key`."""
    key = _load_public_key(public_key.dump())
    digest = _HASHES[key_type.algorithm.hash_name]()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, _rsa_padding(digest, pss), digest)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(digest))
        else:
            raise IntegrityError(f"unsupported issuer key {type(key).__name__}")
    except InvalidSignature:
        raise IntegrityError(
            "the token returned a signature that does not verify with the CA's public key; "
            "nothing was written. Check that the CA directory belongs to this token's key"
        ) from None


class SoftwareSigner:
    """A signer with a key in memory: for linting TBS structures and for pure unit tests."""

    def __init__(self, key_type: KeyType, private_key=None, pss: bool = False):
        self._key_type = key_type
        self.private_key = private_key or generate_private_key(key_type)
        self.pss = pss

    @property
    def key_type(self) -> KeyType:
        return self._key_type

    @property
    def public_key(self) -> keys.PublicKeyInfo:
        return keys.PublicKeyInfo.load(
            self.private_key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def sign(self, data: bytes) -> bytes:
        digest = _HASHES[self._key_type.algorithm.hash_name]()
        if self._key_type.is_rsa:
            return self.private_key.sign(data, _rsa_padding(digest, self.pss), digest)
        return self.private_key.sign(data, ec.ECDSA(digest))


def generate_private_key(key_type: KeyType):
    """A new host-side private key of `key_type` (cryptography object, memory only)."""
    algorithm = key_type.algorithm
    if key_type.is_rsa:
        return rsa.generate_private_key(public_exponent=65537, key_size=algorithm.bits)
    curve = {"secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1}[algorithm.curve]
    return ec.generate_private_key(curve())


@functools.cache
def _lint_signer(key_type: KeyType, pss: bool = False) -> SoftwareSigner:
    return SoftwareSigner(key_type, pss=pss)


@dataclass(frozen=True)
class LintedTbs:
    """A TBSCertificate's exact bytes that pkilint passed, with the findings it tolerated."""

    tbs_der: bytes
    tolerated: tuple[lint.Finding, ...]


def lint_tbs(
    tbs_der: bytes,
    key_type: KeyType,
    allowed_findings: frozenset[lint.Allowance] = frozenset(),
    pss: bool = False,
) -> LintedTbs:
    """Sign `tbs_der` with a throwaway key of the issuer's type and lint the result.

    Pure and picklable, so bulk signing can lint in worker processes while the one process
    that holds the token session signs.
    """
    rehearsal = _lint_signer(key_type, pss)
    tbs = x509.TbsCertificate.load(tbs_der)
    tolerated = lint.check_certificate(
        x509build.certificate(tbs, key_type, rehearsal.sign(tbs_der), pss).dump(),
        allowed_findings,
    )
    return LintedTbs(tbs_der, tuple(tolerated))


def sign_certificate(
    tbs: x509.TbsCertificate,
    signer: Signer,
    issuer_public_key: keys.PublicKeyInfo,
    allowed_findings: frozenset[lint.Allowance] = frozenset(),
    linted: LintedTbs | None = None,
) -> tuple[x509.Certificate, list[lint.Finding]]:
    """Lint `tbs` (unless `linted` already holds it), have `signer` sign it, verify, assemble.

    Also returns the lint findings that `allowed_findings` tolerated, for a note to the user.
    The token only ever signs bytes identical to those the linter passed.
    """
    tbs_der = tbs.dump()
    pss = getattr(signer, "pss", False)
    if linted is None:
        linted = lint_tbs(tbs_der, signer.key_type, allowed_findings, pss)
    if linted.tbs_der != tbs_der:
        raise IntegrityError("the certificate to sign differs from the linted one; nothing signed")
    signature = signer.sign(tbs_der)
    verify_signature(issuer_public_key, signer.key_type, tbs_der, signature, pss)
    signed = x509build.certificate(
        x509.TbsCertificate.load(tbs_der), signer.key_type, signature, pss
    )
    if signed["tbs_certificate"].dump() != tbs_der:
        raise IntegrityError("the signed certificate differs from the linted one; nothing written")
    return signed, list(linted.tolerated)


def rehearse_crl(tbs, key_type: KeyType) -> bytes:
    """The DER of `tbs` (a TBSCertList) signed by a throwaway key of `key_type`, for the linter."""
    from . import crlbuild

    rehearsal = _lint_signer(key_type)
    return crlbuild.certificate_list(tbs, key_type, rehearsal.sign(tbs.dump())).dump()


def sign_crl(
    tbs,
    signer: Signer,
    issuer_public_key: keys.PublicKeyInfo,
    lint_tbs=None,
    check_crl: Callable[[bytes], None] = lint.check_crl,
):
    """Lint a CRL (or `lint_tbs`, the same header with a sample of its entries), sign, verify.

    A CRL of 100,000 entries would take pkilint a minute; crlbuild.lint_sample picks the
    entries that cover every shape of entry (reasons, serial lengths, dates) instead.
    `check_crl` is lint.check_crl, or something that runs it elsewhere (a worker process).
    """
    from . import crlbuild

    check_crl(rehearse_crl(tbs if lint_tbs is None else lint_tbs, signer.key_type))
    tbs_der = tbs.dump()
    signature = signer.sign(tbs_der)
    verify_signature(issuer_public_key, signer.key_type, tbs_der, signature)
    return crlbuild.certificate_list(tbs, signer.key_type, signature)

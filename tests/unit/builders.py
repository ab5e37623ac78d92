"""Helpers that build and inspect certificates for the unit tests (software keys only)."""

from __future__ import annotations

import datetime as dt
import hashlib

from asn1crypto import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hsmca import lint, signing, x509build
from hsmca.models import KeyType, ServerRequest

DEFAULT_SUBJECT = "CN=VMS Certificate Authority"

# The AlgorithmIdentifier DER each issuer key type must produce (RFC 4055 5, RFC 5758 3.2):
# sha256WithRSAEncryption with an explicit NULL, ecdsa-with-SHA256/384 with no parameters.
SIGNATURE_ALGORITHM_DER = {
    KeyType.RSA2048: bytes.fromhex("300d06092a864886f70d01010b0500"),
    KeyType.RSA3072: bytes.fromhex("300d06092a864886f70d01010b0500"),
    KeyType.RSA4096: bytes.fromhex("300d06092a864886f70d01010b0500"),
    KeyType.P256: bytes.fromhex("300a06082a8648ce3d040302"),
    KeyType.P384: bytes.fromhex("300a06082a8648ce3d040303"),
}


def build_ca(
    signer: signing.SoftwareSigner,
    subject: str = DEFAULT_SUBJECT,
    days: int = 3650,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    """A self-signed root, built and signed the way hsmca does it (lint, sign, verify)."""
    if not_before is None or not_after is None:
        not_before, not_after = x509build.validity(days)
    tbs = x509build.ca_tbs(
        x509build.parse_subject(subject),
        signer.public_key,
        signer.key_type,
        x509build.random_serial(),
        not_before,
        not_after,
    )
    certificate, tolerated = signing.sign_certificate(tbs, signer, signer.public_key)
    assert tolerated == []
    return certificate


def server_tbs(
    ca_signer: signing.SoftwareSigner,
    ca_cert: x509.Certificate,
    leaf_signer: signing.SoftwareSigner,
    dns,
    ip=(),
    days: int = 365,
) -> tuple[x509.TbsCertificate, ServerRequest]:
    request = x509build.server_request(dns, ip, days, leaf_signer.key_type)
    not_before, not_after = x509build.validity(
        request.days, not_after_limit=ca_cert.not_valid_after
    )
    tbs = x509build.server_tbs(
        request,
        leaf_signer.public_key,
        ca_cert,
        ca_signer.key_type,
        x509build.random_serial(),
        not_before,
        not_after,
    )
    return tbs, request


def issue_server(ca_signer, ca_cert, leaf_signer, dns, ip=(), days: int = 365):
    """(certificate, tolerated findings) for a server certificate, as `hsmca issue` makes it."""
    tbs, request = server_tbs(ca_signer, ca_cert, leaf_signer, dns, ip, days)
    return signing.sign_certificate(
        tbs, ca_signer, ca_signer.public_key, lint.single_label_allowances(request.dns_names)
    )


def reparse(certificate: x509.Certificate) -> x509.Certificate:
    """The certificate as a reader sees it: parsed afresh from its DER bytes."""
    return x509.Certificate.load(certificate.dump())


def extension(certificate: x509.Certificate, name: str) -> x509.Extension | None:
    found = [
        ext for ext in certificate["tbs_certificate"]["extensions"] if ext["extn_id"].native == name
    ]
    assert len(found) <= 1, f"{name} appears {len(found)} times"
    return found[0] if found else None


def public_key_bits(private_key) -> bytes:
    """subjectPublicKey's bits computed independently of asn1crypto (RFC 5280 4.2.1.2 input)."""
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return public.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def expected_key_identifier(private_key) -> bytes:
    return hashlib.sha1(public_key_bits(private_key), usedforsecurity=False).digest()


def without_extension(tbs: x509.TbsCertificate, name: str) -> x509.TbsCertificate:
    """A copy of `tbs` with one extension removed by hand (to build deliberately broken TBS)."""
    broken = x509.TbsCertificate.load(tbs.dump())
    broken["extensions"] = x509.Extensions(
        [ext for ext in broken["extensions"] if ext["extn_id"].native != name]
    )
    return broken


class CountingSigner:
    """Wraps a signer, counting sign() calls; optionally corrupts what it returns."""

    def __init__(self, inner, corrupt: bool = False):
        self.inner = inner
        self.calls = 0
        self.corrupt = corrupt

    @property
    def key_type(self) -> KeyType:
        return self.inner.key_type

    def sign(self, data: bytes) -> bytes:
        self.calls += 1
        signature = self.inner.sign(data)
        if self.corrupt:
            signature = signature[:-1] + bytes([signature[-1] ^ 0x01])
        return signature

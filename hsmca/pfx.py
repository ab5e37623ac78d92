"""Host-side server keys and the PKCS#12 (PFX) files that carry them to Windows.

A server's private key exists only in this process's memory and, encrypted, inside the PFX.
"""

from __future__ import annotations

from asn1crypto import keys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from .errors import InvalidRequest
from .models import PFX_FRIENDLY_NAME

# Tens of thousands: strong enough, and below what recent .NET refuses as suspiciously high.
MODERN_KDF_ROUNDS = 20_000
# What Windows' own Export-PfxCertificate used with 3DES; old Windows imports it.
LEGACY_KDF_ROUNDS = 2_000


def public_key_info(private_key) -> keys.PublicKeyInfo:
    return keys.PublicKeyInfo.load(
        private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def check_password(password: str) -> None:
    if not password:
        raise InvalidRequest(
            "the PFX password is empty; Windows needs it to import the file. Give one with "
            "--password-file, HSMCA_PFX_PASSWORD or at the prompt"
        )


def pkcs12_bytes(
    private_key,
    certificate_der: bytes,
    chain_der: list[bytes],
    password: str,
    legacy: bool = False,
    friendly_name: str = PFX_FRIENDLY_NAME,
) -> bytes:
    """An encrypted PFX with the key, its certificate and the CA chain.

    Default: PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) with a SHA-256 MAC. `legacy`:
    pbeWithSHAAnd3-KeyTripleDES-CBC with a SHA-1 MAC, for Windows Server 2016 and Windows 10
    before 1709, which cannot read PBES2.
    """
    check_password(password)
    builder = serialization.PrivateFormat.PKCS12.encryption_builder()
    if legacy:
        builder = (
            builder.kdf_rounds(LEGACY_KDF_ROUNDS)
            .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
            .hmac_hash(hashes.SHA1())  # noqa: S303 (what old Windows can read)
        )
    else:
        builder = (
            builder.kdf_rounds(MODERN_KDF_ROUNDS)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
        )
    return pkcs12.serialize_key_and_certificates(
        friendly_name.encode("utf-8"),
        private_key,
        x509.load_der_x509_certificate(certificate_der),
        [x509.load_der_x509_certificate(der) for der in chain_der],
        builder.build(password.encode("utf-8")),
    )

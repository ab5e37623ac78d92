"""Frozen domain objects and the one table that maps key types to algorithms."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass


class KeyType(enum.Enum):
    """The key types hsmca generates; the value is the spelling used on the command line."""

    RSA2048 = "rsa2048"
    RSA3072 = "rsa3072"
    RSA4096 = "rsa4096"
    P256 = "p256"
    P384 = "p384"

    @property
    def algorithm(self) -> KeyAlgorithm:
        return KEY_ALGORITHMS[self]

    @property
    def is_rsa(self) -> bool:
        return self.algorithm.family == "rsa"


@dataclass(frozen=True)
class KeyAlgorithm:
    """How one key type signs, in X.509 terms (asn1crypto names) and in PKCS#11 terms."""

    family: str
    """"rsa" or "ec"."""
    bits: int
    """RSA modulus size, or the curve's field size."""
    curve: str | None
    """asn1crypto's named-curve name for EC keys; None for RSA."""
    hash_name: str
    """The hash the signature uses: "sha256" or "sha384"."""
    signature_algorithm: str
    """asn1crypto's SignedDigestAlgorithm name."""
    hashed_mechanism: str
    """The PKCS#11 mechanism that hashes and signs in one call, by its python-pkcs11 name."""
    raw_mechanism: str
    """The mechanism that signs a host-made digest (DigestInfo for RSA, the bare hash for ECDSA)."""
    pss_hashed_mechanism: str | None = None
    """RSA-PSS (RFC 4055: MGF1 with the same hash, salt as long as the hash) hashing on token."""
    pss_raw_mechanism: str | None = None
    """RSA-PSS over a host-made hash."""


KEY_ALGORITHMS: dict[KeyType, KeyAlgorithm] = {
    KeyType.RSA2048: KeyAlgorithm(
        "rsa",
        2048,
        None,
        "sha256",
        "sha256_rsa",
        "SHA256_RSA_PKCS",
        "RSA_PKCS",
        "SHA256_RSA_PKCS_PSS",
        "RSA_PKCS_PSS",
    ),
    KeyType.RSA3072: KeyAlgorithm(
        "rsa",
        3072,
        None,
        "sha256",
        "sha256_rsa",
        "SHA256_RSA_PKCS",
        "RSA_PKCS",
        "SHA256_RSA_PKCS_PSS",
        "RSA_PKCS_PSS",
    ),
    KeyType.RSA4096: KeyAlgorithm(
        "rsa",
        4096,
        None,
        "sha256",
        "sha256_rsa",
        "SHA256_RSA_PKCS",
        "RSA_PKCS",
        "SHA256_RSA_PKCS_PSS",
        "RSA_PKCS_PSS",
    ),
    KeyType.P256: KeyAlgorithm(
        "ec", 256, "secp256r1", "sha256", "sha256_ecdsa", "ECDSA_SHA256", "ECDSA"
    ),
    KeyType.P384: KeyAlgorithm(
        "ec", 384, "secp384r1", "sha384", "sha384_ecdsa", "ECDSA_SHA384", "ECDSA"
    ),
}

CA_KEY_TYPES = tuple(KeyType)
SERVER_KEY_TYPES = (KeyType.RSA2048, KeyType.RSA3072, KeyType.P256, KeyType.P384)

DEFAULT_CA_SUBJECT = "CN=VMS Certificate Authority"
DEFAULT_CA_DAYS = 3650
DEFAULT_SERVER_DAYS = 365
DEFAULT_KEY_LABEL = "hsmca-ca"
PFX_FRIENDLY_NAME = "VMS Recorder Certificate"
SIGNATURE_SCHEMES = ("pkcs1v15", "pss")
"""How an RSA CA signs CA certificates: PKCS#1 v1.5 (default, what every Windows reads) or PSS."""


@dataclass(frozen=True)
class ServerRequest:
    """A validated request for a recording-server certificate.

    Build it with `x509build.server_request()`, which checks every name and address.
    """

    dns_names: tuple[str, ...]
    """A-label (IDNA) DNS names; the first is the subject CN."""
    ip_addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    days: int
    key_type: KeyType

    @property
    def common_name(self) -> str:
        return self.dns_names[0]


@dataclass(frozen=True)
class CaConfig:
    """What CA_DIR/hsmca.toml records: where the CA key lives and how to find it again."""

    module: str
    """Path of the PKCS#11 library."""
    token_label: str
    token_serial: str
    key_label: str
    key_id: bytes
    """CKA_ID shared by the private key, public key and certificate objects on the token."""
    key_type: KeyType
    state: str = "active"
    """"active", or "pending" for a subordinate CA whose certificate the root has not signed."""
    public_key: bytes = b""
    """SubjectPublicKeyInfo DER of the key; what a pending CA's certificate must certify."""

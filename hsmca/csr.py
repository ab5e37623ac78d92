"""Pure PKCS#10 handling for `hsmca sign`: read a CSR, check it, and turn it into a ServerRequest.

A CSR is a wish list written by someone else. hsmca takes exactly three things from it, after its
own signature has been verified (proof that the requester holds the private key):
the public key, the subject CN and the requested subjectAltName DNS names and IP addresses. Those
names are validated exactly like `hsmca issue` validates them, and the caller may replace them.
Everything else (other subject attributes, key usages, basic constraints, policies, ...) is never
copied; a request for a CA certificate is refused outright.

Every problem, including input that is not a CSR at all, is an InvalidRequest with a message
that says which file and what is wrong.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from asn1crypto import csr, keys, pem, x509
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from . import x509build
from .errors import InvalidRequest
from .models import KeyType, ServerRequest

# Far more than any real CSR (a few KB); refuses a wrong file before it is decoded.
MAX_CSR_BYTES = 256 * 1024

_PEM_LABELS = ("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST")

# Proof of possession: RSA PKCS#1 v1.5 or ECDSA, with a SHA-2 hash (asn1crypto's names).
_SIGNATURE_ALGORITHMS = {
    "sha256_rsa": "rsa",
    "sha384_rsa": "rsa",
    "sha512_rsa": "rsa",
    "sha256_ecdsa": "ec",
    "sha384_ecdsa": "ec",
    "sha512_ecdsa": "ec",
}

_RSA_KEY_TYPES = {2048: KeyType.RSA2048, 3072: KeyType.RSA3072, 4096: KeyType.RSA4096}
_EC_KEY_TYPES = {"secp256r1": KeyType.P256, "secp384r1": KeyType.P384}
_SUPPORTED_KEYS = "RSA 2048, 3072 or 4096 bits, or EC P-256 or P-384"
_KEY_NAMES = {
    "dsa": "DSA",
    "ed25519": "Ed25519",
    "ed448": "Ed448",
    "x25519": "X25519",
    "x448": "X448",
    "rsassa_pss": "RSA-PSS",
    "rsaes_oaep": "RSA-OAEP",
}

# Windows 2000-era certreq put the requested extensions under this attribute instead of PKCS#9's.
_MS_EXTENSION_REQUEST = "1.3.6.1.4.1.311.2.1.14"


@dataclass(frozen=True)
class ParsedCsr:
    """What hsmca takes from a CSR whose signature verified; nothing else of it is kept."""

    source: str
    """How error messages name the CSR (usually its file name)."""
    subject: str
    """The requested subject (RFC 4514), for messages; a server certificate never copies it."""
    subject_name: x509.Name = field(repr=False)
    """The requested subject as encoded: what `sign-ca` gives a subordinate CA."""
    common_names: tuple[str, ...]
    """The subject's CN values as written (normally exactly one)."""
    dns_names: tuple[str, ...]
    """The requested subjectAltName dNSName values as written, not yet validated."""
    ip_addresses: tuple[str, ...]
    """The requested subjectAltName iPAddress values as text, not yet validated."""
    public_key: keys.PublicKeyInfo = field(repr=False)
    """The requester's key, re-encoded canonically (this is what the certificate will carry)."""
    key_type: KeyType
    ignored: tuple[str, ...]
    """What the CSR asked for that hsmca does not copy, one phrase each, to tell the user."""

    def server_request(
        self,
        days: int,
        dns: Iterable[str] | None = None,
        ip: Iterable[str] | None = None,
    ) -> ServerRequest:
        """Validate the names like `issue` does. `dns`/`ip`, when not None, replace the requested
        DNS names (CN and SAN) and IP addresses; they may hold comma-separated lists."""
        hint = []
        if dns is None:
            hint.append("--dns")
            if len(self.common_names) > 1:
                raise InvalidRequest(
                    f"{self.source}: the subject has {len(self.common_names)} common names "
                    f"({', '.join(map(repr, self.common_names))}); give the names with --dns"
                )
            requested = [*self.common_names, *self.dns_names]
            if not requested:
                raise InvalidRequest(
                    f"{self.source}: the request names no server: its subject has no CN and its "
                    "subjectAltName no DNS name; give the names with --dns"
                )
            for name in requested:
                # A requested value is one name; only the caller's own lists are comma-separated.
                if "," in name:
                    raise InvalidRequest(
                        f"{self.source}: invalid DNS name {name!r} requested: a host name has no "
                        "comma; override the names with --dns"
                    )
            dns = requested
        if ip is None:
            hint.append("--ip")
            ip = self.ip_addresses
        try:
            return x509build.server_request(dns, ip, days, self.key_type)
        except InvalidRequest as exc:
            note = f" (what the CSR requests can be replaced with {' and '.join(hint)})"
            raise InvalidRequest(f"{self.source}: {exc}{note if hint else ''}") from None


def parse_csr(data: bytes | str, source: str = "the CSR", *, for_ca: bool = False) -> ParsedCsr:
    """Read a PEM or DER PKCS#10 request, verify its signature and extract what hsmca uses.

    Raises InvalidRequest when the data is not a single well-formed CSR, the signature does not
    verify, the key or signature algorithm is not supported, or a CA certificate is requested.
    """
    der = _der(data, source)
    try:
        request = csr.CertificationRequest.load(der, strict=True)
        info = request["certification_request_info"]
        version = info["version"].native
        algorithm = request["signature_algorithm"]["algorithm"].native
        key_algorithm = info["subject_pk_info"]["algorithm"]["algorithm"].native
        common_names = tuple(_common_names(info["subject"]))
        extensions = _requested_extensions(info)
    except InvalidRequest:
        raise
    except Exception as exc:
        raise InvalidRequest(
            f"{source} is not a readable PKCS#10 certificate request ({_reason(exc)}); "
            "create it again, e.g. with 'openssl req -new' or Windows certreq"
        ) from None
    if version != "v1":
        raise InvalidRequest(f"{source} has version {version!r}; PKCS#10 requests are version 1")

    try:
        checked = cx509.load_der_x509_csr(der)
        subject = checked.subject.rfc4514_string()
    except Exception as exc:
        raise InvalidRequest(
            f"{source} is not a valid DER PKCS#10 request ({_reason(exc)})"
        ) from None
    public_key, key_type = _public_key(checked, key_algorithm, source)
    family = _SIGNATURE_ALGORITHMS.get(algorithm)
    if family is None:
        raise InvalidRequest(
            f"{source} is signed with {algorithm}; hsmca accepts requests signed with "
            "RSA PKCS#1 v1.5 or ECDSA and SHA-256, SHA-384 or SHA-512"
        )
    if family != ("rsa" if key_type.is_rsa else "ec"):
        raise InvalidRequest(f"{source} is signed with {algorithm}, which does not fit its key")
    try:
        valid = checked.is_signature_valid
    except Exception:
        valid = False
    if not valid:
        raise InvalidRequest(
            f"{source} has a bad signature: it was not signed by the key it contains (damaged "
            "or altered in transit); nothing was signed. Create the request again"
        )

    dns_names, ip_addresses, ignored = _names_and_refusals(extensions, source, for_ca)
    return ParsedCsr(
        source=source,
        subject=subject,
        subject_name=info["subject"],
        common_names=common_names,
        dns_names=tuple(dns_names),
        ip_addresses=tuple(ip_addresses),
        public_key=public_key,
        key_type=key_type,
        ignored=tuple(ignored),
    )


def server_request_from_csr(
    data: bytes | str,
    days: int,
    dns: Iterable[str] | None = None,
    ip: Iterable[str] | None = None,
    source: str = "the CSR",
) -> tuple[ServerRequest, ParsedCsr]:
    """parse_csr() then ParsedCsr.server_request(): the validated request and the parsed CSR
    (its `public_key` goes into the certificate, its `ignored` notes to the user)."""
    parsed = parse_csr(data, source)
    return parsed.server_request(days, dns, ip), parsed


# --- helpers -------------------------------------------------------------------------------------


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 160:
        text = text[:157] + "..."
    return text or type(exc).__name__


def _der(data: bytes | str, source: str) -> bytes:
    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidRequest(f"{source}: expected the bytes of a CSR file")
    data = bytes(data)
    if not data.strip():
        raise InvalidRequest(f"{source} is empty; expected a PEM or DER certificate request")
    if len(data) > MAX_CSR_BYTES:
        raise InvalidRequest(
            f"{source} is {len(data)} bytes, far too large for a certificate request"
        )
    if not pem.detect(data):
        return data
    try:
        blocks = list(pem.unarmor(data, multiple=True))
    except Exception as exc:
        raise InvalidRequest(f"{source}: the PEM text is damaged ({_reason(exc)})") from None
    requests = [der for label, _, der in blocks if label in _PEM_LABELS]
    if len(requests) != 1:
        labels = ", ".join(label for label, _, _ in blocks) or "nothing"
        raise InvalidRequest(
            f"{source} must hold exactly one PEM 'CERTIFICATE REQUEST' block; it holds {labels}"
        )
    return requests[0]


def _common_names(subject: x509.Name):
    for rdn in subject.chosen:
        for attribute in rdn:
            if attribute["type"].native == "common_name":
                value = attribute["value"].native
                if not isinstance(value, str):
                    raise ValueError("the subject CN is not a character string")
                yield value


def _requested_extensions(info: csr.CertificationRequestInfo) -> list[x509.Extension]:
    found = []
    for attribute in info["attributes"]:
        dotted = attribute["type"].dotted
        if attribute["type"].native == "extension_request":
            sets = attribute["values"]
        elif dotted == _MS_EXTENSION_REQUEST:
            sets = csr.SetOfExtensions.load(attribute["values"].dump())
        else:
            continue
        for extensions in sets:
            found.extend(extensions)
    return found


def _public_key(checked: cx509.CertificateSigningRequest, key_algorithm: str, source: str):
    if key_algorithm not in ("rsa", "ec"):
        kind = _KEY_NAMES.get(key_algorithm, key_algorithm)
        raise InvalidRequest(
            f"{source} holds a {kind} key; hsmca signs {_SUPPORTED_KEYS} (what Windows "
            "recording servers and their clients use for TLS)"
        )
    try:
        key = checked.public_key()
    except Exception as exc:
        raise InvalidRequest(
            f"{source} holds a key hsmca cannot use ({_reason(exc)}); use {_SUPPORTED_KEYS}"
        ) from None
    if isinstance(key, rsa.RSAPublicKey):
        bits = key.key_size
        exponent = key.public_numbers().e
        if bits < 2048:
            raise InvalidRequest(
                f"{source} holds an RSA key of {bits} bits, too weak; use at least 2048 bits"
            )
        if bits not in _RSA_KEY_TYPES:
            raise InvalidRequest(
                f"{source} holds an RSA key of {bits} bits; hsmca signs {_SUPPORTED_KEYS}"
            )
        if exponent < 3 or exponent % 2 == 0:
            raise InvalidRequest(f"{source} holds an RSA key with an invalid exponent {exponent}")
        key_type = _RSA_KEY_TYPES[bits]
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key_type = _EC_KEY_TYPES.get(key.curve.name)
        if key_type is None:
            raise InvalidRequest(
                f"{source} holds an EC key on curve {key.curve.name}; hsmca signs {_SUPPORTED_KEYS}"
            )
    else:  # the algorithm identifier said RSA or EC, but the key is something else
        raise InvalidRequest(f"{source} holds a key hsmca cannot use; use {_SUPPORTED_KEYS}")
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return keys.PublicKeyInfo.load(spki), key_type


def _names_and_refusals(extensions: list[x509.Extension], source: str, for_ca: bool = False):
    dns_names: list[str] = []
    ip_addresses: list[str] = []
    ignored: list[str] = []
    seen: set[str] = set()
    try:
        for extension in extensions:
            oid = extension["extn_id"].dotted
            name = extension["extn_id"].native
            if oid in seen:
                raise InvalidRequest(f"{source} requests the {name} extension twice")
            seen.add(oid)
            if name == "basic_constraints":
                if extension["extn_value"].parsed["ca"].native and not for_ca:
                    raise InvalidRequest(
                        f"{source} asks for a CA certificate (basicConstraints CA:TRUE); hsmca "
                        "signs only server certificates from requests, nothing was signed"
                    )
                continue
            if name != "subject_alt_name":
                ignored.append(f"requested extension {name} (hsmca sets its own)")
                continue
            for general_name in extension["extn_value"].parsed:
                kind = general_name.name
                if kind == "dns_name":
                    dns_names.append(general_name.native)
                elif kind == "ip_address":
                    octets = general_name.chosen.contents
                    if len(octets) in (4, 16):
                        ip_addresses.append(str(ipaddress.ip_address(octets)))
                    else:  # an address with a netmask ("10.0.0.0/8"), which server_request refuses
                        ip_addresses.append(general_name.native)
                else:
                    ignored.append(f"subjectAltName {kind} {general_name.native!r}")
    except InvalidRequest:
        raise
    except Exception as exc:
        raise InvalidRequest(
            f"{source} requests an extension hsmca cannot read ({_reason(exc)}); "
            "create the request again"
        ) from None
    return dns_names, ip_addresses, ignored

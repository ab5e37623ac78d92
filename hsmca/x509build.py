"""Pure certificate building: names, addresses, validity, serials and TBS structures.

Nothing here touches a token or a file. A TBSCertificate built here is handed to a signer
(see `signing`), which is the only thing that knows where the key lives.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
import secrets
from collections.abc import Iterable

import idna
from asn1crypto import algos, core, csr, keys, x509
from cryptography import x509 as cx509

from .errors import InvalidRequest
from .models import KeyType, ServerRequest

# RFC 5280 upper bound for a CN (ub-common-name) and the practical limit for one SAN entry.
MAX_COMMON_NAME = 64
MAX_DNS_NAME = 253
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

# RFC 5280 4.1.2.2: positive, at most 20 octets; CA/B and good sense: at least 64 random bits.
SERIAL_BITS = 159
MIN_SERIAL = 1 << 64

# Backdating absorbs small clock differences between the CA host and the servers.
BACKDATE = dt.timedelta(minutes=5)

# RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
_GENERALIZED_FROM = dt.datetime(2050, 1, 1, tzinfo=dt.UTC)


# --- names and addresses ---------------------------------------------------------------------


def split_list(values: Iterable[str] | str) -> list[str]:
    """Comma-separated entries from each value, trimmed, without empties (the guide's script)."""
    if isinstance(values, str):
        values = (values,)
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def normalize_dns_name(name: str) -> str:
    """Return the A-label form of a host name, or raise InvalidRequest saying what is wrong."""
    original = name
    name = name.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise InvalidRequest(
            "empty DNS name: give at least one host name, e.g. --dns rec1.example.com"
        )
    if "*" in name:
        raise InvalidRequest(
            f"invalid DNS name {original!r}: wildcards are not issued; name each server"
        )
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise InvalidRequest(
            f"invalid DNS name {original!r}: that is an IP address; pass it with --ip instead"
        )
    if name.isascii() and "xn--" not in name.lower():
        # Plain host names get the LDH check below, whose message says what is allowed.
        ascii_name = name.lower()
    else:
        try:
            ascii_name = idna.encode(name, uts46=True).decode("ascii").lower()
        except (idna.IDNAError, UnicodeError) as exc:
            raise InvalidRequest(f"invalid DNS name {original!r}: {exc}") from None
    if len(ascii_name) > MAX_DNS_NAME:
        raise InvalidRequest(
            f"invalid DNS name {original!r}: longer than {MAX_DNS_NAME} characters"
        )
    for label in ascii_name.split("."):
        if not _LABEL.match(label):
            raise InvalidRequest(
                f"invalid DNS name {original!r}: label {label!r} must be 1-63 letters, digits or "
                "hyphens, not starting or ending with a hyphen"
            )
    if ascii_name.rsplit(".", 1)[-1].isdigit():
        raise InvalidRequest(
            f"invalid DNS name {original!r}: the last label cannot be all digits; "
            "if it is an address, pass it with --ip"
        )
    return ascii_name


def parse_ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse one IPv4 or IPv6 address, or raise InvalidRequest."""
    candidate = text.strip()
    if "%" in candidate or "/" in candidate:
        raise InvalidRequest(
            f"invalid IP address {text!r}: give a plain address without zone or prefix length"
        )
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        raise InvalidRequest(
            f"invalid IP address {text!r}: expected an IPv4 address such as 10.0.0.103 "
            "or an IPv6 address such as fd00::103"
        ) from None


def _unique(items: Iterable) -> tuple:
    return tuple(dict.fromkeys(items))


def validate_days(days: int, what: str = "validity") -> int:
    if not isinstance(days, int) or isinstance(days, bool) or days < 1:
        raise InvalidRequest(f"{what} must be a whole number of days of at least 1, not {days!r}")
    if days > 36500:
        raise InvalidRequest(f"{what} of {days} days is more than 100 years; choose fewer days")
    return days


def server_request(
    dns: Iterable[str] | str, ip: Iterable[str] | str, days: int, key_type: KeyType
) -> ServerRequest:
    """Validate the inputs of one server certificate; the first DNS name becomes the subject CN."""
    dns_names = _unique(normalize_dns_name(n) for n in split_list(dns))
    if not dns_names:
        raise InvalidRequest(
            "at least one DNS name is needed: the first one is the certificate's subject "
            "(e.g. --dns rec1.example.com)"
        )
    if len(dns_names[0]) > MAX_COMMON_NAME:
        raise InvalidRequest(
            f"the first DNS name {dns_names[0]!r} becomes the subject CN and may have at most "
            f"{MAX_COMMON_NAME} characters; put a shorter name first"
        )
    addresses = _unique(parse_ip_address(a) for a in split_list(ip))
    return ServerRequest(dns_names, addresses, validate_days(days), key_type)


# The attributes a CA subject may use, with their X.520 upper bounds (RFC 5280 appendix A).
_SUBJECT_ATTRIBUTES = {
    cx509.NameOID.COMMON_NAME: ("CN", 64),
    cx509.NameOID.ORGANIZATION_NAME: ("O", 64),
    cx509.NameOID.ORGANIZATIONAL_UNIT_NAME: ("OU", 64),
    cx509.NameOID.LOCALITY_NAME: ("L", 128),
    cx509.NameOID.STATE_OR_PROVINCE_NAME: ("ST", 128),
    cx509.NameOID.COUNTRY_NAME: ("C", 2),
    cx509.NameOID.DOMAIN_COMPONENT: ("DC", 63),
    cx509.NameOID.SERIAL_NUMBER: ("serialNumber", 64),
}
_COUNTRY = re.compile(r"^[A-Z]{2}$")


def parse_subject(text: str) -> x509.Name:
    """Parse an RFC 4514 distinguished name such as 'CN=VMS Certificate Authority,O=Example'."""
    hint = "write it like 'CN=VMS Certificate Authority,O=Example'"
    allowed = ", ".join(short for short, _ in _SUBJECT_ATTRIBUTES.values())
    try:
        name = cx509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        reason = str(exc) or f"unknown attribute or bad syntax (attributes: {allowed})"
        raise InvalidRequest(f"invalid subject {text!r}: {reason}; {hint}") from None
    if not name.rdns:
        raise InvalidRequest("the subject is empty; give at least a CN, e.g. 'CN=VMS CA'")
    for attribute in name:
        if attribute.oid not in _SUBJECT_ATTRIBUTES:
            raise InvalidRequest(
                f"invalid subject {text!r}: attribute {attribute.oid.dotted_string} is not "
                f"supported; use {allowed}"
            )
        short, limit = _SUBJECT_ATTRIBUTES[attribute.oid]
        value = attribute.value
        if not isinstance(value, str) or not value.strip():
            raise InvalidRequest(f"invalid subject {text!r}: {short} is empty")
        if any(ch < " " or ch == "\x7f" for ch in value):
            raise InvalidRequest(f"invalid subject {text!r}: {short} has a control character")
        if len(value) > limit:
            raise InvalidRequest(
                f"invalid subject {text!r}: {short} may have at most {limit} characters"
            )
        if short == "C" and not _COUNTRY.match(value):
            raise InvalidRequest(
                f"invalid subject {text!r}: C must be a two-letter country code such as DK"
            )
    return x509.Name.load(name.public_bytes())


def common_name(text: str) -> x509.Name:
    """A subject made of one CN, encoded as UTF8String (RFC 5280 4.1.2.6)."""
    return x509.Name.build({"common_name": text}, use_printable=False)


# --- serials and validity ----------------------------------------------------------------------


def random_serial() -> int:
    """A positive serial with at least 64 random bits that fits in 20 octets."""
    while True:
        serial = secrets.randbits(SERIAL_BITS)
        if serial >= MIN_SERIAL:
            return serial


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def validity(
    days: int, now: dt.datetime | None = None, not_after_limit: dt.datetime | None = None
) -> tuple[dt.datetime, dt.datetime]:
    """notBefore/notAfter for `days` days from now, never past `not_after_limit` (the issuer's)."""
    now = (now or utc_now()).replace(microsecond=0)
    not_before = now - BACKDATE
    not_after = now + dt.timedelta(days=days)
    if not_after_limit is not None:
        if not_after_limit <= now:
            raise InvalidRequest(
                f"the CA certificate expired on {not_after_limit:%Y-%m-%d}; renew the CA first"
            )
        not_after = min(not_after, not_after_limit)
    return not_before, not_after


def _time(value: dt.datetime) -> x509.Time:
    if value >= _GENERALIZED_FROM:
        return x509.Time({"general_time": value})
    return x509.Time({"utc_time": value})


# --- extensions --------------------------------------------------------------------------------


def key_identifier(public_key: keys.PublicKeyInfo) -> bytes:
    """RFC 5280 4.2.1.2 method 1: SHA-1 over the subjectPublicKey bits."""
    return hashlib.sha1(public_key["public_key"].contents[1:], usedforsecurity=False).digest()


def _extension(name: str, value, critical: bool = False) -> x509.Extension:
    return x509.Extension({"extn_id": name, "critical": critical, "extn_value": value})


def signature_algorithm(issuer_key_type: KeyType, pss: bool = False) -> x509.SignedDigestAlgorithm:
    """The AlgorithmIdentifier a certificate or CRL signed by this key type carries."""
    if pss:
        if not issuer_key_type.is_rsa:
            raise InvalidRequest("RSA-PSS signatures need an RSA CA key")
        hash_name = issuer_key_type.algorithm.hash_name
        hash_algorithm = {"algorithm": hash_name, "parameters": core.Null()}
        return x509.SignedDigestAlgorithm(
            {
                "algorithm": "rsassa_pss",
                "parameters": algos.RSASSAPSSParams(
                    {
                        "hash_algorithm": hash_algorithm,
                        "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": hash_algorithm},
                        "salt_length": hashlib.new(hash_name).digest_size,
                    }
                ),
            }
        )
    name = issuer_key_type.algorithm.signature_algorithm
    # RSA PKCS#1 v1.5 algorithm identifiers carry an explicit NULL (RFC 4055 5); ECDSA ones
    # carry none (RFC 5758 3.2). asn1crypto omits the NULL unless given one.
    parameters = core.Null() if issuer_key_type.is_rsa else None
    return x509.SignedDigestAlgorithm({"algorithm": name, "parameters": parameters})


def ca_tbs(
    subject: x509.Name,
    public_key: keys.PublicKeyInfo,
    key_type: KeyType,
    serial: int,
    not_before: dt.datetime,
    not_after: dt.datetime,
    path_length: int | None = None,
    issuer: x509.Certificate | None = None,
    issuer_key_type: KeyType | None = None,
    pss: bool = False,
) -> x509.TbsCertificate:
    """The TBSCertificate of a CA: self-signed (a root) unless `issuer` is given."""
    basic = {"ca": True}
    if path_length is not None:
        basic["path_len_constraint"] = path_length
    extensions = [
        _extension("basic_constraints", basic, critical=True),
        _extension(
            "key_usage",
            x509.KeyUsage({"digital_signature", "key_cert_sign", "crl_sign"}),
            critical=True,
        ),
        _extension("key_identifier", key_identifier(public_key)),
        # RFC 5280 lets a self-signed root omit the AKI; pkilint and some path builders want it.
        _extension(
            "authority_key_identifier",
            {"key_identifier": issuer.key_identifier if issuer else key_identifier(public_key)},
        ),
    ]
    return x509.TbsCertificate(
        {
            "version": "v3",
            "serial_number": serial,
            "signature": signature_algorithm(issuer_key_type or key_type, pss),
            "issuer": issuer.subject if issuer else subject,
            "validity": {"not_before": _time(not_before), "not_after": _time(not_after)},
            "subject": subject,
            "subject_public_key_info": public_key,
            "extensions": extensions,
        }
    )


def server_tbs(
    request: ServerRequest,
    public_key: keys.PublicKeyInfo,
    issuer: x509.Certificate,
    issuer_key_type: KeyType,
    serial: int,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.TbsCertificate:
    """The TBSCertificate of a TLS server (recording server) certificate issued by `issuer`."""
    if public_key["algorithm"]["algorithm"].native == "rsa":
        usage = {"digital_signature", "key_encipherment"}
    else:
        usage = {"digital_signature"}
    general_names = [x509.GeneralName({"dns_name": name}) for name in request.dns_names]
    general_names += [
        x509.GeneralName({"ip_address": str(address)}) for address in request.ip_addresses
    ]
    extensions = [
        _extension("basic_constraints", {"ca": False}, critical=True),
        _extension("key_usage", x509.KeyUsage(usage), critical=True),
        _extension("extended_key_usage", ["server_auth"]),
        _extension("subject_alt_name", general_names),
        _extension("key_identifier", key_identifier(public_key)),
        _extension("authority_key_identifier", {"key_identifier": issuer.key_identifier}),
    ]
    return x509.TbsCertificate(
        {
            "version": "v3",
            "serial_number": serial,
            "signature": signature_algorithm(issuer_key_type),
            "issuer": issuer.subject,
            "validity": {"not_before": _time(not_before), "not_after": _time(not_after)},
            "subject": common_name(request.common_name),
            "subject_public_key_info": public_key,
            "extensions": extensions,
        }
    )


def certification_request_info(
    subject: x509.Name, public_key: keys.PublicKeyInfo
) -> csr.CertificationRequestInfo:
    """The part of a PKCS#10 request its key signs: a subject and a key, nothing requested."""
    return csr.CertificationRequestInfo(
        {"version": "v1", "subject": subject, "subject_pk_info": public_key, "attributes": []}
    )


def certification_request(
    info: csr.CertificationRequestInfo, key_type: KeyType, signature: bytes
) -> csr.CertificationRequest:
    return csr.CertificationRequest(
        {
            "certification_request_info": info,
            "signature_algorithm": signature_algorithm(key_type),
            "signature": signature,
        }
    )


def certificate(
    tbs: x509.TbsCertificate, issuer_key_type: KeyType, signature: bytes, pss: bool = False
) -> x509.Certificate:
    """Put a signature over `tbs.dump()` into a Certificate."""
    return x509.Certificate(
        {
            "tbs_certificate": tbs,
            "signature_algorithm": signature_algorithm(issuer_key_type, pss),
            "signature_value": signature,
        }
    )


def sha1_thumbprint(der: bytes) -> str:
    """The certificate thumbprint as Windows shows it: SHA-1 over the DER, uppercase hex."""
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()

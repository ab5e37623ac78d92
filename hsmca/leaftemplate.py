"""A per-CA prepared builder for server certificates: x509build.server_tbs, byte for byte, faster.

Building a leaf TBSCertificate with asn1crypto costs more than an RSA-2048 signature on the token.
Almost all of it is the same for every leaf a CA issues: the version, the signature algorithm, the
issuer name, basicConstraints, keyUsage (one of two), extendedKeyUsage and the authority key
identifier. A LeafTemplate encodes those once, with the very helpers server_tbs uses, and per
leaf encodes only the serial, the two times, the CN, the SAN list and the subject key identifier,
then splices the subject's SubjectPublicKeyInfo in as it is.

The output is checked against x509build.server_tbs when the template is made (a mismatch raises
IntegrityError rather than issuing something different), and the unit tests compare both for many
random requests. Anything unusual (a serial below 1, a time that is not whole-second UTC, a key
encoding the template does not recognise) is passed to server_tbs itself, so the result is the
same in every case; only the speed differs.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from asn1crypto import keys, x509

from . import x509build
from .errors import IntegrityError
from .models import KeyType, ServerRequest

_UTC = dt.UTC
_UTC_TIME_FROM = dt.datetime(1950, 1, 1, tzinfo=_UTC)
_GENERALIZED_FROM = dt.datetime(2050, 1, 1, tzinfo=_UTC)

_VERSION_V3 = b"\xa0\x03\x02\x01\x02"
# The AlgorithmIdentifier OIDs whose SubjectPublicKeyInfo the fast path takes apart itself.
_RSA_OID_TLV = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01"  # rsaEncryption
_EC_OID_TLV = b"\x06\x07\x2a\x86\x48\xce\x3d\x02\x01"  # id-ecPublicKey
_CN_TYPE = b"\x06\x03\x55\x04\x03"  # id-at-commonName
_SAN_ID = b"\x06\x03\x55\x1d\x11"  # id-ce-subjectAltName
_SKI_PREFIX = b"\x30\x1d\x06\x03\x55\x1d\x0e\x04\x16\x04\x14"  # subjectKeyIdentifier, 20 octets


def _tlv(tag: int, content: bytes) -> bytes:
    """One DER tag-length-value with a single-octet tag."""
    length = len(content)
    if length < 0x80:
        return bytes((tag, length)) + content
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + content


def _header(der: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the definite-length TLV at `offset`."""
    tag = der[offset]
    first = der[offset + 1]
    if first < 0x80:
        return tag, offset + 2, offset + 2 + first
    count = first & 0x7F
    if not 0 < count <= 4:
        raise ValueError("indefinite or oversized length")
    start = offset + 2 + count
    return tag, start, start + int.from_bytes(der[offset + 2 : start], "big")


def _spki_parts(spki: bytes) -> tuple[bool, bytes] | None:
    """(is RSA, subjectPublicKey bits) of an RSA or EC SubjectPublicKeyInfo, else None."""
    try:
        tag, start, end = _header(spki, 0)
        if tag != 0x30 or end != len(spki):
            return None
        tag, algorithm_start, algorithm_end = _header(spki, start)
        if tag != 0x30:
            return None
        tag, bits_start, bits_end = _header(spki, algorithm_end)
        if tag != 0x03 or bits_end != end or bits_start >= bits_end:
            return None
    except (IndexError, ValueError):
        return None
    if spki.startswith(_RSA_OID_TLV, algorithm_start):
        return True, spki[bits_start + 1 : bits_end]
    if spki.startswith(_EC_OID_TLV, algorithm_start):
        return False, spki[bits_start + 1 : bits_end]
    return None


def _fast_time(value: dt.datetime) -> bytes | None:
    """The DER x509build._time gives for a whole-second UTC datetime from 1950 on, else None."""
    if value.tzinfo is not _UTC or value.microsecond or value < _UTC_TIME_FROM:
        return None
    if value >= _GENERALIZED_FROM:
        return b"\x18\x0f%04d%02d%02d%02d%02d%02dZ" % (
            value.year,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
        )
    return b"\x17\x0d%02d%02d%02d%02d%02d%02dZ" % (
        value.year % 100,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
    )


class LeafTemplate:
    """Builds the TBSCertificate of server certificates issued by one CA.

    `tbs_der(...)` returns exactly `x509build.server_tbs(...).dump()` for the same arguments;
    `tbs(...)` returns it loaded as an asn1crypto TbsCertificate (lazily parsed, so cheap).
    Make one per CA (per batch, per process) and reuse it; it holds no secrets and no state
    that changes after construction, so it may be shared between threads.
    """

    def __init__(self, issuer: x509.Certificate, issuer_key_type: KeyType, *, check: bool = True):
        self.issuer = issuer
        self.issuer_key_type = issuer_key_type
        signature_algorithm = x509build.signature_algorithm(issuer_key_type).dump()
        self._after_serial = signature_algorithm + issuer.subject.dump()
        self._signature_algorithm = signature_algorithm
        extension = x509build._extension
        common = extension("basic_constraints", {"ca": False}, critical=True).dump()
        eku = extension("extended_key_usage", ["server_auth"]).dump()
        rsa_usage = x509.KeyUsage({"digital_signature", "key_encipherment"})
        ec_usage = x509.KeyUsage({"digital_signature"})
        # Indexed by "is the subject key RSA": what precedes subjectAltName in server_tbs.
        self._before_san = (
            common + extension("key_usage", ec_usage, critical=True).dump() + eku,
            common + extension("key_usage", rsa_usage, critical=True).dump() + eku,
        )
        self._aki = extension(
            "authority_key_identifier", {"key_identifier": issuer.key_identifier}
        ).dump()
        if check:
            self._check()

    def tbs_der(
        self,
        request: ServerRequest,
        public_key: keys.PublicKeyInfo | bytes,
        serial: int,
        not_before: dt.datetime,
        not_after: dt.datetime,
    ) -> bytes:
        """The DER of x509build.server_tbs(request, public_key, issuer, issuer_key_type, ...).

        `public_key` may be an asn1crypto PublicKeyInfo or the DER of a SubjectPublicKeyInfo
        (what cryptography's public_bytes(DER, SubjectPublicKeyInfo) gives).
        """
        spki = public_key if isinstance(public_key, bytes) else public_key.dump()
        parts = _spki_parts(spki)
        start = _fast_time(not_before)
        end = _fast_time(not_after)
        if parts is None or start is None or end is None or type(serial) is not int or serial < 1:
            return self._reference(request, spki, serial, not_before, not_after)
        is_rsa, key_bits = parts

        serial_octets = serial.to_bytes((serial.bit_length() + 8) >> 3, "big")
        cn = request.dns_names[0].encode("utf-8")
        # Name: SEQUENCE { SET { SEQUENCE { commonName, UTF8String } } } (x509build.common_name).
        atv = _tlv(0x30, _CN_TYPE + _tlv(0x0C, cn))
        subject = _tlv(0x30, _tlv(0x31, atv))
        names = [_tlv(0x82, name.encode("ascii")) for name in request.dns_names]
        names += [_tlv(0x87, address.packed) for address in request.ip_addresses]
        san = _tlv(0x30, _SAN_ID + _tlv(0x04, _tlv(0x30, b"".join(names))))
        key_id = hashlib.sha1(key_bits, usedforsecurity=False).digest()
        extensions = b"".join((self._before_san[is_rsa], san, _SKI_PREFIX, key_id, self._aki))
        body = b"".join(
            (
                _VERSION_V3,
                _tlv(0x02, serial_octets),
                self._after_serial,
                _tlv(0x30, start + end),
                subject,
                spki,
                _tlv(0xA3, _tlv(0x30, extensions)),
            )
        )
        return _tlv(0x30, body)

    def tbs(
        self,
        request: ServerRequest,
        public_key: keys.PublicKeyInfo | bytes,
        serial: int,
        not_before: dt.datetime,
        not_after: dt.datetime,
    ) -> x509.TbsCertificate:
        """tbs_der(...) as an asn1crypto TbsCertificate that keeps those bytes (dump() returns them
        without re-encoding; dump(force=True) re-encodes them to the same bytes, slowly)."""
        return x509.TbsCertificate.load(
            self.tbs_der(request, public_key, serial, not_before, not_after)
        )

    def certificate_der(self, tbs_der: bytes, signature: bytes) -> bytes:
        """The DER of x509build.certificate(tbs, issuer_key_type, signature): TBS, algorithm and
        the signature as a BIT STRING, assembled without asn1crypto."""
        return _tlv(0x30, tbs_der + self._signature_algorithm + _tlv(0x03, b"\x00" + signature))

    # --- the reference path and the self-check -----------------------------------------------

    def _reference(self, request, spki: bytes, serial, not_before, not_after) -> bytes:
        return x509build.server_tbs(
            request,
            keys.PublicKeyInfo.load(spki),
            self.issuer,
            self.issuer_key_type,
            serial,
            not_before,
            not_after,
        ).dump()

    def _check(self) -> None:
        """Compare with server_tbs once for an RSA and an EC key, so a change to server_tbs that
        the template does not know about stops issuance instead of changing certificates."""
        request = x509build.server_request(
            ["probe.hsmca.invalid", "probe"], ["192.0.2.1", "2001:db8::1"], 1, KeyType.P256
        )
        rsa_key = keys.PublicKeyInfo.wrap(
            keys.RSAPublicKey({"modulus": (1 << 2047) | 0xA5A5, "public_exponent": 65537}), "rsa"
        )
        ec_key = keys.PublicKeyInfo(
            {
                "algorithm": {"algorithm": "ec", "parameters": ("named", "secp256r1")},
                "public_key": b"\x04" + bytes(range(64)),
            }
        )
        when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=_UTC)
        for key in (rsa_key, ec_key):
            key = keys.PublicKeyInfo.load(key.dump())
            arguments = (request, key, 0x8F0102030405060708, when, when + dt.timedelta(days=1))
            expected = x509build.server_tbs(
                arguments[0], key, self.issuer, self.issuer_key_type, *arguments[2:]
            ).dump()
            if self.tbs_der(*arguments) != expected:
                raise IntegrityError(
                    "the prepared leaf template no longer matches x509build.server_tbs; "
                    "nothing was issued. Update hsmca/leaftemplate.py together with server_tbs"
                )

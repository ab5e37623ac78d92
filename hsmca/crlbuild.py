"""Pure CRL building: a v2 TBSCertList for the CA, fast enough for 100,000 revoked entries.

Everything except the list of revoked certificates is an ordinary asn1crypto structure. The list
itself is hand-encoded: each entry is a SEQUENCE of an INTEGER, a time and (unless the reason is
"unspecified") one reasonCode extension, whose five possible encodings are computed once. The
concatenated SEQUENCE OF is handed to asn1crypto pre-encoded (`RevokedCertificates.load`), which
keeps the bytes and parses them only if someone looks inside, so `tbs.dump()` stays cheap.

The tests build the same CRLs the plain asn1crypto way and compare the DER byte for byte.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable
from operator import itemgetter
from typing import NamedTuple

from asn1crypto import crl, x509

from . import x509build
from .errors import InvalidRequest
from .models import KeyType

DEFAULT_CRL_DAYS = 30

# RFC 5280 5.2.3: a CRL number is at most 20 octets; 4.1.2.2: so is a certificate serial number.
MAX_CRL_NUMBER = (1 << 159) - 1
MAX_SERIAL = (1 << 159) - 1


class RevocationReason(enum.StrEnum):
    """The reasons `hsmca revoke --reason` accepts; the value is that spelling (RFC 5280's)."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "keyCompromise"
    AFFILIATION_CHANGED = "affiliationChanged"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessationOfOperation"

    @property
    def code(self) -> int:
        """The CRLReason ENUMERATED value (RFC 5280 5.3.1)."""
        return _REASON_CODES[self]

    @classmethod
    def parse(cls, text: str | RevocationReason) -> RevocationReason:
        if isinstance(text, cls):
            return text
        try:
            return cls(text)
        except ValueError:
            choices = ", ".join(reason.value for reason in cls)
            raise InvalidRequest(
                f"unknown revocation reason {text!r}: choose one of {choices}"
            ) from None


_REASON_CODES = {
    RevocationReason.UNSPECIFIED: 0,
    RevocationReason.KEY_COMPROMISE: 1,
    RevocationReason.AFFILIATION_CHANGED: 3,
    RevocationReason.SUPERSEDED: 4,
    RevocationReason.CESSATION_OF_OPERATION: 5,
}


class Revocation(NamedTuple):
    """One revoked certificate. A plain (serial, revoked_at, reason) tuple works as well."""

    serial: int
    revoked_at: dt.datetime
    """When it was revoked; timezone-aware. Fractions of a second are dropped (RFC 5280 5.1.2.6)."""
    reason: RevocationReason | str = RevocationReason.UNSPECIFIED
    """A RevocationReason or its spelling, e.g. "keyCompromise"."""


def _reason_extensions(reason: RevocationReason) -> bytes:
    # RFC 5280 5.3.1: reasonCode is non-critical and SHOULD be absent rather than "unspecified".
    if reason is RevocationReason.UNSPECIFIED:
        return b""
    extensions = crl.CRLEntryExtensions(
        [{"extn_id": "crl_reason", "extn_value": crl.CRLReason(reason.code)}]
    )
    return extensions.dump()


# The crlEntryExtensions field for each reason, keyed by its spelling (a StrEnum member is equal
# to its spelling and hashes like it, so members find their entry too).
_ENTRY_EXTENSIONS: dict[str, bytes] = {
    reason.value: _reason_extensions(reason) for reason in RevocationReason
}

_UTC = dt.UTC
_UTC_TIME_FROM = dt.datetime(1950, 1, 1, tzinfo=_UTC)
_GENERALIZED_FROM = dt.datetime(2050, 1, 1, tzinfo=_UTC)
_TWO_DIGITS = [b"%02d" % number for number in range(60)]


def der_length(length: int) -> bytes:
    """The DER length octets for `length` content octets (X.690 8.1.3)."""
    if length < 0x80:
        return bytes((length,))
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def encode_revoked(revoked: Iterable[tuple[int, dt.datetime, RevocationReason | str]]) -> bytes:
    """The DER of revokedCertificates (a SEQUENCE OF entries sorted by serial), or b"" if none.

    Raises InvalidRequest for a serial that is not a positive 20-octet integer, a serial listed
    twice, an unknown reason or a revocation time without a time zone.
    """
    entries = sorted(revoked, key=itemgetter(0))
    if not entries:
        return b""
    extensions_for = _ENTRY_EXTENSIONS
    two_digits = _TWO_DIGITS
    utc = _UTC
    date_prefixes: dict[int, bytes] = {}
    parts = []
    append = parts.append
    previous = 0
    for serial, revoked_at, reason in entries:
        # Sorted, so "not greater than the previous one" catches both duplicates and serial <= 0.
        if not previous < serial <= MAX_SERIAL:
            _refuse_serial(serial, previous)
        previous = serial
        serial_octets = serial.to_bytes((serial.bit_length() + 8) >> 3, "big")
        if revoked_at.tzinfo is not utc:
            revoked_at = _as_utc(revoked_at)
        day = revoked_at.toordinal()
        prefix = date_prefixes.get(day)
        if prefix is None:
            prefix = date_prefixes[day] = _date_prefix(revoked_at)
        extensions = extensions_for.get(reason)
        if extensions is None:
            extensions = extensions_for[RevocationReason.parse(reason)]
        # Every entry is shorter than 128 octets (at most 2+20 + 17 + 14), so lengths are 1 octet;
        # the time is the date prefix (tag, length, date) and HHMMSSZ.
        append(
            b"\x30%c\x02%c%b%b%b%b%bZ%b"
            % (
                len(serial_octets) + len(prefix) + len(extensions) + 9,
                len(serial_octets),
                serial_octets,
                prefix,
                two_digits[revoked_at.hour],
                two_digits[revoked_at.minute],
                two_digits[revoked_at.second],
                extensions,
            )
        )
    body = b"".join(parts)
    return b"\x30" + der_length(len(body)) + body


def _refuse_serial(serial, previous: int):
    if isinstance(serial, int) and 0 < serial <= MAX_SERIAL and serial == previous:
        raise InvalidRequest(f"serial {serial:x} is listed twice in the CRL")
    raise InvalidRequest(
        f"serial {serial!r} cannot be in a CRL: it must be a positive integer of at most 20 octets"
    )


def _as_utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRequest(f"revocation time {value!r} has no time zone; give it in UTC")
    return value.astimezone(_UTC)


def _date_prefix(value: dt.datetime) -> bytes:
    """Tag, length and YYMMDD (UTCTime, through 2049) or YYYYMMDD (GeneralizedTime, from 2050)."""
    if value >= _GENERALIZED_FROM:
        return b"\x18\x0f%04d%02d%02d" % (value.year, value.month, value.day)
    if value < _UTC_TIME_FROM:
        raise InvalidRequest(f"revocation time {value.isoformat()} is before 1950")
    return b"\x17\x0d%02d%02d%02d" % (value.year % 100, value.month, value.day)


def lint_sample(
    revoked: Iterable[tuple[int, dt.datetime, RevocationReason | str]], limit: int = 256
) -> list:
    """The entries to lint when a CRL is too big to lint whole (pkilint takes about 0.5 ms per
    entry; 100,000 entries would take about a minute): all of them up to `limit`, else the
    smallest and largest serial, the earliest and latest revocation time, the first entry of each
    reason, and evenly spaced others: `limit` in all (or those up to nine extremes if `limit` is
    smaller). Every entry is made by the same encoder, so these cover each serial length, time
    type and reason encoding the full list uses. Call it after tbs_cert_list() has accepted the
    full list (that is where bad entries are refused)."""
    entries = list(revoked)
    if len(entries) <= limit:
        return entries
    serial, when = itemgetter(0), itemgetter(1)
    chosen: dict[int, tuple] = {}
    for entry in (
        min(entries, key=serial),
        max(entries, key=serial),
        min(entries, key=when),
        max(entries, key=when),
        *{str(entry[2]): entry for entry in reversed(entries)}.values(),
    ):
        chosen[entry[0]] = entry
    step = max(len(entries) // limit, 1)
    for offset in range(step):
        for entry in entries[offset::step]:
            if len(chosen) >= limit:
                return list(chosen.values())
            chosen.setdefault(entry[0], entry)
    return list(chosen.values())


def revoked_certificates(
    revoked: Iterable[tuple[int, dt.datetime, RevocationReason | str]],
) -> crl.RevokedCertificates | None:
    """encode_revoked() as an asn1crypto value that keeps its bytes; None if nothing is revoked."""
    der = encode_revoked(revoked)
    if not der:
        return None
    return crl.RevokedCertificates.load(der)


def tbs_cert_list(
    issuer: x509.Certificate,
    issuer_key_type: KeyType,
    crl_number: int,
    revoked: Iterable[tuple[int, dt.datetime, RevocationReason | str]],
    days: int = DEFAULT_CRL_DAYS,
    this_update: dt.datetime | None = None,
) -> crl.TbsCertList:
    """The TBSCertList of a v2 CRL issued by `issuer` (the CA certificate), to be signed.

    `revoked` holds (serial, revoked_at, reason) tuples or `Revocation`s, in any order.
    thisUpdate is `this_update` (default: now, whole seconds) and nextUpdate `days` later.
    """
    if isinstance(crl_number, bool) or not isinstance(crl_number, int):
        raise InvalidRequest(f"the CRL number must be an integer, not {crl_number!r}")
    if not 0 <= crl_number <= MAX_CRL_NUMBER:
        raise InvalidRequest(
            f"the CRL number {crl_number} is out of range: RFC 5280 allows 0 to 2^159-1"
        )
    x509build.validate_days(days, "CRL validity")
    this_update = (this_update or x509build.utc_now()).replace(microsecond=0)
    next_update = this_update + dt.timedelta(days=days)
    key_id = issuer.key_identifier or x509build.key_identifier(issuer.public_key)
    fields = {
        "version": "v2",
        "signature": x509build.signature_algorithm(issuer_key_type),
        "issuer": issuer.subject,
        "this_update": x509build._time(this_update),
        "next_update": x509build._time(next_update),
    }
    entries = revoked_certificates(revoked)
    if entries is not None:
        # RFC 5280 5.1.2.6: with no revoked certificates the list MUST be absent, not empty.
        fields["revoked_certificates"] = entries
    fields["crl_extensions"] = [
        {
            "extn_id": "authority_key_identifier",
            "critical": False,
            "extn_value": {"key_identifier": key_id},
        },
        {"extn_id": "crl_number", "critical": False, "extn_value": crl_number},
    ]
    return crl.TbsCertList(fields)


def certificate_list(
    tbs: crl.TbsCertList, issuer_key_type: KeyType, signature: bytes
) -> crl.CertificateList:
    """Put a signature over `tbs.dump()` into a CertificateList."""
    return crl.CertificateList(
        {
            "tbs_cert_list": tbs,
            "signature_algorithm": x509build.signature_algorithm(issuer_key_type),
            "signature": signature,
        }
    )

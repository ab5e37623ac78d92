"""Pure CRL building: a v2 TBSCertList for the CA, fast enough for 100,000 revoked entries.

Everything except the list of revoked certificates is an ordinary asn1crypto structure. The list
itself is hand-encoded: each entry is a SEQUENCE of an INTEGER, a time and (unless the reason is
"unspecified") one reasonCode extension, whose five possible encodings are computed once. The
concatenated SEQUENCE OF is handed to asn1crypto pre-encoded (`RevokedCertificates.load`), which
keeps the bytes and parses them only if someone looks inside, so `tbs.dump()` stays cheap. The
CA database keeps every revoked certificate's entry as encode_entry made it when it was revoked,
so a CA's CRL is a concatenation of stored bytes (tbs_cert_list_of_entries).

The tests build the same CRLs the plain asn1crypto way and compare the DER byte for byte.
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import operator
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import NamedTuple

from asn1crypto import crl, x509

from . import x509build
from .errors import IntegrityError, InvalidRequest
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


def der_length(length: int) -> bytes:
    """The DER length octets for `length` content octets (X.690 8.1.3)."""
    if length < 0x80:
        return bytes((length,))
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def encode_entry(serial: int, revoked_at: dt.datetime, reason: RevocationReason | str) -> bytes:
    """The DER of one revokedCertificates entry: serial, revocation date, reasonCode.

    Raises InvalidRequest for a serial that is not a positive 20-octet integer, an unknown
    reason or a revocation time without a time zone. The CA database keeps each revoked
    certificate's entry as this makes it, so a CRL of 100,000 entries is a concatenation.
    """
    if isinstance(serial, bool) or not isinstance(serial, int) or not 0 < serial <= MAX_SERIAL:
        _refuse_serial(serial, None)
    serial_octets = serial.to_bytes((serial.bit_length() + 8) >> 3, "big")
    if revoked_at.tzinfo is not _UTC:
        revoked_at = _as_utc(revoked_at)
    extensions = _ENTRY_EXTENSIONS.get(reason)
    if extensions is None:
        extensions = _ENTRY_EXTENSIONS[RevocationReason.parse(reason)]
    prefix = _date_prefix(revoked_at)
    # Every entry is shorter than 128 octets (at most 2+20 + 17 + 14), so lengths are 1 octet;
    # the time is the date prefix (tag, length, date) and HHMMSSZ.
    return b"\x30%c\x02%c%b%b%02d%02d%02dZ%b" % (
        len(serial_octets) + len(prefix) + len(extensions) + 9,
        len(serial_octets),
        serial_octets,
        prefix,
        revoked_at.hour,
        revoked_at.minute,
        revoked_at.second,
        extensions,
    )


def encode_revoked(revoked: Iterable[tuple[int, dt.datetime, RevocationReason | str]]) -> bytes:
    """The DER of revokedCertificates (a SEQUENCE OF entries sorted by serial), or b"" if none.

    Raises InvalidRequest as encode_entry does, and for a serial listed twice.
    """
    return revoked_sequence(encode_entries(revoked))


def encode_entries(
    revoked: Iterable[tuple[int, dt.datetime, RevocationReason | str]],
) -> list[bytes]:
    """encode_entry() of each (serial, revoked_at, reason), in serial order; a serial listed
    twice is refused."""
    entries = sorted(revoked, key=itemgetter(0))
    previous = None
    for serial, _, _ in entries:
        if serial == previous:
            _refuse_serial(serial, previous)
        previous = serial
    return [encode_entry(*entry) for entry in entries]


def revoked_sequence(entries: Sequence[bytes]) -> bytes:
    """The DER of revokedCertificates made of encode_entry() results already in serial order,
    or b"" if there are none.

    Raises IntegrityError for a byte string that is not one DER SEQUENCE with a one-octet
    length, as every entry is (a damaged database must not reach the token's signature).
    """
    if not entries:
        return b""
    # 100,000 entries: every pass below runs in C (map, bytes, list equality).
    lengths = list(map(len, entries))
    if (
        min(lengths) < 2
        or bytes(map(itemgetter(0), entries)).lstrip(b"\x30")
        or max(map(itemgetter(1), entries)) >= 0x80
        or lengths != list(map(operator.add, map(itemgetter(1), entries), itertools.repeat(2)))
    ):
        raise IntegrityError(
            "a stored CRL entry is not a DER SEQUENCE; the CA database is damaged, restore it "
            "from a backup"
        )
    body = b"".join(entries)
    return b"\x30" + der_length(len(body)) + body


def _refuse_serial(serial, previous: int | None):
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


def entry_shape(entry: bytes) -> tuple[int, int, int]:
    """What pkilint can tell apart in encode_entry() results, as (length, serial length, last
    octet): with the serial's length fixed, the entry's length tells the time type (13 or 15
    octets) and whether a reasonCode follows (14 octets), and the last octet is the reason's
    ENUMERATED value, or the time's "Z" when there is none."""
    return len(entry), entry[3], entry[-1]


def lint_sample(entries: Sequence[bytes], limit: int = 256) -> list[bytes]:
    """The entries to lint when a CRL is too big to lint whole (pkilint takes about 0.5 ms per
    entry; 100,000 entries would take about a minute).

    `entries` are encode_entry() results in serial order; the sample is all of them up to
    `limit`, else the first and last, the first of each shape (entry_shape), and evenly spaced
    others, `limit` in all (more if there are more shapes), still in serial order. Every entry
    is made by the one encoder, so these cover each serial length, time type and reason
    encoding the full list uses.
    """
    if len(entries) <= limit:
        return list(entries)
    shapes = map(entry_shape, entries)
    # Reversed, so that each shape keeps its first index.
    first_of_shape = dict(zip(reversed(list(shapes)), range(len(entries) - 1, -1, -1), strict=True))
    chosen = {0, len(entries) - 1, *first_of_shape.values()}
    step = len(entries) / limit
    evenly_spaced = (int(i * step) for i in range(limit))
    for index in itertools.chain(evenly_spaced, range(len(entries))):
        if len(chosen) >= limit:
            break
        chosen.add(index)
    return [entries[index] for index in sorted(chosen)]


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
    return tbs_cert_list_of_entries(
        issuer, issuer_key_type, crl_number, encode_entries(revoked), days, this_update
    )


def tbs_cert_list_of_entries(
    issuer: x509.Certificate,
    issuer_key_type: KeyType,
    crl_number: int,
    entries: Sequence[bytes],
    days: int = DEFAULT_CRL_DAYS,
    this_update: dt.datetime | None = None,
) -> crl.TbsCertList:
    """tbs_cert_list() for entries already encoded (encode_entry) and in serial order, as the
    CA database keeps them."""
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
    if entries:
        # RFC 5280 5.1.2.6: with no revoked certificates the list MUST be absent, not empty.
        fields["revoked_certificates"] = crl.RevokedCertificates.load(revoked_sequence(entries))
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

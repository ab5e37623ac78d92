"""Serial numbers and validity periods: RFC 5280 4.1.2.2 and 4.1.2.5."""

from __future__ import annotations

import datetime as dt

import pytest
from asn1crypto import core, x509
from hypothesis import given
from hypothesis import strategies as st

from hsmca import x509build
from hsmca.errors import InvalidRequest
from hsmca.models import KeyType
from hsmca.x509build import BACKDATE, random_serial, validity

from .builders import build_ca, reparse
from .strategies import FAST

UTC = dt.UTC


def _der_integer_contents(value: int) -> bytes:
    encoded = core.Integer(value).dump()
    assert encoded[0] == 0x02  # INTEGER
    assert encoded[1] < 0x80  # short-form length: the contents are under 128 octets
    return encoded[2:]


# --- random_serial -------------------------------------------------------------------------------


def test_random_serials_are_positive_large_and_fit_in_20_octets():
    serials = [random_serial() for _ in range(300)]
    assert len(set(serials)) == len(serials)
    for serial in serials:
        assert serial >= 2**64
        contents = _der_integer_contents(serial)
        assert 1 <= len(contents) <= 20
        assert contents[0] < 0x80  # positive: the sign bit is clear
    # With 159 random bits, 300 draws would all land below 2**150 about once in 2**2400 tries.
    assert max(serials).bit_length() > 150


def test_largest_possible_serial_still_fits_in_20_octets():
    largest = 2**x509build.SERIAL_BITS - 1
    assert len(_der_integer_contents(largest)) == 20
    assert x509build.MIN_SERIAL == 2**64


def test_random_serial_redraws_small_values(monkeypatch):
    draws = iter([0, 5, 2**64 - 1, 2**64 + 7])
    requested_bits = []

    def fake_randbits(bits):
        requested_bits.append(bits)
        return next(draws)

    monkeypatch.setattr(x509build.secrets, "randbits", fake_randbits)
    assert random_serial() == 2**64 + 7
    assert requested_bits == [x509build.SERIAL_BITS] * 4


# --- validity ------------------------------------------------------------------------------------

NOW = dt.datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_validity_backdates_and_drops_microseconds():
    not_before, not_after = validity(365, now=NOW)
    exact_now = NOW.replace(microsecond=0)
    assert not_before == exact_now - BACKDATE
    assert not_after == exact_now + dt.timedelta(days=365)
    assert not_before.microsecond == not_after.microsecond == 0
    assert BACKDATE <= dt.timedelta(minutes=10)


def test_validity_is_capped_at_the_issuers_not_after():
    limit = NOW + dt.timedelta(days=30)
    not_before, not_after = validity(365, now=NOW, not_after_limit=limit)
    assert not_after == limit
    assert not_before < not_after


def test_validity_within_the_limit_is_untouched():
    limit = NOW + dt.timedelta(days=3650)
    assert validity(365, now=NOW, not_after_limit=limit)[1] == NOW.replace(
        microsecond=0
    ) + dt.timedelta(days=365)


@pytest.mark.parametrize(
    "limit",
    [NOW.replace(microsecond=0), NOW - dt.timedelta(seconds=1), NOW - dt.timedelta(days=400)],
)
def test_expired_ca_is_rejected(limit):
    with pytest.raises(InvalidRequest, match="expired"):
        validity(365, now=NOW, not_after_limit=limit)


@FAST
@given(
    st.integers(min_value=1, max_value=36500),
    st.datetimes(
        min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    st.timedeltas(min_value=dt.timedelta(seconds=1), max_value=dt.timedelta(days=40000)),
)
def test_validity_never_passes_the_limit(days, now, remaining):
    limit = now.replace(microsecond=0) + remaining
    not_before, not_after = validity(days, now=now, not_after_limit=limit)
    assert not_after <= limit
    assert not_after <= now.replace(microsecond=0) + dt.timedelta(days=days)
    assert not_before < now <= not_after + dt.timedelta(seconds=1)
    assert not_before < not_after


def test_default_now_is_the_current_utc_time():
    before = dt.datetime.now(UTC).replace(microsecond=0)
    not_before, not_after = validity(1)
    after = dt.datetime.now(UTC)
    assert not_before.tzinfo is not None
    assert before - BACKDATE <= not_before <= after - BACKDATE
    assert not_after - not_before == dt.timedelta(days=1) + BACKDATE


# --- encoding of times in a certificate -----------------------------------------------------------


def _validity_tlvs(certificate: x509.Certificate):
    validity_field = reparse(certificate)["tbs_certificate"]["validity"]
    return validity_field["not_before"], validity_field["not_after"]


def test_utctime_until_2049_generalizedtime_from_2050(signer):
    ca_signer = signer(KeyType.P256)
    last_utc = dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)
    first_generalized = dt.datetime(2050, 1, 1, 0, 0, 0, tzinfo=UTC)
    certificate = build_ca(ca_signer, not_before=last_utc, not_after=first_generalized)
    not_before, not_after = _validity_tlvs(certificate)
    assert not_before.name == "utc_time"
    assert not_before.chosen.dump() == b"\x17\x0d" + b"491231235959Z"
    assert not_after.name == "general_time"
    assert not_after.chosen.dump() == b"\x18\x0f" + b"20500101000000Z"
    assert not_before.native == last_utc
    assert not_after.native == first_generalized


def test_long_lived_ca_uses_generalizedtime_for_not_after(signer):
    certificate = build_ca(signer(KeyType.P256), days=36500)
    not_before, not_after = _validity_tlvs(certificate)
    assert not_after.native.year >= 2050
    assert not_after.name == "general_time"
    assert not_before.name == ("utc_time" if not_before.native.year < 2050 else "general_time")


def test_ordinary_ca_uses_utctime(signer):
    start = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
    end = start + dt.timedelta(days=3650)
    not_before, not_after = _validity_tlvs(
        build_ca(signer(KeyType.P256), not_before=start, not_after=end)
    )
    assert (not_before.name, not_after.name) == ("utc_time", "utc_time")
    assert not_before.chosen.contents == b"260501120000Z"
    assert not_after.native == end

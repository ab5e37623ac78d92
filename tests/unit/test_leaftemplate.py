"""leaftemplate: the prepared builder gives exactly x509build.server_tbs(...).dump(), and what it
builds goes through signing.sign_certificate like any other TBS."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from asn1crypto import keys, x509
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given
from hypothesis import strategies as st

from hsmca import lint, signing, x509build
from hsmca.errors import IntegrityError
from hsmca.leaftemplate import LeafTemplate
from hsmca.models import KeyType, ServerRequest

from .strategies import FAST, ldh_names

UTC = dt.UTC
CA_TYPES = [KeyType.RSA2048, KeyType.P256, KeyType.P384]
LEAF_TYPES = [KeyType.RSA2048, KeyType.RSA3072, KeyType.P256, KeyType.P384]


@pytest.fixture(scope="module")
def templates(signer, ca_cert):
    return {key_type: LeafTemplate(ca_cert(key_type), key_type) for key_type in CA_TYPES}


@pytest.fixture(scope="module")
def leaf_keys(signer):
    return {key_type: signer(key_type, role="leaf").public_key for key_type in LEAF_TYPES}


def reference(ca_cert, ca_type, request, public_key, serial, not_before, not_after) -> bytes:
    return x509build.server_tbs(
        request, public_key, ca_cert(ca_type), ca_type, serial, not_before, not_after
    ).dump()


def typical(key_type=KeyType.RSA2048) -> ServerRequest:
    return x509build.server_request(
        ["rec1.example.com", "rec1"], ["10.0.0.103", "fd00::103"], 365, key_type
    )


NOT_BEFORE = dt.datetime(2025, 6, 1, 8, 0, tzinfo=UTC)
NOT_AFTER = dt.datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


# --- byte identity -------------------------------------------------------------------------------


@pytest.mark.parametrize("ca_type", CA_TYPES)
@pytest.mark.parametrize("leaf_type", LEAF_TYPES)
def test_typical_leaf_is_byte_identical(templates, ca_cert, leaf_keys, ca_type, leaf_type):
    request, key = typical(leaf_type), leaf_keys[leaf_type]
    serial = x509build.random_serial()
    expected = reference(ca_cert, ca_type, request, key, serial, NOT_BEFORE, NOT_AFTER)
    template = templates[ca_type]
    assert template.tbs_der(request, key, serial, NOT_BEFORE, NOT_AFTER) == expected
    assert template.tbs_der(request, key.dump(), serial, NOT_BEFORE, NOT_AFTER) == expected
    assert template.tbs(request, key, serial, NOT_BEFORE, NOT_AFTER).dump() == expected


utc_times = st.datetimes(
    min_value=dt.datetime(1950, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=st.just(UTC)
).map(lambda value: value.replace(microsecond=0))
odd_times = st.datetimes(
    min_value=dt.datetime(1950, 1, 2),
    max_value=dt.datetime(2200, 1, 1),
    timezones=st.sampled_from([UTC, dt.timezone(dt.timedelta(hours=5, minutes=30))]),
)
requests = st.builds(
    lambda dns, ips, key_type: x509build.server_request(dns, ips, 365, key_type),
    st.lists(ldh_names, min_size=1, max_size=12).filter(lambda names: len(names[0]) <= 64),
    st.lists(st.ip_addresses().map(str), max_size=5),
    st.sampled_from(LEAF_TYPES),
)


@FAST
@given(
    ca_type=st.sampled_from(CA_TYPES),
    request=requests,
    serial=st.one_of(
        st.integers(1, (1 << 159) - 1),
        st.sampled_from([1, 0x7F, 0x80, 0xFF, 0x100, 1 << 64, (1 << 159) - 1]),
    ),
    not_before=st.one_of(utc_times, odd_times),
    not_after=st.one_of(utc_times, odd_times),
    as_bytes=st.booleans(),
)
def test_random_requests_are_byte_identical(
    templates, ca_cert, leaf_keys, ca_type, request, serial, not_before, not_after, as_bytes
):
    key = leaf_keys[request.key_type]
    expected = reference(ca_cert, ca_type, request, key, serial, not_before, not_after)
    given_key = key.dump() if as_bytes else key
    assert templates[ca_type].tbs_der(request, given_key, serial, not_before, not_after) == expected


def test_long_name_lists_use_long_form_lengths(templates, ca_cert, leaf_keys):
    """330 names of 190+ characters: the SAN needs a 3-octet length (over 65,535 octets)."""
    label = "a" * 60
    names = [f"{label}.{label}.{label}.n{i}.example" for i in range(330)]
    request = x509build.server_request(
        ["short.example", *names],
        [f"10.0.{i // 256}.{i % 256}" for i in range(300)],
        30,
        KeyType.P256,
    )
    expected = reference(
        ca_cert, KeyType.P256, request, leaf_keys[KeyType.P256], 5, NOT_BEFORE, NOT_AFTER
    )
    assert len(expected) > 65536
    built = templates[KeyType.P256].tbs_der(
        request, leaf_keys[KeyType.P256], 5, NOT_BEFORE, NOT_AFTER
    )
    assert built == expected


@pytest.mark.parametrize(
    ("serial", "not_before", "not_after"),
    [
        (0, NOT_BEFORE, NOT_AFTER),  # not a valid serial, but server_tbs encodes it: so do we
        (-5, NOT_BEFORE, NOT_AFTER),
        (7, NOT_BEFORE.replace(microsecond=250000), NOT_AFTER),
        (7, NOT_BEFORE, dt.datetime(2051, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)),
        (7, NOT_BEFORE.astimezone(dt.timezone(dt.timedelta(hours=-7))), NOT_AFTER),
    ],
    ids=["serial-0", "negative", "fraction-utc", "fraction-generalized", "other-zone"],
)
def test_unusual_inputs_take_the_reference_path_and_still_match(
    templates, ca_cert, leaf_keys, serial, not_before, not_after
):
    request, key = typical(KeyType.P256), leaf_keys[KeyType.P256]
    expected = reference(ca_cert, KeyType.P256, request, key, serial, not_before, not_after)
    assert templates[KeyType.P256].tbs_der(request, key, serial, not_before, not_after) == expected


def test_unrecognised_key_encodings_take_the_reference_path(templates, ca_cert, leaf_keys):
    request = typical(KeyType.P256)
    ed = keys.PublicKeyInfo.load(
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    # A BER (non-minimal) length on the outer SEQUENCE of an otherwise normal P-256 key.
    der = leaf_keys[KeyType.P256].dump()
    assert der[1] < 0x80
    ber = keys.PublicKeyInfo.load(b"\x30\x81" + der[1:], strict=False)
    for key in (ed, ber):
        expected = reference(ca_cert, KeyType.P256, request, key, 9, NOT_BEFORE, NOT_AFTER)
        assert templates[KeyType.P256].tbs_der(request, key, 9, NOT_BEFORE, NOT_AFTER) == expected


def test_typical_requests_never_touch_asn1crypto_building(templates, leaf_keys, monkeypatch):
    """The speed claim without a stopwatch: the fast path does not call server_tbs."""

    def forbidden(*args, **kwargs):
        raise AssertionError("server_tbs was called")

    monkeypatch.setattr(x509build, "server_tbs", forbidden)
    for leaf_type in LEAF_TYPES:
        der = templates[KeyType.RSA2048].tbs_der(
            typical(leaf_type), leaf_keys[leaf_type], 12345, NOT_BEFORE, NOT_AFTER
        )
        assert x509.TbsCertificate.load(der)["serial_number"].native == 12345


def test_a_template_that_drifted_from_server_tbs_refuses_to_exist(ca_cert, monkeypatch):
    original = x509build.server_tbs

    def with_extra_usage(*args, **kwargs):
        tbs = original(*args, **kwargs)
        extensions = list(tbs["extensions"])
        extensions[2] = x509build._extension("extended_key_usage", ["server_auth", "client_auth"])
        tbs["extensions"] = extensions
        return tbs

    monkeypatch.setattr(x509build, "server_tbs", with_extra_usage)
    with pytest.raises(IntegrityError, match=r"no longer matches x509build\.server_tbs"):
        LeafTemplate(ca_cert(KeyType.P256), KeyType.P256)
    assert LeafTemplate(ca_cert(KeyType.P256), KeyType.P256, check=False)  # opt-out exists


# --- signing what it builds ----------------------------------------------------------------------


@pytest.mark.parametrize("ca_type", CA_TYPES)
def test_sign_certificate_accepts_the_template_tbs(templates, signer, ca_cert, leaf_keys, ca_type):
    ca_signer, ca = signer(ca_type), ca_cert(ca_type)
    request = typical(KeyType.P256)
    not_before, not_after = x509build.validity(365, not_after_limit=ca.not_valid_after)
    tbs = templates[ca_type].tbs(
        request, leaf_keys[KeyType.P256], x509build.random_serial(), not_before, not_after
    )
    expected_der = tbs.dump()
    certificate, tolerated = signing.sign_certificate(
        tbs, ca_signer, ca_signer.public_key, lint.single_label_allowances(request.dns_names)
    )
    assert certificate["tbs_certificate"].dump() == expected_der
    assert [f.code for f in tolerated] == ["pkix.invalid_domain_name_syntax"]  # "rec1"
    parsed = cx509.load_der_x509_certificate(certificate.dump())
    parsed.verify_directly_issued_by(cx509.load_der_x509_certificate(ca.dump()))
    san = parsed.extensions.get_extension_for_class(cx509.SubjectAlternativeName).value
    assert san.get_values_for_type(cx509.DNSName) == ["rec1.example.com", "rec1"]
    assert san.get_values_for_type(cx509.IPAddress) == [
        ipaddress.ip_address("10.0.0.103"),
        ipaddress.ip_address("fd00::103"),
    ]


@pytest.mark.parametrize("ca_type", CA_TYPES)
def test_certificate_der_matches_x509build_certificate(
    templates, signer, ca_cert, leaf_keys, ca_type
):
    ca_signer = signer(ca_type)
    template = templates[ca_type]
    tbs_der = template.tbs_der(typical(), leaf_keys[KeyType.RSA2048], 77, NOT_BEFORE, NOT_AFTER)
    signature = ca_signer.sign(tbs_der)
    der = template.certificate_der(tbs_der, signature)
    assert (
        der == x509build.certificate(x509.TbsCertificate.load(tbs_der), ca_type, signature).dump()
    )
    parsed = cx509.load_der_x509_certificate(der)
    parsed.verify_directly_issued_by(cx509.load_der_x509_certificate(ca_cert(ca_type).dump()))
    assert parsed.serial_number == 77

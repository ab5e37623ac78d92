"""server_request, validate_days, parse_subject and common_name: requests validated up front."""

from __future__ import annotations

import ipaddress

import pytest
from asn1crypto import x509
from hypothesis import given
from hypothesis import strategies as st

from hsmca.errors import InvalidRequest
from hsmca.models import KeyType, ServerRequest
from hsmca.x509build import common_name, parse_subject, server_request, validate_days

from .strategies import FAST, short_ldh_names

# --- server_request ------------------------------------------------------------------------------


def test_first_dns_name_is_the_common_name_and_order_is_kept():
    request = server_request(
        ["rec1.example.com, rec1", "Rec1-Alt.Example.NET"],
        ["10.0.0.103, fd00::103", "192.168.1.10"],
        365,
        KeyType.RSA2048,
    )
    assert isinstance(request, ServerRequest)
    assert request.dns_names == ("rec1.example.com", "rec1", "rec1-alt.example.net")
    assert request.common_name == "rec1.example.com"
    assert request.ip_addresses == (
        ipaddress.ip_address("10.0.0.103"),
        ipaddress.ip_address("fd00::103"),
        ipaddress.ip_address("192.168.1.10"),
    )
    assert request.days == 365
    assert request.key_type is KeyType.RSA2048


def test_duplicates_are_dropped_after_normalization():
    request = server_request(
        [
            "rec1.example.com",
            "REC1.example.com.",
            " rec1.example.com ",
            "bücher.example",
            "xn--bcher-kva.example",
        ],
        ["10.0.0.1", " 10.0.0.1", "fd00::1", "fd00:0:0::1", "FD00::1"],
        30,
        KeyType.P256,
    )
    assert request.dns_names == ("rec1.example.com", "xn--bcher-kva.example")
    assert request.ip_addresses == (
        ipaddress.ip_address("10.0.0.1"),
        ipaddress.ip_address("fd00::1"),
    )


def test_no_ip_addresses_is_fine():
    assert server_request(["rec1"], [], 365, KeyType.P384).ip_addresses == ()


@pytest.mark.parametrize("dns", [[], [""], [" , ,", ","]])
def test_empty_name_list_is_rejected(dns):
    with pytest.raises(InvalidRequest, match="at least one DNS name"):
        server_request(dns, ["10.0.0.1"], 365, KeyType.RSA2048)


def test_common_name_longer_than_64_is_rejected_but_may_follow_as_san():
    long_name = "a" * 55 + ".example.com"  # 67 characters: a fine SAN, too long for a CN
    assert len(long_name) > 64
    with pytest.raises(InvalidRequest, match="64") as caught:
        server_request([long_name, "rec1.example.com"], [], 365, KeyType.RSA2048)
    assert long_name in str(caught.value)
    request = server_request(["rec1.example.com", long_name], [], 365, KeyType.RSA2048)
    assert request.dns_names == ("rec1.example.com", long_name)


def test_common_name_of_exactly_64_is_accepted():
    name = "a" * 52 + ".example.com"
    assert len(name) == 64
    assert server_request([name], [], 365, KeyType.RSA2048).common_name == name


def test_an_invalid_name_anywhere_rejects_the_request():
    with pytest.raises(InvalidRequest, match="rec_2"):
        server_request(["rec1.example.com", "rec_2.example.com"], [], 365, KeyType.RSA2048)


def test_an_invalid_address_anywhere_rejects_the_request():
    with pytest.raises(InvalidRequest, match="IP address"):
        server_request(["rec1.example.com"], ["10.0.0.1", "10.0.0.300"], 365, KeyType.RSA2048)


@pytest.mark.parametrize("days", [0, -1, 36501, True, 1.5, "365", None])
def test_bad_days_are_rejected(days):
    with pytest.raises(InvalidRequest, match="days"):
        server_request(["rec1.example.com"], [], days, KeyType.RSA2048)


@pytest.mark.parametrize("days", [1, 365, 36500])
def test_days_in_range_are_accepted(days):
    assert server_request(["rec1.example.com"], [], days, KeyType.RSA2048).days == days
    assert validate_days(days) == days


def test_validate_days_names_what_it_checked():
    with pytest.raises(InvalidRequest, match="CA validity"):
        validate_days(0, "CA validity")


@FAST
@given(
    st.lists(short_ldh_names, min_size=1, max_size=6),
    st.lists(st.ip_addresses(), max_size=6),
)
def test_request_holds_unique_normalized_entries_in_first_seen_order(names, addresses):
    request = server_request(names, [str(a) for a in addresses], 365, KeyType.RSA2048)
    assert request.dns_names == tuple(dict.fromkeys(n.lower() for n in names))
    assert request.ip_addresses == tuple(dict.fromkeys(addresses))
    assert request.common_name == names[0].lower()


def test_bare_string_is_not_split_into_characters():
    assert server_request("rec", [], 365, KeyType.RSA2048).dns_names == ("rec",)


# --- parse_subject -------------------------------------------------------------------------------


def _attributes(name: x509.Name) -> list[tuple[str, str, str]]:
    """(type, string type, value) for each attribute, in DER order."""
    return [
        (attr["type"].native, attr["value"].name, attr["value"].native)
        for rdn in name.chosen
        for attr in rdn
    ]


def test_default_subject_is_one_utf8_common_name():
    name = parse_subject("CN=VMS Certificate Authority")
    reparsed = x509.Name.load(name.dump())
    assert _attributes(reparsed) == [("common_name", "utf8_string", "VMS Certificate Authority")]


def test_rfc4514_order_is_reversed_into_der_order():
    name = x509.Name.load(parse_subject("CN=VMS CA,O=Example A/S,C=DK").dump())
    assert _attributes(name) == [
        ("country_name", "printable_string", "DK"),
        ("organization_name", "utf8_string", "Example A/S"),
        ("common_name", "utf8_string", "VMS CA"),
    ]


def test_escapes_and_multivalued_rdns():
    name = x509.Name.load(parse_subject(r"CN=Example\, Inc.+OU=Video,O=Ex\=ample").dump())
    assert len(name.chosen) == 2
    assert len(name.chosen[1]) == 2
    assert name.native["common_name"] == "Example, Inc."
    assert name.native["organization_name"] == "Ex=ample"
    assert name.native["organizational_unit_name"] == "Video"


def test_unicode_values_survive():
    name = parse_subject("CN=Überwachung Zentrale,O=Kø A/S")
    assert x509.Name.load(name.dump()).native["common_name"] == "Überwachung Zentrale"


@pytest.mark.parametrize(
    ("bad", "hint"),
    [
        ("", "empty"),
        ("VMS Certificate Authority", "invalid subject"),
        ("CN=", "invalid subject"),
        ("CN= ", "invalid subject"),
        ("CN=\\ ", "empty"),  # an escaped space: present, but blank
        ("CN=" + "x" * 65, "64"),
        ("CN=x,C=DNK", "invalid subject"),
        ("CN=x,C=D", "invalid subject"),
        ("CN=x,,O=y", "invalid subject"),
        ("FOO=bar", "invalid subject"),
        ("2.5.4.3=#zz", "invalid subject"),
    ],
)
def test_bad_subjects_are_rejected_helpfully(bad, hint):
    with pytest.raises(InvalidRequest) as caught:
        parse_subject(bad)
    message = str(caught.value)
    assert hint in message
    if bad:
        assert repr(bad) in message
        assert "CN=" in message  # an example of what to write instead


@pytest.mark.parametrize("good", ["CN=x,C=DK", "CN=x,C=US"])
def test_two_letter_country_is_accepted(good):
    assert len(parse_subject(good).native["country_name"]) == 2


@pytest.mark.parametrize("bad", ["CN=x,C=12", "CN=x,C=D1"])
def test_country_must_be_two_letters(bad):
    with pytest.raises(InvalidRequest, match="country"):
        parse_subject(bad)


def test_unknown_attribute_type_gets_an_explanation():
    with pytest.raises(InvalidRequest) as caught:
        parse_subject("FOO=bar")
    assert ": ;" not in str(caught.value)
    assert "CN, O, OU" in str(caught.value)


def _bug(bad: str, reason: str):
    """A subject that once got through (the reason says why it must not)."""
    return pytest.param(bad, id=reason[:40])


@pytest.mark.parametrize(
    "bad",
    [
        _bug(r"CN=VMS\00CA", "control characters (here NUL) pass into the subject"),
        _bug("CN=VMS\x01CA", "control characters pass into the subject"),
        _bug(
            "2.5.4.3=#0c0161",
            "an RFC 4514 #hex value (BER) is taken as text by cryptography: CN becomes "
            "'\\x0c\\x01a'",
        ),
        _bug(
            "CN=VMS CA,O=" + "o" * 65,
            "O over ub-organization-name (64) passes; pkilint later fails it with a FATAL "
            "wall of pyasn1 text instead of an 'invalid subject' message",
        ),
        _bug(
            "CN=VMS CA,2.5.4.45=abc",
            "x500UniqueIdentifier is encoded as UTF8String; the returned Name raises a bare "
            "ValueError when asn1crypto parses it later",
        ),
    ],
)
def test_subjects_that_cannot_make_a_valid_certificate_are_rejected_up_front(bad):
    with pytest.raises(InvalidRequest):
        parse_subject(bad)


@FAST
@given(
    st.one_of(
        st.text(max_size=40),
        st.lists(
            st.sampled_from([*'=,+\\#" ;<>0123456789.abcxyz', "CN=", "O=", "C=", "2.5.4.", "é"]),
            max_size=12,
        ).map("".join),
    )
)
def test_parse_subject_raises_only_invalid_request(text):
    try:
        name = parse_subject(text)
    except InvalidRequest as exc:
        assert str(exc)
        return
    assert isinstance(name, x509.Name)
    assert len(name.chosen) >= 1


# --- common_name ---------------------------------------------------------------------------------


def test_common_name_is_a_single_utf8string_cn():
    name = x509.Name.load(common_name("rec1.example.com").dump())
    assert _attributes(name) == [("common_name", "utf8_string", "rec1.example.com")]
    # UTF8String is tag 12 (0x0c); the CN value is the last TLV of the encoding.
    assert name.dump().endswith(b"\x0c\x10rec1.example.com")

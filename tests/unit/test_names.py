"""split_list, normalize_dns_name and parse_ip_address: what --dns and --ip accept."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsmca.errors import InvalidRequest
from hsmca.x509build import normalize_dns_name, parse_ip_address, split_list

from .strategies import FAST, dns_like_text, ip_like_text, is_ldh_host_name, ldh_names

# --- split_list ---------------------------------------------------------------------------------

_items = st.text(min_size=1, max_size=12).filter(lambda s: "," not in s and s == s.strip() and s)
_padding = st.sampled_from(["", " ", "  ", "\t", " \t "])


def test_split_list_examples():
    assert split_list(["rec1, rec1.example.com", "10.0.0.103 ,", ",,  ,"]) == [
        "rec1",
        "rec1.example.com",
        "10.0.0.103",
    ]
    assert split_list([]) == []
    assert split_list(["", " ", ", ,"]) == []


@FAST
@given(st.lists(st.lists(_items, max_size=5), max_size=4), st.data())
def test_split_list_recovers_items_from_noisy_comma_lists(groups, data):
    """Items joined with commas, padded with spaces and sprinkled with empties come back intact,
    in order, across repeated options."""
    values = []
    for group in groups:
        pieces = []
        for item in group:
            pieces.append(data.draw(_padding) + item + data.draw(_padding))
            if data.draw(st.booleans()):
                pieces.append(data.draw(_padding))  # an empty entry, e.g. "a,,b" or "a, ,b"
        values.append(",".join(pieces))
    assert split_list(values) == [item for group in groups for item in group]


@FAST
@given(st.lists(st.text(max_size=30), max_size=5))
def test_split_list_output_is_trimmed_nonempty_and_stable(values):
    result = split_list(values)
    for item in result:
        assert item
        assert item == item.strip()
        assert "," not in item
    # Splitting the already-split list again changes nothing.
    assert split_list(result) == result
    assert split_list([",".join(result)]) == result


def test_split_list_treats_a_bare_string_as_one_value():
    assert split_list("rec1,rec2") == ["rec1", "rec2"]


# --- normalize_dns_name --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_name", "expected"),
    [
        ("rec1.example.com", "rec1.example.com"),
        ("rec1", "rec1"),  # single-label workgroup names, as in the Milestone guide
        ("REC1.Example.COM", "rec1.example.com"),
        ("rec1.example.com.", "rec1.example.com"),
        ("rec1.", "rec1"),
        ("  rec1.example.com  ", "rec1.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("münchen.de", "xn--mnchen-3ya.de"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("123.example", "123.example"),
        ("a-b-c.example", "a-b-c.example"),
        ("a" * 63 + ".example", "a" * 63 + ".example"),
        (
            ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61]),
            ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61]),
        ),
    ],
)
def test_normalize_dns_name_accepts(given_name, expected):
    assert normalize_dns_name(given_name) == expected


def test_longest_accepted_name_is_253_characters():
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(longest) == 253
    assert normalize_dns_name(longest) == longest
    with pytest.raises(InvalidRequest):
        normalize_dns_name(longest[:-1] + "dd")


@pytest.mark.parametrize(
    ("bad", "hint"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (".", "empty"),
        ("*.example.com", "wildcard"),
        ("rec*.example.com", "wildcard"),
        ("10.0.0.103", "--ip"),
        ("10.0.0.103.", "--ip"),
        ("::1", "--ip"),
        ("fd00::103", "--ip"),
        ("a" * 64 + ".example", "1-63 letters"),
        (".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62]), "long"),
        ("-rec1.example", "hyphen"),
        ("rec1-.example", "hyphen"),
        ("rec1.example-", "hyphen"),
        ("rec_1.example", "1-63 letters, digits or hyphens"),
        ("rec1.123", "digits"),
        ("1.2.3", "digits"),
        ("123", "digits"),
        ("rec 1.example", "invalid DNS name"),
        ("a..b", "invalid DNS name"),
        ("rec1.example..", "invalid DNS name"),
    ],
)
def test_normalize_dns_name_rejects(bad, hint):
    with pytest.raises(InvalidRequest) as caught:
        normalize_dns_name(bad)
    message = str(caught.value)
    assert hint.lower() in message.lower()
    if bad.strip(" ."):
        assert repr(bad) in message  # the user sees which of their names was wrong


@FAST
@given(ldh_names)
def test_valid_ldh_names_are_lowercased_and_idempotent(name):
    result = normalize_dns_name(name)
    assert result == name.lower()
    assert is_ldh_host_name(result)
    assert normalize_dns_name(result) == result
    assert normalize_dns_name(name + ".") == result
    assert normalize_dns_name(name.upper()) == result


@FAST
@given(dns_like_text)
def test_arbitrary_text_gives_an_ldh_name_or_invalid_request(text):
    try:
        result = normalize_dns_name(text)
    except InvalidRequest as exc:
        assert str(exc)  # never an empty message
        return
    assert is_ldh_host_name(result), result
    assert normalize_dns_name(result) == result


# --- parse_ip_address ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.103", ipaddress.IPv4Address("10.0.0.103")),
        (" 10.0.0.103 ", ipaddress.IPv4Address("10.0.0.103")),
        ("0.0.0.0", ipaddress.IPv4Address("0.0.0.0")),  # noqa: S104 - parsed, never bound
        ("255.255.255.255", ipaddress.IPv4Address("255.255.255.255")),
        ("fd00::103", ipaddress.IPv6Address("fd00::103")),
        ("FD00:0:0::103", ipaddress.IPv6Address("fd00::103")),
        ("::1", ipaddress.IPv6Address("::1")),
        ("::ffff:10.0.0.1", ipaddress.IPv6Address("::ffff:a00:1")),
    ],
)
def test_parse_ip_address_accepts(text, expected):
    result = parse_ip_address(text)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("bad", "hint"),
    [
        ("fe80::1%eth0", "zone"),
        ("fe80::1%1", "zone"),
        ("10.0.0.0/24", "prefix"),
        ("fd00::/64", "prefix"),
        ("010.0.0.1", "IPv4"),
        ("10.0.0.01", "IPv4"),
        ("10.0.0", "IPv4"),
        ("10.0.0.256", "IPv4"),
        ("0x7f.0.0.1", "IPv4"),
        ("2130706433", "IPv4"),
        ("rec1.example.com", "IPv4"),
        ("", "IPv4"),
        (":::", "IPv6"),
        ("fd00::103::1", "IPv6"),
        ("[fd00::103]", "IPv6"),
    ],
)
def test_parse_ip_address_rejects(bad, hint):
    with pytest.raises(InvalidRequest) as caught:
        parse_ip_address(bad)
    assert hint in str(caught.value)
    assert repr(bad) in str(caught.value)


@FAST
@given(st.ip_addresses())
def test_any_address_round_trips(address):
    assert parse_ip_address(str(address)) == address
    if address.version == 6:
        assert parse_ip_address(address.exploded) == address


@FAST
@given(ip_like_text)
def test_arbitrary_text_gives_an_address_or_invalid_request(text):
    try:
        result = parse_ip_address(text)
    except InvalidRequest as exc:
        assert str(exc)
        return
    assert isinstance(result, ipaddress.IPv4Address | ipaddress.IPv6Address)
    assert getattr(result, "scope_id", None) is None
    assert parse_ip_address(str(result)) == result

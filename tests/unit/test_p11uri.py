"""parse_token_spec and format_token_uri: what --token accepts, as RFC 7512 PKCS#11 URIs."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsmca.errors import InvalidRequest
from hsmca.p11uri import (
    MAX_SLOT_ID,
    OBJECT_TYPES,
    PIN_VALUE_REFUSAL,
    TokenSelector,
    format_token_uri,
    parse_token_spec,
    pin_source_path,
)

from .strategies import FAST

ISSUE_URI = (
    "pkcs11:token=VMS%20CA;serial=8c3f0a;manufacturer=SoftHSM%20project;model=SoftHSM%20v2;"
    "object=hsmca-ca;id=%01%02;type=private"
    "?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/root/pin.txt"
)


def refusal(text: str) -> str:
    with pytest.raises(InvalidRequest) as caught:
        parse_token_spec(text)
    return str(caught.value)


# --- plain labels -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "label",
    ["VMS Offline CA", "hsmca-test-1", "100% CA; a&b?c=d", "my pkcs11:token", " padded ", "Zürich"],
)
def test_anything_not_starting_with_the_scheme_is_a_label_taken_verbatim(label):
    assert parse_token_spec(label) == TokenSelector(label=label)


def test_empty_label_is_refused():
    assert "empty" in refusal("")


def test_a_uri_behind_blanks_is_refused_rather_than_taken_as_a_label():
    assert "blanks before 'pkcs11:'" in refusal("  pkcs11:token=CA")


def test_a_label_that_is_not_utf8_is_refused():
    # What Python makes of a command-line argument in another encoding (surrogateescape).
    assert "not valid UTF-8" in refusal("Caf\udce9")


def test_the_scheme_is_case_insensitive_as_rfc_3986_says():
    assert parse_token_spec("PKCS11:token=CA") == parse_token_spec("pkcs11:token=CA")
    assert parse_token_spec("Pkcs11:token=CA") == TokenSelector(label="CA")


# --- accepted URIs ------------------------------------------------------------------------------


def test_the_issue_example_fills_every_field_it_names():
    selector = parse_token_spec(ISSUE_URI)
    assert selector == TokenSelector(
        label="VMS CA",
        serial="8c3f0a",
        manufacturer="SoftHSM project",
        model="SoftHSM v2",
        object_label="hsmca-ca",
        object_id=b"\x01\x02",
        object_type="private",
        module_path="/usr/lib/softhsm/libsofthsm2.so",
        pin_source="file:/root/pin.txt",
    )
    assert selector.pin_file() == Path("/root/pin.txt")
    assert selector.pin_value is None


# RFC 7512 section 7, each with what it must parse to. The vendor example is the corrected one
# (the published text writes "vendor-aaa", which lacks the "x-" prefix its own grammar requires).
RFC_EXAMPLES = [
    ("pkcs11:", TokenSelector()),
    (
        "pkcs11:object=my-pubkey;type=public",
        TokenSelector(object_label="my-pubkey", object_type="public"),
    ),
    (
        "pkcs11:object=my-key;type=private?pin-source=file:/etc/token",
        TokenSelector(object_label="my-key", object_type="private", pin_source="file:/etc/token"),
    ),
    (
        "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;"
        "manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;"
        "id=%69%95%3E%5C%F4%BD%EC%91;serial=?pin-source=file:/etc/token_pin",
        TokenSelector(
            label="The Software PKCS#11 Softtoken",
            manufacturer="Snake Oil, Inc.",
            model="1.0",
            object_label="my-certificate",
            object_type="cert",
            object_id=bytes.fromhex("69953e5cf4bdec91"),
            serial="",
            pin_source="file:/etc/token_pin",
        ),
    ),
    (
        "pkcs11:object=my-sign-key;type=private?module-name=mypkcs11",
        TokenSelector(object_label="my-sign-key", object_type="private", module_name="mypkcs11"),
    ),
    (
        "pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1",
        TokenSelector(
            object_label="my-sign-key",
            object_type="private",
            module_path="/mnt/libmypkcs11.so.1",
        ),
    ),
    (
        "pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc."
        "?pin-source=file:/etc/token",
        TokenSelector(
            label="Software PKCS#11 softtoken",
            manufacturer="Snake Oil, Inc.",
            pin_source="file:/etc/token",
        ),
    ),
    ("pkcs11:slot-description=Sun%20Metaslot", TokenSelector(slot_description="Sun Metaslot")),
    (
        "pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;"
        "library-description=Soft%20Token%20Library;library-version=1.23",
        TokenSelector(
            library_manufacturer="Snake Oil, Inc.",
            library_description="Soft Token Library",
            library_version="1.23",
        ),
    ),
    (
        "pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3;"
        "id=%01%02%03%Ba%dd%Ca%fe%04%05%06",
        TokenSelector(
            label="My token% created by Joe",
            library_version="3",
            object_id=bytes.fromhex("010203baddcafe040506"),
        ),
    ),
    (
        "pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert",
        TokenSelector(
            label="A name with a substring %;", object_label="my-certificate", object_type="cert"
        ),
    ),
    (
        "pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;"
        "object=my-certificate;type=cert",
        TokenSelector(
            label="Name with a small A with acute: \u00e1",
            object_label="my-certificate",
            object_type="cert",
        ),
    ),
    (
        "pkcs11:token=my-token;object=my-certificate;type=cert;x-vendor-aaa=value-a"
        "?pin-source=file:/etc/token_pin&x-vendor-bbb=value-b",
        TokenSelector(
            label="my-token",
            object_label="my-certificate",
            object_type="cert",
            pin_source="file:/etc/token_pin",
        ),
    ),
]


@pytest.mark.parametrize(("uri", "expected"), RFC_EXAMPLES, ids=[u for u, _ in RFC_EXAMPLES])
def test_rfc_7512_examples(uri, expected):
    selector = parse_token_spec(uri)
    assert selector == expected
    assert parse_token_spec(format_token_uri(selector)) == selector


@pytest.mark.parametrize(
    "uri",
    [
        "pkcs11:object=my-pubkey;type=public",
        "pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc."
        "?pin-source=file:/etc/token",
        "pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;"
        "library-description=Soft%20Token%20Library;library-version=1.23",
        "pkcs11:slot-description=Sun%20Metaslot",
        "pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;"
        "object=my-certificate;type=cert",
    ],
)
def test_format_writes_rfc_examples_exactly_as_the_rfc_does(uri):
    """Same attribute order, same characters left unencoded (',' and ':' stay), upper-case hex."""
    assert format_token_uri(parse_token_spec(uri)) == uri


def test_slot_and_library_attributes_are_kept():
    selector = parse_token_spec(
        "pkcs11:slot-manufacturer=OpenSC%20Project;slot-description=Yubico%20YubiKey;"
        "slot-id=007;library-version=0.25"
    )
    assert selector.slot_manufacturer == "OpenSC Project"
    assert selector.slot_description == "Yubico YubiKey"
    assert selector.slot_id == 7
    assert selector.library_version == "0.25"
    assert parse_token_spec(f"pkcs11:slot-id={MAX_SLOT_ID}").slot_id == MAX_SLOT_ID
    # Leading zeros are digits the grammar allows, past int()'s 4300-digit limit too.
    assert parse_token_spec("pkcs11:slot-id=" + "0" * 5000 + "42").slot_id == 42


def test_reserved_characters_the_rfc_allows_unencoded_need_no_escape():
    # '&' is allowed raw in the path, '/', '?' and '|' in the query; '=' in both.
    selector = parse_token_spec(
        "pkcs11:token=:[]@!$'()*+,=&~._-?module-path=/opt/a=b?c|d/lib.so&x-v=a/b"
    )
    assert selector.label == ":[]@!$'()*+,=&~._-"
    assert selector.module_path == "/opt/a=b?c|d/lib.so"


def test_percent_escapes_are_case_insensitive_and_unreserved_escapes_decode():
    assert parse_token_spec("pkcs11:token=%c3%a9%C3%A9;type=%70ublic") == TokenSelector(
        label="\u00e9\u00e9", object_type="public"
    )


def test_vendor_query_attributes_may_repeat_and_are_ignored():
    assert parse_token_spec("pkcs11:token=CA?x-a=1&x-a=2&x-B_c-9=%41") == TokenSelector(label="CA")


def test_empty_query_is_allowed_by_the_grammar():
    assert parse_token_spec("pkcs11:token=CA?") == TokenSelector(label="CA")


def test_parser_is_pure_and_imports_no_pkcs11_library():
    code = "import sys, hsmca.p11uri; sys.exit('pkcs11' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_selector_is_frozen():
    selector = TokenSelector(label="CA")
    with pytest.raises(dataclasses.FrozenInstanceError):
        selector.label = "other"  # type: ignore[misc]


# --- pin-value is never accepted ----------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc."
        "?pin-value=the-pin",
        "pkcs11:token=CA?pin-source=file:/etc/pin&pin-value=the-pin",
        "pkcs11:token=CA;pin-value=the-pin",  # in the path: still refused as pin-value
        "pkcs11:token=bad%zz;Token=x?pin-value=the-pin%",  # before any other complaint
        "pkcs11:pin-value=",
    ],
)
def test_pin_value_is_refused_without_echoing_the_pin(uri):
    message = refusal(uri)
    assert message == PIN_VALUE_REFUSAL
    assert "pin-value in a PKCS#11 URI would put the PIN on the command line" in message
    assert "pin-source=file:" in message and "HSMCA_PIN" in message
    assert "the-pin" not in message


def test_format_refuses_a_pin_value():
    with pytest.raises(InvalidRequest) as caught:
        format_token_uri(TokenSelector(label="CA", pin_value="123456"))
    assert str(caught.value) == PIN_VALUE_REFUSAL
    assert "123456" not in str(caught.value)


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        # characters that must be percent-encoded, with the attribute rewritten in the message
        ("pkcs11:token=VMS CA", ["'token'", "raw space", "%20", "token=VMS%20CA"]),
        ("pkcs11:token=Caf\u00e9", ["'token'", "'\u00e9'", "%C3%A9", "token=Caf%C3%A9"]),
        ("pkcs11:token=a/b", ["'token'", "%2F", "token=a%2Fb"]),
        ("pkcs11:token=CA#1", ["'token'", "fragment", "%23"]),
        ('pkcs11:object="key"', ["'object'", "%22"]),
        ("pkcs11:token=CA?pin-source=file:/my pin", ["'pin-source'", "%20"]),
        # bad escapes
        ("pkcs11:token=100%", ["'token'", "'%'", "two hex digits", "%25"]),
        ("pkcs11:token=%4", ["'token'", "'%4'"]),
        ("pkcs11:id=%0g", ["'id'", "'%0g'"]),
        ("pkcs11:token=%C3%28", ["'token'", "not UTF-8"]),
        # duplicates
        ("pkcs11:token=a;token=b", ["'token'", "more than once"]),
        ("pkcs11:x-a=1;x-a=1", ["'x-a'", "more than once"]),
        ("pkcs11:?module-path=/a.so&module-path=/b.so", ["'module-path'", "more than once"]),
        ("pkcs11:?pin-source=/a&pin-source=/b", ["'pin-source'", "more than once"]),
        # unknown names, with hints
        ("pkcs11:Token=CA", ["'Token'", "case-sensitive", "'token'"]),
        ("pkcs11:tokn=CA", ["'tokn'", "did you mean 'token'"]),
        ("pkcs11:label=CA", ["unknown path attribute 'label'", "token"]),
        ("pkcs11:token=CA;vendor-aaa=value-a", ["'vendor-aaa'", "x-"]),
        ("pkcs11:x-=1", ["'x-'", "vendor"]),
        ("pkcs11:x-a.b=1", ["'x-a.b'"]),
        ("pkcs11:?pin=1", ["unknown query attribute 'pin'"]),
        ("pkcs11:token =CA", ["'token '", "spaces"]),
        # attributes on the wrong side of '?'
        ("pkcs11:module-path=/lib.so", ["'module-path'", "query attribute", "after '?'"]),
        ("pkcs11:?token=CA", ["'token'", "path attribute", "before '?'"]),
        ("pkcs11:token=CA?serial=1", ["'serial'", "path attribute"]),
        # structure
        ("pkcs11:token=CA;", ["empty attribute", "path"]),
        ("pkcs11:;token=CA", ["empty attribute"]),
        ("pkcs11:token=a;;serial=1", ["empty attribute"]),
        ("pkcs11:?&module-name=x", ["empty attribute", "query"]),
        ("pkcs11:token", ["'token'", "no '=value'"]),
        ("pkcs11:token=A;B", ["'B'", "no '=value'", "%3B"]),
        ("pkcs11:?pin-source=/a&b", ["'b'", "no '=value'", "%26"]),
        # typed values
        ("pkcs11:type=private-key", ["'type'", "public, private, cert, secret-key, data"]),
        ("pkcs11:type=", ["'type'", "one of"]),
        ("pkcs11:slot-id=-1", ["'slot-id'", "decimal"]),
        ("pkcs11:slot-id=", ["'slot-id'", "decimal"]),
        ("pkcs11:slot-id=%D9%A3", ["'slot-id'", "decimal"]),  # Arabic-Indic three
        (f"pkcs11:slot-id={MAX_SLOT_ID + 1}", ["'slot-id'", "at most"]),
        ("pkcs11:slot-id=" + "9" * 5000, ["'slot-id'", "at most"]),
        ("pkcs11:slot-id=" + "0" * 5000 + "1" * 21, ["'slot-id'", "at most"]),
        ("pkcs11:library-version=1.2.3", ["'library-version'", "MAJOR.MINOR"]),
        ("pkcs11:library-version=v1", ["'library-version'"]),
        ("pkcs11:?module-path=libsofthsm2.so", ["'module-path'", "absolute"]),
        ("pkcs11:?module-path=", ["'module-path'", "absolute"]),
        ("pkcs11:?module-path=/lib%00.so", ["'module-path'", "NUL"]),
        ("pkcs11:?module-name=/usr/lib/x.so", ["'module-name'", "without directory"]),
        ("pkcs11:?module-name=", ["'module-name'"]),
        ("pkcs11:?pin-source=|/usr/bin/getpin", ["'pin-source'", "command"]),
        ("pkcs11:?pin-source=https://example.com/pin", ["'pin-source'", "'https:'"]),
        ("pkcs11:?pin-source=file://vault/pin", ["'pin-source'", "host 'vault'"]),
        ("pkcs11:?pin-source=file:pin.txt", ["'pin-source'", "absolute path"]),
        ("pkcs11:?pin-source=", ["'pin-source'", "empty"]),
    ],
)
def test_refusals_name_the_attribute_and_the_problem(uri, expected):
    message = refusal(uri)
    for fragment in expected:
        assert fragment in message


@pytest.mark.parametrize(
    "selector",
    [
        TokenSelector(object_type="key"),
        TokenSelector(slot_id=-1),
        TokenSelector(slot_id=MAX_SLOT_ID + 1),
        TokenSelector(library_version="1.2.3"),
        TokenSelector(module_path="relative/lib.so"),
        TokenSelector(module_name="dir/name"),
        TokenSelector(pin_source="|getpin"),
        TokenSelector(label="lone \ud800 surrogate"),
    ],
)
def test_format_refuses_what_parse_would_refuse(selector):
    with pytest.raises(InvalidRequest):
        format_token_uri(selector)


def test_format_encodes_delimiters_and_every_id_byte():
    selector = TokenSelector(
        label="a;b?c&d/e#f%g h=i",
        object_id=b"AZ\x00\xff",
        pin_source="file:/p&q?r|s t",
    )
    uri = format_token_uri(selector)
    assert uri == (
        "pkcs11:token=a%3Bb%3Fc&d%2Fe%23f%25g%20h=i;id=%41%5A%00%FF?pin-source=file:/p%26q?r|s%20t"
    )
    assert parse_token_spec(uri) == selector


# --- pin-source as a file -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "path"),
    [
        ("file:/root/pin.txt", "/root/pin.txt"),
        ("file:///root/pin.txt", "/root/pin.txt"),
        ("file://localhost/root/pin.txt", "/root/pin.txt"),
        ("FILE:/root/pin.txt", "/root/pin.txt"),
        ("/etc/hsmca/pin", "/etc/hsmca/pin"),
        ("pins/ca.pin", "pins/ca.pin"),
        ("file:/root/100%25", "/root/100%25"),  # not percent-decoded a second time
    ],
)
def test_pin_file_accepts_local_files(source, path):
    assert TokenSelector(pin_source=source).pin_file() == Path(path)
    assert pin_source_path(source) == Path(path)


def test_pin_file_is_none_without_a_pin_source():
    assert TokenSelector(label="CA").pin_file() is None


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("|/usr/bin/getpin", "command"),
        ("env:HSMCA_PIN", "'env:'"),
        ("https://example.com/pin", "'https:'"),
        ("file://otherhost/pin", "host 'otherhost'"),
        ("file://", "no file"),
        ("file:relative/pin", "absolute path"),
        ("", "empty"),
        ("/etc/pin\x00", "NUL"),
    ],
)
def test_pin_file_refuses_anything_but_a_local_file(source, fragment):
    with pytest.raises(InvalidRequest) as caught:
        TokenSelector(pin_source=source).pin_file()
    assert "'pin-source'" in str(caught.value)
    assert fragment in str(caught.value)


# --- properties ---------------------------------------------------------------------------------


def optional(strategy):
    return st.none() | strategy


# Labels and ids are drawn at any length; the other text fields shorter, to keep the suite fast.
_text = st.text(max_size=24)
_no_nul = _text.filter(lambda t: "\x00" not in t)
_pin_sources = st.one_of(
    _no_nul.map(lambda t: "file:/" + t.lstrip("/")),
    _no_nul.map(lambda t: "file:///" + t),
    _no_nul.map(lambda t: "file://localhost/" + t),
    _no_nul.map(lambda t: "/" + t),
    _no_nul.map(lambda t: "./" + t),
)
selectors = st.builds(
    TokenSelector,
    label=optional(st.text()),
    serial=optional(_text),
    manufacturer=optional(_text),
    model=optional(_text),
    object_label=optional(_text),
    object_id=optional(st.binary()),
    object_type=optional(st.sampled_from(OBJECT_TYPES)),
    slot_id=optional(st.integers(0, MAX_SLOT_ID)),
    slot_description=optional(_text),
    slot_manufacturer=optional(_text),
    library_manufacturer=optional(_text),
    library_description=optional(_text),
    library_version=optional(st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,4})?", fullmatch=True)),
    module_path=optional(_no_nul.map(lambda t: "/" + t)),
    module_name=optional(
        st.text(min_size=1, max_size=24).filter(lambda t: "/" not in t and "\x00" not in t)
    ),
    pin_source=optional(_pin_sources),
)


@FAST
@given(selectors)
def test_format_then_parse_gives_the_selector_back(selector):
    uri = format_token_uri(selector)
    assert uri.startswith("pkcs11:")
    assert uri.isascii() and " " not in uri and "#" not in uri
    assert parse_token_spec(uri) == selector


def respell(value: str, rnd) -> str:
    """`value` (canonically encoded) spelled another valid way: escapes in either hex case, and
    characters that may stand raw escaped or not at random."""
    out = []
    index = 0
    while index < len(value):
        if value[index] == "%":
            escape = value[index + 1 : index + 3]
            out.append("%" + (escape.lower() if rnd.random() < 0.5 else escape))
            index += 3
            continue
        out.append(f"%{ord(value[index]):02x}" if rnd.random() < 0.5 else value[index])
        index += 1
    return "".join(out)


@FAST
@given(selectors, st.data())
def test_every_valid_spelling_of_a_selector_parses_to_it(selector, data):
    """Attribute order, escaping of characters that need none, hex case and vendor attributes
    change nothing."""
    rnd = data.draw(st.randoms(use_true_random=False))
    canonical = format_token_uri(selector)
    path, _, query = canonical[len("pkcs11:") :].partition("?")
    spelled = {}
    for part, separator in ((path, ";"), (query, "&")):
        items = [item.split("=", 1) for item in part.split(separator) if item]
        items = [f"{name}={respell(value, rnd)}" for name, value in items]
        items += data.draw(st.lists(st.sampled_from(["x-a=1", "x-b_2=%41", "x-c="]), unique=True))
        spelled[separator] = data.draw(st.permutations(items))
    uri = "pkcs11:" + ";".join(spelled[";"])
    if spelled["&"] or data.draw(st.booleans()):
        uri += "?" + "&".join(spelled["&"])
    assert parse_token_spec(uri) == selector


@FAST
@given(st.text(min_size=1).filter(lambda t: not t.lstrip().lower().startswith("pkcs11:")))
def test_plain_labels_come_back_verbatim(label):
    assert parse_token_spec(label) == TokenSelector(label=label)


_URI_PIECES = [
    *"=;&?%#/| .:-_",
    "pkcs11:",
    "PKCS11:",
    "token",
    "token=",
    "serial=",
    "id=",
    "type=",
    "private",
    "slot-id=",
    "library-version=",
    "module-path=",
    "module-name=",
    "pin-source=",
    "pin-value=",
    "object=",
    "x-",
    "x-v=",
    "file:",
    "file://",
    "localhost",
    "%4",
    "%41",
    "%C3%A9",
    "%FF",
    "%00",
    "1",
    "99999999999999999999999",
    "\u00e9",
    "\x00",
    "\ud800",
]
# Names for each side of '?', plus a few that are wrong there or anywhere.
_ODD_NAMES = ["x-v", "Token", "", "pin-source", "type"]
_PATH_NAMES = ["token", "serial", "object", "id", "type", "slot-id", "library-version", *_ODD_NAMES]
_QUERY_NAMES = ["module-path", "module-name", "pin-source", *_ODD_NAMES]
# Mostly pieces a value may hold, so that many generated URIs parse; a few that it may not.
_VALUE_PIECES = 3 * ["a", ":", "%20", "%41", "%C3%A9", "1", ".", "public", "cert", "file:///", "="]
_VALUE_PIECES += ["/", "%ff", "%00", "%", " ", "|", "\u00e9", "localhost"]


def _attribute_lists(names):
    return st.lists(
        st.tuples(
            st.sampled_from(names),
            st.lists(st.sampled_from(_VALUE_PIECES), max_size=4).map("".join),
        ),
        max_size=4,
    ).map(lambda pairs: [f"{name}={value}" for name, value in pairs])


uri_like_text = st.one_of(
    st.text(),
    st.text().map(lambda t: "pkcs11:" + t),
    st.lists(st.sampled_from(_URI_PIECES), max_size=25).map(lambda p: "pkcs11:" + "".join(p)),
    st.builds(
        lambda path, query: "pkcs11:" + ";".join(path) + ("?" + "&".join(query) if query else ""),
        _attribute_lists(_PATH_NAMES),
        _attribute_lists(_QUERY_NAMES),
    ),
)


@FAST
@given(uri_like_text)
def test_arbitrary_text_parses_or_raises_invalid_request_only(text):
    try:
        selector = parse_token_spec(text)
    except InvalidRequest as error:
        assert str(error)
        return
    assert isinstance(selector, TokenSelector)
    assert selector.pin_value is None
    # Whatever was accepted has a canonical spelling that means the same thing.
    assert parse_token_spec(format_token_uri(selector)) == selector


_raw_items = st.lists(st.text(alphabet=st.characters(exclude_characters=";&?")), max_size=4)


@FAST
@given(_raw_items, _raw_items, st.booleans(), st.integers(0, 4), st.text(min_size=1))
def test_pin_value_anywhere_is_refused_with_the_same_message(path, query, in_query, at, pin):
    """Whatever else is wrong with the URI, the answer is the pin-value refusal."""
    pin = pin.replace(";", "").replace("&", "").replace("?", "")
    items = query if in_query else path
    items.insert(min(at, len(items)), "pin-value=" + pin)
    uri = "pkcs11:" + ";".join(path) + "?" + "&".join(query)
    assert refusal(uri) == PIN_VALUE_REFUSAL

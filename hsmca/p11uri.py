"""What `--token` accepts: a token label or an RFC 7512 PKCS#11 URI, parsed without any I/O.

    pkcs11:token=VMS%20CA;serial=8c3f0a;object=hsmca-ca;id=%01%02
        ?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/root/pin.txt

(one line in practice). This module only reads and writes the text: it imports no PKCS#11
library and touches no file. What it decides, beyond the RFC's grammar:

- Anything that does not begin with the scheme `pkcs11:` is a token label, taken verbatim. The
  scheme is matched case-insensitively, as RFC 3986 says schemes are; a label that really begins
  with "pkcs11:" is written as a URI, `pkcs11:token=pkcs11:...`.
- Syntax is strict. Characters outside the RFC's sets (a space, '#', '"', non-ASCII letters, '/'
  in the path, ...) must be percent-encoded, and the error says how, with the attribute rewritten
  (`token=VMS%20CA`). Escapes may use either case of hex digit; `format_token_uri` writes upper.
- Values are UTF-8 after percent-decoding; `id` is raw bytes. `type` and `slot-id` are compared
  after decoding (RFC 3986 makes `%70ublic` and `public` the same text).
- Attribute names are case-sensitive. Every path attribute (vendor `x-` ones too) may appear once;
  the standard query attributes once each; vendor query attributes may repeat. Vendor attributes
  (`x-` followed by letters, digits, '-' or '_') are checked for syntax and otherwise ignored;
  any other unknown name is an error that suggests the nearest known one.
- All the RFC's path attributes are accepted and kept, including the slot and library ones, so
  that `token.py` can match on them.
- `pin-value` is refused wherever it appears: a PIN in a URI is a PIN on the command line, in
  shell history and in `ps` output. The PIN comes from `pin-source` (a file), `HSMCA_PIN` or a
  prompt. `pin-source` must name a local file (`file:/abs`, `file:///abs`,
  `file://localhost/abs` or a plain path); commands (`|/usr/bin/getpin`) and other schemes are
  refused. The text after `file:` is used as it is: it is not percent-decoded a second time.
- `module-path` must be absolute, so that which library is loaded never depends on the current
  directory or the loader's search path; `module-name` is a bare name, without '/'.
- `slot-id` is a CK_SLOT_ID: decimal, at most 2**64 - 1. `library-version` is `M` or `M.N`.

Every refusal is an InvalidRequest that names the attribute and the problem; no message ever
repeats what followed `pin-value=`.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidRequest

SCHEME = "pkcs11:"

OBJECT_TYPES = ("public", "private", "cert", "secret-key", "data")
"""The values RFC 7512 allows for `type`, in the RFC's order."""

MAX_SLOT_ID = 2**64 - 1
"""CK_SLOT_ID is a CK_ULONG; 64 bits on the platforms hsmca runs on."""

PIN_VALUE_REFUSAL = (
    "PKCS#11 URI attribute 'pin-value' is refused: pin-value in a PKCS#11 URI would put the PIN "
    "on the command line (and in shell history and process listings); use "
    "pin-source=file:/path/to/pin-file in the URI, or set HSMCA_PIN, or let hsmca prompt for it"
)

# RFC 3986 unreserved characters, then RFC 7512's pk11-res-avail and its path and query additions.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_RES_AVAIL = frozenset(":[]@!$'()*+,=")
PATH_CHARS = _UNRESERVED | _RES_AVAIL | {"&"}
"""Characters a path attribute value may hold unencoded (pk11-pchar without pct-encoded)."""
QUERY_CHARS = _UNRESERVED | _RES_AVAIL | {"/", "?", "|"}
"""Characters a query attribute value may hold unencoded (pk11-qchar without pct-encoded)."""

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_VENDOR_NAME = re.compile(r"x-[A-Za-z0-9_-]+")
_DIGITS = re.compile(r"[0-9]+")
_LIBRARY_VERSION = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class TokenSelector:
    """Which token (and, optionally, which object on it) `--token` means.

    Build it with `parse_token_spec()`. None means the attribute was not given; an empty string
    is an attribute given with an empty value (RFC 7512's own examples use `serial=`).
    """

    label: str | None = None
    """CK_TOKEN_INFO label (the URI's `token`)."""
    serial: str | None = None
    """CK_TOKEN_INFO serialNumber."""
    manufacturer: str | None = None
    """CK_TOKEN_INFO manufacturerID."""
    model: str | None = None
    """CK_TOKEN_INFO model."""
    object_label: str | None = None
    """CKA_LABEL of the object (the URI's `object`)."""
    object_id: bytes | None = None
    """CKA_ID of the object (the URI's `id`), raw bytes."""
    object_type: str | None = None
    """One of OBJECT_TYPES (the URI's `type`)."""
    slot_id: int | None = None
    """CK_SLOT_ID (the URI's `slot-id`)."""
    slot_description: str | None = None
    """CK_SLOT_INFO slotDescription."""
    slot_manufacturer: str | None = None
    """CK_SLOT_INFO manufacturerID."""
    library_manufacturer: str | None = None
    """CK_INFO manufacturerID."""
    library_description: str | None = None
    """CK_INFO libraryDescription."""
    library_version: str | None = None
    """CK_INFO libraryVersion as the URI writes it: "M" or "M.N" in decimal."""
    module_path: str | None = None
    """Absolute path of the PKCS#11 library (or of a directory holding `module_name`)."""
    module_name: str | None = None
    """PKCS#11 library name without directory, e.g. "softhsm2"."""
    pin_source: str | None = None
    """Where the user PIN is, as the URI says it; `pin_file()` turns it into a Path."""
    pin_value: str | None = None
    """Never set by `parse_token_spec`, which refuses `pin-value`; `format_token_uri` refuses it
    too. The field exists so that the refusal is visible in the type, not silently dropped."""

    def pin_file(self) -> Path | None:
        """The file named by `pin_source`, or None when the URI has no pin-source.

        Accepts `file:/abs/path`, `file:///abs/path`, `file://localhost/abs/path` and plain
        paths (absolute, or relative to the current directory); refuses commands, other URI
        schemes, other hosts and empty values with an InvalidRequest. Reads nothing.
        """
        if self.pin_source is None:
            return None
        return pin_source_path(self.pin_source)


def parse_token_spec(text: str) -> TokenSelector:
    """A `--token` value: a token label, or a PKCS#11 URI (RFC 7512) when it starts `pkcs11:`.

    Raises InvalidRequest, naming the attribute and the problem, for anything else.
    """
    if text[: len(SCHEME)].lower() != SCHEME:
        return TokenSelector(label=_plain_label(text))
    return _parse_uri(text)


def format_token_uri(selector: TokenSelector) -> str:
    """The PKCS#11 URI for `selector`, percent-encoded so that parse_token_spec() gives it back.

    Attributes come in a fixed order (token, library, slot, then object ones; module-name,
    module-path, pin-source in the query); `id` is percent-encoded in full. Raises
    InvalidRequest for a value parse_token_spec() would refuse, and always for `pin_value`.
    """
    if selector.pin_value is not None:
        raise InvalidRequest(PIN_VALUE_REFUSAL)
    path_parts: list[str] = []
    query_parts: list[str] = []
    for attr in _ATTRIBUTES:
        value = getattr(selector, attr.field)
        if value is None:
            continue
        if attr.kind == "bytes":
            encoded = "".join(f"%{byte:02X}" for byte in bytes(value))
        else:
            text = str(value) if attr.kind == "slot-id" else value
            try:
                raw = text.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRequest(
                    f"PKCS#11 URI attribute {attr.name!r}: {text!r} cannot be written as UTF-8 "
                    "(it holds a lone surrogate)"
                ) from None
            _convert(attr, text)  # refuse what parsing would refuse
            allowed = QUERY_CHARS if attr.query else PATH_CHARS
            encoded = _percent_encode(raw, allowed)
        (query_parts if attr.query else path_parts).append(f"{attr.name}={encoded}")
    uri = SCHEME + ";".join(path_parts)
    if query_parts:
        uri += "?" + "&".join(query_parts)
    return uri


def pin_source_path(value: str) -> Path:
    """The local file a `pin-source` value names; see TokenSelector.pin_file()."""
    where = "PKCS#11 URI attribute 'pin-source'"
    if value == "":
        raise InvalidRequest(f"{where} is empty; give pin-source=file:/path/to/pin-file")
    if "\x00" in value:
        raise InvalidRequest(f"{where} holds a NUL character (%00), which no file name can")
    if value.startswith("|"):
        raise InvalidRequest(
            f"{where} {value!r} asks for a command to be run; hsmca does not run commands to get "
            "a PIN: put the PIN in a file readable only by you and use pin-source=file:/path, "
            "or set HSMCA_PIN"
        )
    scheme = _URI_SCHEME.match(value)
    if scheme is None:
        return Path(value)
    if scheme.group(0)[:-1].lower() != "file":
        raise InvalidRequest(
            f"{where} {value!r} uses the {scheme.group(0)!r} scheme; hsmca reads a PIN only "
            "from a local file: pin-source=file:/path/to/pin-file"
        )
    path = value[scheme.end() :]
    if path.startswith("//"):
        host, slash, rest = path[2:].partition("/")
        if host.lower() not in ("", "localhost"):
            raise InvalidRequest(
                f"{where} {value!r} names the host {host!r}; hsmca reads a PIN only from a "
                "local file: pin-source=file:/path/to/pin-file"
            )
        if not slash:
            raise InvalidRequest(f"{where} {value!r} names no file after the host")
        path = "/" + rest
    if not path.startswith("/"):
        raise InvalidRequest(
            f"{where} {value!r}: a file: URI needs an absolute path (file:/root/pin.txt); "
            "for a path relative to the current directory leave out 'file:'"
        )
    return Path(path)


# --- the attribute table ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Attribute:
    name: str
    """The RFC 7512 attribute name."""
    field: str
    """The TokenSelector field it fills."""
    query: bool
    """A query attribute (after '?', separated by '&') rather than a path attribute."""
    kind: str = "text"
    """How its decoded value is checked and converted: see _convert()."""


_ATTRIBUTES = (
    _Attribute("token", "label", False),
    _Attribute("manufacturer", "manufacturer", False),
    _Attribute("serial", "serial", False),
    _Attribute("model", "model", False),
    _Attribute("library-manufacturer", "library_manufacturer", False),
    _Attribute("library-description", "library_description", False),
    _Attribute("library-version", "library_version", False, "library-version"),
    _Attribute("slot-manufacturer", "slot_manufacturer", False),
    _Attribute("slot-description", "slot_description", False),
    _Attribute("slot-id", "slot_id", False, "slot-id"),
    _Attribute("object", "object_label", False),
    _Attribute("type", "object_type", False, "type"),
    _Attribute("id", "object_id", False, "bytes"),
    _Attribute("module-name", "module_name", True, "module-name"),
    _Attribute("module-path", "module_path", True, "module-path"),
    _Attribute("pin-source", "pin_source", True, "pin-source"),
)
_BY_NAME = {attr.name: attr for attr in _ATTRIBUTES}
_ALL_NAMES = (*_BY_NAME, "pin-value")


# --- parsing ------------------------------------------------------------------------------------


def _plain_label(text: str) -> str:
    if text == "":
        raise InvalidRequest("the token label is empty; give a token label or a pkcs11: URI")
    if text.lstrip()[: len(SCHEME)].lower() == SCHEME:
        raise InvalidRequest(
            f"{_shorten(text)!r} looks like a PKCS#11 URI with blanks before 'pkcs11:'; remove them"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            f"the token label {text!r} is not valid UTF-8 text (was it typed in another encoding?)"
        ) from None
    return text


def _parse_uri(text: str) -> TokenSelector:
    rest = text[len(SCHEME) :]
    path, has_query, query = rest.partition("?")
    path_items = _split(path, ";")
    query_items = _split(query, "&") if has_query else []
    # Before anything else, so that no other complaint comes first and no message shows the PIN.
    if any(name == "pin-value" for name, _, _ in (*path_items, *query_items)):
        raise InvalidRequest(PIN_VALUE_REFUSAL)

    values: dict[str, object] = {}
    seen_path: set[str] = set()
    for index, (name, has_value, raw) in enumerate(path_items):
        _require_value(name, has_value, query=False, first=index == 0)
        attr = _known_or_vendor(name, query=False)
        if name in seen_path:
            raise InvalidRequest(
                f"PKCS#11 URI attribute {name!r} appears more than once in the path; RFC 7512 "
                "allows each path attribute once"
            )
        seen_path.add(name)
        if attr is None:
            _check_syntax(name, raw, PATH_CHARS, suggest=False)
            continue
        values[attr.field] = _decode_value(attr, raw)

    for index, (name, has_value, raw) in enumerate(query_items):
        _require_value(name, has_value, query=True, first=index == 0)
        attr = _known_or_vendor(name, query=True)
        if attr is None:
            _check_syntax(name, raw, QUERY_CHARS, suggest=False)
            continue
        if attr.field in values:
            raise InvalidRequest(
                f"PKCS#11 URI attribute {name!r} appears more than once in the query; give it once"
            )
        values[attr.field] = _decode_value(attr, raw)

    return TokenSelector(**values)


def _split(component: str, separator: str) -> list[tuple[str, bool, str]]:
    """(name, has '=', raw value) for each attribute of a path or query component."""
    if component == "":
        return []
    items = []
    for item in component.split(separator):
        name, has_value, raw = item.partition("=")
        items.append((name, bool(has_value), raw))
    return items


def _known_or_vendor(name: str, *, query: bool) -> _Attribute | None:
    """The attribute called `name` where it stands, None for a vendor one; refuses the rest."""
    attr = _BY_NAME.get(name)
    if attr is not None:
        if attr.query == query:
            return attr
        if attr.query:
            raise InvalidRequest(
                f"PKCS#11 URI attribute {name!r} is a query attribute: put it after '?' "
                f"(pkcs11:token=...?{name}=...)"
            )
        raise InvalidRequest(
            f"PKCS#11 URI attribute {name!r} is a path attribute: put it before '?', separated "
            f"from the others by ';' (pkcs11:token=...;{name}=...)"
        )
    if _VENDOR_NAME.fullmatch(name):
        return None
    shown = _shorten(name)
    hint = ""
    if name == "":
        hint = "; an attribute needs a name before its '='"
    elif " " in name:
        hint = "; spaces are not allowed in a URI (write %20 inside values)"
    elif name.lower() in _ALL_NAMES:
        hint = f"; attribute names are case-sensitive: write {name.lower()!r}"
    elif name.startswith("x-"):
        hint = "; a vendor attribute name is 'x-' then letters, digits, '-' or '_'"
    elif close := difflib.get_close_matches(name, _ALL_NAMES, n=1):
        hint = f"; did you mean {close[0]!r}?"
    part = "query" if query else "path"
    stop = " " if hint.endswith("?") else ". "
    raise InvalidRequest(
        f"PKCS#11 URI has an unknown {part} attribute {shown!r}{hint}{stop}Known attributes: "
        f"{', '.join(a.name for a in _ATTRIBUTES if a.query == query)} (and vendor 'x-' ones)"
    )


def _require_value(name: str, has_value: bool, *, query: bool, first: bool) -> None:
    if has_value:
        return
    if name == "":
        part, separator = ("query", "&") if query else ("path", ";")
        raise InvalidRequest(
            f"PKCS#11 URI has an empty attribute in its {part}: {separator!r} at the start or "
            f"end, or two in a row; write attribute=value{separator}attribute=value"
        )
    where = f"PKCS#11 URI attribute {_shorten(name)!r} has no '=value'"
    if first:
        raise InvalidRequest(f"{where}; write attribute=value (pkcs11:token=My%20Token)")
    separator, code = ("&", "%26") if query else (";", "%3B")
    raise InvalidRequest(
        f"{where}; if it is part of the value before it, write that {separator!r} as {code}"
    )


def _check_syntax(name: str, raw: str, allowed: frozenset[str], *, suggest: bool) -> None:
    """Refuse characters that must be percent-encoded and '%' not followed by two hex digits."""
    for index, char in enumerate(raw):
        if char == "%":
            escape = raw[index + 1 : index + 3]
            if len(escape) == 2 and set(escape) <= _HEX_DIGITS:
                continue
            problem = (
                f"{raw[index : index + 3]!r} is not a percent-escape; '%' must be followed by "
                "two hex digits, and a literal '%' is written %25"
            )
        elif char in allowed:
            continue
        elif char == " ":
            problem = "a raw space is not allowed in a URI; write it as %20"
        elif char == "#":
            problem = "'#' would start a URI fragment; write it as %23"
        else:
            encoded = _percent_encode(char.encode("utf-8", "surrogatepass"), frozenset())
            problem = f"the character {char!r} must be percent-encoded as {encoded}"
        fix = f" ({name}={_shorten(_suggest(raw, allowed), 200)})" if suggest else ""
        raise InvalidRequest(f"PKCS#11 URI attribute {name!r}: {problem}{fix}")


def _decode_value(attr: _Attribute, raw: str) -> object:
    """The decoded, checked value of a known attribute, ready for TokenSelector."""
    _check_syntax(attr.name, raw, QUERY_CHARS if attr.query else PATH_CHARS, suggest=True)
    data = _percent_decode(raw)
    if attr.kind == "bytes":
        return data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(
            f"PKCS#11 URI attribute {attr.name!r} is not UTF-8 text after percent-decoding "
            "(RFC 7512 values are UTF-8; only 'id' holds raw bytes)"
        ) from None
    return _convert(attr, text)


def _convert(attr: _Attribute, text: str) -> object:
    """Check a decoded value against the attribute's rules; return what TokenSelector holds."""
    where = f"PKCS#11 URI attribute {attr.name!r}"
    if attr.kind == "type":
        if text not in OBJECT_TYPES:
            raise InvalidRequest(
                f"{where} is {_shorten(text)!r}; it must be one of {', '.join(OBJECT_TYPES)}"
            )
    elif attr.kind == "slot-id":
        if not _DIGITS.fullmatch(text):
            raise InvalidRequest(f"{where} is {_shorten(text)!r}; it must be a decimal number")
        significant = text.lstrip("0") or "0"  # int() refuses more than 4300 digits
        if len(significant) > len(str(MAX_SLOT_ID)) or int(significant) > MAX_SLOT_ID:
            raise InvalidRequest(
                f"{where} is {_shorten(text)!r}; a slot id is at most {MAX_SLOT_ID}"
            )
        return int(significant)
    elif attr.kind == "library-version":
        if not _LIBRARY_VERSION.fullmatch(text):
            raise InvalidRequest(
                f"{where} is {_shorten(text)!r}; it must be MAJOR or MAJOR.MINOR in decimal "
                "(library-version=2.6)"
            )
    elif attr.kind == "module-path":
        if "\x00" in text:
            raise InvalidRequest(f"{where} holds a NUL character (%00), which no path can")
        if not os.path.isabs(text):
            raise InvalidRequest(
                f"{where} is {_shorten(text)!r}; it must be an absolute path "
                "(module-path=/usr/lib/softhsm/libsofthsm2.so), so that the library loaded "
                "never depends on the current directory"
            )
    elif attr.kind == "module-name":
        if text == "" or "/" in text or "\x00" in text:
            raise InvalidRequest(
                f"{where} is {_shorten(text)!r}; it must be a library name without directory "
                "(module-name=softhsm2); give a full path with module-path"
            )
    elif attr.kind == "pin-source":
        pin_source_path(text)
    return text


def _percent_decode(raw: str) -> bytes:
    """Bytes of a value already checked by _check_syntax (so ASCII, with valid escapes)."""
    out = bytearray()
    index = 0
    while index < len(raw):
        if raw[index] == "%":
            out.append(int(raw[index + 1 : index + 3], 16))
            index += 3
        else:
            out += raw[index].encode("ascii")
            index += 1
    return bytes(out)


def _percent_encode(data: bytes, allowed: frozenset[str]) -> str:
    return "".join(chr(byte) if chr(byte) in allowed else f"%{byte:02X}" for byte in data)


def _suggest(raw: str, allowed: frozenset[str]) -> str:
    """`raw` with what must be encoded encoded, and its valid escapes kept as they are."""
    out = []
    index = 0
    while index < len(raw):
        char = raw[index]
        escape = raw[index + 1 : index + 3]
        if char == "%" and len(escape) == 2 and set(escape) <= _HEX_DIGITS:
            out.append(raw[index : index + 3])
            index += 3
            continue
        if char in allowed:
            out.append(char)
        else:
            out.append(_percent_encode(char.encode("utf-8", "surrogatepass"), frozenset()))
        index += 1
    return "".join(out)


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."

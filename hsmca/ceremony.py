"""Scripted key ceremonies: one strict TOML file, every check before the token is touched, fixed
steps printed as they happen, and a hash-chained transcript that witnesses can verify later.

Boulder's `ceremony` tool is the model (strict config, refuse an existing key label, lint before
signing, verify after, never overwrite an output). On top of it: `--rehearse DIR` runs the same
file on SoftHSM tokens kept in DIR, and every step leaves an entry in a transcript written in the
audit log's format (audit.py), so `audit.verify` checks it and a printed summary carries the hash
of its last line for the witnesses to sign.

The file is checked in three stages, each before anything is made: the file itself
(`parse_ceremony`: unknown keys, types, values, each error naming its field path), the files it
names (`plan`: inputs exist and parse, outputs and transcript do not exist, validity inside the
issuer's), then the token (module loads, token present, after login the key label unused or the
CA key found). Only then is the transcript created and the first key generated or signature made.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import getpass
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, audit, store, x509build
from .errors import HsmcaError, IntegrityError, InvalidRequest, TokenError
from .models import SIGNATURE_SCHEMES, KeyType

CEREMONY_KEY_TYPES = (KeyType.RSA3072, KeyType.RSA4096, KeyType.P256, KeyType.P384)
"""CA keys a ceremony makes or certifies; RSA 2048 is too short for a CA meant to last."""

SOFTHSM_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
REHEARSAL_SOFTHSM = "softhsm"
"""DIR/softhsm holds a rehearsal's SoftHSM config and token files."""

VALIDITY_MARGIN = dt.timedelta(days=1)
"""How far inside the issuer's notAfter a new certificate or CRL must end, at check time; the
margin covers the minutes between the checks and the signature."""

MAX_PATH_LENGTH = 10
SECRET_SETTINGS = frozenset(
    {"pin", "user-pin", "so-pin", "pin-value", "pin-file", "pin-source", "password", "passphrase"}
)
PIN_REFUSAL = (
    "PINs never go in a ceremony file; they come from HSMCA_PIN or the prompt "
    "(or --pin-file), at the ceremony"
)


class CeremonyType(enum.Enum):
    ROOT = "root"
    """A new key and its self-signed root certificate (api.init_ca)."""
    SUBORDINATE_KEY = "subordinate-key"
    """A new issuing-CA key and its certificate request (api.init_ca(subordinate=True))."""
    SIGN_CA = "sign-ca"
    """The root signs an issuing CA's request (api.sign_ca)."""
    CRL = "crl"
    """The root signs its CRL (api.make_crl)."""


# --- the file ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Setting:
    kind: str
    """How the value is checked: one of the keys of _CHECKS."""
    required: bool = True
    choices: tuple[str, ...] = ()
    hint: str = ""
    """What the value is, for the 'is missing' message."""


def _choices(values) -> str:
    return ", ".join(values)


_KEY_TYPE_NAMES = tuple(key_type.value for key_type in CEREMONY_KEY_TYPES)

_TOKEN = {
    "label": _Setting("token-label", hint="the token's label, as 'hsmca token list' shows it"),
    "serial": _Setting("serial", required=False),
    "module": _Setting("module", required=False),
}
_NEW_KEY = {
    "label": _Setting("key-label", hint="the label the new key gets on the token"),
    "type": _Setting(
        "choice", choices=_KEY_TYPE_NAMES, hint=f"it must be one of {_choices(_KEY_TYPE_NAMES)}"
    ),
    "always-authenticate": _Setting("bool", required=False),
}
_CA_KEY = {"label": _Setting("key-label", required=False)}
_SIGNATURE_SCHEME = _Setting(
    "choice",
    required=False,
    choices=SIGNATURE_SCHEMES,
    hint="pkcs1v15 (default) or pss: RSA-PSS for an RSA CA whose token offers it",
)
_PATH = _Setting("path", hint="a file or directory path")

SCHEMAS: dict[CeremonyType, dict[str, dict[str, _Setting]]] = {
    CeremonyType.ROOT: {
        "token": _TOKEN,
        "key": _NEW_KEY,
        "certificate": {
            "subject": _Setting("subject", hint="the root's name, e.g. 'CN=Example Root CA'"),
            "days": _Setting("days", hint="the root's validity in days, e.g. 7305"),
            "signature-scheme": _SIGNATURE_SCHEME,
        },
        "outputs": {"ca-dir": dataclasses.replace(_PATH, hint="the new root CA directory")},
    },
    CeremonyType.SUBORDINATE_KEY: {
        "token": _TOKEN,
        "key": _NEW_KEY,
        "certificate": {
            "subject": _Setting("subject", hint="the issuing CA's name, e.g. 'CN=Example CA'"),
        },
        "outputs": {
            "ca-dir": dataclasses.replace(
                _PATH, hint="the new issuing CA directory, where ca.csr is written"
            )
        },
    },
    CeremonyType.SIGN_CA: {
        "token": _TOKEN,
        "key": _CA_KEY,
        "certificate": {
            "days": _Setting("days", hint="the issuing CA's validity, inside the root's"),
            "path-length": _Setting("path-length", hint="usually 0: it issues no further CAs"),
            "subject": _Setting("subject", required=False),
            "signature-scheme": _SIGNATURE_SCHEME,
        },
        "inputs": {
            "ca-dir": dataclasses.replace(_PATH, hint="the root's CA directory"),
            "csr": dataclasses.replace(_PATH, hint="the issuing CA's request (its ca.csr)"),
        },
        "outputs": {
            "certificate": dataclasses.replace(
                _PATH, hint="the PEM file for the new certificate (then the root's)"
            )
        },
    },
    CeremonyType.CRL: {
        "token": _TOKEN,
        "key": _CA_KEY,
        "crl": {
            "days": _Setting("days", hint="days until the CRL's nextUpdate"),
            "format": _Setting("choice", required=False, choices=("der", "pem")),
        },
        "inputs": {"ca-dir": dataclasses.replace(_PATH, hint="the root's CA directory")},
        "outputs": {"crl": dataclasses.replace(_PATH, hint="the CRL file to write")},
    },
}
TOP_LEVEL = {
    "type": _Setting("choice", choices=tuple(t.value for t in CeremonyType)),
    "transcript": _Setting("path", required=False),
    "description": _Setting("text", required=False),
}
_ALL_TABLES = tuple(dict.fromkeys(name for schema in SCHEMAS.values() for name in schema))


@dataclass(frozen=True)
class Ceremony:
    """A checked ceremony file: every value has the right type and a valid value."""

    type: CeremonyType
    token_label: str
    settings: dict[str, Any] = field(repr=False)
    """Every setting given, by field path ("key.type"), as checked; what the transcript records."""
    token_serial: str | None = None
    module: str | None = None
    key_label: str | None = None
    key_type: KeyType | None = None
    always_authenticate: bool = False
    subject: str | None = None
    days: int | None = None
    path_length: int | None = None
    signature_scheme: str = "pkcs1v15"
    crl_format: str = "der"
    transcript: str | None = None
    description: str | None = None

    @property
    def inputs(self) -> dict[str, str]:
        return {k: v for k, v in self.settings.items() if k.startswith("inputs.")}

    @property
    def outputs(self) -> dict[str, str]:
        return {k: v for k, v in self.settings.items() if k.startswith("outputs.")}

    @property
    def makes_key(self) -> bool:
        return self.type in (CeremonyType.ROOT, CeremonyType.SUBORDINATE_KEY)


_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "true or false"),
    (int, "an integer"),
    (float, "a decimal number"),
    (str, "a string"),
    (list, "an array"),
    (dict, "a table"),
    (dt.datetime, "a date-time"),
    (dt.date, "a date"),
    (dt.time, "a time"),
)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _describe(value: Any) -> str:
    for kind, name in _TYPE_NAMES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _key(name: Any) -> str:
    """A key as TOML writes it: bare when it can be, else quoted."""
    text = str(name)
    return text if _BARE_KEY.fullmatch(text) else json.dumps(text)


def _shown(value: str, limit: int = 60) -> str:
    text = value if len(value) <= limit else value[: limit - 3] + "..."
    return json.dumps(text, ensure_ascii=False)


def _text(where: str, value: str, limit: int, *, newlines: bool = False) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"{where} is not valid text (it holds a lone surrogate)") from None
    if not value.strip():
        raise InvalidRequest(f"{where} is empty")
    allowed = "\n\t" if newlines else ""
    if any((ch < " " or ch == "\x7f") and ch not in allowed for ch in value):
        raise InvalidRequest(f"{where} holds a control character")
    if len(value) > limit:
        raise InvalidRequest(f"{where} is longer than {limit} characters")
    return value


def _token_label(where: str, value: str, _setting: _Setting) -> str:
    _text(where, value, 32)
    if value != value.strip():
        raise InvalidRequest(f"{where} starts or ends with a space; token labels are compared")
    if len(value.encode("utf-8")) > 32:
        raise InvalidRequest(f"{where} is longer than 32 bytes, the most a PKCS#11 token label has")
    return value


def _key_label(where: str, value: str, _setting: _Setting) -> str:
    return _text(where, value, 128)


def _serial(where: str, value: str, _setting: _Setting) -> str:
    _text(where, value, 16)
    if not value.isascii() or value != value.strip():
        raise InvalidRequest(
            f"{where} must be the token's serial number as 'hsmca token list' shows it "
            "(at most 16 ASCII characters, no spaces around it)"
        )
    return value


def _module(where: str, value: str, _setting: _Setting) -> str:
    _text(where, value, 4096)
    if not os.path.isabs(value):
        raise InvalidRequest(
            f"{where} must be an absolute path (e.g. /usr/lib/softhsm/libsofthsm2.so), so that "
            "the library loaded never depends on the current directory"
        )
    return value


def _path(where: str, value: str, _setting: _Setting) -> str:
    return _text(where, value, 4096)


def _subject(where: str, value: str, _setting: _Setting) -> str:
    _text(where, value, 1024)
    try:
        x509build.parse_subject(value)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{where}: {exc}") from None
    except ValueError:
        raise InvalidRequest(f"{where}: invalid subject {_shown(value)}") from None
    return value


def _days(where: str, value: int, _setting: _Setting) -> int:
    if value < 1:
        raise InvalidRequest(f"{where} must be at least 1 day, not {value}")
    if value > 36500:
        raise InvalidRequest(f"{where} of {value} days is more than 100 years; choose fewer days")
    return value


def _path_length(where: str, value: int, _setting: _Setting) -> int:
    if not 0 <= value <= MAX_PATH_LENGTH:
        raise InvalidRequest(
            f"{where} must be between 0 and {MAX_PATH_LENGTH} (0: the CA issues no further CAs), "
            f"not {value}"
        )
    return value


def _choice(where: str, value: str, setting: _Setting) -> str:
    if value not in setting.choices:
        raise InvalidRequest(
            f"{where} must be one of {_choices(setting.choices)}, not {_shown(value)}"
        )
    return value


def _boolean(where: str, value: bool, _setting: _Setting) -> bool:
    return value


def _description(where: str, value: str, _setting: _Setting) -> str:
    return _text(where, value, 2000, newlines=True)


_CHECKS: dict[str, Callable[[str, Any, _Setting], Any]] = {
    "token-label": _token_label,
    "key-label": _key_label,
    "serial": _serial,
    "module": _module,
    "path": _path,
    "subject": _subject,
    "days": _days,
    "path-length": _path_length,
    "choice": _choice,
    "bool": _boolean,
    "text": _description,
}
_EXPECTED = {
    "bool": (bool, "true or false"),
    "days": (int, "an integer"),
    "path-length": (int, "an integer"),
}


def _check(where: str, setting: _Setting, value: Any) -> Any:
    expected, name = _EXPECTED.get(setting.kind, (str, "a string"))
    wrong = not isinstance(value, expected) or (expected is int and isinstance(value, bool))
    if wrong:
        raise InvalidRequest(f"{where} must be {name}, not {_describe(value)}")
    return _CHECKS[setting.kind](where, value, setting)


def _refuse_secrets(value: Any, where: str) -> None:
    if isinstance(value, Mapping):
        for name, item in value.items():
            path = f"{where}.{_key(name)}" if where else _key(name)
            if str(name).lower().replace("_", "-") in SECRET_SETTINGS:
                raise InvalidRequest(f"{path}: {PIN_REFUSAL}")
            _refuse_secrets(item, path)
    elif isinstance(value, list):
        for item in value:
            _refuse_secrets(item, where)


def _ceremony_type(data: Mapping[str, Any]) -> CeremonyType:
    names = _choices(t.value for t in CeremonyType)
    if "type" not in data:
        raise InvalidRequest(
            f'type is missing: a ceremony file starts with the ceremony it is, e.g. type = "root" '
            f"(one of {names})"
        )
    return CeremonyType(_check("type", TOP_LEVEL["type"], data["type"]))


def parse_ceremony(data: Any) -> Ceremony:
    """Check a parsed ceremony file strictly; every refusal is an InvalidRequest naming a field."""
    if not isinstance(data, Mapping):
        raise InvalidRequest(f"a ceremony file is a TOML document of tables, not {_describe(data)}")
    _refuse_secrets(data, "")
    kind = _ceremony_type(data)
    schema = SCHEMAS[kind]
    tables = ", ".join(f"[{name}]" for name in schema)
    values: dict[str, Any] = {"type": kind.value}
    for name, value in data.items():
        where = _key(name)
        if name == "type":
            continue
        if name in TOP_LEVEL:
            values[name] = _check(where, TOP_LEVEL[name], value)
        elif name in schema:
            if not isinstance(value, Mapping):
                raise InvalidRequest(f"{where} must be a table ([{where}]), not {_describe(value)}")
            settings = schema[name]
            for key, item in value.items():
                path = f"{where}.{_key(key)}"
                if key not in settings:
                    raise InvalidRequest(
                        f"{path} is not a setting of a {kind.value} ceremony; [{where}] takes "
                        f"{_choices(settings)}"
                    )
                values[f"{name}.{key}"] = _check(path, settings[key], item)
        elif name in _ALL_TABLES:
            raise InvalidRequest(
                f"{where}: a {kind.value} ceremony has no [{where}] table; it takes {tables}"
            )
        else:
            raise InvalidRequest(
                f"{where} is not a setting of a ceremony file; the top level takes "
                f"{_choices(TOP_LEVEL)} and the tables {tables}"
            )
    for table, settings in schema.items():
        for key, setting in settings.items():
            path = f"{table}.{key}"
            if setting.required and path not in values:
                raise InvalidRequest(
                    f"{path} is missing" + (f": {setting.hint}" if setting.hint else "")
                )
    key_type = values.get("key.type")
    if values.get("certificate.signature-scheme") == "pss" and key_type and key_type[0] == "p":
        raise InvalidRequest(
            f"certificate.signature-scheme pss needs an RSA key; key.type is {key_type}"
        )
    return Ceremony(
        type=kind,
        token_label=values["token.label"],
        settings=values,
        token_serial=values.get("token.serial"),
        module=values.get("token.module"),
        key_label=values.get("key.label"),
        key_type=KeyType(key_type) if key_type else None,
        always_authenticate=values.get("key.always-authenticate", False),
        subject=values.get("certificate.subject"),
        days=values.get("certificate.days", values.get("crl.days")),
        path_length=values.get("certificate.path-length"),
        signature_scheme=values.get("certificate.signature-scheme", "pkcs1v15"),
        crl_format=values.get("crl.format", "der"),
        transcript=values.get("transcript"),
        description=values.get("description"),
    )


def load_ceremony(path: Path) -> tuple[Ceremony, bytes]:
    """Read and check a ceremony file; returns it with the file's bytes (for their SHA-256)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"cannot read the ceremony file {path}: {exc.strerror}") from None
    try:
        parsed = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidRequest(f"the ceremony file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequest(f"the ceremony file {path} is not valid TOML: {exc}") from None
    try:
        return parse_ceremony(parsed), data
    except InvalidRequest as exc:
        raise InvalidRequest(f"{path}: {exc}") from None


# --- where the files are -------------------------------------------------------------------------


def find_softhsm() -> str:
    """The SoftHSM library a rehearsal uses, whatever the ceremony file names."""
    for candidate in SOFTHSM_CANDIDATES:
        if os.path.isfile(candidate):
            return candidate
    raise InvalidRequest(
        "--rehearse needs SoftHSM 2 and found none in "
        f"{', '.join(SOFTHSM_CANDIDATES)}: apt-get install softhsm2"
    )


@dataclass(frozen=True)
class Plan:
    """A ceremony file with every path resolved and every file-level check passed."""

    ceremony: Ceremony
    source: Path
    source_sha256: str
    rehearsal: Path | None
    """DIR of --rehearse, absolute; None for the real ceremony."""
    paths: dict[str, Path]
    """Every input and output, by field path, absolute."""
    transcript: Path
    summary: Path
    module: str
    """The PKCS#11 library the ceremony will load."""
    checks: list[str] = field(default_factory=list)
    """What was checked, one sentence each, for the transcript."""
    inputs: list[dict[str, Any]] = field(default_factory=list)
    """The input files with their SHA-256, as the transcript records them."""
    ca: Any = None
    """For sign-ca and crl: the signing CA's CaConfig (from inputs.ca-dir)."""
    ca_certificate: Any = None
    """For sign-ca and crl: the signing CA's certificate (asn1crypto)."""
    csr: Any = None
    """For sign-ca: the parsed, verified request."""


def _resolve(where: str, text: str, rehearsal: Path | None) -> Path:
    if rehearsal is None:
        return Path(os.path.abspath(text))
    if os.path.isabs(text):
        raise InvalidRequest(
            f"{where} is the absolute path {_shown(text)}; a rehearsal writes and reads every file "
            "under DIR: give the path relative to it"
        )
    resolved = Path(os.path.abspath(rehearsal / text))
    if not resolved.is_relative_to(rehearsal):
        raise InvalidRequest(f"{where} {_shown(text)} leads out of the rehearsal DIR {rehearsal}")
    return resolved


def summary_path(transcript: Path) -> Path:
    """The plain-text summary beside a transcript: X.jsonl gives X.txt, anything else X.txt."""
    if transcript.suffix == ".jsonl":
        return transcript.with_suffix(".txt")
    return Path(f"{transcript}.txt")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_record(where: str, path: Path, transcript: Path, what: str, verify: bool) -> dict:
    return {
        "field": where,
        "path": str(path),
        "relative": os.path.relpath(path, transcript.parent),
        "sha256": sha256_file(path),
        "what": what,
        "verify": verify,
    }


def plan(
    source: Path,
    *,
    rehearse: Path | None = None,
    transcript: Path | None = None,
    now: dt.datetime | None = None,
    loaded: tuple[Ceremony, bytes] | None = None,
) -> Plan:
    """Read the ceremony file (unless `loaded` already) and check everything that needs no token."""
    ceremony, data = loaded if loaded is not None else load_ceremony(source)
    rehearsal = Path(os.path.abspath(rehearse)) if rehearse is not None else None
    if rehearsal is not None and rehearsal.exists() and not rehearsal.is_dir():
        raise InvalidRequest(f"--rehearse {rehearse}: not a directory")
    paths = {
        where: _resolve(where, text, rehearsal)
        for where, text in {**ceremony.inputs, **ceremony.outputs}.items()
    }
    if transcript is not None:
        transcript_path = Path(os.path.abspath(transcript))
    elif ceremony.transcript is not None:
        transcript_path = _resolve("transcript", ceremony.transcript, rehearsal)
    else:
        first = paths[next(iter(ceremony.outputs))]
        transcript_path = first.parent / f"{first.name}.transcript.jsonl"
    checks: list[str] = []
    module = _module_for(ceremony, rehearsal)
    result = Plan(
        ceremony,
        Path(source),
        hashlib.sha256(data).hexdigest(),
        rehearsal,
        paths,
        transcript_path,
        summary_path(transcript_path),
        module,
        checks,
    )
    _check_files(result)
    now = now or x509build.utc_now()
    if ceremony.type in (CeremonyType.SIGN_CA, CeremonyType.CRL):
        result = _check_issuer(result, now)
    if ceremony.type is CeremonyType.SIGN_CA:
        result = _check_csr(result)
    return result


def _module_for(ceremony: Ceremony, rehearsal: Path | None) -> str:
    if rehearsal is not None:
        return find_softhsm()
    if ceremony.module is not None or not ceremony.makes_key:
        return ceremony.module or ""  # sign-ca and crl: the CA directory's, checked later
    from_environment = os.environ.get("HSMCA_MODULE", "")
    if not from_environment:
        raise InvalidRequest(
            "token.module is not set and neither is HSMCA_MODULE: name the PKCS#11 library "
            "of the token in the ceremony file"
        )
    return from_environment


def _check_files(result: Plan) -> None:
    ceremony, checks = result.ceremony, result.checks
    for where in ceremony.inputs:
        path = result.paths[where]
        if not path.exists():
            hint = ""
            if result.rehearsal is not None:
                hint = "; rehearse the ceremonies before this one with the same DIR first"
            raise InvalidRequest(f"{where}: {path} does not exist{hint}")
        checks.append(f"{where} {path} exists")
    outputs = {where: result.paths[where] for where in ceremony.outputs}
    outputs["transcript"] = result.transcript
    outputs["the transcript's summary"] = result.summary
    for where, path in outputs.items():
        if os.path.lexists(path):
            raise InvalidRequest(
                f"{where}: {path} already exists; a ceremony never writes over a file: move it "
                "away or choose another path"
            )
        checks.append(f"{where} {path} does not exist yet")
    everything = list(outputs.items()) + [(w, result.paths[w]) for w in ceremony.inputs]
    for index, (where, path) in enumerate(everything):
        for other_where, other in everything[index + 1 :]:
            if path == other or path.is_relative_to(other) or other.is_relative_to(path):
                raise InvalidRequest(
                    f"{where} ({path}) and {other_where} ({other}) are the same file or one is "
                    "inside the other; give each its own place"
                )


def _check_issuer(result: Plan, now: dt.datetime) -> Plan:
    """sign-ca and crl: the CA directory, its token and key, and validity inside the CA's."""
    from asn1crypto import x509 as asn1_x509

    ceremony = result.ceremony
    ca_dir = result.paths["inputs.ca-dir"]
    try:
        config = store.load_config(ca_dir)
        chain = store.read_ca_chain(ca_dir)
    except InvalidRequest as exc:
        raise InvalidRequest(f"inputs.ca-dir: {exc}") from None
    if config.state != "active":
        raise InvalidRequest(
            f"inputs.ca-dir: {ca_dir} is a subordinate CA still waiting for its certificate"
        )
    try:
        certificate = asn1_x509.Certificate.load(chain[0])
        certificate.native  # noqa: B018 (parse all of it now)
    except ValueError:
        raise InvalidRequest(
            f"inputs.ca-dir: {ca_dir / store.CA_CERT_PEM_NAME} is damaged"
        ) from None
    subject = _rfc4514(certificate.subject)
    if ceremony.token_label != config.token_label:
        raise InvalidRequest(
            f"token.label is {_shown(ceremony.token_label)} but the CA in {ca_dir} is on the "
            f"token {_shown(config.token_label)}"
        )
    if result.rehearsal is None:
        if ceremony.token_serial is not None and ceremony.token_serial != config.token_serial:
            raise InvalidRequest(
                f"token.serial is {_shown(ceremony.token_serial)} but the CA in {ca_dir} is on the "
                f"token with serial {_shown(config.token_serial)}"
            )
        if ceremony.module is not None and os.path.realpath(ceremony.module) != os.path.realpath(
            config.module
        ):
            raise InvalidRequest(
                f"token.module is {ceremony.module} but the CA in {ca_dir} uses {config.module}"
            )
    elif os.path.realpath(config.module) != os.path.realpath(result.module):
        raise InvalidRequest(
            f"inputs.ca-dir: {ca_dir} uses the module {config.module}, not SoftHSM: it was not "
            "made by a rehearsal, and a rehearsal never touches a real token"
        )
    if ceremony.key_label is not None and ceremony.key_label != config.key_label:
        raise InvalidRequest(
            f"key.label is {_shown(ceremony.key_label)} but the key of the CA in {ca_dir} is "
            f"labelled {_shown(config.key_label)}"
        )
    not_after = certificate.not_valid_after
    if not_after <= now:
        raise InvalidRequest(f"inputs.ca-dir: the certificate of {subject} expired on {not_after}")
    days = ceremony.days or 0
    ends = now + dt.timedelta(days=days)
    where = "certificate.days" if ceremony.type is CeremonyType.SIGN_CA else "crl.days"
    if ends + VALIDITY_MARGIN > not_after:
        most = (not_after - now - VALIDITY_MARGIN).days
        raise InvalidRequest(
            f"{where}: {days} days from now ends on {ends:%Y-%m-%d}, too close to or after the "
            f"end of {subject} on {not_after:%Y-%m-%d}; a ceremony refuses rather than shortens: "
            f"choose at most {most} days"
        )
    result.checks.append(
        f"inputs.ca-dir {ca_dir} is an active CA directory of {subject} on token "
        f"{config.token_label!r} (serial {config.token_serial})"
    )
    result.checks.append(
        f"{where}: {days} days end on {ends:%Y-%m-%d}, inside {subject} (until "
        f"{not_after:%Y-%m-%d})"
    )
    transcript = result.transcript
    result.inputs.append(
        _file_record(
            "inputs.ca-dir", ca_dir / store.CA_CERT_PEM_NAME, transcript, "CA certificate", False
        )
    )
    if (ca_dir / store.CHAIN_PEM_NAME).exists():
        result.inputs.append(
            _file_record(
                "inputs.ca-dir", ca_dir / store.CHAIN_PEM_NAME, transcript, "CA chain", False
            )
        )
    return dataclasses.replace(
        result,
        module=config.module if result.rehearsal is None else result.module,
        ca=config,
        ca_certificate=certificate,
    )


def _check_csr(result: Plan) -> Plan:
    from . import csr

    ceremony = result.ceremony
    path = result.paths["inputs.csr"]
    try:
        data = path.read_bytes()
        parsed = csr.parse_csr(data, str(path), for_ca=True)
    except OSError as exc:
        raise InvalidRequest(f"inputs.csr: cannot read {path}: {exc.strerror}") from None
    except InvalidRequest as exc:
        raise InvalidRequest(f"inputs.csr: {exc}") from None
    if parsed.key_type not in CEREMONY_KEY_TYPES:
        raise InvalidRequest(
            f"inputs.csr: the request's key is {parsed.key_type.value}; a ceremony certifies CA "
            f"keys of {_choices(_KEY_TYPE_NAMES)}"
        )
    if parsed.public_key.dump() == result.ca_certificate.public_key.dump():
        raise InvalidRequest("inputs.csr: the request is for the root's own key")
    if ceremony.subject is not None:
        expected = x509build.parse_subject(ceremony.subject)
        if _rfc4514(expected) != _rfc4514(parsed.subject_name):
            raise InvalidRequest(
                f"certificate.subject is {_shown(ceremony.subject)} but the request in {path} is "
                f"for {_shown(_rfc4514(parsed.subject_name))}"
            )
    result.checks.append(
        f"inputs.csr {path} is a PKCS#10 request whose signature verifies: "
        f"{_rfc4514(parsed.subject_name)}, {parsed.key_type.value} key"
    )
    record = _file_record("inputs.csr", path, result.transcript, "certificate request", False)
    record["public_key_sha256"] = hashlib.sha256(parsed.public_key.dump()).hexdigest()
    result.inputs.append(record)
    return dataclasses.replace(result, csr=parsed)


def _rfc4514(name) -> str:
    from . import db

    return db.rfc4514(name)


# --- rehearsal tokens ----------------------------------------------------------------------------

SOFTHSM_CONF = """\
# SoftHSM v2 configuration of an hsmca ceremony rehearsal (hsmca ceremony run --rehearse).
# Its tokens live in the folder below; the system's own SoftHSM tokens are never seen.
directories.tokendir = {tokendir}
objectstore.backend = file
log.level = ERROR
slots.removable = false
slots.mechanisms = ALL
library.reset_on_fork = false
"""


def prepare_rehearsal(
    rehearsal: Path, module: str, labels: list[str], new_pin: Callable[[str], str]
) -> dict[str, str]:
    """Point SoftHSM at DIR/softhsm and create the tokens in `labels` that are missing there.

    SOFTHSM2_CONF is set in this process before the library is first loaded (and the library
    re-initialised if it was loaded already), so only DIR's tokens are ever visible. Returns the
    user PIN of each token created, by label.
    """
    from . import token

    softhsm = rehearsal / REHEARSAL_SOFTHSM
    conf = softhsm / "softhsm2.conf"
    try:
        (softhsm / "tokens").mkdir(parents=True, exist_ok=True)
        if not conf.exists():
            store.write_file(
                conf, SOFTHSM_CONF.format(tokendir=softhsm / "tokens").encode(), store.SECRET_MODE
            )
    except OSError as exc:
        raise HsmcaError(f"cannot prepare the rehearsal in {softhsm}: {exc.strerror}") from None
    os.environ["SOFTHSM2_CONF"] = str(conf)
    library = token.load_library(module)
    with token.translate_errors("SoftHSM"):
        library.reinitialize()
    present = {
        slot["token"]["label"]
        for slot in token.describe_slots(module)
        if slot["token"] is not None and slot["token"]["initialized"]
    }
    created: dict[str, str] = {}
    for label in labels:
        if label in present or label in created:
            continue
        pin = new_pin(label)
        _init_softhsm_token(conf, label, pin)
        created[label] = pin
    if created:
        with token.translate_errors("SoftHSM"):
            library.reinitialize()  # tokens made by softhsm2-util appear after this
    return created


def _init_softhsm_token(conf: Path, label: str, pin: str) -> None:
    if shutil.which("softhsm2-util") is None:
        raise InvalidRequest(
            "--rehearse needs softhsm2-util to create tokens: apt-get install softhsm2"
        )
    # softhsm2-util takes PINs only as arguments; these are a rehearsal token's, never a real one's.
    command = [
        "softhsm2-util", "--init-token", "--free", "--label", label,
        "--so-pin", secrets.token_hex(16), "--pin", pin,
    ]  # fmt: skip
    done = subprocess.run(
        command,
        env=dict(os.environ, SOFTHSM2_CONF=str(conf)),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        raise TokenError(
            f"softhsm2-util could not create the rehearsal token {label!r}: "
            f"{reason[-1] if reason else f'exit status {done.returncode}'}"
        )


# --- running a ceremony --------------------------------------------------------------------------

CHECK_STEPS = 3
"""Steps 1-3 only check (the file, the token, the key label or CA key); 4 on make things."""

LINT_NOTE = (
    "pkilint (RFC 5280 validators) linted the TBS, signed by a throwaway software key of the "
    "issuer's type, before the token signed; any finding at WARNING or above would have stopped "
    "the signature, and none is tolerated for a CA certificate or CRL. The token signed only "
    "after lint passed, and the signed TBS was checked byte-identical to the linted one"
)
FIXED_CA_FILES = {
    CeremonyType.ROOT: {
        store.CA_CERT_PEM_NAME: "root certificate (PEM)",
        store.CA_CERT_DER_NAME: "root certificate (DER)",
        store.THUMBPRINT_NAME: "root certificate SHA-1 thumbprint",
    },
    CeremonyType.SUBORDINATE_KEY: {store.CSR_NAME: "issuing CA certificate request"},
}
"""The files of a new CA directory that never change afterwards; the rest (its config,
database and audit log) are recorded but not re-checked by `ceremony verify`."""


@dataclass(frozen=True)
class Outcome:
    ceremony: Ceremony
    transcript: Path
    summary: Path
    entries: int
    last_line_sha256: str
    lines: list[str]
    """What to tell the people in the room."""


def _who() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid {os.getuid()}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _colons(hex_digest: str) -> str:
    return ":".join(hex_digest[i : i + 2] for i in range(0, len(hex_digest), 2)).upper()


def _certificate_facts(certificate) -> dict[str, Any]:
    return {
        "subject": _rfc4514(certificate.subject),
        "issuer": _rfc4514(certificate.issuer),
        "serial": format(certificate.serial_number, "x"),
        "not_before": certificate.not_valid_before.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": certificate.not_valid_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sha256": certificate.sha256.hex(),
        "sha1": certificate.sha1.hex(),
        "public_key_sha256": hashlib.sha256(certificate.public_key.dump()).hexdigest(),
    }


def _audit_anchor(ca_dir: Path) -> dict[str, Any]:
    """Where the CA's own audit log stood after the ceremony's signature: links the two."""
    checked = audit.verify(audit.audit_path(ca_dir))
    if not checked.ok:
        raise IntegrityError(f"the audit log of {ca_dir} does not verify: {checked.message}")
    return {
        "path": str(audit.audit_path(ca_dir)),
        "entries": checked.entries,
        "last_line_sha256": checked.last_line_sha256,
    }


class _Runner:
    """One ceremony: its steps in order, the facts each step establishes, and the transcript."""

    def __init__(
        self,
        ceremony: Ceremony,
        data: bytes,
        source: Path,
        *,
        rehearse: Path | None,
        transcript: Path | None,
        pin_source,
        new_pin: Callable[[str], str],
        say: Callable[[str], None],
    ):
        self.ceremony = ceremony
        self.data = data
        self.source = source
        self.rehearse = rehearse
        self.transcript_override = transcript
        self.base_pin_source = pin_source
        self.new_pin = new_pin
        self.say = say
        self.created_pins: dict[str, str] = {}
        self.plan: Plan | None = None
        self.device = None
        self.info = None
        self.token_facts: dict[str, Any] = {}
        self.key_facts: dict[str, Any] = {}
        self.subject: str | None = ceremony.subject
        self.serial: str | None = None
        self.made: Any = None
        self.facts: dict[str, Any] = {}
        """What the summary shows: certificate, request, CRL."""
        self.outputs: list[dict[str, Any]] = []
        self.who = _who()
        self.host = socket.gethostname()
        self.started = _now()

    # PINs: a rehearsal token created just now already has its PIN; anything else is asked.
    def pins(self, info):
        if info.label in self.created_pins:
            return self.created_pins[info.label]
        return self.base_pin_source(info)

    @property
    def token_name(self) -> str:
        return f"token {self.ceremony.token_label!r}"

    def steps(self) -> list[tuple[str, str, Callable[[], dict[str, Any]]]]:
        ceremony = self.ceremony
        where = " (rehearsal: SoftHSM in DIR/softhsm)" if self.rehearse is not None else ""
        steps = [
            ("check-files", "checking the ceremony file, its inputs and outputs", self.check_files),
            ("find-token", f"finding {self.token_name}{where}", self.find_token),
        ]
        if ceremony.makes_key:
            steps.append(
                (
                    "check-key-label",
                    f"logging in to {self.token_name}; no object may be labelled "
                    f"{ceremony.key_label!r} yet",
                    self.check_label_unused,
                )
            )
        else:
            steps.append(
                (
                    "find-ca-key",
                    f"logging in to {self.token_name} and finding the CA's key",
                    self.find_ca_key,
                )
            )
        key = f"{ceremony.key_type.value} key {ceremony.key_label!r}" if ceremony.key_type else ""
        actions = {
            CeremonyType.ROOT: [
                (
                    "generate-and-self-sign",
                    f"generating the {key} on {self.token_name} and self-signing the root "
                    "certificate (linted before the token signs)",
                    self.make_root,
                ),
                ("verify", "verifying the root certificate and the key", self.verify_root),
            ],
            CeremonyType.SUBORDINATE_KEY: [
                (
                    "generate-and-request",
                    f"generating the {key} on {self.token_name} and signing its certificate "
                    "request with it",
                    self.make_subordinate_key,
                ),
                ("verify", "verifying the certificate request and the key", self.verify_request),
            ],
            CeremonyType.SIGN_CA: [
                (
                    "sign-ca",
                    f"signing the subordinate CA certificate on {self.token_name} (linted before "
                    "the token signs)",
                    self.sign_ca,
                ),
                (
                    "verify",
                    "verifying the certificate against the root and the request",
                    self.verify_ca_certificate,
                ),
            ],
            CeremonyType.CRL: [
                (
                    "sign-crl",
                    f"signing the CRL on {self.token_name} (linted before the token signs)",
                    self.sign_crl,
                ),
                ("verify", "verifying the CRL", self.verify_crl),
            ],
        }[ceremony.type]
        return [
            *steps,
            *actions,
            ("complete", "hashing the outputs and closing the transcript", self.complete),
        ]

    # --- the run --------------------------------------------------------------------------------

    def run(self) -> Outcome:
        steps = self.steps()
        total = len(steps)
        # The checks are recorded once they have all passed: a refused file leaves nothing behind.
        pending: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        log = None
        last = None
        try:
            for number, (operation, title, action) in enumerate(steps, 1):
                self.say(f"[{number}/{total}] {title} ...")
                started = _now().strftime("%Y-%m-%dT%H:%M:%SZ")
                if number == CHECK_STEPS + 1:
                    log = self.open_transcript()
                    for record in pending:
                        last = self.append(log, *record)
                try:
                    facts = action()
                except BaseException as exc:
                    if log is not None:
                        self.record_failure(log, total, number, operation, title, exc)
                    raise
                for line in facts.pop("say", []):
                    self.say(f"      {line}")
                record = (
                    operation,
                    self.context(total, number, title),
                    {"started": started, **facts},
                )
                if log is None:
                    pending.append(record)
                else:
                    last = self.append(log, *record)
        finally:
            if log is not None:
                log.close()
        assert self.plan is not None and last is not None
        self.write_summary(last, failure=None)
        return Outcome(
            self.ceremony,
            self.plan.transcript,
            self.plan.summary,
            last.seq,
            last.line_sha256,
            self.closing_lines(last),
        )

    def context(self, total: int, number: int, title: str) -> dict[str, Any]:
        """What every entry says, as it stands when the step ends."""
        context: dict[str, Any] = {
            "serial": self.serial,
            "subject": self.subject,
            "token_serial": self.info.serial if self.info is not None else None,
            "when": _now(),
            "ceremony": self.ceremony.type.value,
            "step": number,
            "steps": total,
            "title": title,
            "who": self.who,
            "host": self.host,
            "hsmca_version": __version__,
            "rehearsal": self.rehearse is not None,
        }
        if self.token_facts:
            context["token"] = self.token_facts
        return context

    @staticmethod
    def append(log, operation: str, context: dict[str, Any], facts: dict[str, Any]):
        fields = {**context, **facts}
        return log.append(
            operation,
            fields.pop("serial"),
            fields.pop("subject"),
            fields.pop("token_serial"),
            **fields,
        )

    def open_transcript(self) -> audit.AuditLog:
        assert self.plan is not None
        path = self.plan.transcript
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(
                os.open(
                    path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, store.PUBLIC_MODE
                )
            )
        except FileExistsError:
            raise InvalidRequest(
                f"the transcript {path} appeared during the checks; nothing was made"
            ) from None
        except OSError as exc:
            raise HsmcaError(f"cannot create the transcript {path}: {exc.strerror}") from None
        return audit.AuditLog(path=path)

    def record_failure(self, log, total, number, operation, title, exc: BaseException) -> None:
        message = str(exc) or type(exc).__name__
        if isinstance(exc, KeyboardInterrupt):
            message = "interrupted"
        with contextlib.suppress(Exception):
            self.collect_outputs(partial=True)
        entry = None
        with contextlib.suppress(HsmcaError, OSError):
            entry = self.append(
                log,
                "failed",
                self.context(total, number, f"step {number} failed: {title}"),
                {
                    "failed_step": number,
                    "failed_operation": operation,
                    "error": message,
                    "outputs": self.outputs,
                },
            )
        log.close()
        if entry is not None:
            with contextlib.suppress(HsmcaError, OSError):
                self.write_summary(entry, failure=f"step {number} ({title}): {message}")
        where = self.plan.transcript if self.plan is not None else "the transcript"
        if isinstance(exc, KeyboardInterrupt):
            raise HsmcaError(f"interrupted at step {number}; recorded in {where}") from None
        if isinstance(exc, HsmcaError):
            raise type(exc)(f"step {number} failed: {exc} (recorded in {where})") from None

    # --- steps 1-3: checks ----------------------------------------------------------------------

    def check_files(self) -> dict[str, Any]:
        self.plan = plan(
            self.source,
            rehearse=self.rehearse,
            transcript=self.transcript_override,
            loaded=(self.ceremony, self.data),
        )
        p = self.plan
        if p.csr is not None:
            self.subject = _rfc4514(p.csr.subject_name)
        elif p.ca_certificate is not None:
            self.subject = _rfc4514(p.ca_certificate.subject)
        said = [f"transcript: {p.transcript}"]
        if p.rehearsal is not None:
            said.insert(0, f"rehearsal in {p.rehearsal}: every file under it, SoftHSM tokens only")
        return {
            "say": said,
            "ceremony_file": {"path": str(p.source.absolute()), "sha256": p.source_sha256},
            "settings": self.ceremony.settings,
            "rehearsal_dir": str(p.rehearsal) if p.rehearsal is not None else None,
            "transcript": str(p.transcript),
            "checks": ["the ceremony file's settings are all known and valid", *p.checks],
            "inputs": p.inputs,
        }

    def find_token(self) -> dict[str, Any]:
        from . import token
        from .p11uri import TokenSelector

        p = self.plan
        assert p is not None
        said = []
        created = False
        if p.rehearsal is not None:
            labels = [self.ceremony.token_label] if self.ceremony.makes_key else []
            self.created_pins = prepare_rehearsal(p.rehearsal, p.module, labels, self.new_pin)
            created = bool(self.created_pins)
            if created:
                said.append(f"created the rehearsal token {self.ceremony.token_label!r}")
            if self.ceremony.module or self.ceremony.token_serial:
                said.append("token.module and token.serial of the file are not used in a rehearsal")
        if not self.ceremony.makes_key:
            serial = p.ca.token_serial  # the CA directory's token, and no other with its label
        elif p.rehearsal is None:
            serial = self.ceremony.token_serial
        else:
            serial = None
        self.device = token.find_token(
            p.module, TokenSelector(label=self.ceremony.token_label, serial=serial)
        )
        self.info = token.token_info(self.device)
        mechanisms = self.check_mechanisms() if self.ceremony.makes_key else {}
        self.token_facts = {
            "label": self.info.label,
            "serial": self.info.serial,
            "manufacturer": self.info.manufacturer.strip(),
            "model": self.info.model.strip(),
        }
        said.insert(
            0,
            f"{self.info}: {self.token_facts['manufacturer']} {self.token_facts['model']}",
        )
        return {
            "say": said,
            "token": self.token_facts,
            "module": {"path": p.module, "sha256": sha256_file(Path(p.module))},
            "rehearsal_token_created": created,
            "mechanisms": mechanisms,
        }

    def check_mechanisms(self) -> dict[str, Any]:
        """The token can generate this key type and sign with it (hashed or raw mechanism)."""
        from . import token

        key_type = self.ceremony.key_type
        assert key_type is not None
        algorithm = key_type.algorithm
        offered = {m["mechanism"]: m for m in token.describe_mechanisms(self.device)}
        generate = "CKM_RSA_PKCS_KEY_PAIR_GEN" if key_type.is_rsa else "CKM_EC_KEY_PAIR_GEN"
        if generate not in offered:
            raise InvalidRequest(
                f"key.type: {self.info} does not offer {generate}, so it cannot make a "
                f"{key_type.value} key"
            )
        low, high = offered[generate]["min_key_size"], offered[generate]["max_key_size"]
        if high and not low <= algorithm.bits <= high:
            raise InvalidRequest(
                f"key.type: {self.info} makes {generate} keys of {low} to {high} bits, not "
                f"{algorithm.bits}; choose another key.type"
            )
        signing = [
            f"CKM_{name}"
            for name in (algorithm.hashed_mechanism, algorithm.raw_mechanism)
            if f"CKM_{name}" in offered
        ]
        if not signing:
            raise InvalidRequest(
                f"key.type: {self.info} offers neither CKM_{algorithm.hashed_mechanism} nor "
                f"CKM_{algorithm.raw_mechanism} to sign with a {key_type.value} key"
            )
        return {"generate": generate, "sign": signing[0]}

    def check_label_unused(self) -> dict[str, Any]:
        from . import token

        label = self.ceremony.key_label
        with token.open_session(self.device, self.pins) as session:
            objects = token.describe_objects(session)
        clashing = [obj for obj in objects if obj["label"] == label]
        if clashing:
            kinds = ", ".join(f"a {obj['class']} (id {obj['id'] or 'none'})" for obj in clashing)
            raise InvalidRequest(
                f"key.label: {self.info} already holds {kinds} labelled {label!r}; a ceremony "
                "never reuses or replaces a key: choose another key.label"
            )
        return {
            "say": [f"no object labelled {label!r} among the {len(objects)} on the token"],
            "key_label_unused": label,
            "objects_on_token": len(objects),
        }

    def find_ca_key(self) -> dict[str, Any]:
        from . import token

        config = self.plan.ca
        with token.open_session(self.device, self.pins) as session:
            private_key = token.find_private_key(session, config.key_id, config.key_label)
            with token.translate_errors(str(self.info)):
                attributes = token.read_safety_attributes(private_key)
        self.key_facts = {
            "label": config.key_label,
            "id": config.key_id.hex(),
            "type": config.key_type.value,
            "attributes": attributes,
        }
        _check_attributes(attributes, str(self.info))
        return {
            "say": [
                f"{config.key_type.value} key {config.key_label!r}: {_attribute_text(attributes)}"
            ],
            "key": self.key_facts,
        }

    # --- steps 4-5: the work and its verification --------------------------------------------

    def _token_uri(self) -> str:
        from .p11uri import TokenSelector, format_token_uri

        return format_token_uri(TokenSelector(label=self.info.label, serial=self.info.serial))

    def _new_key(self, subordinate: bool):
        from . import api

        ceremony = self.ceremony
        created = api.init_ca(
            self.plan.paths["outputs.ca-dir"],
            module=self.plan.module,
            token_spec=self._token_uri(),
            pin_source=self.pins,
            key_label=ceremony.key_label,
            key_type=ceremony.key_type,
            subject=ceremony.subject,
            days=ceremony.days or 1,
            always_authenticate=ceremony.always_authenticate,
            subordinate=subordinate,
            signature_scheme="pkcs1v15" if subordinate else ceremony.signature_scheme,
        )
        self.made = created
        self.key_facts = {
            "label": ceremony.key_label,
            "id": created.key_id.hex(),
            "type": ceremony.key_type.value,
            "attributes": created.key_attributes,
        }
        return created

    def make_root(self) -> dict[str, Any]:
        from asn1crypto import x509 as asn1_x509

        created = self._new_key(subordinate=False)
        certificate = asn1_x509.Certificate.load(created.certificate_der)
        self.serial = format(certificate.serial_number, "x")
        self.subject = _rfc4514(certificate.subject)
        self.facts["certificate"] = _certificate_facts(certificate)
        return {
            "say": [
                f"key id {created.key_id.hex()}: {_attribute_text(created.key_attributes)}",
                f"root certificate SHA-256 {_colons(certificate.sha256.hex())}",
            ],
            "key": self.key_facts,
            "certificate": self.facts["certificate"],
            "lint": {"before_signing": LINT_NOTE, "tolerated_findings": []},
        }

    def verify_root(self) -> dict[str, Any]:
        from asn1crypto import x509 as asn1_x509

        from . import lint

        ca_dir = self.plan.paths["outputs.ca-dir"]
        der = self.made.certificate_der
        certificate = asn1_x509.Certificate.load(der)
        checks = [_same_certificate(ca_dir / store.CA_CERT_PEM_NAME, der)]
        if (ca_dir / store.CA_CERT_DER_NAME).read_bytes() != der:
            raise IntegrityError(f"{ca_dir / store.CA_CERT_DER_NAME} is not the root certificate")
        checks.append(f"{store.CA_CERT_DER_NAME} holds the same certificate (DER)")
        checks.append(_verify_issued_by(certificate, certificate, "the root certificate"))
        checks.append(self._check_subject(certificate.subject))
        checks.append(_check_days(certificate, self.ceremony.days))
        checks.append(_key_matches(certificate.public_key, store.load_config(ca_dir).public_key))
        _check_attributes(self.key_facts["attributes"], str(self.info))
        checks.append("the key is sensitive, never extractable and was generated on the token")
        findings = [str(f) for f in lint.certificate_findings(der)]
        if findings:
            raise IntegrityError(
                f"pkilint finds in the signed root certificate: {'; '.join(findings)}"
            )
        checks.append("pkilint finds nothing in the signed root certificate")
        return {"say": checks, "checks": checks, "lint": {"after_signing": findings}}

    def make_subordinate_key(self) -> dict[str, Any]:
        from . import csr

        created = self._new_key(subordinate=True)
        parsed = csr.parse_csr(created.csr_path.read_bytes(), str(created.csr_path), for_ca=True)
        self.facts["request"] = {
            "subject": _rfc4514(parsed.subject_name),
            "sha256": sha256_file(created.csr_path),
            "public_key_sha256": hashlib.sha256(parsed.public_key.dump()).hexdigest(),
        }
        return {
            "say": [
                f"key id {created.key_id.hex()}: {_attribute_text(created.key_attributes)}",
                f"request {created.csr_path}, public key SHA-256 "
                f"{_colons(self.facts['request']['public_key_sha256'])}",
            ],
            "key": self.key_facts,
            "request": self.facts["request"],
            "lint": {"before_signing": "not applicable: a certificate request is not linted"},
        }

    def verify_request(self) -> dict[str, Any]:
        from . import csr

        ca_dir = self.plan.paths["outputs.ca-dir"]
        path = ca_dir / store.CSR_NAME
        parsed = csr.parse_csr(path.read_bytes(), str(path), for_ca=True)
        checks = [f"{path} is a PKCS#10 request whose signature verifies with its key"]
        checks.append(self._check_subject(parsed.subject_name))
        if parsed.key_type is not self.ceremony.key_type:
            raise IntegrityError(
                f"{path} holds a {parsed.key_type.value} key, not {self.ceremony.key_type.value}"
            )
        checks.append(f"its key is {parsed.key_type.value}")
        config = store.load_config(ca_dir)
        checks.append(_key_matches(parsed.public_key, config.public_key))
        if config.state != "pending":
            raise IntegrityError(f"{ca_dir} is {config.state}, not pending")
        checks.append(f"{ca_dir} waits for the root's certificate (pending)")
        _check_attributes(self.key_facts["attributes"], str(self.info))
        checks.append("the key is sensitive, never extractable and was generated on the token")
        return {"say": checks, "checks": checks}

    def sign_ca(self) -> dict[str, Any]:
        from . import api

        p = self.plan
        certificate, out, _ = api.sign_ca(
            p.paths["inputs.ca-dir"],
            p.paths["inputs.csr"],
            pin_source=self.pins,
            path_length=self.ceremony.path_length,
            days=self.ceremony.days,
            out=p.paths["outputs.certificate"],
            signature_scheme=self.ceremony.signature_scheme,
        )
        self.made = certificate
        self.serial = format(certificate.serial_number, "x")
        self.facts["certificate"] = _certificate_facts(certificate)
        self.facts["issuer"] = _certificate_facts(p.ca_certificate)
        return {
            "say": [f"certificate SHA-256 {_colons(certificate.sha256.hex())} written to {out}"],
            "key": self.key_facts,
            "certificate": self.facts["certificate"],
            "issuer": self.facts["issuer"],
            "lint": {"before_signing": LINT_NOTE, "tolerated_findings": []},
            "ca_audit": _audit_anchor(p.paths["inputs.ca-dir"]),
        }

    def verify_ca_certificate(self) -> dict[str, Any]:
        from asn1crypto import pem

        from . import lint

        p = self.plan
        out = p.paths["outputs.certificate"]
        blocks = [der for kind, _, der in pem.unarmor(out.read_bytes(), multiple=True)]
        certificate = self.made
        if not blocks or blocks[0] != certificate.dump():
            raise IntegrityError(f"{out} does not start with the certificate just signed")
        root = p.ca_certificate
        chain = store.read_ca_chain(p.paths["inputs.ca-dir"])
        if blocks[1:] != chain:
            raise IntegrityError(f"{out} does not carry the root's chain after the certificate")
        checks = [f"{out} holds the new certificate, then the {len(chain)} of the root's chain"]
        checks.append(_verify_issued_by(certificate, root, "the new certificate"))
        checks.append(_key_matches(certificate.public_key, p.csr.public_key.dump()))
        if _rfc4514(certificate.subject) != _rfc4514(p.csr.subject_name):
            raise IntegrityError("the certificate's subject is not the request's")
        checks.append(f"its subject is the request's: {_rfc4514(certificate.subject)}")
        constraints = certificate.basic_constraints_value
        if (
            not certificate.ca
            or constraints["path_len_constraint"].native != self.ceremony.path_length
        ):
            raise IntegrityError(
                "the certificate's basicConstraints are not CA:TRUE with the path length asked for"
            )
        checks.append(f"basicConstraints CA:TRUE, path length {self.ceremony.path_length}")
        checks.append(_check_days(certificate, self.ceremony.days))
        if certificate.not_valid_after >= root.not_valid_after:
            raise IntegrityError("the certificate does not end before the root")
        checks.append(f"it ends before the root ({root.not_valid_after:%Y-%m-%d})")
        inputs_now = sha256_file(p.paths["inputs.csr"])
        recorded = next(item["sha256"] for item in p.inputs if item["field"] == "inputs.csr")
        if inputs_now != recorded:
            raise IntegrityError(f"{p.paths['inputs.csr']} changed during the ceremony")
        checks.append("the request file is unchanged since the checks")
        findings = [str(f) for f in lint.certificate_findings(certificate.dump())]
        if findings:
            raise IntegrityError(f"pkilint finds in the signed certificate: {'; '.join(findings)}")
        checks.append("pkilint finds nothing in the signed certificate")
        return {"say": checks, "checks": checks, "lint": {"after_signing": findings}}

    def sign_crl(self) -> dict[str, Any]:
        from . import api

        p = self.plan
        made = api.make_crl(
            p.paths["inputs.ca-dir"],
            pin_source=self.pins,
            days=self.ceremony.days,
            out=p.paths["outputs.crl"],
            pem_output=self.ceremony.crl_format == "pem",
            replace=False,
        )
        self.made = made
        self.facts["crl"] = {
            "number": made.crl_number,
            "entries": made.entries,
            "next_update": made.next_update.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "sha256": sha256_file(made.path),
        }
        self.facts["issuer"] = _certificate_facts(p.ca_certificate)
        return {
            "say": [
                f"CRL number {made.crl_number}, {made.entries} revoked, written to {made.path}"
            ],
            "key": self.key_facts,
            "crl": self.facts["crl"],
            "issuer": self.facts["issuer"],
            "lint": {"before_signing": LINT_NOTE, "tolerated_findings": []},
            "ca_audit": _audit_anchor(p.paths["inputs.ca-dir"]),
        }

    def verify_crl(self) -> dict[str, Any]:
        from asn1crypto import pem
        from cryptography import x509 as cx509

        from . import lint

        p = self.plan
        out = p.paths["outputs.crl"]
        data = out.read_bytes()
        if pem.detect(data):
            _, _, data = pem.unarmor(data)
        crl = cx509.load_der_x509_crl(data)
        issuer = cx509.load_der_x509_certificate(p.ca_certificate.dump())
        if not crl.is_signature_valid(issuer.public_key()):
            raise IntegrityError(f"the signature of {out} does not verify with the CA's key")
        checks = [f"{out} is signed by {issuer.subject.rfc4514_string()}"]
        if crl.issuer != issuer.subject:
            raise IntegrityError(f"{out} names another issuer")
        number = crl.extensions.get_extension_for_class(cx509.CRLNumber).value.crl_number
        if number != self.made.crl_number:
            raise IntegrityError(f"{out} has CRL number {number}, not {self.made.crl_number}")
        checks.append(f"CRL number {number}")
        next_update = crl.next_update_utc
        if next_update is None or next_update >= issuer.not_valid_after_utc:
            raise IntegrityError(f"{out} does not end before the CA certificate")
        checks.append(
            f"next update {next_update:%Y-%m-%d %H:%M} UTC, before the CA certificate ends"
        )
        findings = [str(f) for f in lint.crl_findings(data)]
        if findings:
            raise IntegrityError(f"pkilint finds in the signed CRL: {'; '.join(findings)}")
        checks.append("pkilint finds nothing in the signed CRL")
        return {"say": checks, "checks": checks, "lint": {"after_signing": findings}}

    def _check_subject(self, name) -> str:
        wanted = _rfc4514(x509build.parse_subject(self.ceremony.subject))
        if _rfc4514(name) != wanted:
            raise IntegrityError(f"the subject is {_rfc4514(name)}, not {wanted}")
        return f"its subject is {wanted}"

    # --- step 6 and the summary ----------------------------------------------------------------

    def collect_outputs(self, partial: bool = False) -> None:
        p = self.plan
        records = []
        for where in self.ceremony.outputs:
            path = p.paths[where]
            if path.is_dir():
                fixed = FIXED_CA_FILES.get(self.ceremony.type, {})
                for item in sorted(path.iterdir()):
                    if item.name.startswith(".") or not item.is_file():
                        continue
                    what = fixed.get(item.name, "CA directory file that later work changes")
                    records.append(
                        _file_record(where, item, p.transcript, what, item.name in fixed)
                    )
            elif path.is_file():
                what = {"outputs.certificate": "CA certificate and chain (PEM)"}.get(where, "CRL")
                records.append(_file_record(where, path, p.transcript, what, True))
            elif not partial:
                raise IntegrityError(f"{where}: {path} was not written")
        self.outputs = records

    def complete(self) -> dict[str, Any]:
        self.collect_outputs()
        facts: dict[str, Any] = {"outputs": self.outputs, **self.facts}
        if self.ceremony.makes_key:
            facts["key"] = self.key_facts
            facts["ca_audit"] = _audit_anchor(self.plan.paths["outputs.ca-dir"])
        return {
            "say": [f"{item['sha256']}  {item['path']}" for item in self.outputs if item["verify"]],
            **facts,
        }

    def write_summary(self, last: audit.AppendedEntry, failure: str | None) -> None:
        text = render_summary(self, last, failure)
        store.write_file(self.plan.summary, text.encode("utf-8"), store.PUBLIC_MODE)

    def closing_lines(self, last: audit.AppendedEntry) -> list[str]:
        p = self.plan
        lines = [
            f"Ceremony {self.ceremony.type.value} complete"
            + (" (REHEARSAL)" if p.rehearsal else "")
        ]
        certificate = self.facts.get("certificate")
        if certificate:
            lines.append(f"  certificate: {certificate['subject']}")
            lines.append(f"    SHA-256:   {_colons(certificate['sha256'])}")
            lines.append(f"    SHA-1:     {_colons(certificate['sha1'])}")
        if "request" in self.facts:
            lines.append(f"  request:     {self.facts['request']['subject']}")
            lines.append(f"    key SHA-256: {_colons(self.facts['request']['public_key_sha256'])}")
        if "crl" in self.facts:
            crl = self.facts["crl"]
            lines.append(f"  CRL number {crl['number']}, next update {crl['next_update']}")
            lines.append(f"    SHA-256:   {_colons(crl['sha256'])}")
        lines.append(f"  transcript:  {p.transcript} ({last.seq} entries)")
        lines.append(f"  last entry:  SHA-256 {last.line_sha256}")
        lines.append(f"  summary:     {p.summary} (print it; the witnesses sign it)")
        lines.append(f"  check it:    hsmca ceremony verify {p.transcript}")
        return lines


def _same_certificate(path: Path, der: bytes) -> str:
    from asn1crypto import pem

    blocks = [block for kind, _, block in pem.unarmor(path.read_bytes(), multiple=True)]
    if blocks != [der]:
        raise IntegrityError(f"{path} does not hold exactly the certificate just signed")
    return f"{path} holds the certificate just signed"


def _verify_issued_by(certificate, issuer, what: str) -> str:
    from cryptography import x509 as cx509
    from cryptography.exceptions import InvalidSignature

    try:
        cx509.load_der_x509_certificate(certificate.dump()).verify_directly_issued_by(
            cx509.load_der_x509_certificate(issuer.dump())
        )
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise IntegrityError(f"{what} does not verify with its issuer's key: {exc}") from None
    return f"{what}'s signature verifies with the key of {_rfc4514(issuer.subject)}"


def _check_days(certificate, days: int | None) -> str:
    lasts = certificate.not_valid_after - certificate.not_valid_before
    if days is not None and lasts != dt.timedelta(days=days) + x509build.BACKDATE:
        raise IntegrityError(
            f"the certificate is valid for {lasts}, not the {days} days asked for: it was shortened"
        )
    return (
        f"valid {certificate.not_valid_before:%Y-%m-%d %H:%M} to "
        f"{certificate.not_valid_after:%Y-%m-%d %H:%M} UTC ({days} days)"
    )


def _key_matches(public_key, expected_der: bytes) -> str:
    if public_key.dump() != expected_der:
        raise IntegrityError("the certified key is not the key the ceremony made or was given")
    return (
        f"its key (SHA-256 {hashlib.sha256(expected_der).hexdigest()[:16]}...) is the expected one"
    )


SAFE_ATTRIBUTES = {
    "sensitive": True,
    "extractable": False,
    "always_sensitive": True,
    "never_extractable": True,
    "local": True,
}


def _check_attributes(attributes: dict[str, bool], what: str) -> None:
    wrong = [
        f"{name}={attributes.get(name)}"
        for name, wanted in SAFE_ATTRIBUTES.items()
        if attributes.get(name) is not wanted
    ]
    if wrong:
        raise IntegrityError(
            f"the CA key on {what} reads back {', '.join(wrong)}: it may have been outside the "
            "token; stop the ceremony and investigate"
        )


def _attribute_text(attributes: dict[str, bool]) -> str:
    return ", ".join(f"{name}={value}" for name, value in attributes.items())


def render_summary(runner: _Runner, last: audit.AppendedEntry, failure: str | None) -> str:
    p = runner.plan
    ceremony = runner.ceremony
    rule = "=" * 78
    lines = [
        "hsmca key ceremony: summary of the transcript",
        rule,
    ]
    if p.rehearsal is not None:
        lines += [
            f"REHEARSAL on SoftHSM tokens in {p.rehearsal}: not a real ceremony.",
            "",
        ]
    lines += [
        f"Ceremony:      {ceremony.type.value}",
        f"File:          {p.source.absolute()}",
        f"File SHA-256:  {p.source_sha256}",
    ]
    if ceremony.description:
        lines += [f"Description:   {row}" for row in ceremony.description.strip().splitlines()]
    lines += [
        f"Result:        {'FAILED at ' + failure if failure else 'completed'}",
        f"Started:       {runner.started:%Y-%m-%d %H:%M:%S} UTC",
        f"Finished:      {_now():%Y-%m-%d %H:%M:%S} UTC",
        f"Run by:        {runner.who} on {runner.host}, hsmca {__version__}",
        "",
    ]
    if runner.token_facts:
        token = runner.token_facts
        lines.append(
            f"Token:         {token['label']!r}, serial {token['serial']}, "
            f"{token['manufacturer']} {token['model']}"
        )
    if runner.key_facts:
        key = runner.key_facts
        lines.append(f"Key:           {key['type']} {key['label']!r}, id {key['id']}")
        names = list(key["attributes"].items())
        for start in range(0, len(names), 3):
            lines.append(
                "               "
                + ", ".join(f"{name}={value}" for name, value in names[start : start + 3])
            )
    facts = runner.facts
    for name, title in (("certificate", "Certificate"), ("issuer", "Issuer")):
        if name in facts:
            item = facts[name]
            lines += [
                "",
                f"{title + ':':<15}{item['subject']}",
                f"  issuer:      {item['issuer']}",
                f"  serial:      {item['serial']}",
                f"  valid:       {item['not_before']} to {item['not_after']}",
                f"  SHA-256:     {_colons(item['sha256'])}",
                f"  SHA-1:       {_colons(item['sha1'])}",
            ]
    if "request" in facts:
        request = facts["request"]
        lines += [
            "",
            f"Request:       {request['subject']}",
            f"  SHA-256:     {_colons(request['sha256'])}",
            f"  key SHA-256: {_colons(request['public_key_sha256'])}",
        ]
    if "crl" in facts:
        crl = facts["crl"]
        lines += [
            "",
            f"CRL:           number {crl['number']}, {crl['entries']} revoked, next update "
            f"{crl['next_update']}",
            f"  SHA-256:     {_colons(crl['sha256'])}",
        ]
    lines += ["", "Files (SHA-256):"]
    for item in p.inputs:
        lines.append(f"  {item['sha256']}  {item['path']} (input: {item['what']})")
    for item in runner.outputs:
        note = "" if item["verify"] else ", changes later"
        lines.append(f"  {item['sha256']}  {item['path']} ({item['what']}{note})")
    lines += [
        "",
        f"Transcript:    {p.transcript}",
        f"Last entry:    line {last.seq}, SHA-256 {last.line_sha256}",
        f"Check it with: hsmca ceremony verify {p.transcript}",
        "",
        "By signing we confirm that we saw the steps above run, and that the fingerprints and",
        "the last entry's SHA-256 shown on the screen are the ones printed here.",
        "",
        f"{'Role':<26}{'Name':<24}{'Signature':<18}Date",
    ]
    for role in ("Ceremony administrator", "Security officer", "Witness", "Witness"):
        lines += ["", f"{role:<26}{'_' * 22:<24}{'_' * 16:<18}{'_' * 10}"]
    return "\n".join(lines) + "\n"


def run(
    source: Path,
    *,
    rehearse: Path | None = None,
    transcript: Path | None = None,
    pin_source,
    new_pin: Callable[[str], str],
    say: Callable[[str], None] = lambda _line: None,
) -> Outcome:
    """Run the ceremony in `source`: all checks, then the steps, each recorded as it happens.

    `pin_source` gives the user PIN of a token about to be logged in to; `new_pin(label)` the
    user PIN of a rehearsal token about to be created.
    """
    ceremony, data = load_ceremony(source)
    title = f"Ceremony {ceremony.type.value} from {source}"
    if rehearse is not None:
        title += f" (REHEARSAL in {rehearse})"
    say(title)
    return _Runner(
        ceremony,
        data,
        Path(source),
        rehearse=rehearse,
        transcript=transcript,
        pin_source=pin_source,
        new_pin=new_pin,
        say=say,
    ).run()


# --- checking a transcript afterwards ------------------------------------------------------------

_ANCHOR = re.compile(r"^Last entry:\s+line (\d+), SHA-256 ([0-9a-f]{64})\s*$", re.MULTILINE)


@dataclass(frozen=True)
class TranscriptReport:
    path: Path
    entries: int
    last_line_sha256: str
    ceremony: str
    rehearsal: bool
    finished: str
    who: str
    host: str
    unchanged: list[str]
    missing: list[str]
    summary_checked: bool


def verify_transcript(path: Path) -> TranscriptReport:
    """Check every entry and the chain, the closing entry, the summary's anchor and the outputs.

    Raises IntegrityError naming the first bad line (1-based) or the first changed output.
    """
    path = Path(path)
    checked = audit.verify(path)
    if not checked.ok:
        raise IntegrityError(f"{path}: {checked.message}")
    entries = [json.loads(line) for line in path.read_bytes().splitlines()]
    if not entries:
        raise IntegrityError(f"{path} is empty: not a ceremony transcript")
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry.get("ceremony"), str) or not isinstance(entry.get("step"), int):
            raise IntegrityError(
                f"{path}: line {number} is not a ceremony transcript entry (for a CA's audit "
                "log, use 'hsmca audit verify')"
            )
    last = entries[-1]
    if last["operation"] == "failed":
        raise IntegrityError(
            f"{path}: the chain is intact ({len(entries)} entries), but the ceremony failed at "
            f"step {last.get('failed_step')}: {last.get('error')}"
        )
    if last["operation"] != "complete":
        raise IntegrityError(
            f"{path}: the chain is intact for {len(entries)} entries but the closing entry is "
            "missing: lines were removed from the end, or the ceremony was interrupted"
        )
    summary = summary_path(path)
    summary_checked = False
    if summary.is_file():
        found = _ANCHOR.search(summary.read_text(encoding="utf-8", errors="replace"))
        if found is not None:
            line, digest = int(found.group(1)), found.group(2)
            if (line, digest) != (len(entries), checked.last_line_sha256):
                raise IntegrityError(
                    f"{path}: its summary {summary} records line {line} with SHA-256 {digest}, "
                    f"but the transcript ends at line {len(entries)} with SHA-256 "
                    f"{checked.last_line_sha256}: one of them was changed"
                )
            summary_checked = True
    unchanged, missing = [], []
    for number, entry in enumerate(entries, 1):
        outputs = entry.get("outputs", [])
        if not isinstance(outputs, list):
            raise IntegrityError(f"{path}: line {number} has malformed outputs")
        for item in outputs:
            if not isinstance(item, dict) or not isinstance(item.get("path"), str):
                raise IntegrityError(f"{path}: line {number} has a malformed output")
            if not item.get("verify"):
                continue
            where = Path(item["path"])
            if not where.is_file() and isinstance(item.get("relative"), str):
                moved = path.parent / item["relative"]
                where = moved if moved.is_file() else where
            if not where.is_file():
                missing.append(str(where))
                continue
            now = sha256_file(where)
            if now != item.get("sha256"):
                raise IntegrityError(
                    f"{where} changed since the ceremony: its SHA-256 is {now}, the transcript "
                    f"(line {number}) recorded {item.get('sha256')}"
                )
            unchanged.append(str(where))
    return TranscriptReport(
        path,
        len(entries),
        checked.last_line_sha256 or "",
        str(last["ceremony"]),
        bool(last.get("rehearsal")),
        str(last.get("time")),
        str(last.get("who")),
        str(last.get("host")),
        unchanged,
        missing,
        summary_checked,
    )

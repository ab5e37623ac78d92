"""The ceremony file's strict schema, file-level checks and transcript verification, no token."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsmca import audit, ceremony
from hsmca.ceremony import CeremonyType, parse_ceremony
from hsmca.errors import HsmcaError, IntegrityError, InvalidRequest
from hsmca.models import KeyType

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "docs" / "ceremony"

ROOT = {
    "type": "root",
    "token": {"label": "Root Token", "module": "/usr/lib/softhsm/libsofthsm2.so"},
    "key": {"label": "root-key", "type": "p384"},
    "certificate": {"subject": "CN=Example Root CA,O=Example", "days": 7305},
    "outputs": {"ca-dir": "root-ca"},
}
SUBORDINATE_KEY = {
    "type": "subordinate-key",
    "token": {"label": "Issuing Token"},
    "key": {"label": "issuing-key", "type": "p256"},
    "certificate": {"subject": "CN=Example Issuing CA"},
    "outputs": {"ca-dir": "issuing-ca"},
}
SIGN_CA = {
    "type": "sign-ca",
    "token": {"label": "Root Token"},
    "certificate": {"days": 3650, "path-length": 0},
    "inputs": {"ca-dir": "root-ca", "csr": "issuing-ca/ca.csr"},
    "outputs": {"certificate": "issuing-ca.pem"},
}
CRL = {
    "type": "crl",
    "token": {"label": "Root Token"},
    "crl": {"days": 365},
    "inputs": {"ca-dir": "root-ca"},
    "outputs": {"crl": "root.crl"},
}
VALID = {"root": ROOT, "subordinate-key": SUBORDINATE_KEY, "sign-ca": SIGN_CA, "crl": CRL}


def refused(data, *fragments) -> str:
    with pytest.raises(InvalidRequest) as caught:
        parse_ceremony(data)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def changed(base: dict, path: str | tuple[str, ...], value) -> dict:
    """A deep copy of `base` with `path` ("key.type") set to `value` (or removed for ...)."""
    data = copy.deepcopy(base)
    *tables, name = path.split(".") if isinstance(path, str) else path
    where = data
    for table in tables:
        where = where.setdefault(table, {})
    if value is ...:
        del where[name]
    else:
        where[name] = value
    return data


# --- good files --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["root", "subordinate-key", "sign-ca", "crl"])
def test_each_sample_file_parses(name):
    parsed, data = ceremony.load_ceremony(SAMPLES / f"{name}.toml")
    assert parsed.type is CeremonyType(name)
    assert data == (SAMPLES / f"{name}.toml").read_bytes()
    assert parsed.transcript is not None


def test_samples_make_a_two_tier_hierarchy():
    root, _ = ceremony.load_ceremony(SAMPLES / "root.toml")
    sub, _ = ceremony.load_ceremony(SAMPLES / "subordinate-key.toml")
    sign, _ = ceremony.load_ceremony(SAMPLES / "sign-ca.toml")
    crl, _ = ceremony.load_ceremony(SAMPLES / "crl.toml")
    assert root.key_type in (KeyType.P384, KeyType.RSA3072, KeyType.RSA4096)
    assert sub.key_type in (KeyType.P256, KeyType.RSA3072)
    assert sub.token_label != root.token_label
    assert sign.token_label == crl.token_label == root.token_label
    assert sign.path_length == 0 and sign.days < root.days
    assert sign.subject == sub.subject
    assert (
        sign.inputs["inputs.ca-dir"]
        == crl.inputs["inputs.ca-dir"]
        == root.outputs["outputs.ca-dir"]
    )
    assert sign.inputs["inputs.csr"] == f"{sub.outputs['outputs.ca-dir']}/ca.csr"


@pytest.mark.parametrize("kind", list(VALID))
def test_minimal_files_parse(kind):
    parsed = parse_ceremony(VALID[kind])
    assert parsed.type.value == kind
    assert parsed.settings["type"] == kind
    json.dumps(parsed.settings)  # the transcript records it as JSON


def test_parsed_values():
    root = parse_ceremony(changed(ROOT, "key.always-authenticate", True))
    assert (root.token_label, root.key_label, root.key_type) == (
        "Root Token",
        "root-key",
        KeyType.P384,
    )
    assert root.always_authenticate and root.days == 7305 and root.makes_key
    assert root.module == "/usr/lib/softhsm/libsofthsm2.so"
    sign = parse_ceremony(SIGN_CA)
    assert sign.path_length == 0 and sign.days == 3650 and not sign.makes_key
    assert sign.inputs == {"inputs.ca-dir": "root-ca", "inputs.csr": "issuing-ca/ca.csr"}
    crl = parse_ceremony(changed(CRL, "crl.format", "pem"))
    assert crl.crl_format == "pem" and crl.days == 365
    assert parse_ceremony(CRL).crl_format == "der"


# --- refusals, each naming its field path ------------------------------------------------------


def test_rsa2048_is_not_a_ceremony_key():
    message = refused(changed(ROOT, "key.type", "rsa2048"))
    assert message.startswith("key.type must be one of rsa3072, rsa4096, p256, p384"), message


@pytest.mark.parametrize(
    ("data", "start"),
    [
        (changed(ROOT, "key.colour", "red"), "key.colour is not a setting of a root ceremony"),
        (changed(ROOT, "token.slot", 1), "token.slot is not a setting"),
        (changed(ROOT, "colour", "red"), "colour is not a setting of a ceremony file"),
        (changed(ROOT, "inputs.csr", "x.csr"), "inputs: a root ceremony has no [inputs] table"),
        (changed(SIGN_CA, "key.type", "p256"), "key.type is not a setting of a sign-ca ceremony"),
        (changed(SIGN_CA, "crl.days", 3), "crl: a sign-ca ceremony has no [crl] table"),
        (changed(CRL, "certificate.days", 3), "certificate: a crl ceremony has no"),
        (changed(ROOT, "key.weird key", 1), 'key."weird key" is not a setting'),
    ],
)
def test_unknown_keys_name_their_path(data, start):
    message = refused(data)
    assert message.startswith(start), message


@pytest.mark.parametrize(
    ("base", "path"),
    [
        (ROOT, "key.type"),
        (ROOT, "key.label"),
        (ROOT, "token.label"),
        (ROOT, "certificate.days"),
        (ROOT, "certificate.subject"),
        (ROOT, "outputs.ca-dir"),
        (SUBORDINATE_KEY, "certificate.subject"),
        (SIGN_CA, "certificate.path-length"),
        (SIGN_CA, "inputs.csr"),
        (SIGN_CA, "outputs.certificate"),
        (CRL, "crl.days"),
        (CRL, "inputs.ca-dir"),
    ],
)
def test_missing_settings_name_their_path(base, path):
    message = refused(changed(base, path, ...))
    assert message.startswith(f"{path} is missing"), message


def test_missing_key_type_says_what_it_may_be():
    refused(changed(ROOT, "key.type", ...), "key.type is missing", "rsa3072, rsa4096, p256, p384")


def test_missing_table():
    data = copy.deepcopy(ROOT)
    del data["key"]
    refused(data, "key.label is missing")


@pytest.mark.parametrize(
    ("data", "start"),
    [
        (
            changed(ROOT, "certificate.days", "7305"),
            "certificate.days must be an integer, not a string",
        ),
        (
            changed(ROOT, "certificate.days", 7305.0),
            "certificate.days must be an integer, not a decimal",
        ),
        (
            changed(ROOT, "certificate.days", True),
            "certificate.days must be an integer, not true or false",
        ),
        (changed(ROOT, "key.label", 3), "key.label must be a string, not an integer"),
        (
            changed(ROOT, "key.always-authenticate", "yes"),
            "key.always-authenticate must be true or false",
        ),
        (changed(ROOT, "token.label", ["a"]), "token.label must be a string, not an array"),
        (changed(ROOT, "token.serial", {"a": 1}), "token.serial must be a string, not a table"),
        (
            changed(ROOT, "transcript", dt.date(2030, 1, 1)),
            "transcript must be a string, not a date",
        ),
        ({**ROOT, "token": "Root Token"}, "token must be a table ([token]), not a string"),
        ({**ROOT, "type": 1}, "type must be a string, not an integer"),
    ],
)
def test_wrong_types_name_their_path(data, start):
    message = refused(data)
    assert message.startswith(start), message


@pytest.mark.parametrize(
    ("path", "value", "start"),
    [
        ("certificate.days", 0, "certificate.days must be at least 1 day"),
        ("certificate.days", 40000, "certificate.days of 40000 days is more than 100 years"),
        ("certificate.subject", "not a DN", "certificate.subject: invalid subject"),
        ("certificate.subject", "CN=", "certificate.subject:"),
        ("certificate.subject", "CN=a\x01b", "certificate.subject holds a control character"),
        ("token.label", "", "token.label is empty"),
        ("token.label", "x" * 33, "token.label is longer than 32"),
        ("token.label", "é" * 17, "token.label is longer than 32 bytes"),
        ("token.label", " Root", "token.label starts or ends with a space"),
        ("token.serial", "serial with spaces ok?", "token.serial is longer than 16"),
        ("token.module", "libsofthsm2.so", "token.module must be an absolute path"),
        ("key.label", "   ", "key.label is empty"),
        ("outputs.ca-dir", "a\x00b", "outputs.ca-dir holds a control character"),
        ("key.label", "\ud800", "key.label is not valid text"),
        ("description", "x" * 3000, "description is longer than 2000"),
    ],
)
def test_bad_values_name_their_path(path, value, start):
    message = refused(changed(ROOT, path, value))
    assert message.startswith(start), message


def test_bad_path_length_and_crl_format():
    refused(
        changed(SIGN_CA, "certificate.path-length", -1), "certificate.path-length must be between 0"
    )
    refused(
        changed(SIGN_CA, "certificate.path-length", 11), "certificate.path-length must be between 0"
    )
    refused(changed(CRL, "crl.format", "PEM"), "crl.format must be one of der, pem")


def test_type_is_checked_first():
    refused({"token": {"label": "x"}}, "type is missing: a ceremony file starts with", "root")
    refused({"type": "intermediate"}, "type must be one of root, subordinate-key, sign-ca, crl")
    refused([], "a ceremony file is a TOML document of tables")


@pytest.mark.parametrize(
    "path", ["token.pin", "pin", "token.user-pin", "token.so_pin", "key.PIN", "token.pin-file"]
)
def test_pins_never_go_in_the_file(path):
    message = refused(changed(ROOT, path, "123456"), "HSMCA_PIN or the prompt")
    assert message.startswith(f"{path}: PINs never go in a ceremony file"), message
    assert "123456" not in message


def test_a_pin_is_refused_even_where_nothing_else_is_allowed():
    data = {**SIGN_CA, "inputs": {"ca-dir": "x", "csr": "y", "nested": {"pin": "9999"}}}
    message = refused(data, "inputs.nested.pin: PINs never go")
    assert "9999" not in message


# --- the file on disk ----------------------------------------------------------------------------


def test_load_refuses_bad_toml_and_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('type = "root"\n[token\n')
    with pytest.raises(InvalidRequest, match=r"bad.toml is not valid TOML: .*line 2"):
        ceremony.load_ceremony(bad)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'type = "r\xf6\xf6t"\n')
    with pytest.raises(InvalidRequest, match="not UTF-8"):
        ceremony.load_ceremony(latin)
    with pytest.raises(InvalidRequest, match="cannot read the ceremony file"):
        ceremony.load_ceremony(tmp_path / "missing.toml")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text((SAMPLES / "root.toml").read_text().replace("[key]", "[key]\ncolor = 1"))
    with pytest.raises(InvalidRequest, match=r"unknown.toml: key.color is not a setting"):
        ceremony.load_ceremony(unknown)


def write_toml(path: Path, data: dict) -> Path:
    """A tiny TOML writer for the flat files these tests need."""
    lines = []
    for name, value in data.items():
        if not isinstance(value, dict):
            lines.append(f"{name} = {json.dumps(value)}")
    for name, value in data.items():
        if isinstance(value, dict):
            lines.append(f"[{name}]")
            lines += [f"{key} = {json.dumps(item)}" for key, item in value.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_plan_resolves_paths_and_refuses_existing_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = write_toml(tmp_path / "root.toml", ROOT)
    planned = ceremony.plan(source)
    assert planned.paths["outputs.ca-dir"] == tmp_path / "root-ca"
    assert planned.transcript == tmp_path / "root-ca.transcript.jsonl"
    assert planned.summary == tmp_path / "root-ca.transcript.txt"
    assert planned.module == ROOT["token"]["module"]
    assert planned.source_sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    (tmp_path / "root-ca").mkdir()
    with pytest.raises(InvalidRequest, match=r"^outputs.ca-dir: .*root-ca already exists"):
        ceremony.plan(source)
    (tmp_path / "root-ca").rmdir()
    (tmp_path / "t.txt").write_text("")
    with pytest.raises(InvalidRequest, match=r"^the transcript's summary: .*t.txt already exists"):
        ceremony.plan(source, transcript=Path("t.jsonl"))


def test_rehearsal_keeps_every_path_under_dir(tmp_path):
    rehearsal = tmp_path / "r"
    absolute = write_toml(tmp_path / "a.toml", changed(ROOT, "outputs.ca-dir", "/srv/root-ca"))
    with pytest.raises(InvalidRequest, match=r"^outputs.ca-dir is the absolute path"):
        ceremony.plan(absolute, rehearse=rehearsal)
    escaping = write_toml(tmp_path / "b.toml", changed(ROOT, "outputs.ca-dir", "../root-ca"))
    with pytest.raises(InvalidRequest, match=r"^outputs.ca-dir .* leads out of the rehearsal DIR"):
        ceremony.plan(escaping, rehearse=rehearsal)
    transcript = write_toml(tmp_path / "c.toml", changed(ROOT, "transcript", "/tmp/t.jsonl"))
    with pytest.raises(InvalidRequest, match=r"^transcript is the absolute path"):
        ceremony.plan(transcript, rehearse=rehearsal)
    planned = ceremony.plan(
        write_toml(tmp_path / "d.toml", changed(ROOT, "transcript", "t/root.jsonl")),
        rehearse=rehearsal,
    )
    assert planned.paths["outputs.ca-dir"] == rehearsal / "root-ca"
    assert planned.transcript == rehearsal / "t" / "root.jsonl"
    assert planned.module == ceremony.find_softhsm()  # whatever the file says
    assert not rehearsal.exists()  # checking touches nothing


def test_plan_refuses_missing_inputs_and_overlapping_paths(tmp_path):
    missing = write_toml(tmp_path / "s.toml", SIGN_CA)
    with pytest.raises(InvalidRequest, match=r"^inputs.ca-dir: .*root-ca does not exist"):
        ceremony.plan(missing, rehearse=tmp_path / "r")
    inside = write_toml(tmp_path / "o.toml", changed(ROOT, "transcript", "root-ca/t.jsonl"))
    with pytest.raises(InvalidRequest, match="one is inside the other"):
        ceremony.plan(inside, rehearse=tmp_path / "r")


def test_plan_refuses_a_directory_that_is_not_a_ca(tmp_path):
    rehearsal = tmp_path / "r"
    (rehearsal / "root-ca").mkdir(parents=True)
    (rehearsal / "issuing-ca").mkdir()
    (rehearsal / "issuing-ca" / "ca.csr").write_text("not a request")
    source = write_toml(tmp_path / "s.toml", SIGN_CA)
    with pytest.raises(InvalidRequest, match=r"^inputs.ca-dir: .* is not an hsmca CA directory"):
        ceremony.plan(source, rehearse=rehearsal)


# --- hypothesis: nothing but InvalidRequest, whatever the file holds ------------------------------

toml_scalars = (
    st.text(max_size=12)
    | st.integers()
    | st.floats(allow_nan=True)
    | st.booleans()
    | st.datetimes()
    | st.dates()
    | st.times()
    | st.sampled_from(["root", "sign-ca", "crl", "subordinate-key", "p256", "rsa2048", "der"])
)
toml_keys = st.text(max_size=10) | st.sampled_from(
    ["type", "token", "key", "label", "type", "days", "pin", "inputs", "outputs", "crl", "csr"]
)
toml_values = st.recursive(
    toml_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(toml_keys, children, max_size=4)
    ),
    max_leaves=6,
)
setting_names = st.sampled_from(
    ["label", "type", "serial", "module", "subject", "days", "path-length", "ca-dir", "csr",
     "certificate", "crl", "format", "always-authenticate", "pin"]
) | st.text(max_size=8)  # fmt: skip
tables = st.dictionaries(setting_names, toml_values, max_size=5)
documents = st.fixed_dictionaries(
    {"type": st.sampled_from([t.value for t in CeremonyType]) | toml_scalars},
    optional={
        "token": tables | toml_values,
        "key": tables,
        "certificate": tables,
        "crl": tables,
        "inputs": tables,
        "outputs": tables,
        "transcript": toml_scalars,
        "description": toml_scalars,
    },
) | st.dictionaries(toml_keys, toml_values, max_size=6)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_arbitrary_documents_raise_only_invalid_request(data):
    try:
        parse_ceremony(data)
    except InvalidRequest:
        pass


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(list(VALID)),
    st.data(),
    toml_values,
)
def test_valid_files_with_one_value_changed_raise_only_invalid_request(kind, data, value):
    base = VALID[kind]
    paths = [f"{t}.{k}" for t, v in base.items() if isinstance(v, dict) for k in v]
    path = data.draw(st.sampled_from([*paths, "type", "transcript", "description"]))
    try:
        parse_ceremony(changed(base, path, value))
    except InvalidRequest:
        pass


@settings(max_examples=200)
@given(
    st.sampled_from(list(VALID)),
    st.data(),
    st.text(min_size=1, max_size=12),
    toml_scalars,
)
def test_unknown_keys_always_name_their_path(kind, data, name, value):
    base = VALID[kind]
    table = data.draw(st.sampled_from([t for t, v in base.items() if isinstance(v, dict)]))
    known = set(ceremony.SCHEMAS[CeremonyType(kind)][table])
    secret = name.lower().replace("_", "-") in ceremony.SECRET_SETTINGS
    if name in known or secret:
        return
    message = refused(changed(base, (table, name), value))
    shown = name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)
    assert message.startswith(f"{table}.{shown} is not a setting of a {kind} ceremony"), message


# --- transcripts (written by hand here; the integration tests write real ones) ------------------


def transcript(tmp_path: Path, outputs: list[Path], last: str = "complete") -> Path:
    path = tmp_path / "t.jsonl"
    records = [
        {
            "field": "outputs.certificate",
            "path": str(out),
            "relative": out.name,
            "sha256": ceremony.sha256_file(out),
            "what": "certificate",
            "verify": True,
        }
        for out in outputs
    ]
    with audit.AuditLog(path=path) as log:
        for step, operation in enumerate(["check-files", "find-token", "sign-ca", last], 1):
            facts = {"outputs": records} if operation in ("complete", "failed") else {}
            if operation == "failed":
                facts.update(failed_step=4, error="the token went away")
            log.append(
                operation, None, "CN=x", "serial", ceremony="sign-ca", step=step, steps=4,
                who="me", host="here", rehearsal=True, **facts,
            )  # fmt: skip
    return path


def test_audit_log_takes_an_explicit_path(tmp_path):
    path = tmp_path / "elsewhere.jsonl"
    with audit.AuditLog(path=path) as log:
        log.append("one", None, None, None)
        entry = log.append("two", None, None, None)
    assert audit.verify(path).ok and entry.seq == 2
    assert not (tmp_path / audit.AUDIT_NAME).exists()
    with pytest.raises(InvalidRequest, match="does not exist"):
        audit.AuditLog(path=tmp_path / "missing" / "t.jsonl")
    with pytest.raises(ValueError, match="exactly one"):
        audit.AuditLog(tmp_path, path=path)


def test_verify_accepts_an_intact_transcript(tmp_path):
    out, gone = tmp_path / "issuing-ca.pem", tmp_path / "gone.pem"
    out.write_text("certificate\n")
    gone.write_text("moved away since\n")
    path = transcript(tmp_path, [out, gone])
    gone.unlink()
    report = ceremony.verify_transcript(path)
    assert report.entries == 4 and report.ceremony == "sign-ca" and report.rehearsal
    assert report.unchanged == [str(out)]
    assert report.missing == [str(tmp_path / "gone.pem")]


def test_verify_names_the_first_edited_line(tmp_path):
    path = transcript(tmp_path, [])
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"find-token"', b'"find-tokem"')
    path.write_bytes(b"".join(lines))
    with pytest.raises(IntegrityError, match=r"t.jsonl: line 2: its hash does not match"):
        ceremony.verify_transcript(path)


def test_verify_finds_changed_outputs_even_after_a_move(tmp_path):
    out = tmp_path / "issuing-ca.pem"
    out.write_text("certificate\n")
    path = transcript(tmp_path, [out])
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "t.jsonl").write_bytes(path.read_bytes())
    (moved / "issuing-ca.pem").write_text("certificate\n")
    out.unlink()
    assert ceremony.verify_transcript(moved / "t.jsonl").unchanged == [
        str(moved / "issuing-ca.pem")
    ]
    (moved / "issuing-ca.pem").write_text("certificatE\n")
    with pytest.raises(IntegrityError, match=r"issuing-ca.pem changed since the ceremony"):
        ceremony.verify_transcript(moved / "t.jsonl")


def test_verify_refuses_a_transcript_without_its_closing_entry(tmp_path):
    path = transcript(tmp_path, [])
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))
    with pytest.raises(IntegrityError, match="closing entry is missing"):
        ceremony.verify_transcript(path)


def test_verify_reports_a_failed_ceremony(tmp_path):
    path = transcript(tmp_path, [], last="failed")
    with pytest.raises(IntegrityError, match="failed at step 4: the token went away"):
        ceremony.verify_transcript(path)


def test_verify_compares_the_summary_anchor(tmp_path):
    path = transcript(tmp_path, [])
    last = path.read_bytes().splitlines()[-1]
    summary = tmp_path / "t.txt"
    summary.write_text(f"Last entry:    line 4, SHA-256 {hashlib.sha256(last).hexdigest()}\n")
    assert ceremony.verify_transcript(path).summary_checked
    summary.write_text(f"Last entry:    line 4, SHA-256 {'0' * 64}\n")
    with pytest.raises(IntegrityError, match=r"summary .* records line 4"):
        ceremony.verify_transcript(path)


def test_verify_refuses_an_audit_log(tmp_path):
    audit.append(tmp_path, "issue", 1, "CN=x", "serial")
    with pytest.raises(IntegrityError, match="line 1 is not a ceremony transcript entry"):
        ceremony.verify_transcript(tmp_path / audit.AUDIT_NAME)
    with pytest.raises(HsmcaError, match="does not exist"):
        ceremony.verify_transcript(tmp_path / "none.jsonl")


def test_signature_scheme_pss_needs_an_rsa_key(tmp_path):
    from hsmca.ceremony import load_ceremony

    text = (REPO / "docs" / "ceremony" / "root.toml").read_text()
    pss_p384 = tmp_path / "pss.toml"
    pss_p384.write_text(text.replace('# signature-scheme = "pss"', 'signature-scheme = "pss"'))
    with pytest.raises(InvalidRequest, match="signature-scheme pss needs an RSA key"):
        load_ceremony(pss_p384)
    pss_rsa = tmp_path / "pss-rsa.toml"
    pss_rsa.write_text(pss_p384.read_text().replace('type = "p384"', 'type = "rsa3072"'))
    ceremony, _ = load_ceremony(pss_rsa)
    assert ceremony.signature_scheme == "pss"
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(pss_rsa.read_text().replace('"pss"', '"pkcs1"'))
    with pytest.raises(InvalidRequest, match=r"certificate\.signature-scheme must be one of"):
        load_ceremony(wrong)

"""`hsmca ceremony` as real processes on SoftHSM: the sample files rehearsed in order, refusals
before any key is made, a real (non-rehearsal) ceremony, and transcripts checked afterwards.

SoftHSM reads its config once per process, so every ceremony runs as a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, init_token, softhsm_conf
from cryptography import x509
from cryptography.hazmat.primitives import hashes

HSMCA = [sys.executable, "-c", "from hsmca.cli import main; main()"]
SAMPLES = REPO / "docs" / "ceremony"
ORDER = ["root", "subordinate-key", "sign-ca", "crl"]
PIN = "rehearsal-pin-1234"


def hsmca(*args, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    environment = dict(os.environ, HSMCA_PIN=PIN)
    environment.update(env or {})
    return subprocess.run(
        [*HSMCA, *map(str, args)],
        env=environment,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ok(*args, **kwargs) -> subprocess.CompletedProcess:
    done = hsmca(*args, **kwargs)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def refused(*args, fragments=(), **kwargs) -> str:
    done = hsmca(*args, **kwargs)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def token_labels(conf: Path, module: str, label: str, pin: str = PIN) -> list[tuple[str, str]]:
    """(class, label) of every object on the token, as `hsmca token info` reports them."""
    done = ok(
        "token", "info", "--module", module, "--token", label, "--json",
        env={"SOFTHSM2_CONF": str(conf), "HSMCA_PIN": pin},
    )  # fmt: skip
    return sorted((obj["class"], obj["label"]) for obj in json.loads(done.stdout)["objects"])


def variant(tmp_path: Path, sample: str, name: str, *replacements: tuple[str, str]) -> Path:
    text = (SAMPLES / f"{sample}.toml").read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """The four sample files rehearsed in order in one DIR, from the repository root."""
    directory = tmp_path_factory.mktemp("rehearsal") / "r"
    runs = {
        name: ok("ceremony", "run", f"docs/ceremony/{name}.toml", "--rehearse", directory)
        for name in ORDER
    }
    return directory, runs


def transcripts(directory: Path) -> dict[str, Path]:
    return {
        name: directory / "transcripts" / f"{number}-{name}.jsonl"
        for number, name in enumerate(ORDER, 1)
    }


def test_the_sample_files_rehearse_a_two_tier_hierarchy(rehearsal):
    directory, runs = rehearsal
    for name, done in runs.items():
        steps = [line.split("]")[0] for line in done.stdout.splitlines() if line.startswith("[")]
        assert steps == [f"[{n}/6" for n in range(1, 7)], done.stdout
        assert f"Ceremony {name} complete (REHEARSAL)" in done.stdout
    assert (
        "signing the subordinate CA certificate on token 'Example Root CA'"
        in runs["sign-ca"].stdout
    )
    # Every output went under DIR, none into the repository the files were run from.
    for stray in ("root-ca", "issuing-ca", "issuing-ca.pem", "transcripts", "root-ca-1.crl"):
        assert not (REPO / stray).exists()
    checked = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-CAfile", directory / "root-ca" / "ca.pem",
         directory / "issuing-ca.pem"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0 and ": OK" in checked.stdout, checked.stdout + checked.stderr
    crl = subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-in", directory / "root-ca-1.crl", "-noout",
         "-CAfile", directory / "root-ca" / "ca.pem"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert crl.returncode == 0 and "verify OK" in crl.stdout + crl.stderr, crl.stderr
    for name, path in transcripts(directory).items():
        done = ok("ceremony", "verify", path)
        assert f"6 entries, chain intact; {name} rehearsal completed" in done.stdout
        assert path.with_suffix(".txt").is_file()
        assert "the summary beside it records the same last entry" in done.stdout


def test_the_transcripts_record_what_witnesses_check(rehearsal):
    directory, _ = rehearsal
    paths = transcripts(directory)
    root = entries(paths["root"])
    assert [entry["operation"] for entry in root] == [
        "check-files", "find-token", "check-key-label", "generate-and-self-sign", "verify",
        "complete",
    ]  # fmt: skip
    for entry in root:
        assert entry["who"] and entry["host"] and entry["hsmca_version"] and entry["time"]
        assert entry["ceremony"] == "root" and entry["rehearsal"] is True
    token = root[1]["token"]
    assert (
        token["label"] == "Example Root CA" and token["model"] == "SoftHSM v2" and token["serial"]
    )
    assert root[1]["module"]["sha256"] and root[1]["rehearsal_token_created"] is True
    key = root[3]["key"]
    assert key["attributes"] == {
        "sensitive": True, "extractable": False, "always_sensitive": True,
        "never_extractable": True, "local": True, "always_authenticate": False,
    }  # fmt: skip
    certificate = x509.load_pem_x509_certificate((directory / "root-ca" / "ca.pem").read_bytes())
    recorded = root[3]["certificate"]
    assert recorded["sha256"] == certificate.fingerprint(hashes.SHA256()).hex()
    assert recorded["sha1"] == certificate.fingerprint(hashes.SHA1()).hex()
    assert "pkilint" in root[3]["lint"]["before_signing"] and root[4]["lint"]["after_signing"] == []
    outputs = {Path(item["path"]).name: item for item in root[-1]["outputs"]}
    assert outputs["ca.pem"]["verify"] and not outputs["audit.jsonl"]["verify"]
    assert not outputs["ca.sqlite3"]["verify"]

    sign = entries(paths["sign-ca"])
    assert sign[0]["inputs"][-1]["field"] == "inputs.csr"
    request = entries(paths["subordinate-key"])[3]["request"]
    assert sign[0]["inputs"][-1]["public_key_sha256"] == request["public_key_sha256"]
    assert sign[3]["certificate"]["public_key_sha256"] == request["public_key_sha256"]
    assert sign[3]["ca_audit"]["entries"] >= 2
    crl = entries(paths["crl"])
    assert crl[3]["crl"]["number"] == 1
    summary = paths["sign-ca"].with_suffix(".txt").read_text()
    issued = x509.load_pem_x509_certificate((directory / "issuing-ca.pem").read_bytes())
    fingerprint = issued.fingerprint(hashes.SHA256()).hex().upper()
    assert ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)) in summary
    assert "REHEARSAL" in summary and "Witness" in summary and "Signature" in summary


def test_the_issuing_ca_completes_after_its_rehearsal(rehearsal, module):
    directory, _ = rehearsal
    conf = directory / "softhsm" / "softhsm2.conf"
    key = [("private key", "issuing-2025"), ("public key", "issuing-2025")]
    assert token_labels(conf, module, "Example Issuing CA") == key
    done = ok(
        "init", directory / "issuing-ca", "--certificate", directory / "issuing-ca.pem",
        env={"SOFTHSM2_CONF": str(conf)},
    )  # fmt: skip
    assert "Completed subordinate CA" in done.stdout
    assert token_labels(conf, module, "Example Issuing CA") == [
        ("certificate", "issuing-2025"),
        *key,
    ]
    # Its request never changes, so the subordinate-key transcript still verifies.
    ok("ceremony", "verify", transcripts(directory)["subordinate-key"])


def test_refused_files_make_no_key(rehearsal, tmp_path, module):
    directory, _ = rehearsal
    conf = directory / "softhsm" / "softhsm2.conf"
    before = token_labels(conf, module, "Example Root CA")
    assert before == [
        ("certificate", "root-2025"), ("private key", "root-2025"), ("public key", "root-2025"),
    ]  # fmt: skip
    second = ('label = "root-2025"', 'label = "root-2026"')
    transcript = ("transcripts/1-root.jsonl", "transcripts/again.jsonl")
    unknown = variant(
        tmp_path, "root", "unknown.toml", second, transcript, ("[key]", "[key]\nsize = 384")
    )
    refused(
        "ceremony", "run", unknown, "--rehearse", directory,
        fragments=["key.size is not a setting of a root ceremony"],
    )  # fmt: skip
    existing = variant(tmp_path, "root", "existing.toml", second, transcript)
    refused(
        "ceremony", "run", existing, "--rehearse", directory,
        fragments=["outputs.ca-dir", "root-ca already exists"],
    )  # fmt: skip
    label_used = variant(tmp_path, "root", "label.toml", transcript, ('"root-ca"', '"root-ca-2"'))
    refused(
        "ceremony", "run", label_used, "--rehearse", directory,
        fragments=["key.label:", "already holds", "'root-2025'"],
    )  # fmt: skip
    pin = variant(tmp_path, "root", "pin.toml", second, ("[token]", '[token]\npin = "123456"'))
    message = refused("ceremony", "run", pin, "--rehearse", directory, fragments=["token.pin"])
    assert "HSMCA_PIN or the prompt" in message and "123456" not in message
    assert token_labels(conf, module, "Example Root CA") == before
    assert not (directory / "transcripts" / "again.jsonl").exists()
    assert not (directory / "root-ca-2").exists()


def test_a_refused_file_leaves_a_new_dir_untouched(tmp_path):
    directory = tmp_path / "fresh"
    unknown = variant(tmp_path, "root", "unknown.toml", ("[outputs]", "[output]"))
    refused("ceremony", "run", unknown, "--rehearse", directory, fragments=["output"])
    absolute = variant(tmp_path, "root", "abs.toml", ('"root-ca"', '"/srv/root-ca"'))
    refused(
        "ceremony", "run", absolute, "--rehearse", directory,
        fragments=["outputs.ca-dir is the absolute path"],
    )  # fmt: skip
    early = variant(tmp_path, "sign-ca", "early.toml")
    refused(
        "ceremony", "run", early, "--rehearse", directory,
        fragments=["inputs.ca-dir", "does not exist", "same DIR first"],
    )  # fmt: skip
    assert not directory.exists()


def test_an_edited_transcript_names_the_line(rehearsal, tmp_path):
    directory, _ = rehearsal
    copy = tmp_path / "root.jsonl"
    lines = transcripts(directory)["root"].read_text().splitlines(keepends=True)
    assert '"title":"finding token' in lines[1]
    lines[1] = lines[1].replace('"title":"finding token', '"title":"Finding token', 1)
    copy.write_text("".join(lines))
    message = refused("ceremony", "verify", copy, fragments=["line 2"])
    assert "its hash does not match its contents" in message
    # The original is intact.
    ok("ceremony", "verify", transcripts(directory)["root"])


def test_a_changed_output_is_named(rehearsal):
    directory, _ = rehearsal
    crl = directory / "root-ca-1.crl"
    original = crl.read_bytes()
    try:
        crl.write_bytes(original + b"\x00")
        refused(
            "ceremony", "verify", transcripts(directory)["crl"],
            fragments=[str(crl), "changed since the ceremony"],
        )  # fmt: skip
    finally:
        crl.write_bytes(original)
    ok("ceremony", "verify", transcripts(directory)["crl"])


def test_a_real_ceremony_on_its_own_token(tmp_path, module):
    conf = softhsm_conf(tmp_path / "hsm")
    token = init_token("Real Root", conf)
    environment = {"SOFTHSM2_CONF": str(conf), "HSMCA_PIN": token.pin}
    ca_dir = tmp_path / "out" / "root-ca"
    source = tmp_path / "root.toml"
    source.write_text(
        'type = "root"\n'
        f'[token]\nlabel = "Real Root"\nserial = "{token.serial}"\nmodule = "{module}"\n'
        '[key]\nlabel = "root"\ntype = "p256"\nalways-authenticate = true\n'
        '[certificate]\nsubject = "CN=Real Root"\ndays = 3650\n'
        f'[outputs]\nca-dir = "{ca_dir}"\n'
    )
    ca_dir.mkdir(parents=True)
    (ca_dir / "keep").write_text("")
    refused("ceremony", "run", source, env=environment, fragments=["already exists"])
    assert token_labels(conf, module, "Real Root", token.pin) == []
    shutil.rmtree(ca_dir)
    transcript = tmp_path / "witnessed" / "root.jsonl"
    done = ok("ceremony", "run", source, "--transcript", transcript, env=environment)
    assert "REHEARSAL" not in done.stdout
    recorded = entries(transcript)
    assert recorded[-1]["rehearsal"] is False and recorded[1]["token"]["serial"] == token.serial
    assert recorded[3]["key"]["attributes"]["always_authenticate"] is True
    assert (tmp_path / "witnessed" / "root.txt").is_file()
    ok("ceremony", "verify", transcript)
    refused(
        "ceremony", "run", source.with_name("again.toml"), env=environment,
        fragments=["cannot read the ceremony file"],
    )  # fmt: skip
    again = source.with_name("again.toml")
    again.write_text(source.read_text().replace(str(ca_dir), str(ca_dir) + "-2"))
    refused(
        "ceremony", "run", again, "--transcript", transcript, env=environment,
        fragments=["transcript", "already exists"],
    )  # fmt: skip

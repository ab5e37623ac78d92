"""The token layer on SoftHSM as tokens really are: raw mechanisms only, PIN-per-signature keys,
labels that repeat, and PKCS#11 errors turned into sentences."""

from __future__ import annotations

import os
import subprocess
import sys

import pkcs11
import pytest
from click.testing import CliRunner
from conftest import init_token, softhsm_conf
from cryptography.hazmat.primitives.serialization import Encoding, pkcs12

from hsmca import api, token, x509build
from hsmca.cli import cli
from hsmca.errors import TokenError
from hsmca.models import KeyType
from hsmca.p11uri import parse_token_spec

RAW_MECHANISMS = (
    "CKM_RSA_PKCS_KEY_PAIR_GEN,CKM_EC_KEY_PAIR_GEN,CKM_RSA_PKCS,CKM_ECDSA,CKM_SHA256,CKM_SHA384"
)
PASSWORD = "pfx password"


def hsmca(args, env, cwd):
    return subprocess.run(
        [sys.executable, "-c", "from hsmca.cli import main; main()", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


@pytest.fixture(scope="module")
def raw_conf(tmp_path_factory):
    return softhsm_conf(tmp_path_factory.mktemp("raw-softhsm"), RAW_MECHANISMS)


@pytest.mark.parametrize("ca_key_type", ["rsa2048", "p384", "p256"])
def test_init_and_issue_on_a_token_with_raw_mechanisms_only(
    raw_conf, module, tmp_path, ca_key_type
):
    tok = init_token(f"raw-{ca_key_type}", raw_conf)
    env = dict(
        os.environ,
        SOFTHSM2_CONF=str(raw_conf),
        HSMCA_MODULE=module,
        HSMCA_PIN=tok.pin,
        HSMCA_PFX_PASSWORD=PASSWORD,
    )
    mechanisms = subprocess.run(
        ["pkcs11-tool", "--module", module, "--token-label", tok.label, "-M"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "SHA256-RSA-PKCS" not in mechanisms and "ECDSA-SHA256" not in mechanisms
    assert "RSA-PKCS," in mechanisms or "RSA-PKCS\n" in mechanisms
    created = hsmca(["init", "ca", "--token", tok.label, "--key-type", ca_key_type], env, tmp_path)
    assert created.returncode == 0, created.stderr
    issued = hsmca(
        ["issue", "--ca-dir", "ca", "--dns", "rec1.example.com", "--ip", "10.1.2.3"], env, tmp_path
    )
    assert issued.returncode == 0, issued.stderr
    _, leaf, _ = pkcs12.load_key_and_certificates(
        (tmp_path / "rec1.example.com.pfx").read_bytes(), PASSWORD.encode()
    )
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(Encoding.PEM))
    verified = subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-purpose",
            "sslserver",
            "-verify_hostname",
            "rec1.example.com",
            "-CAfile",
            "ca/ca.pem",
            "leaf.pem",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_raw_mechanism_signer_chooses_the_raw_mechanism(raw_conf, module, tmp_path):
    """In-process, against the same restricted token directory, through the token layer."""
    tok = init_token("raw-direct", raw_conf)
    env = dict(os.environ, SOFTHSM2_CONF=str(raw_conf), HSMCA_MODULE=module, HSMCA_PIN=tok.pin)
    script = (
        "from hsmca import token\n"
        "from hsmca.models import KeyType\n"
        f"device = token.find_token({module!r}, 'raw-direct')\n"
        "with token.open_session(device, lambda info: " + repr(tok.pin) + ", rw=True) as s:\n"
        "    for kt in (KeyType.RSA2048, KeyType.P256):\n"
        "        key = token.generate_ca_key(s, kt, 'k-' + kt.value)\n"
        "        priv = token.find_private_key(s, key.key_id, 'k')\n"
        "        signer = token.TokenSigner(s, priv, kt, lambda info: None)\n"
        "        print(kt.value, signer.mechanism.name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["rsa2048", "RSA_PKCS", "p256", "ECDSA"]


def test_hashed_mechanism_is_preferred_where_offered(ca_factory, module):
    _, tok, created = ca_factory(KeyType.RSA2048)
    device = token.find_token(module, tok.label)
    with token.open_session(device, tok.pin_source) as session:
        key = token.find_private_key(session, created.key_id, "hsmca-ca")
        assert token.TokenSigner(session, key, KeyType.RSA2048, tok.pin_source).mechanism == (
            pkcs11.Mechanism.SHA256_RSA_PKCS
        )


def test_always_authenticate_key_gets_the_pin_before_every_signature(
    token_factory, module, tmp_path
):
    tok = token_factory()
    result = CliRunner().invoke(
        cli,
        [
            "init",
            str(tmp_path / "ca"),
            "--module",
            module,
            "--token",
            tok.label,
            "--key-type",
            "p256",
            "--always-authenticate",
            "--pin-file",
            str(tok.pin_file),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "always_authenticate=True" in result.output
    calls = []

    def counting_pin_source(info):
        calls.append(info.serial)
        return tok.pin

    request = x509build.server_request(["rec1.example.com"], [], 30, KeyType.P256)
    issued = api.issue_server(
        tmp_path / "ca",
        request,
        password=PASSWORD,
        pin_source=counting_pin_source,
        out=tmp_path / "rec1.pfx",
    )
    # One login, then one context-specific login for the key check and one for the certificate.
    assert calls == [tok.serial] * 3
    assert issued.path.exists()


def test_two_tokens_with_one_label_are_told_apart_by_serial(token_factory, module):
    first = token_factory("Twin CA")
    second = token_factory("Twin CA")
    with pytest.raises(TokenError) as raised:
        token.find_token(module, "Twin CA")
    message = str(raised.value)
    assert "2 tokens match label 'Twin CA'" in message
    assert first.serial in message and second.serial in message
    by_uri = token.find_token(
        module, parse_token_spec(f"pkcs11:token=Twin%20CA;serial={second.serial}")
    )
    assert token.token_info(by_uri).serial == second.serial


@pytest.mark.parametrize(
    ("exception", "fragment"),
    [
        (pkcs11.exceptions.PinIncorrect, "wrong PIN"),
        (pkcs11.exceptions.PinLocked, "is locked"),
        (pkcs11.exceptions.TokenNotPresent, "not present; plug it in"),
        (pkcs11.exceptions.DeviceRemoved, "was removed"),
        (pkcs11.exceptions.NoSuchKey, "CA key was not found"),
        (pkcs11.exceptions.GeneralError, "reported GeneralError"),
    ],
)
def test_pkcs11_errors_become_sentences(exception, fragment):
    with pytest.raises(TokenError) as raised, token.translate_errors("token 'X' (serial 1)"):
        raise exception()
    assert fragment in str(raised.value)
    assert "token 'X' (serial 1)" in str(raised.value)


def test_init_with_a_pkcs11_uri_naming_module_and_pin_file(token_factory, module, tmp_path):
    twin = token_factory("Twin URI CA")
    chosen = token_factory("Twin URI CA")
    uri = (
        f"pkcs11:token=Twin%20URI%20CA;serial={chosen.serial}"
        f"?module-path={module}&pin-source=file:{chosen.pin_file}"
    )
    result = CliRunner().invoke(
        cli, ["init", str(tmp_path / "ca"), "--token", uri, "--key-type", "p256"]
    )
    assert result.exit_code == 0, result.output
    assert f"serial {chosen.serial}" in result.output
    config = (tmp_path / "ca" / "hsmca.toml").read_text()
    assert f'serial = "{chosen.serial}"' in config and twin.serial not in config
    refused = CliRunner().invoke(
        cli, ["init", str(tmp_path / "ca2"), "--token", f"pkcs11:token=x?pin-value={chosen.pin}"]
    )
    assert refused.exit_code == 1 and "pin-value" in refused.output
    assert chosen.pin not in refused.output


def test_token_list_and_info_as_json(ca_factory, module):
    import json

    _, tok, created = ca_factory(KeyType.RSA2048)
    listed = CliRunner().invoke(cli, ["token", "list", "--module", module, "--json"])
    assert listed.exit_code == 0, listed.output
    tokens = [slot["token"] for slot in json.loads(listed.output) if slot["token"]]
    (mine,) = [t for t in tokens if t["label"] == tok.label]
    assert mine["serial"] == tok.serial and mine["initialized"] and not mine["pin_pad"]
    assert "login_required" in mine["flags"]

    shown = CliRunner().invoke(
        cli,
        [
            "token",
            "info",
            "--module",
            module,
            "--token",
            tok.label,
            "--pin-file",
            str(tok.pin_file),
            "--json",
        ],
    )
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.output)
    mechanisms = {m["mechanism"]: m for m in info["mechanisms"]}
    assert "sign" in mechanisms["CKM_SHA256_RSA_PKCS"]["flags"]
    assert mechanisms["CKM_RSA_PKCS_KEY_PAIR_GEN"]["max_key_size"] >= 4096
    by_class = {o["class"]: o for o in info["objects"] if o["id"] == created.key_id.hex()}
    assert set(by_class) == {"private key", "public key", "certificate"}
    private = by_class["private key"]
    assert (private["key_type"], private["size"]) == ("rsa", 2048)
    assert private["sensitive"] and private["never_extractable"] and private["local"]
    assert not private["extractable"]
    assert tok.pin not in shown.output


@pytest.fixture(scope="module")
def raw_pss_conf(tmp_path_factory):
    return softhsm_conf(tmp_path_factory.mktemp("raw-pss"), RAW_MECHANISMS + ",CKM_RSA_PKCS_PSS")


def test_rsa_pss_root_with_raw_pss_only_and_without_pss(raw_conf, raw_pss_conf, module, tmp_path):
    """Host-hashed CKM_RSA_PKCS_PSS where that is all there is; a clear refusal with none."""
    for conf, label, expect_ok in ((raw_pss_conf, "pss-raw", True), (raw_conf, "no-pss", False)):
        tok = init_token(label, conf)
        env = dict(os.environ, SOFTHSM2_CONF=str(conf), HSMCA_MODULE=module, HSMCA_PIN=tok.pin)
        result = hsmca(
            [
                "init",
                f"ca-{label}",
                "--token",
                label,
                "--key-type",
                "rsa2048",
                "--signature-scheme",
                "pss",
            ],
            env,
            tmp_path,
        )
        if expect_ok:
            assert result.returncode == 0, result.stderr
            verified = subprocess.run(
                [
                    "openssl",
                    "verify",
                    "-x509_strict",
                    "-CAfile",
                    f"ca-{label}/ca.pem",
                    f"ca-{label}/ca.pem",
                ],
                cwd=tmp_path,
                capture_output=True,
                text=True,
            )
            assert verified.returncode == 0, verified.stdout + verified.stderr
        else:
            assert result.returncode == 1
            assert "offers neither SHA256_RSA_PKCS_PSS nor RSA_PKCS_PSS" in result.stderr
            assert not (tmp_path / f"ca-{label}").exists()
            # The key made before the refusal was removed again.
            listed = hsmca(["token", "info", "--token", label, "--json"], env, tmp_path)
            assert '"private key"' not in listed.stdout, listed.stdout


def test_a_uri_module_path_wins_over_the_environment(token_factory, module, tmp_path):
    tok = token_factory()
    result = CliRunner().invoke(
        cli,
        ["init", str(tmp_path / "ca"), "--key-type", "p256", "--pin-file", str(tok.pin_file),
         "--token", f"pkcs11:token={tok.label}?module-path={module}"],
        env={"HSMCA_MODULE": "/nonexistent/from-the-environment.so"},
    )
    assert result.exit_code == 0, result.output

"""A root on one token, an issuing CA on another: init --subordinate, sign-ca, completion."""

from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs12

from hsmca import lint
from hsmca.cli import cli

PASSWORD = "two tier"


def run(*args, **env):
    result = CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)
    return result


def ok(*args, **env):
    result = run(*args, **env)
    assert result.exit_code == 0, result.output
    return result


def refused(*args, fragment: str, **env):
    result = run(*args, **env)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and fragment in result.output, result.output
    assert "Traceback" not in result.output
    return result


@pytest.fixture()
def hierarchy(tmp_path, token_factory, module):
    root_token, issuing_token = token_factory(), token_factory()
    root_dir, sub_dir = tmp_path / "root", tmp_path / "issuing"
    ok("init", root_dir, "--module", module, "--token", root_token.label, "--key-type", "p384",
       "--subject", "CN=Test Root CA,O=Example", "--days", "1000",
       "--pin-file", root_token.pin_file)
    ok("init", sub_dir, "--module", module, "--token", issuing_token.label, "--subordinate",
       "--key-type", "p256", "--subject", "CN=Test Issuing CA,O=Example",
       "--pin-file", issuing_token.pin_file)
    return root_dir, root_token, sub_dir, issuing_token


def test_pending_directory_refuses_to_sign(hierarchy, tmp_path):
    _, _, sub_dir, issuing_token = hierarchy
    assert (sub_dir / "ca.csr").read_bytes().startswith(b"-----BEGIN CERTIFICATE REQUEST")
    assert 'state = "pending"' in (sub_dir / "hsmca.toml").read_text()
    refused("issue", "--ca-dir", sub_dir, "--dns", "a.example.com",
            "--pin-file", issuing_token.pin_file, "--out", tmp_path / "a.pfx",
            fragment="waiting for its certificate", HSMCA_PFX_PASSWORD=PASSWORD)
    assert not (tmp_path / "a.pfx").exists()


def test_two_tier_hierarchy_end_to_end(hierarchy, tmp_path):
    root_dir, root_token, sub_dir, issuing_token = hierarchy
    signed = tmp_path / "issuing.pem"
    ok("sign-ca", sub_dir / "ca.csr", "--ca-dir", root_dir, "--out", signed,
       "--pin-file", root_token.pin_file)
    issuing, root = x509.load_pem_x509_certificates(signed.read_bytes())
    assert root.subject == x509.load_pem_x509_certificate(
        (root_dir / "ca.pem").read_bytes()).subject
    assert issuing.subject.rfc4514_string() == "CN=Test Issuing CA,O=Example"
    constraints = issuing.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = issuing.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert usage.value.digital_signature
    aki = issuing.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest
    # The root's validity (1000 days) caps the default 1825 days.
    assert issuing.not_valid_after_utc == root.not_valid_after_utc
    assert lint.certificate_findings(issuing.public_bytes(Encoding.DER)) == []

    ok("init", sub_dir, "--certificate", signed, "--pin-file", issuing_token.pin_file)
    assert 'state = "active"' in (sub_dir / "hsmca.toml").read_text()
    assert (sub_dir / "root-authority-public.cer").read_bytes() == root.public_bytes(Encoding.DER)

    out = tmp_path / "rec1.pfx"
    ok("issue", "--ca-dir", sub_dir, "--dns", "rec1.example.com", "--ip", "10.9.8.7",
       "--out", out, "--pin-file", issuing_token.pin_file, HSMCA_PFX_PASSWORD=PASSWORD)
    _, leaf, chain = pkcs12.load_key_and_certificates(out.read_bytes(), PASSWORD.encode())
    assert [c.subject for c in chain] == [issuing.subject, root.subject]
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(Encoding.PEM))
    verified = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-purpose", "sslserver",
         "-CAfile", root_dir / "ca.pem", "-untrusted", sub_dir / "ca.pem",
         "-verify_hostname", "rec1.example.com", tmp_path / "leaf.pem"],
        capture_output=True, text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr

    listed = run("list", "--ca-dir", root_dir, "--status", "all", "--json")
    import json

    profiles = {row["subject"]: row["profile"] for row in json.loads(listed.output)}
    assert profiles["CN=Test Issuing CA,O=Example"] == "subca"
    ok("audit", "verify", "--ca-dir", sub_dir)
    ok("audit", "verify", "--ca-dir", root_dir)


def test_completion_with_the_wrong_certificate_is_refused(
    hierarchy, tmp_path, token_factory, module
):
    root_dir, root_token, sub_dir, issuing_token = hierarchy
    other_token = token_factory()
    other_dir = tmp_path / "other"
    ok("init", other_dir, "--module", module, "--token", other_token.label, "--subordinate",
       "--key-type", "p256", "--subject", "CN=Other CA", "--pin-file", other_token.pin_file)
    wrong = tmp_path / "other.pem"
    ok("sign-ca", other_dir / "ca.csr", "--ca-dir", root_dir, "--out", wrong,
       "--pin-file", root_token.pin_file)
    before = (sub_dir / "hsmca.toml").read_bytes()
    refused("init", sub_dir, "--certificate", wrong, "--pin-file", issuing_token.pin_file,
            fragment="certifies another key")
    assert (sub_dir / "hsmca.toml").read_bytes() == before
    assert not (sub_dir / "ca.pem").exists()

    # The right certificate without the root beside it needs --chain.
    right = tmp_path / "right.pem"
    ok("sign-ca", sub_dir / "ca.csr", "--ca-dir", root_dir, "--out", right,
       "--pin-file", root_token.pin_file)
    issuing_only = tmp_path / "issuing-only.pem"
    issuing_only.write_bytes(
        x509.load_pem_x509_certificates(right.read_bytes())[0].public_bytes(Encoding.PEM))
    refused("init", sub_dir, "--certificate", issuing_only, "--pin-file",
            issuing_token.pin_file, fragment="--chain")
    # A chain that ends in another root is refused too.
    foreign = tmp_path / "foreign"
    foreign_token = token_factory()
    ok("init", foreign, "--module", module, "--token", foreign_token.label, "--key-type",
       "p256", "--subject", "CN=Test Root CA,O=Example", "--pin-file", foreign_token.pin_file)
    refused("init", sub_dir, "--certificate", issuing_only, "--chain", foreign / "ca.pem",
            "--pin-file", issuing_token.pin_file, fragment="is not signed by")
    ok("init", sub_dir, "--certificate", issuing_only, "--chain", root_dir / "ca.pem",
       "--pin-file", issuing_token.pin_file)


def test_sign_ca_options_and_refusals(hierarchy, tmp_path):
    root_dir, root_token, sub_dir, _ = hierarchy
    out = tmp_path / "pl2.pem"
    ok("sign-ca", sub_dir / "ca.csr", "--ca-dir", root_dir, "--path-length", "2", "--days",
       "30", "--out", out, "--pin-file", root_token.pin_file)
    issuing, _ = x509.load_pem_x509_certificates(out.read_bytes())
    assert issuing.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 2
    assert (issuing.not_valid_after_utc - issuing.not_valid_before_utc).days == 30
    refused("sign-ca", sub_dir / "ca.csr", "--ca-dir", root_dir, "--out", out,
            "--pin-file", root_token.pin_file, fragment="already exists")
    damaged = tmp_path / "damaged.csr"
    data = bytearray((sub_dir / "ca.csr").read_bytes())
    damaged.write_bytes(bytes(data[:40]) + b"A" + bytes(data[41:]))
    refused("sign-ca", damaged, "--ca-dir", root_dir, "--out", tmp_path / "x.pem",
            "--pin-file", root_token.pin_file, fragment="damaged")
    assert not (tmp_path / "x.pem").exists()


def test_rsa_pss_for_ca_certificates(tmp_path, token_factory, module):
    root_token, issuing_token = token_factory(), token_factory()
    root_dir, sub_dir = tmp_path / "pss-root", tmp_path / "pss-issuing"
    refused("init", tmp_path / "ec", "--module", module, "--token", root_token.label,
            "--key-type", "p256", "--signature-scheme", "pss", "--pin-file",
            root_token.pin_file, fragment="RSA-PSS needs an RSA CA key")
    ok("init", root_dir, "--module", module, "--token", root_token.label, "--key-type",
       "rsa3072", "--signature-scheme", "pss", "--subject", "CN=PSS Root",
       "--pin-file", root_token.pin_file)
    root = x509.load_pem_x509_certificate((root_dir / "ca.pem").read_bytes())
    assert root.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.RSASSA_PSS
    assert lint.certificate_findings(root.public_bytes(Encoding.DER)) == []
    ok("init", sub_dir, "--module", module, "--token", issuing_token.label, "--subordinate",
       "--key-type", "rsa3072", "--subject", "CN=PSS Issuing", "--pin-file",
       issuing_token.pin_file)
    signed = tmp_path / "pss-issuing.pem"
    ok("sign-ca", sub_dir / "ca.csr", "--ca-dir", root_dir, "--signature-scheme", "pss",
       "--out", signed, "--pin-file", root_token.pin_file)
    issuing, _ = x509.load_pem_x509_certificates(signed.read_bytes())
    assert issuing.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.RSASSA_PSS
    assert lint.certificate_findings(issuing.public_bytes(Encoding.DER)) == []
    ok("init", sub_dir, "--certificate", signed, "--pin-file", issuing_token.pin_file)
    out = tmp_path / "pss-leaf.pfx"
    ok("issue", "--ca-dir", sub_dir, "--dns", "pss.example.com", "--out", out,
       "--pin-file", issuing_token.pin_file, HSMCA_PFX_PASSWORD=PASSWORD)
    _, leaf, _ = pkcs12.load_key_and_certificates(out.read_bytes(), PASSWORD.encode())
    # Leaves stay PKCS#1 v1.5, which every Windows version reads.
    assert leaf.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.RSA_WITH_SHA256
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(Encoding.PEM))
    verified = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-purpose", "sslserver",
         "-CAfile", root_dir / "ca.pem", "-untrusted", sub_dir / "ca.pem",
         "-verify_hostname", "pss.example.com", tmp_path / "leaf.pem"],
        capture_output=True, text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_sign_ca_says_when_the_root_shortens_the_validity(hierarchy, tmp_path):
    root_dir, root_token, sub_dir, _ = hierarchy
    result = ok("sign-ca", sub_dir / "ca.csr", "--ca-dir", root_dir, "--days", "9000",
                "--out", tmp_path / "long.pem", "--pin-file", root_token.pin_file)
    assert "Note: validity shortened to end with the root certificate" in result.output


def test_an_interrupted_completion_can_run_again(hierarchy, tmp_path, module):
    import pkcs11

    root_dir, root_token, sub_dir, issuing_token = hierarchy
    signed = tmp_path / "again.pem"
    ok("sign-ca", sub_dir / "ca.csr", "--ca-dir", root_dir, "--out", signed,
       "--pin-file", root_token.pin_file)
    ok("init", sub_dir, "--certificate", signed, "--pin-file", issuing_token.pin_file)
    # As if interrupted before the state flipped: files and token object are there already.
    config = sub_dir / "hsmca.toml"
    config.write_text(config.read_text().replace('state = "active"', 'state = "pending"'))
    ok("init", sub_dir, "--certificate", signed, "--pin-file", issuing_token.pin_file)
    device = pkcs11.lib(module).get_token(token_label=issuing_token.label)
    with device.open(user_pin=issuing_token.pin) as session:
        stored = list(session.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.CERTIFICATE}))
    assert len(stored) == 1
    import json

    rows = json.loads(run("list", "--ca-dir", root_dir, "--status", "all", "--json").output)
    (own,) = [row for row in rows if row["profile"] == "ca"]
    assert own["output_path"] == str(root_dir.absolute() / "ca.pem")

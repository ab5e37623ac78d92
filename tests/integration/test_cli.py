"""The `hsmca init` and `hsmca issue` commands on real SoftHSM tokens, good input and bad."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pkcs11
import pytest
from click.testing import CliRunner
from conftest import assert_error, tree
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import pkcs12

from hsmca.cli import cli

PASSWORD = "correct horse battery"


def run(args, env=None, cwd=None):
    runner = CliRunner()
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return runner.invoke(cli, args, env=env or {}, catch_exceptions=False)
    finally:
        os.chdir(old)


@pytest.fixture()
def token(token_factory):
    return token_factory()


@pytest.fixture()
def password_file(tmp_path):
    path = tmp_path / "pfx-password.txt"
    path.write_text(PASSWORD + "\n")
    return path


def init_args(ca_dir, module, token, *extra):
    return ["init", str(ca_dir), "--module", module, "--token", token.label,
            "--pin-file", str(token.pin_file), *extra]


@pytest.fixture()
def ca(tmp_path, module, token):
    ca_dir = tmp_path / "ca"
    result = run(init_args(ca_dir, module, token, "--key-type", "p256"))
    assert result.exit_code == 0, result.output
    return ca_dir, token


def private_key_objects(token, module, label):
    library = pkcs11.lib(module)
    device = library.get_token(token_label=token.label)
    with device.open(user_pin=token.pin) as session:
        return [
            obj.get_attributes([
                pkcs11.Attribute.LABEL,
                pkcs11.Attribute.ID,
                pkcs11.Attribute.SENSITIVE,
                pkcs11.Attribute.EXTRACTABLE,
                pkcs11.Attribute.ALWAYS_SENSITIVE,
                pkcs11.Attribute.NEVER_EXTRACTABLE,
                pkcs11.Attribute.TOKEN,
                pkcs11.Attribute.PRIVATE,
                pkcs11.Attribute.SIGN,
                pkcs11.Attribute.DECRYPT,
                pkcs11.Attribute.UNWRAP,
            ])
            for obj in session.get_objects(
                {pkcs11.Attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY,
                 pkcs11.Attribute.LABEL: label}
            )
        ]


# --- init ----------------------------------------------------------------------------------------


def test_init_writes_the_ca_directory_and_a_safe_key(tmp_path, module, token):
    ca_dir = tmp_path / "ca"
    result = run(init_args(ca_dir, module, token))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in ca_dir.iterdir()) == [
        "audit.jsonl", "ca.pem", "ca.sqlite3", "ca_thumbprint.txt", "hsmca.toml",
        "root-authority-public.cer",
    ]
    der = (ca_dir / "root-authority-public.cer").read_bytes()
    certificate = x509.load_der_x509_certificate(der)
    assert certificate == x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    thumbprint = (ca_dir / "ca_thumbprint.txt").read_text().strip()
    assert thumbprint == certificate.fingerprint(hashes.SHA1()).hex().upper()
    assert len(thumbprint) == 40
    assert certificate.subject.rfc4514_string() == "CN=VMS Certificate Authority"
    assert certificate.public_key().key_size == 3072
    days = (certificate.not_valid_after_utc - certificate.not_valid_before_utc).days
    assert 3650 <= days <= 3651
    # Nothing that looks like a private key is in the CA directory.
    for content in tree(ca_dir).values():
        assert b"PRIVATE KEY" not in content

    (attributes,) = private_key_objects(token, module, "hsmca-ca")
    A = pkcs11.Attribute
    assert attributes[A.SENSITIVE] and attributes[A.ALWAYS_SENSITIVE]
    assert not attributes[A.EXTRACTABLE] and attributes[A.NEVER_EXTRACTABLE]
    assert attributes[A.TOKEN] and attributes[A.PRIVATE] and attributes[A.SIGN]
    assert not attributes[A.DECRYPT] and not attributes[A.UNWRAP]
    config = (ca_dir / "hsmca.toml").read_text()
    assert attributes[A.ID].hex() in config
    assert "sensitive=True" in result.output and "extractable=False" in result.output
    assert token.pin not in result.output


def test_init_stores_the_ca_certificate_on_the_token(ca, module):
    ca_dir, token = ca
    device = pkcs11.lib(module).get_token(token_label=token.label)
    with device.open(user_pin=token.pin) as session:
        (stored,) = list(session.get_objects(
            {pkcs11.Attribute.CLASS: pkcs11.ObjectClass.CERTIFICATE}))
        (key,) = list(session.get_objects(
            {pkcs11.Attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY}))
        assert stored[pkcs11.Attribute.VALUE] == (ca_dir / "root-authority-public.cer").read_bytes()
        assert stored[pkcs11.Attribute.ID] == key[pkcs11.Attribute.ID]
        assert stored[pkcs11.Attribute.LABEL] == "hsmca-ca"


def test_second_init_with_the_same_key_label_is_refused(ca, tmp_path, module):
    _, token = ca
    other = tmp_path / "other"
    result = run(init_args(other, module, token))
    assert_error(result, "already holds a private key labelled 'hsmca-ca'", "--key-label")
    assert not other.exists()
    assert len(private_key_objects(token, module, "hsmca-ca")) == 1


def test_init_with_a_wrong_pin_writes_nothing(tmp_path, module, token):
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("not-the-pin\n")
    ca_dir = tmp_path / "ca"
    result = run(["init", str(ca_dir), "--module", module, "--token", token.label,
                  "--pin-file", str(wrong)])
    assert_error(result, "wrong PIN", token.label)
    assert not ca_dir.exists()
    assert "not-the-pin" not in result.output


def test_init_names_the_tokens_present_for_an_unknown_label(tmp_path, module, token):
    result = run([*init_args(tmp_path / "ca", module, token)[:4], "--token", "No Such Token"])
    assert_error(result, "no token with label 'No Such Token'", repr(token.label))
    assert not (tmp_path / "ca").exists()


def test_init_with_a_missing_module(tmp_path, token):
    result = run(init_args(tmp_path / "ca", "/nonexistent/libpkcs11.so", token))
    assert_error(result, "PKCS#11 module '/nonexistent/libpkcs11.so' not found", "--module")


def test_init_without_a_module(tmp_path, token):
    result = run(["init", str(tmp_path / "ca"), "--token", token.label,
                  "--pin-file", str(token.pin_file)])
    assert_error(result, "no PKCS#11 module", "HSMCA_MODULE")


def test_init_takes_the_module_from_the_environment(tmp_path, module, token):
    result = run(["init", str(tmp_path / "ca"), "--token", token.label, "--key-type", "p256"],
                 env={"HSMCA_MODULE": module, "HSMCA_PIN": token.pin})
    assert result.exit_code == 0, result.output


def test_init_refuses_a_non_empty_directory(tmp_path, module, token):
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    (ca_dir / "keep.txt").write_text("precious")
    result = run(init_args(ca_dir, module, token))
    assert_error(result, "is not empty")
    assert tree(ca_dir) == {"keep.txt": b"precious"}
    assert private_key_objects(token, module, "hsmca-ca") == []


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--subject", "CN", "invalid subject"),
        ("--subject", "C=Denmark,CN=x", "length must be >= 2 and <= 2"),
        ("--days", "0", "at least 1"),
        ("--key-label", " ", "key label is empty"),
    ],
)
def test_init_rejects_bad_input_before_touching_the_token(
    tmp_path, module, token, option, value, message
):
    result = run(init_args(tmp_path / "ca", module, token, option, value))
    assert_error(result, message)
    assert not (tmp_path / "ca").exists()
    assert private_key_objects(token, module, "hsmca-ca") == []


def test_init_with_no_pin_and_no_terminal(tmp_path, module, token):
    result = run(["init", str(tmp_path / "ca"), "--module", module, "--token", token.label])
    assert_error(result, "no token PIN", "--pin-file", "HSMCA_PIN")


# --- issue ---------------------------------------------------------------------------------------


def issue_args(ca_dir, token, password_file, *extra):
    return ["issue", "--ca-dir", str(ca_dir), "--pin-file", str(token.pin_file),
            "--password-file", str(password_file), *extra]


def test_issue_writes_subject_pfx_in_the_current_directory(ca, tmp_path, password_file):
    ca_dir, token = ca
    work = tmp_path / "work"
    work.mkdir()
    result = run(issue_args(ca_dir, token, password_file, "--dns", " rec1.example.com , rec1",
                            "--dns", "rec1.local,", "--ip", "10.0.0.103, fd00::103"), cwd=work)
    assert result.exit_code == 0, result.output
    pfx = work / "rec1.example.com.pfx"
    assert pfx.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in work.iterdir()] == ["rec1.example.com.pfx"]
    # The file's trailing newline is not part of the password.
    _, certificate, chain = pkcs12.load_key_and_certificates(
        pfx.read_bytes(), PASSWORD.encode())
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in san] == [
        "rec1.example.com", "rec1", "rec1.local", "10.0.0.103", "fd00::103",
    ]
    assert [c.subject for c in chain] == [x509.load_pem_x509_certificate(
        (ca_dir / "ca.pem").read_bytes()).subject]
    assert "Note:" in result.output and "rec1" in result.output
    assert PASSWORD not in result.output and token.pin not in result.output


def test_issue_takes_ca_dir_and_secrets_from_the_environment(ca, tmp_path):
    ca_dir, token = ca
    out = tmp_path / "sub" / "dir" / "server.pfx"
    result = run(["issue", "--dns", "rec2.example.com", "--out", str(out)],
                 env={"HSMCA_DIR": str(ca_dir), "HSMCA_PIN": token.pin,
                      "HSMCA_PFX_PASSWORD": PASSWORD})
    assert result.exit_code == 0, result.output
    _, certificate, _ = pkcs12.load_key_and_certificates(out.read_bytes(), PASSWORD.encode())
    assert certificate.subject.rfc4514_string() == "CN=rec2.example.com"


def test_existing_output_is_refused_and_kept_unless_force(ca, tmp_path, password_file):
    ca_dir, token = ca
    out = tmp_path / "rec3.pfx"
    out.write_bytes(b"the old file")
    args = issue_args(ca_dir, token, password_file, "--dns", "rec3.example.com", "--out", str(out))
    assert_error(run(args), "already exists", "--force")
    assert out.read_bytes() == b"the old file"
    result = run([*args, "--force"])
    assert result.exit_code == 0, result.output
    pkcs12.load_key_and_certificates(out.read_bytes(), PASSWORD.encode())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--dns", "rec_1.example.com"], "invalid DNS name 'rec_1.example.com'"),
        (["--dns", "-rec.example.com"], "invalid DNS name"),
        (["--dns", "*.example.com"], "wildcards"),
        (["--dns", "10.0.0.1"], "pass it with --ip"),
        (["--dns", " , ,"], "at least one DNS name"),
        (["--dns", "rec.example.com", "--ip", "10.0.0.300"], "invalid IP address '10.0.0.300'"),
        (["--dns", "rec.example.com", "--ip", "fe80::1%eth0"], "invalid IP address"),
        (["--dns", "rec.example.com", "--days", "0"], "at least 1"),
    ],
)
def test_issue_rejects_bad_names_and_addresses(ca, tmp_path, password_file, options, message):
    ca_dir, token = ca
    work = tmp_path / "work"
    work.mkdir()
    before = tree(ca_dir)
    assert_error(run(issue_args(ca_dir, token, password_file, *options), cwd=work), message)
    assert list(work.iterdir()) == []
    assert tree(ca_dir) == before


def test_issue_with_a_wrong_pin_writes_nothing(ca, tmp_path, password_file):
    ca_dir, _ = ca
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("0000\n")
    out = tmp_path / "rec4.pfx"
    result = run(["issue", "--ca-dir", str(ca_dir), "--pin-file", str(wrong), "--password-file",
                  str(password_file), "--dns", "rec4.example.com", "--out", str(out)])
    assert_error(result, "wrong PIN")
    assert not out.exists()


def test_issue_with_a_missing_ca_directory(tmp_path, password_file, token):
    result = run(issue_args(tmp_path / "nowhere", token, password_file, "--dns", "a.example"))
    assert_error(result, "does not exist", "--ca-dir")


def test_issue_in_a_directory_that_is_not_a_ca(tmp_path, password_file, token):
    result = run(issue_args(tmp_path, token, password_file, "--dns", "a.example"))
    assert_error(result, "not an hsmca CA directory")


def test_issue_without_names_and_no_terminal(ca, tmp_path, password_file):
    ca_dir, token = ca
    assert_error(run(issue_args(ca_dir, token, password_file), cwd=tmp_path), "no DNS names")


def test_issue_with_an_empty_password_file(ca, tmp_path):
    ca_dir, token = ca
    empty = tmp_path / "empty"
    empty.write_text("\n")
    result = run(issue_args(ca_dir, token, empty, "--dns", "a.example.com"), cwd=tmp_path)
    assert_error(result, "is empty")
    assert not (tmp_path / "a.example.com.pfx").exists()


def test_issue_on_another_token_with_the_same_label_is_refused(
    ca, token_factory, tmp_path, password_file
):
    ca_dir, token = ca
    # Move the CA directory's record to a token that has the label but not the key.
    impostor = token_factory()
    config = (ca_dir / "hsmca.toml").read_text()
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in ca_dir.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    (copy / "hsmca.toml").write_text(
        config.replace(token.label, impostor.label).replace(token.serial, impostor.serial))
    result = run(["issue", "--ca-dir", str(copy), "--pin-file", str(impostor.pin_file),
                  "--password-file", str(password_file), "--dns", "x.example.com"], cwd=tmp_path)
    assert_error(result, "no private key with id")
    assert not (tmp_path / "x.example.com.pfx").exists()


def test_version_and_help():
    assert run(["--version"]).output.startswith("hsmca, version ")
    help_text = run(["--help"]).output
    assert "init" in help_text and "issue" in help_text


# --- the console script, as scripts call it ------------------------------------------------------


def hsmca_command():
    return [sys.executable, "-c", "from hsmca.cli import main; main()"]


def test_console_script_exit_codes(ca, tmp_path, password_file):
    ca_dir, token = ca
    env = dict(os.environ, HSMCA_PIN=token.pin, HSMCA_PFX_PASSWORD=PASSWORD)
    ok = subprocess.run([*hsmca_command(), "issue", "--ca-dir", str(ca_dir), "--dns",
                         "rec5.example.com"], cwd=tmp_path, env=env, capture_output=True,
                        text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert ok.returncode == 0, ok.stderr
    again = subprocess.run([*hsmca_command(), "issue", "--ca-dir", str(ca_dir), "--dns",
                            "rec5.example.com"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert again.returncode == 1
    assert again.stderr.startswith("Error: ") and "Traceback" not in again.stderr
    usage = subprocess.run([*hsmca_command(), "issue", "--bogus"], capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert usage.returncode == 2


def test_interactive_issue_prompts_like_the_guide(ca, tmp_path):
    """On a terminal: DNS names, IP addresses, then the password twice, hidden."""
    ca_dir, token = ca
    main_fd, child_fd = pty.openpty()
    env = dict(os.environ, HSMCA_PIN=token.pin)
    process = subprocess.Popen(
        [*hsmca_command(), "issue", "--ca-dir", str(ca_dir)], cwd=tmp_path, env=env,
        stdin=child_fd, stdout=child_fd, stderr=child_fd, close_fds=True,
    )
    os.close(child_fd)
    transcript = b""

    def expect(text: bytes, answer: bytes) -> None:
        nonlocal transcript
        deadline = time.monotonic() + 30
        while text not in transcript:
            assert time.monotonic() < deadline, transcript
            ready, _, _ = select.select([main_fd], [], [], 1)
            if ready:
                transcript += os.read(main_fd, 4096)
        transcript = transcript.split(text, 1)[1]
        os.write(main_fd, answer + b"\n")

    expect(b"DNS names for recording server certificate", b"rec6.example.com, rec6")
    expect(b"IP addresses for recording server certificate", b"10.0.0.106")
    expect(b"Recording server certificate password", b"s3cret-pw")
    expect(b"Repeat for confirmation", b"s3cret-pw")
    output = b""
    while process.poll() is None or select.select([main_fd], [], [], 0.2)[0]:
        try:
            output += os.read(main_fd, 4096)
        except OSError:
            break
    assert process.wait(timeout=30) == 0, output
    os.close(main_fd)
    assert b"s3cret-pw" not in transcript + output
    _, certificate, _ = pkcs12.load_key_and_certificates(
        (tmp_path / "rec6.example.com.pfx").read_bytes(), b"s3cret-pw")
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in san] == ["rec6.example.com", "rec6", "10.0.0.106"]


def test_replacing_an_issued_file_supersedes_the_certificate_it_held(ca, tmp_path, password_file):
    import json

    ca_dir, token = ca
    out = tmp_path / "rec7.pfx"
    args = issue_args(ca_dir, token, password_file, "--dns", "rec7.example.com", "--out", str(out))
    assert run(args).exit_code == 0
    assert run([*args, "--force"]).exit_code == 0
    rows = json.loads(run(["list", "--ca-dir", str(ca_dir), "--status", "all", "--json"]).output)
    mine = [row for row in rows if row["subject"] == "CN=rec7.example.com"]
    assert sorted(row["status"] for row in mine) == ["active", "superseded"]
    (old,) = [row for row in mine if row["status"] == "superseded"]
    (new,) = [row for row in mine if row["status"] == "active"]
    assert old["superseded_by"] == new["serial"]
    _, certificate, _ = pkcs12.load_key_and_certificates(out.read_bytes(), PASSWORD.encode())
    assert format(certificate.serial_number, "x") == new["serial"]


def test_renew_replaces_the_file_of_the_certificate_it_renews(ca, tmp_path, password_file):
    ca_dir, token = ca
    work = tmp_path / "work"
    work.mkdir()
    assert run(issue_args(ca_dir, token, password_file, "--dns", "rec8.example.com"),
               cwd=work).exit_code == 0
    pfx = work / "rec8.example.com.pfx"
    _, old, _ = pkcs12.load_key_and_certificates(pfx.read_bytes(), PASSWORD.encode())
    renewed = run(["renew", "--ca-dir", str(ca_dir), "rec8.example.com", "--pin-file",
                   str(token.pin_file), "--password-file", str(password_file)], cwd=work)
    assert renewed.exit_code == 0, renewed.output
    _, new, _ = pkcs12.load_key_and_certificates(pfx.read_bytes(), PASSWORD.encode())
    assert new.serial_number != old.serial_number and new.subject == old.subject
    # Any other existing file is still refused.
    other = tmp_path / "other.pfx"
    other.write_bytes(b"keep me")
    refused = run(["renew", "--ca-dir", str(ca_dir), "rec8.example.com", "--pin-file",
                   str(token.pin_file), "--password-file", str(password_file),
                   "--out", str(other)])
    assert_error(refused, "already exists")
    assert other.read_bytes() == b"keep me"

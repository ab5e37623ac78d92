"""OpenSSL's command line judges what hsmca makes: the PFX encryption, the chain, the names."""

from __future__ import annotations

import re
import shutil

import pytest
from cryptography.hazmat.primitives import serialization
from test_interop_support import (
    CA_CERT_DER,
    CA_TYPES,
    DNS_NAMES,
    IP_ADDRESSES,
    SERVER_TYPES,
    WRONG_IP,
    WRONG_NAME,
    Issued,
    run,
    shared_pki,
)

from hsmca.models import KeyType

# Split so that a search of the repository for key material does not stop here.
PEM_PRIVATE_KEY = "-----BEGIN " + "PRIVATE KEY-----"

# Every PFX under the three CA key types, both server key types, both flavours (library API),
# plus three made by the `hsmca issue` command in a separate process (--pin-file,
# --password-file with a trailing newline, --legacy-pfx).
CASES = [
    (ca, server, legacy, "api")
    for ca in CA_TYPES
    for server in SERVER_TYPES
    for legacy in (False, True)
] + [
    (KeyType.RSA2048, KeyType.RSA2048, False, "cli"),
    (KeyType.RSA2048, KeyType.RSA2048, True, "cli"),
    (KeyType.P384, KeyType.P256, True, "cli"),
]


def case_id(case) -> str:
    ca, server, legacy, via = case
    return f"ca-{ca.value}-srv-{server.value}-{'legacy' if legacy else 'aes'}-{via}"


@pytest.fixture(scope="session")
def pki(ca_factory, tmp_path_factory):
    return shared_pki(ca_factory, tmp_path_factory)


@pytest.fixture(scope="module")
def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.fail("openssl is missing: apt-get install openssl", pytrace=False)
    return path


@pytest.fixture(params=CASES, ids=case_id)
def issued(request, pki) -> Issued:
    return pki.pfx(*request.param)


def pkcs12_info(openssl, issued: Issued, *extra: str):
    return run(
        [
            openssl,
            "pkcs12",
            "-in",
            issued.path,
            "-passin",
            f"file:{issued.password_file}",
            "-nodes",
            "-info",
            *extra,
        ]
    )


def kdf_lines(text: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if line.startswith(("PKCS7 Encrypted data:", "Shrouded Keybag:"))
    ]


def iterations(line: str) -> int:
    match = re.search(r"Iteration (\d+)", line)
    assert match, line
    return int(match.group(1))


def test_openssl_opens_pfx_with_the_promised_encryption(openssl, issued):
    args = ("-legacy",) if issued.legacy else ()
    result = pkcs12_info(openssl, issued, *args)
    assert result.returncode == 0, result.stderr
    text = result.stderr  # -info writes the algorithms to stderr, the PEM blocks to stdout
    lines = kdf_lines(text)
    # The certificates (PKCS7 encrypted data) and the key (shrouded key bag) are both encrypted.
    assert len(lines) == 2, text
    assert any(line.startswith("Shrouded Keybag:") for line in lines)
    if issued.legacy:
        for line in lines:
            assert "pbeWithSHA1And3-KeyTripleDES-CBC" in line, line
            assert iterations(line) < 100_000
        assert re.search(r"^MAC: sha1,", text, re.M), text
        assert "PBES2" not in text and "AES" not in text
    else:
        for line in lines:
            assert "PBES2, PBKDF2, AES-256-CBC" in line, line
            assert "PRF hmacWithSHA256" in line, line
            # Tens of thousands: recent .NET refuses unusually high counts.
            assert 10_000 <= iterations(line) < 100_000, line
        assert re.search(r"^MAC: sha256,", text, re.M), text
        assert "TripleDES" not in text and "sha1" not in text.lower()
    # Both the key bag and the certificate bag carry the friendly name Windows shows.
    assert result.stdout.count("friendlyName: VMS Recorder Certificate") == 2
    assert result.stdout.count(PEM_PRIVATE_KEY) == 1
    assert result.stdout.count("-----BEGIN CERTIFICATE-----") == 2
    assert f"subject=CN = {issued.dns_names[0]}" in result.stdout
    assert "subject=CN = VMS Certificate Authority" in result.stdout


def test_openssl_opens_the_default_pfx_without_legacy_provider(openssl, pki):
    # OpenSSL 3 without -legacy has no RC2 or RC4; the default (PBES2/AES) PFX must not need them.
    issued = pki.pfx(KeyType.RSA2048, KeyType.RSA2048, legacy=False)
    result = pkcs12_info(openssl, issued)
    assert result.returncode == 0, result.stderr
    assert "AES-256-CBC" in result.stderr
    assert PEM_PRIVATE_KEY in result.stdout


def test_openssl_rejects_a_wrong_password(openssl, pki, tmp_path):
    issued = pki.pfx(KeyType.RSA2048, KeyType.RSA2048, legacy=False)
    wrong = tmp_path / "wrong-password"
    wrong.write_text(issued.password + "x\n")
    result = run([openssl, "pkcs12", "-in", issued.path, "-passin", f"file:{wrong}", "-nodes"])
    assert result.returncode != 0
    assert PEM_PRIVATE_KEY not in result.stdout
    assert "mac verify" in result.stderr.lower() or "invalid password" in result.stderr.lower()


def test_openssl_key_in_pfx_matches_its_certificate(openssl, issued):
    legacy = ("-legacy",) if issued.legacy else ()
    base = [openssl, "pkcs12", "-in", issued.path, "-passin", f"file:{issued.password_file}"]
    key_pem = run([*base, "-nocerts", "-nodes", *legacy], check=True).stdout
    leaf_pem = run([*base, "-nokeys", "-clcerts", *legacy], check=True).stdout
    from_key = run([openssl, "pkey", "-pubout"], input=key_pem, check=True).stdout
    from_cert = run([openssl, "x509", "-pubkey", "-noout"], input=leaf_pem, check=True).stdout
    assert from_key.startswith("-----BEGIN PUBLIC KEY-----")
    assert from_key == from_cert


# --- chain and names ---------------------------------------------------------------------------


@pytest.fixture
def leaf_pem(openssl, issued, tmp_path):
    legacy = ("-legacy",) if issued.legacy else ()
    out = tmp_path / "leaf.pem"
    run(
        [
            openssl,
            "pkcs12",
            "-in",
            issued.path,
            "-passin",
            f"file:{issued.password_file}",
            "-nokeys",
            "-clcerts",
            "-out",
            out,
            *legacy,
        ],
        check=True,
    )
    assert "BEGIN CERTIFICATE" in out.read_text()
    return out


def verify(openssl, ca_pem, leaf, *checks: str, purpose: str = "sslserver"):
    return run(
        [
            openssl,
            "verify",
            "-x509_strict",
            "-no-CApath",
            "-no-CAstore",
            "-purpose",
            purpose,
            "-CAfile",
            ca_pem,
            *checks,
            leaf,
        ]
    )


def assert_ok(result) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK"), result.stdout


def assert_fails(result, reason: str) -> None:
    assert result.returncode != 0, result.stdout
    assert reason in result.stdout + result.stderr, result.stdout + result.stderr


def test_openssl_verify_accepts_every_name_and_address(openssl, issued, leaf_pem):
    ca = issued.ca_pem_path
    assert_ok(verify(openssl, ca, leaf_pem))
    for name in issued.dns_names:
        assert_ok(verify(openssl, ca, leaf_pem, "-verify_hostname", name))
    for address in issued.ip_addresses:
        assert_ok(verify(openssl, ca, leaf_pem, "-verify_ip", address))


def test_openssl_verify_rejects_wrong_names_and_uses(openssl, issued, leaf_pem):
    ca = issued.ca_pem_path
    assert_fails(verify(openssl, ca, leaf_pem, "-verify_hostname", WRONG_NAME), "hostname mismatch")
    assert_fails(verify(openssl, ca, leaf_pem, "-verify_ip", WRONG_IP), "IP address mismatch")
    # extendedKeyUsage is serverAuth only: not a client certificate.
    assert_fails(
        verify(openssl, ca, leaf_pem, purpose="sslclient"), "unsuitable certificate purpose"
    )


def test_openssl_verify_needs_the_issuing_ca(openssl, pki, tmp_path):
    """A leaf from one CA does not verify against another: the trust anchor really matters."""
    issued = pki.pfx(KeyType.P256, KeyType.P256)
    other_ca = pki.pfx(KeyType.RSA2048, KeyType.RSA2048).ca_pem_path
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(issued.leaf().public_bytes(serialization.Encoding.PEM))
    assert_fails(
        verify(openssl, other_ca, leaf, "-verify_hostname", DNS_NAMES[0]),
        "unable to get local issuer certificate",
    )


# --- the exported CA files ---------------------------------------------------------------------


@pytest.mark.parametrize("ca_type", CA_TYPES, ids=lambda k: k.value)
def test_openssl_reads_the_exported_ca(openssl, pki, ca_type):
    ca_dir, _tok, _created = pki.ca(ca_type)
    der = ca_dir / CA_CERT_DER
    text = run(
        [openssl, "x509", "-inform", "DER", "-in", der, "-noout", "-text", "-fingerprint", "-sha1"],
        check=True,
    ).stdout
    fingerprint = re.search(r"(?i)sha1 Fingerprint=([0-9A-F:]+)", text).group(1).replace(":", "")
    assert fingerprint == (ca_dir / "ca_thumbprint.txt").read_text().strip()
    expected_signature = {
        KeyType.RSA2048: "sha256WithRSAEncryption",
        KeyType.P256: "ecdsa-with-SHA256",
        KeyType.P384: "ecdsa-with-SHA384",
    }[ca_type]
    assert f"Signature Algorithm: {expected_signature}" in text
    assert re.search(r"Basic Constraints: critical\s+CA:TRUE", text), text
    assert re.search(
        r"Key Usage: critical\s+Digital Signature, Certificate Sign, CRL Sign", text
    ), text
    # The PEM copy is the same certificate, and it verifies as its own (strict) root.
    pem_fp = run(
        [openssl, "x509", "-in", ca_dir / "ca.pem", "-noout", "-fingerprint", "-sha1"], check=True
    ).stdout
    assert fingerprint in pem_fp.replace(":", "")
    assert_ok(
        verify(openssl, ca_dir / "ca.pem", ca_dir / "ca.pem", "-check_ss_sig", purpose="sslserver")
    )


def test_openssl_opens_pfx_with_non_ascii_password(openssl, pki, tmp_path):
    """A password typed with umlauts must open in OpenSSL the same way it was set (UTF-8)."""
    from hsmca import api, x509build

    ca_dir, tok, _ = pki.ca(KeyType.RSA2048)
    password = "Pässwörd Ω-103"
    out = tmp_path / "umlaut.pfx"
    request = x509build.server_request(DNS_NAMES, IP_ADDRESSES, 30, KeyType.P256)
    api.issue_server(ca_dir, request, password=password, pin_source=tok.pin_source, out=out)
    password_file = tmp_path / "pw"
    password_file.write_bytes(password.encode("utf-8") + b"\n")
    result = run(
        [openssl, "pkcs12", "-in", out, "-passin", f"file:{password_file}", "-nodes", "-nocerts"]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(PEM_PRIVATE_KEY) == 1

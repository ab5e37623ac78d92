"""Java judges what hsmca makes: keytool reads the PFX and the CA, a Java TLS client connects.

Java starts slowly, so these tests are few, batch their work, and are marked slow. A missing
JDK fails them with an install hint; they never skip silently.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from test_interop_support import (
    CA_CERT_DER,
    CA_TYPES,
    WRONG_NAME,
    TlsServer,
    run,
    shared_pki,
)

from hsmca.models import KeyType

pytestmark = pytest.mark.slow

JAVA_CLIENT = Path(__file__).parent / "java" / "InteropTlsClient.java"
JAVA_TIMEOUT = 180
TRUSTSTORE_PASSWORD = "interop-truststore"


@pytest.fixture(scope="session")
def pki(ca_factory, tmp_path_factory):
    return shared_pki(ca_factory, tmp_path_factory)


@pytest.fixture(scope="module")
def jdk() -> dict[str, str]:
    tools = {name: shutil.which(name) for name in ("java", "keytool")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found on PATH: apt-get install default-jdk-headless",
            pytrace=False,
        )
    version = run([tools["java"], "-version"], check=True).stderr
    major = int(re.search(r'version "(\d+)', version).group(1))
    if major < 11:
        pytest.fail(
            f"Java {major} cannot run single-file sources; apt-get install default-jdk-headless",
            pytrace=False,
        )
    return tools


@pytest.mark.parametrize(
    ("ca_type", "server_type", "legacy", "via"),
    [
        (KeyType.RSA2048, KeyType.RSA2048, False, "api"),
        (KeyType.RSA2048, KeyType.RSA2048, True, "cli"),
        (KeyType.P384, KeyType.P256, False, "api"),
        (KeyType.P384, KeyType.P256, True, "cli"),
    ],
    ids=["rsa-aes-api", "rsa-legacy-cli", "p384-p256-aes-api", "p384-p256-legacy-cli"],
)
def test_keytool_lists_a_private_key_entry(jdk, pki, ca_type, server_type, legacy, via):
    issued = pki.pfx(ca_type, server_type, legacy=legacy, via=via)
    result = run(
        [
            jdk["keytool"],
            "-list",
            "-v",
            "-storetype",
            "PKCS12",
            "-keystore",
            issued.path,
            "-storepass:file",
            issued.password_file,
        ],
        timeout=JAVA_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    assert "Your keystore contains 1 entry" in text, text
    assert "Entry type: PrivateKeyEntry" in text
    # keytool shows the friendly name as the alias (in lower case).
    assert "Alias name: vms recorder certificate" in text
    # Java linked the leaf to the CA certificate inside the file.
    assert "Certificate chain length: 2" in text
    assert f"Owner: CN={issued.dns_names[0]}" in text
    assert "Owner: CN=VMS Certificate Authority" in text


def test_keytool_refuses_a_wrong_store_password(jdk, pki, tmp_path):
    issued = pki.pfx(KeyType.RSA2048, KeyType.RSA2048)
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong password\n")
    result = run(
        [
            jdk["keytool"],
            "-list",
            "-storetype",
            "PKCS12",
            "-keystore",
            issued.path,
            "-storepass:file",
            wrong,
        ],
        timeout=JAVA_TIMEOUT,
    )
    assert result.returncode != 0
    assert "PrivateKeyEntry" not in result.stdout


@pytest.mark.parametrize("ca_type", CA_TYPES, ids=lambda k: k.value)
def test_keytool_prints_the_exported_ca(jdk, pki, ca_type):
    ca_dir, _tok, _created = pki.ca(ca_type)
    result = run(
        [jdk["keytool"], "-printcert", "-file", ca_dir / CA_CERT_DER], timeout=JAVA_TIMEOUT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    assert "Owner: CN=VMS Certificate Authority" in text
    assert "Issuer: CN=VMS Certificate Authority" in text
    # The SHA-1 fingerprint Java shows is the thumbprint hsmca wrote down for Windows users.
    sha1 = re.search(r"SHA1: ([0-9A-F:]+)", text).group(1).replace(":", "")
    assert sha1 == (ca_dir / "ca_thumbprint.txt").read_text().strip()
    algorithm = {
        KeyType.RSA2048: "SHA256withRSA",
        KeyType.P256: "SHA256withECDSA",
        KeyType.P384: "SHA384withECDSA",
    }[ca_type]
    assert f"Signature algorithm name: {algorithm}" in text
    assert re.search(r"BasicConstraints:\[\s+CA:true", text), text


def make_truststore(jdk, ca_dir: Path, path: Path) -> Path:
    run(
        [
            jdk["keytool"],
            "-importcert",
            "-noprompt",
            "-alias",
            "vms-ca",
            "-file",
            ca_dir / CA_CERT_DER,
            "-storetype",
            "PKCS12",
            "-keystore",
            path,
            "-storepass",
            TRUSTSTORE_PASSWORD,
        ],
        check=True,
        timeout=JAVA_TIMEOUT,
    )
    listed = run(
        [
            jdk["keytool"],
            "-list",
            "-storetype",
            "PKCS12",
            "-keystore",
            path,
            "-storepass",
            TRUSTSTORE_PASSWORD,
        ],
        check=True,
        timeout=JAVA_TIMEOUT,
    ).stdout
    # Exactly one trusted certificate: ours, nothing from the JDK's cacerts.
    assert "Your keystore contains 1 entry" in listed and "trustedCertEntry" in listed
    return path


def test_java_tls_client_handshakes_with_hostname_verification(jdk, pki, tmp_path):
    rsa = pki.pfx(KeyType.RSA2048, KeyType.RSA2048)
    ec = pki.pfx(KeyType.P384, KeyType.P256)
    rsa_trust = make_truststore(jdk, rsa.ca_dir, tmp_path / "rsa-trust.p12")
    ec_trust = make_truststore(jdk, ec.ca_dir, tmp_path / "ec-trust.p12")
    rsa_key, rsa_cert = rsa.write_server_files(tmp_path)
    ec_key, ec_cert = ec.write_server_files(tmp_path)
    with TlsServer(rsa_cert, rsa_key) as rsa_server, TlsServer(ec_cert, ec_key) as ec_server:
        targets = [
            ("rsa-name", rsa_trust, rsa_server, "rec1.example.com"),
            ("rsa-alt", rsa_trust, rsa_server, "rec1-alt.example.com"),
            ("rsa-ipv4", rsa_trust, rsa_server, "10.0.0.103"),
            ("rsa-ipv6", rsa_trust, rsa_server, "fd00::103"),
            ("rsa-wrong", rsa_trust, rsa_server, WRONG_NAME),
            ("ec-name", ec_trust, ec_server, "rec1.example.com"),
            ("ec-other-ca", rsa_trust, ec_server, "rec1.example.com"),
        ]
        args = [jdk["java"], JAVA_CLIENT, TRUSTSTORE_PASSWORD]
        for _, store, server, name in targets:
            args += [store, server.port, name]
        result = run(args, timeout=JAVA_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(targets), result.stdout + result.stderr
    outcome = dict(zip([t[0] for t in targets], lines, strict=True))
    for key in ("rsa-name", "rsa-alt", "rsa-ipv4", "rsa-ipv6", "ec-name"):
        line = outcome[key]
        assert line.startswith("OK "), line
        assert re.search(r" TLSv1\.[23] CN=rec1\.example\.com \| hsmca-interop-ok$", line), line
    # HTTPS endpoint identification refuses a name the certificate does not carry.
    assert outcome["rsa-wrong"].startswith("FAIL "), outcome["rsa-wrong"]
    assert "No subject alternative DNS name matching rec2.example.com" in outcome["rsa-wrong"]
    # A client that trusts only the RSA CA does not trust the P-384 CA's server (both CAs have
    # the default subject, so Java finds a same-named anchor and fails on the signature).
    assert outcome["ec-other-ca"].startswith("FAIL "), outcome["ec-other-ca"]
    assert "SSLHandshakeException: PKIX path" in outcome["ec-other-ca"]
    assert len(rsa_server.handshakes) == 4 and len(ec_server.handshakes) == 1

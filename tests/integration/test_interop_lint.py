"""pkilint's RFC 5280 linter judges every token-signed certificate, in-process and as a command."""

from __future__ import annotations

import json
import shutil

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from test_interop_support import run

from hsmca import api, lint, x509build
from hsmca.models import CA_KEY_TYPES, KeyType

INVALID_DOMAIN = "pkix.invalid_domain_name_syntax"


@pytest.fixture(scope="module")
def linted(ca_factory, tmp_path_factory):
    """For each CA key type: the CA certificate, a FQDN leaf and a single-label (`rec1`) leaf.

    All of them are signed on the token; rsa4096 key generation on SoftHSM takes a few seconds.
    """
    out = tmp_path_factory.mktemp("lint")
    made = {}
    for ca_type in CA_KEY_TYPES:
        ca_dir, tok, created = ca_factory(ca_type)
        leaves = {}
        for kind, dns, server_type in (
            ("fqdn", ["rec1.example.com", "rec1-alt.example.com"], KeyType.RSA2048),
            ("single", ["rec1", "rec1.example.com"], KeyType.P256),
        ):
            request = x509build.server_request(dns, ["10.0.0.103"], 365, server_type)
            issued = api.issue_server(
                ca_dir,
                request,
                password="lint only",
                pin_source=tok.pin_source,
                out=out / f"{ca_type.value}-{kind}.pfx",
            )
            leaves[kind] = issued
        made[ca_type] = (created.certificate_der, leaves)
    return made


@pytest.mark.parametrize("ca_type", CA_KEY_TYPES, ids=lambda k: k.value)
def test_ca_and_leaf_have_no_findings(linted, ca_type):
    ca_der, leaves = linted[ca_type]
    assert lint.certificate_findings(ca_der) == []
    leaf = leaves["fqdn"]
    assert lint.certificate_findings(leaf.certificate_der) == []
    assert leaf.notes == []
    # Make sure the linted bytes are what a verifier sees as signed by that CA.
    ca = x509.load_der_x509_certificate(ca_der)
    x509.load_der_x509_certificate(leaf.certificate_der).verify_directly_issued_by(ca)


@pytest.mark.parametrize("ca_type", CA_KEY_TYPES, ids=lambda k: k.value)
def test_single_label_name_gives_exactly_one_tolerated_finding(linted, ca_type):
    _ca_der, leaves = linted[ca_type]
    leaf = leaves["single"]
    findings = lint.certificate_findings(leaf.certificate_der)
    assert [(f.code, f.message) for f in findings] == [
        (INVALID_DOMAIN, 'Invalid domain name syntax: "rec1"')
    ]
    assert findings[0].node.endswith("dNSName")
    # hsmca tells the user about it rather than hiding it.
    assert len(leaf.notes) == 1 and INVALID_DOMAIN in leaf.notes[0]


@pytest.fixture(scope="module")
def lint_pkix_cert() -> str:
    path = shutil.which("lint_pkix_cert")
    if path is None:
        pytest.fail("lint_pkix_cert is missing: pip install pkilint", pytrace=False)
    return path


def cli_findings(lint_pkix_cert, path, *args: str) -> tuple[int, list[tuple[str, str]]]:
    """Run `lint_pkix_cert lint -f JSON`: exit status and (severity, code) of each finding."""
    result = run([lint_pkix_cert, "lint", "-f", "JSON", *args, path])
    assert result.stderr == "", result.stderr
    report = json.loads(result.stdout) if result.stdout.strip() else {"results": []}
    found = [
        (description["severity"], description["code"])
        for node in report["results"]
        for description in node["finding_descriptions"]
    ]
    return result.returncode, found


def test_lint_pkix_cert_command_is_clean(lint_pkix_cert, linted, tmp_path):
    rsa4096_ca, _ = linted[KeyType.RSA4096]
    _, p384_leaves = linted[KeyType.P384]
    ca_pem = tmp_path / "ca-rsa4096.pem"
    ca_pem.write_bytes(
        x509.load_der_x509_certificate(rsa4096_ca).public_bytes(serialization.Encoding.PEM)
    )
    leaf_der = tmp_path / "leaf-p384.der"
    leaf_der.write_bytes(p384_leaves["fqdn"].certificate_der)
    for path in (ca_pem, leaf_der):
        # The threshold the spec names: nothing at WARNING or worse, exit 0, no output.
        result = run([lint_pkix_cert, "lint", "--severity", "WARNING", path])
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == "", result.stdout
        # The command's default threshold is INFO; the only note there is the welcome one that
        # the key identifier is the RFC 5280 method-1 SHA-1 hash.
        _status, found = cli_findings(lint_pkix_cert, path)
        assert found == [("INFO", "pkix.subject_key_identifier_method_1_identified")]


def test_lint_pkix_cert_command_sees_the_single_label_name(lint_pkix_cert, linted, tmp_path):
    """The clean result above is not the command failing to look: it does report `rec1`."""
    _, leaves = linted[KeyType.RSA2048]
    leaf_der = tmp_path / "leaf-rec1.der"
    leaf_der.write_bytes(leaves["single"].certificate_der)
    status, found = cli_findings(lint_pkix_cert, leaf_der, "--severity", "WARNING")
    assert found == [("ERROR", INVALID_DOMAIN)]
    assert status != 0

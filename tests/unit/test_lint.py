"""lint: pkilint's RFC 5280 verdict, and the one finding hsmca tolerates (single-label names)."""

from __future__ import annotations

import pytest
from asn1crypto import x509

from hsmca import lint, signing, x509build
from hsmca.errors import LintFailure
from hsmca.models import KeyType

from .builders import CountingSigner, issue_server, server_tbs, without_extension

INVALID_DOMAIN = "pkix.invalid_domain_name_syntax"


@pytest.fixture(scope="module")
def rsa_ca(signer, ca_cert):
    return signer(KeyType.RSA2048), ca_cert(KeyType.RSA2048)


def _unchecked_certificate(tbs: x509.TbsCertificate, ca_signer) -> bytes:
    """Sign without hsmca's lint gate, to hand pkilint a certificate directly."""
    tbs_der = tbs.dump(force=True)
    return x509build.certificate(tbs, ca_signer.key_type, ca_signer.sign(tbs_der)).dump()


def test_good_certificates_have_no_findings(rsa_ca, signer):
    ca_signer, ca = rsa_ca
    assert lint.certificate_findings(ca.dump()) == []
    assert lint.check_certificate(ca.dump()) == []
    issued, tolerated = issue_server(
        ca_signer, ca, signer(KeyType.RSA2048, "leaf"), ["rec1.example.com"], ["10.0.0.103"]
    )
    assert tolerated == []
    assert lint.certificate_findings(issued.dump()) == []


def test_single_label_allowances():
    assert (
        lint.single_label_allowances(["rec1.example.com", "xn--bcher-kva.example"]) == frozenset()
    )
    assert lint.single_label_allowances(["rec1", "rec1.example.com", "rec2"]) == {
        (INVALID_DOMAIN, 'Invalid domain name syntax: "rec1"'),
        (INVALID_DOMAIN, 'Invalid domain name syntax: "rec2"'),
    }


def test_single_label_name_is_refused_without_its_allowance(rsa_ca, signer):
    ca_signer, ca = rsa_ca
    tbs, _ = server_tbs(
        ca_signer, ca, signer(KeyType.RSA2048, "leaf"), ["rec1", "rec1.example.com"]
    )
    der = _unchecked_certificate(tbs, ca_signer)
    findings = lint.certificate_findings(der)
    assert [(f.code, f.message) for f in findings] == [
        (INVALID_DOMAIN, 'Invalid domain name syntax: "rec1"')
    ]
    assert findings[0].severity == "ERROR"
    assert findings[0].node.endswith("subjectAltName.0.dNSName")
    with pytest.raises(LintFailure, match="rec1"):
        lint.check_certificate(der)
    counting = CountingSigner(ca_signer)
    with pytest.raises(LintFailure, match="nothing was signed"):
        signing.sign_certificate(tbs, counting, ca_signer.public_key)
    assert counting.calls == 0


def test_allowance_tolerates_exactly_the_rec1_finding(rsa_ca, signer):
    ca_signer, ca = rsa_ca
    allowed = lint.single_label_allowances(["rec1"])
    tbs, _ = server_tbs(ca_signer, ca, signer(KeyType.RSA2048, "leaf"), ["rec1"])
    tolerated = lint.check_certificate(_unchecked_certificate(tbs, ca_signer), allowed)
    assert [finding.key for finding in tolerated] == list(allowed)
    certificate, tolerated = signing.sign_certificate(tbs, ca_signer, ca_signer.public_key, allowed)
    assert [finding.key for finding in tolerated] == list(allowed)
    assert certificate["tbs_certificate"].dump() == tbs.dump(force=True)


def test_allowance_for_rec1_does_not_cover_rec2(rsa_ca, signer):
    ca_signer, ca = rsa_ca
    tbs, _ = server_tbs(ca_signer, ca, signer(KeyType.RSA2048, "leaf"), ["rec1", "rec2"])
    with pytest.raises(LintFailure) as caught:
        signing.sign_certificate(
            tbs, ca_signer, ca_signer.public_key, lint.single_label_allowances(["rec1"])
        )
    assert '"rec2"' in str(caught.value)
    assert '"rec1"' not in str(caught.value)


@pytest.mark.parametrize(
    ("missing", "code"),
    [
        ("authority_key_identifier", "pkix.authority_key_identifier_extension_absent"),
        ("key_identifier", "pkix.certificate_skid_end_entity_missing"),  # a WARNING: refused too
    ],
)
def test_allowance_does_not_excuse_a_broken_leaf(rsa_ca, signer, missing, code):
    ca_signer, ca = rsa_ca
    tbs, request = server_tbs(ca_signer, ca, signer(KeyType.RSA2048, "leaf"), ["rec1"])
    broken = without_extension(tbs, missing)
    assert len(broken["extensions"]) == len(tbs["extensions"]) - 1
    counting = CountingSigner(ca_signer)
    with pytest.raises(LintFailure) as caught:
        signing.sign_certificate(
            broken, counting, ca_signer.public_key, lint.single_label_allowances(request.dns_names)
        )
    assert code in str(caught.value)
    assert INVALID_DOMAIN not in str(caught.value)  # the rec1 finding itself stayed tolerated
    assert counting.calls == 0


def test_ca_with_non_critical_basic_constraints_is_refused(signer):
    ca_signer = signer(KeyType.P256)
    not_before, not_after = x509build.validity(30)
    tbs = x509build.ca_tbs(
        x509build.parse_subject("CN=Broken CA"),
        ca_signer.public_key,
        KeyType.P256,
        x509build.random_serial(),
        not_before,
        not_after,
    )
    tbs["extensions"] = x509.Extensions(
        [
            x509.Extension(
                {"extn_id": "basic_constraints", "critical": False, "extn_value": {"ca": True}}
            )
            if ext["extn_id"].native == "basic_constraints"
            else ext
            for ext in tbs["extensions"]
        ]
    )
    with pytest.raises(LintFailure, match="basic_constraints_extension_not_critical"):
        signing.sign_certificate(tbs, ca_signer, ca_signer.public_key)


def test_finding_text_and_key():
    finding = lint.Finding(
        "ERROR", INVALID_DOMAIN, "certificate.x", 'Invalid domain name syntax: "a"'
    )
    assert finding.key == (INVALID_DOMAIN, 'Invalid domain name syntax: "a"')
    assert str(finding) == (
        'ERROR pkix.invalid_domain_name_syntax at certificate.x (Invalid domain name syntax: "a")'
    )
    assert str(lint.Finding("WARNING", "c", "n", None)) == "WARNING c at n"

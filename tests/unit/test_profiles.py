"""The CA and server certificate profiles of issue 2, asserted on the DER that hsmca produces.

Every certificate here is built by x509build, signed through signing.sign_certificate by a
SoftwareSigner, serialised, and read back: with asn1crypto field by field (and byte by byte where
the encoding matters), and with cryptography's loader as an independent second reader.
"""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from asn1crypto import algos, x509
from cryptography import x509 as cx509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

from hsmca import lint, signing
from hsmca.models import CA_KEY_TYPES, SERVER_KEY_TYPES, KeyType

from .builders import (
    SIGNATURE_ALGORITHM_DER,
    build_ca,
    expected_key_identifier,
    extension,
    issue_server,
    reparse,
)

CRYPTOGRAPHY_SIGNATURE_OID = {
    KeyType.RSA2048: SignatureAlgorithmOID.RSA_WITH_SHA256,
    KeyType.RSA3072: SignatureAlgorithmOID.RSA_WITH_SHA256,
    KeyType.RSA4096: SignatureAlgorithmOID.RSA_WITH_SHA256,
    KeyType.P256: SignatureAlgorithmOID.ECDSA_WITH_SHA256,
    KeyType.P384: SignatureAlgorithmOID.ECDSA_WITH_SHA384,
}

# Named-bit KeyUsage values, DER (trailing zero bits dropped, RFC 5280 / X.690 11.2.2).
KU_CA = bytes.fromhex("03020186")  # digitalSignature, keyCertSign, cRLSign
KU_RSA_LEAF = bytes.fromhex("030205a0")  # digitalSignature, keyEncipherment
KU_EC_LEAF = bytes.fromhex("03020780")  # digitalSignature
EKU_SERVER_AUTH = bytes.fromhex("300a06082b06010505070301")  # SEQUENCE { id-kp-serverAuth }
BC_CA = bytes.fromhex("30030101ff")  # SEQUENCE { cA TRUE }
BC_NOT_CA = bytes.fromhex("3000")  # SEQUENCE { } : cA DEFAULT FALSE omitted, as DER requires

DNS_INPUT = ["rec1.example.com, Rec1-Alt.Example.NET", "bücher.example"]
IP_INPUT = ["10.0.0.103, fd00::103", "192.168.1.10"]
EXPECTED_DNS = ["rec1.example.com", "rec1-alt.example.net", "xn--bcher-kva.example"]
EXPECTED_IP = ["10.0.0.103", "fd00::103", "192.168.1.10"]


def _ids(key_type: KeyType) -> str:
    return key_type.value


def _assert_serial(tbs: x509.TbsCertificate) -> None:
    serial = tbs["serial_number"]
    assert serial.native >= 2**64
    assert 1 <= len(serial.contents) <= 20
    assert serial.contents[0] < 0x80  # positive


def _assert_signature_algorithm(certificate: x509.Certificate, issuer_type: KeyType) -> None:
    expected = SIGNATURE_ALGORITHM_DER[issuer_type]
    assert certificate["signature_algorithm"].dump() == expected
    assert certificate["tbs_certificate"]["signature"].dump() == expected
    parameters = certificate["signature_algorithm"]["parameters"]
    if issuer_type.is_rsa:
        assert parameters.dump() == b"\x05\x00"  # explicit NULL
    else:
        assert len(expected) == 12  # SEQUENCE { OID } and nothing else


def _assert_ecdsa_signature_is_der(certificate: x509.Certificate, issuer_type: KeyType) -> None:
    signature = certificate["signature_value"].native
    if issuer_type.is_rsa:
        assert len(signature) == issuer_type.algorithm.bits // 8
    else:
        parsed = algos.DSASignature.load(signature)
        assert parsed.dump(force=True) == signature  # a well-formed DER SEQUENCE of r and s
        assert parsed["r"].native > 0
        assert parsed["s"].native > 0


def _assert_single_utf8_cn(name: x509.Name, value: str) -> None:
    attributes = [attribute for rdn in name.chosen for attribute in rdn]
    assert len(attributes) == 1
    assert attributes[0]["type"].native == "common_name"
    assert attributes[0]["value"].name == "utf8_string"
    assert attributes[0]["value"].chosen.tag == 12
    assert attributes[0]["value"].native == value


# --- CA ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", CA_KEY_TYPES, ids=_ids)
def test_ca_profile(key_type, signer, ca_cert):
    ca_signer = signer(key_type)
    der = ca_cert(key_type).dump()
    certificate = x509.Certificate.load(der)
    tbs = certificate["tbs_certificate"]

    assert tbs["version"].native == "v3"
    assert tbs["version"].contents == b"\x02"
    _assert_serial(tbs)
    _assert_signature_algorithm(certificate, key_type)
    _assert_ecdsa_signature_is_der(certificate, key_type)
    _assert_single_utf8_cn(tbs["subject"], "VMS Certificate Authority")
    assert tbs["issuer"].dump() == tbs["subject"].dump()

    basic = extension(certificate, "basic_constraints")
    assert basic["critical"].native is True
    assert basic["extn_value"].contents == BC_CA
    assert basic["extn_value"].parsed["path_len_constraint"].native is None

    usage = extension(certificate, "key_usage")
    assert usage["critical"].native is True
    assert usage["extn_value"].contents == KU_CA
    assert usage["extn_value"].parsed.native == {"digital_signature", "key_cert_sign", "crl_sign"}

    ski = extension(certificate, "key_identifier")
    assert ski["critical"].native is False
    assert ski["extn_value"].parsed.native == expected_key_identifier(ca_signer.private_key)
    assert len(ski["extn_value"].parsed.native) == 20
    aki = extension(certificate, "authority_key_identifier")
    if aki is not None:  # optional in a self-signed root; when present it must match the SKI
        assert aki["extn_value"].parsed["key_identifier"].native == ski["extn_value"].parsed.native

    assert extension(certificate, "extended_key_usage") is None
    assert extension(certificate, "subject_alt_name") is None
    assert lint.certificate_findings(der) == []


@pytest.mark.parametrize("key_type", CA_KEY_TYPES, ids=_ids)
def test_ca_read_by_cryptography(key_type, signer, ca_cert):
    loaded = cx509.load_der_x509_certificate(ca_cert(key_type).dump())
    assert loaded.version is cx509.Version.v3
    assert loaded.signature_algorithm_oid == CRYPTOGRAPHY_SIGNATURE_OID[key_type]
    assert loaded.signature_hash_algorithm.name == key_type.algorithm.hash_name
    loaded.verify_directly_issued_by(loaded)  # self-signed: the signature verifies

    basic = loaded.extensions.get_extension_for_class(cx509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length is None
    usage = loaded.extensions.get_extension_for_class(cx509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign and usage.value.digital_signature
    assert not usage.value.key_encipherment
    ski = loaded.extensions.get_extension_for_class(cx509.SubjectKeyIdentifier).value
    assert ski == cx509.SubjectKeyIdentifier.from_public_key(
        signer(key_type).private_key.public_key()
    )
    cn = loaded.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [attribute.value for attribute in cn] == ["VMS Certificate Authority"]
    assert loaded.issuer == loaded.subject
    assert loaded.not_valid_after_utc - loaded.not_valid_before_utc == dt.timedelta(
        days=3650, minutes=5
    )


def test_ca_public_key_is_the_signers(signer, ca_cert):
    for key_type in CA_KEY_TYPES:
        spki = ca_cert(key_type)["tbs_certificate"]["subject_public_key_info"]
        assert spki.dump() == signer(key_type).public_key.dump()
        if key_type.is_rsa:
            assert spki.bit_size == key_type.algorithm.bits
            assert spki["algorithm"]["parameters"].dump() == b"\x05\x00"
        else:
            assert spki.curve == ("named", key_type.algorithm.curve)


# --- server --------------------------------------------------------------------------------------

PAIRS = [(ca, leaf) for ca in CA_KEY_TYPES for leaf in SERVER_KEY_TYPES]


@pytest.fixture(scope="module")
def server_certs(signer, ca_cert):
    """(CA key type, leaf key type) -> (server certificate, tolerated findings), built once."""
    cache = {}

    def get(ca_type: KeyType, leaf_type: KeyType):
        if (ca_type, leaf_type) not in cache:
            cache[ca_type, leaf_type] = issue_server(
                signer(ca_type), ca_cert(ca_type), signer(leaf_type, "leaf"), DNS_INPUT, IP_INPUT
            )
        return cache[ca_type, leaf_type]

    return get


@pytest.mark.parametrize(
    ("ca_type", "leaf_type"), PAIRS, ids=[f"{c.value}-{s.value}" for c, s in PAIRS]
)
def test_server_profile(ca_type, leaf_type, signer, ca_cert, server_certs):
    issued, tolerated = server_certs(ca_type, leaf_type)
    assert tolerated == []
    ca = reparse(ca_cert(ca_type))
    der = issued.dump()
    certificate = x509.Certificate.load(der)
    tbs = certificate["tbs_certificate"]

    assert tbs["version"].native == "v3"
    _assert_serial(tbs)
    assert tbs["serial_number"].native != ca["tbs_certificate"]["serial_number"].native
    _assert_signature_algorithm(certificate, ca_type)
    _assert_ecdsa_signature_is_der(certificate, ca_type)
    assert tbs["issuer"].dump() == ca["tbs_certificate"]["subject"].dump()
    _assert_single_utf8_cn(tbs["subject"], "rec1.example.com")
    assert tbs["subject_public_key_info"].dump() == signer(leaf_type, "leaf").public_key.dump()

    basic = extension(certificate, "basic_constraints")
    if basic is not None:  # "CA:FALSE or absent"
        assert basic["extn_value"].parsed["ca"].native is False
        assert basic["extn_value"].contents == BC_NOT_CA

    usage = extension(certificate, "key_usage")
    assert usage["critical"].native is True
    if leaf_type.is_rsa:
        assert usage["extn_value"].contents == KU_RSA_LEAF
        assert usage["extn_value"].parsed.native == {"digital_signature", "key_encipherment"}
    else:
        assert usage["extn_value"].contents == KU_EC_LEAF
        assert usage["extn_value"].parsed.native == {"digital_signature"}

    eku = extension(certificate, "extended_key_usage")
    assert eku["extn_value"].contents == EKU_SERVER_AUTH
    assert eku["extn_value"].parsed.native == ["server_auth"]

    san = extension(certificate, "subject_alt_name")
    names = san["extn_value"].parsed
    # Every DNS name (A-labels, as the octets on the wire) and then every address (4 or 16
    # octets), in the order given; asn1crypto's .native would show the U-label, so read contents.
    assert [(name.name, name.chosen.contents) for name in names] == [
        *(("dns_name", dns.encode("ascii")) for dns in EXPECTED_DNS),
        *(("ip_address", ipaddress.ip_address(ip).packed) for ip in EXPECTED_IP),
    ]
    # Context tags [2] dNSName (IA5String) and [7] iPAddress (OCTET STRING).
    assert [name.chosen.tag for name in names] == [2] * 3 + [7] * 3

    ski = extension(certificate, "key_identifier")
    assert ski["extn_value"].parsed.native == expected_key_identifier(
        signer(leaf_type, "leaf").private_key
    )
    aki = extension(certificate, "authority_key_identifier")
    assert aki["critical"].native is False
    ca_ski = extension(ca, "key_identifier")["extn_value"].parsed.native
    assert aki["extn_value"].parsed.native == {
        "key_identifier": ca_ski,
        "authority_cert_issuer": None,
        "authority_cert_serial_number": None,
    }
    assert ca_ski == expected_key_identifier(signer(ca_type).private_key)

    validity = tbs["validity"]
    assert validity["not_after"].native <= ca["tbs_certificate"]["validity"]["not_after"].native
    assert validity["not_after"].native - validity["not_before"].native == dt.timedelta(
        days=365, minutes=5
    )
    assert lint.certificate_findings(der) == []


@pytest.mark.parametrize(
    ("ca_type", "leaf_type"), PAIRS, ids=[f"{c.value}-{s.value}" for c, s in PAIRS]
)
def test_server_read_by_cryptography(ca_type, leaf_type, signer, ca_cert, server_certs):
    issued, _ = server_certs(ca_type, leaf_type)
    loaded = cx509.load_der_x509_certificate(issued.dump())
    ca = cx509.load_der_x509_certificate(ca_cert(ca_type).dump())

    loaded.verify_directly_issued_by(ca)  # issuer name matches and the signature verifies
    assert loaded.version is cx509.Version.v3
    assert loaded.signature_algorithm_oid == CRYPTOGRAPHY_SIGNATURE_OID[ca_type]
    public_key = loaded.public_key()
    if leaf_type.is_rsa:
        assert isinstance(public_key, rsa.RSAPublicKey)
        assert public_key.key_size == leaf_type.algorithm.bits
    else:
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        assert public_key.curve.name == leaf_type.algorithm.curve

    extensions = loaded.extensions
    eku = extensions.get_extension_for_class(cx509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    usage = extensions.get_extension_for_class(cx509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert usage.value.key_encipherment is leaf_type.is_rsa
    assert not usage.value.key_cert_sign
    san = extensions.get_extension_for_class(cx509.SubjectAlternativeName).value
    assert san.get_values_for_type(cx509.DNSName) == EXPECTED_DNS
    assert san.get_values_for_type(cx509.IPAddress) == [
        ipaddress.ip_address(ip) for ip in EXPECTED_IP
    ]
    aki = extensions.get_extension_for_class(cx509.AuthorityKeyIdentifier).value
    ca_ski = ca.extensions.get_extension_for_class(cx509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    ski = extensions.get_extension_for_class(cx509.SubjectKeyIdentifier).value
    assert ski == cx509.SubjectKeyIdentifier.from_public_key(public_key)
    basic = extensions.get_extension_for_class(cx509.BasicConstraints).value
    assert basic.ca is False
    assert loaded.subject.rfc4514_string() == "CN=rec1.example.com"

    # The same verification hsmca itself runs before anything is written.
    signing.verify_signature(
        signer(ca_type).public_key,
        ca_type,
        issued["tbs_certificate"].dump(),
        issued["signature_value"].native,
    )


def test_server_validity_is_capped_at_the_cas_not_after(signer):
    ca_signer = signer(KeyType.P256)
    short_ca = build_ca(ca_signer, days=30)
    issued, _ = issue_server(
        ca_signer, short_ca, signer(KeyType.P256, "leaf"), ["rec1.example.com"], days=365
    )
    assert issued.not_valid_after == short_ca.not_valid_after
    assert issued.not_valid_before < issued.not_valid_after


def test_single_label_and_ipv6_only_server(signer, ca_cert):
    issued, tolerated = issue_server(
        signer(KeyType.RSA2048),
        ca_cert(KeyType.RSA2048),
        signer(KeyType.RSA2048, "leaf"),
        ["rec1"],
        ["fd00::1"],
    )
    san = extension(reparse(issued), "subject_alt_name")["extn_value"].parsed.native
    assert san == ["rec1", "fd00::1"]
    assert [finding.code for finding in tolerated] == ["pkix.invalid_domain_name_syntax"]
    _assert_single_utf8_cn(reparse(issued)["tbs_certificate"]["subject"], "rec1")

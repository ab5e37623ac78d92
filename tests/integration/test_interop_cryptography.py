"""pyca/cryptography judges the PFX files and verifies the chain with its X.509 path builder."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from test_interop_support import (
    CA_TYPES,
    FRIENDLY_NAME,
    SERVER_TYPES,
    WRONG_IP,
    WRONG_NAME,
    Issued,
    shared_pki,
)

from hsmca.models import KeyType

CASES = [
    (ca, server, legacy, "api")
    for ca in CA_TYPES
    for server in SERVER_TYPES
    for legacy in (False, True)
] + [(KeyType.RSA2048, KeyType.RSA2048, True, "cli")]


def case_id(case) -> str:
    ca, server, legacy, via = case
    return f"ca-{ca.value}-srv-{server.value}-{'legacy' if legacy else 'aes'}-{via}"


@pytest.fixture(scope="session")
def pki(ca_factory, tmp_path_factory):
    return shared_pki(ca_factory, tmp_path_factory)


@pytest.fixture(params=CASES, ids=case_id)
def issued(request, pki) -> Issued:
    return pki.pfx(*request.param)


def spki(key) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_load_pkcs12_opens_the_pfx(issued):
    bundle = pkcs12.load_pkcs12(issued.path.read_bytes(), issued.password.encode())
    assert bundle.key is not None and bundle.cert is not None
    assert bundle.cert.friendly_name == FRIENDLY_NAME
    leaf = bundle.cert.certificate
    # The key in the file is the key the certificate was issued for.
    assert spki(bundle.key.public_key()) == spki(leaf.public_key())
    assert bundle.key.key_size == {KeyType.RSA2048: 2048, KeyType.P256: 256}[issued.server_type]
    # The CA certificate travels along, byte for byte the exported one.
    extra = [
        c.certificate.public_bytes(serialization.Encoding.DER) for c in bundle.additional_certs
    ]
    assert extra == [issued.ca_der]
    assert leaf.issuer == x509.load_der_x509_certificate(issued.ca_der).subject
    # The older loader agrees on the key/certificate pairing.
    key, cert, others = pkcs12.load_key_and_certificates(
        issued.path.read_bytes(), issued.password.encode()
    )
    assert cert == leaf and spki(key.public_key()) == spki(leaf.public_key()) and len(others) == 1


def test_load_pkcs12_refuses_a_wrong_password(pki):
    issued = pki.pfx(KeyType.RSA2048, KeyType.RSA2048)
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(issued.path.read_bytes(), b"not the password")


def verifier_for(issued: Issued, subject):
    ca = x509.load_der_x509_certificate(issued.ca_der)
    return PolicyBuilder().store(Store([ca])).build_server_verifier(subject), ca


def test_server_verifier_accepts_every_name_and_address(issued):
    leaf = issued.leaf()
    for name in issued.dns_names:
        verifier, ca = verifier_for(issued, DNSName(name))
        chain = verifier.verify(leaf, [])
        assert chain == [leaf, ca]
    for address in issued.ip_addresses:
        verifier, ca = verifier_for(issued, IPAddress(ipaddress.ip_address(address)))
        assert verifier.verify(leaf, []) == [leaf, ca]


def test_server_verifier_rejects_wrong_name_and_address(issued):
    leaf = issued.leaf()
    verifier, _ = verifier_for(issued, DNSName(WRONG_NAME))
    with pytest.raises(VerificationError):
        verifier.verify(leaf, [])
    verifier, _ = verifier_for(issued, IPAddress(ipaddress.ip_address(WRONG_IP)))
    with pytest.raises(VerificationError):
        verifier.verify(leaf, [])


def test_server_verifier_rejects_another_ca(pki):
    issued = pki.pfx(KeyType.P384, KeyType.P256)
    other = pki.pfx(KeyType.RSA2048, KeyType.RSA2048)
    other_ca = x509.load_der_x509_certificate(other.ca_der)
    verifier = (
        PolicyBuilder().store(Store([other_ca])).build_server_verifier(DNSName(issued.dns_names[0]))
    )
    with pytest.raises(VerificationError):
        verifier.verify(issued.leaf(), [])


def test_server_verifier_rejects_leaf_after_its_validity(pki):
    issued = pki.pfx(KeyType.RSA2048, KeyType.P256)
    leaf = issued.leaf()
    ca = x509.load_der_x509_certificate(issued.ca_der)
    later = leaf.not_valid_after_utc + dt.timedelta(days=1)
    verifier = (
        PolicyBuilder()
        .store(Store([ca]))
        .time(later)
        .build_server_verifier(DNSName(issued.dns_names[0]))
    )
    with pytest.raises(VerificationError):
        verifier.verify(leaf, [])

"""A real TLS handshake on loopback: Python's ssl (OpenSSL) server and client, hsmca's PKI.

The server uses the key and certificate taken out of the PFX; the client trusts nothing but
the exported root-authority-public.cer and checks the host name, like a Milestone client.
"""

from __future__ import annotations

import socket
import ssl

import pytest
from test_interop_support import (
    CA_TYPES,
    SERVER_TYPES,
    WRONG_IP,
    WRONG_NAME,
    TlsServer,
    client_context,
    shared_pki,
    tls_connect,
)

from hsmca.models import KeyType

CASES = [(ca, server) for ca in CA_TYPES for server in SERVER_TYPES]


@pytest.fixture(scope="session")
def pki(ca_factory, tmp_path_factory):
    return shared_pki(ca_factory, tmp_path_factory)


@pytest.fixture(autouse=True)
def _bounded():
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    yield
    socket.setdefaulttimeout(previous)


@pytest.mark.parametrize(
    ("ca_type", "server_type"), CASES, ids=[f"ca-{c.value}-srv-{s.value}" for c, s in CASES]
)
def test_tls_handshake_with_the_issued_certificate(pki, tmp_path, ca_type, server_type):
    issued = pki.pfx(ca_type, server_type)
    key_path, cert_path = issued.write_server_files(tmp_path)
    context = client_context(issued.ca_der)
    with TlsServer(cert_path, key_path) as server:
        peer = tls_connect(context, server.port, issued.dns_names[0])
        san = peer["subjectAltName"]
        for name in issued.dns_names:
            assert ("DNS", name) in san
        assert ("IP Address", "10.0.0.103") in san
        assert ("IP Address", "FD00:0:0:0:0:0:0:103") in san
        assert peer["subject"] == ((("commonName", issued.dns_names[0]),),)
        # Every other name and address in the certificate works too.
        for name in (*issued.dns_names[1:], *issued.ip_addresses):
            assert tls_connect(context, server.port, name)["serialNumber"] == peer["serialNumber"]
    assert len(server.handshakes) == len(issued.dns_names) + len(issued.ip_addresses)
    assert set(server.handshakes) <= {"TLSv1.2", "TLSv1.3"}
    assert not server.failures


@pytest.mark.parametrize("wrong", [WRONG_NAME, WRONG_IP])
def test_tls_client_rejects_a_wrong_host_name(pki, tmp_path, wrong):
    issued = pki.pfx(KeyType.RSA2048, KeyType.RSA2048)
    key_path, cert_path = issued.write_server_files(tmp_path)
    context = client_context(issued.ca_der)
    with TlsServer(cert_path, key_path) as server:
        with pytest.raises(ssl.SSLCertVerificationError) as caught:
            tls_connect(context, server.port, wrong)
        assert "mismatch" in caught.value.verify_message
        # The same server and client agree once the right name is asked for.
        tls_connect(context, server.port, issued.dns_names[0])
    assert len(server.handshakes) == 1
    assert len(server.failures) == 1


def test_tls_client_trusting_another_ca_rejects_the_server(pki, tmp_path):
    issued = pki.pfx(KeyType.P384, KeyType.P256)
    other_ca = pki.pfx(KeyType.RSA2048, KeyType.RSA2048).ca_der
    key_path, cert_path = issued.write_server_files(tmp_path)
    with TlsServer(cert_path, key_path) as server:
        with pytest.raises(ssl.SSLCertVerificationError) as caught:
            tls_connect(client_context(other_ca), server.port, issued.dns_names[0])
        assert "unable to get local issuer certificate" in caught.value.verify_message
    assert not server.handshakes


def test_tls_with_key_from_legacy_pfx_made_by_the_cli(pki, tmp_path):
    """The 3DES flavour carries a working key too (it is what old Windows servers import)."""
    issued = pki.pfx(KeyType.RSA2048, KeyType.RSA2048, legacy=True, via="cli")
    key_path, cert_path = issued.write_server_files(tmp_path)
    with TlsServer(cert_path, key_path) as server:
        peer = tls_connect(client_context(issued.ca_der), server.port, "rec1.example.com")
    assert ("DNS", "rec1.example.com") in peer["subjectAltName"]
    assert server.handshakes


def test_tls_with_single_label_workgroup_name(pki, tmp_path):
    """Milestone's workgroup hosts are called e.g. `rec1`; a client connecting by it succeeds."""
    issued = pki.pfx(
        KeyType.P256, KeyType.RSA2048, dns_names=("rec1", "rec1.example.com"), ip_addresses=()
    )
    key_path, cert_path = issued.write_server_files(tmp_path)
    context = client_context(issued.ca_der)
    with TlsServer(cert_path, key_path) as server:
        peer = tls_connect(context, server.port, "rec1")
        assert peer["subject"] == ((("commonName", "rec1"),),)
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_connect(context, server.port, "rec2")

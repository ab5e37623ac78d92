"""models: key types, the one algorithm table, defaults and the frozen request objects."""

from __future__ import annotations

import ast
import dataclasses
import ipaddress
from pathlib import Path

import pkcs11
import pytest
from asn1crypto import algos

import hsmca
from hsmca import models, x509build
from hsmca.models import (
    CA_KEY_TYPES,
    KEY_ALGORITHMS,
    SERVER_KEY_TYPES,
    CaConfig,
    KeyType,
    ServerRequest,
)

EXPECTED = {
    # key type: (family, bits, curve, hash, signature OID)
    KeyType.RSA2048: ("rsa", 2048, None, "sha256", "1.2.840.113549.1.1.11"),
    KeyType.RSA3072: ("rsa", 3072, None, "sha256", "1.2.840.113549.1.1.11"),
    KeyType.RSA4096: ("rsa", 4096, None, "sha256", "1.2.840.113549.1.1.11"),
    KeyType.P256: ("ec", 256, "secp256r1", "sha256", "1.2.840.10045.4.3.2"),
    KeyType.P384: ("ec", 384, "secp384r1", "sha384", "1.2.840.10045.4.3.3"),
}


def test_command_line_spellings():
    assert {key_type.value for key_type in KeyType} == {
        "rsa2048",
        "rsa3072",
        "rsa4096",
        "p256",
        "p384",
    }
    assert KeyType("p384") is KeyType.P384
    assert set(CA_KEY_TYPES) == set(KeyType)
    # `hsmca issue --key-type rsa2048|rsa3072|p256|p384`
    assert [key_type.value for key_type in SERVER_KEY_TYPES] == [
        "rsa2048",
        "rsa3072",
        "p256",
        "p384",
    ]


@pytest.mark.parametrize("key_type", list(KeyType), ids=lambda k: k.value)
def test_algorithm_table(key_type):
    family, bits, curve, hash_name, oid = EXPECTED[key_type]
    algorithm = key_type.algorithm
    assert algorithm is KEY_ALGORITHMS[key_type]
    assert (algorithm.family, algorithm.bits, algorithm.curve, algorithm.hash_name) == (
        family,
        bits,
        curve,
        hash_name,
    )
    assert key_type.is_rsa is (family == "rsa")
    # The asn1crypto name resolves to the right OID and agrees on hash and signature scheme.
    identifier = algos.SignedDigestAlgorithm({"algorithm": algorithm.signature_algorithm})
    assert identifier["algorithm"].dotted == oid
    assert identifier.hash_algo == hash_name
    assert identifier.signature_algo == ("rsassa_pkcs1v15" if key_type.is_rsa else "ecdsa")
    # The x509build table entry carries the same identifier.
    assert x509build.signature_algorithm(key_type)["algorithm"].dotted == oid


@pytest.mark.parametrize("key_type", list(KeyType), ids=lambda k: k.value)
def test_pkcs11_mechanism_names_exist(key_type):
    """The names in the table are real python-pkcs11 mechanisms (no token needed to check)."""
    algorithm = key_type.algorithm
    hashed = pkcs11.Mechanism[algorithm.hashed_mechanism]
    raw = pkcs11.Mechanism[algorithm.raw_mechanism]
    if key_type.is_rsa:
        assert hashed is pkcs11.Mechanism.SHA256_RSA_PKCS
        assert raw is pkcs11.Mechanism.RSA_PKCS
    else:
        assert raw is pkcs11.Mechanism.ECDSA
        assert algorithm.hashed_mechanism.endswith(algorithm.hash_name.upper())


def test_defaults_from_the_issue():
    assert models.DEFAULT_CA_SUBJECT == "CN=VMS Certificate Authority"
    assert models.DEFAULT_CA_DAYS == 3650
    assert models.DEFAULT_SERVER_DAYS == 365
    assert models.DEFAULT_KEY_LABEL == "hsmca-ca"
    assert models.PFX_FRIENDLY_NAME == "VMS Recorder Certificate"
    # The default subject parses into a one-CN name.
    assert x509build.parse_subject(models.DEFAULT_CA_SUBJECT).native == {
        "common_name": "VMS Certificate Authority"
    }


def test_server_request_is_frozen_and_names_its_cn():
    request = ServerRequest(
        ("rec1.example.com", "rec1"), (ipaddress.ip_address("10.0.0.1"),), 365, KeyType.P256
    )
    assert request.common_name == "rec1.example.com"
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.days = 1  # type: ignore[misc]
    assert hash(request) == hash(
        ServerRequest(
            ("rec1.example.com", "rec1"), (ipaddress.ip_address("10.0.0.1"),), 365, KeyType.P256
        )
    )


def test_ca_config_is_frozen():
    config = CaConfig(
        "/usr/lib/softhsm/libsofthsm2.so", "demo", "1234", "hsmca-ca", b"\x01", KeyType.RSA3072
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.key_label = "other"  # type: ignore[misc]
    assert config.key_type is KeyType.RSA3072


PURE_MODULES = ["models", "x509build", "signing", "lint", "crlbuild", "workerpool"]


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_import_neither_pkcs11_nor_click(module):
    """ARCHITECTURE.md: building and signing code never imports pkcs11 or click."""
    source = Path(hsmca.__file__).with_name(f"{module}.py").read_text(encoding="utf-8")
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported, "the scan found no imports at all"
    assert not imported & {"pkcs11", "click"}

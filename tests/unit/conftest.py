"""Session-wide software keys and CA certificates, so each (slow) RSA key is generated once."""

from __future__ import annotations

import pytest

from hsmca.models import KeyType
from hsmca.signing import SoftwareSigner

from .builders import build_ca


@pytest.fixture(scope="session")
def signer():
    """signer(key_type, role="ca") -> a SoftwareSigner cached per (key type, role)."""
    cache: dict[tuple[KeyType, str], SoftwareSigner] = {}

    def get(key_type: KeyType, role: str = "ca") -> SoftwareSigner:
        if (key_type, role) not in cache:
            cache[key_type, role] = SoftwareSigner(key_type)
        return cache[key_type, role]

    return get


@pytest.fixture(scope="session")
def ca_cert(signer):
    """ca_cert(key_type) -> the default root CA for the cached CA key of that type."""
    cache = {}

    def get(key_type: KeyType):
        if key_type not in cache:
            cache[key_type] = build_ca(signer(key_type))
        return cache[key_type]

    return get

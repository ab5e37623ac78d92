"""signing: SoftwareSigner, verify_signature and the build -> lint -> sign -> verify path."""

from __future__ import annotations

import pytest
from asn1crypto import algos, x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from hsmca import signing, x509build
from hsmca.errors import IntegrityError, LintFailure
from hsmca.models import CA_KEY_TYPES, KeyType

from .builders import CountingSigner, reparse, server_tbs

DATA = b"the bytes of a TBSCertificate"


def _ids(key_type: KeyType) -> str:
    return key_type.value


# --- SoftwareSigner and generate_private_key ------------------------------------------------------


@pytest.mark.parametrize("key_type", CA_KEY_TYPES, ids=_ids)
def test_software_signer_key_matches_its_type(key_type, signer):
    software = signer(key_type)
    assert software.key_type is key_type
    spki = software.public_key
    if key_type.is_rsa:
        assert isinstance(software.private_key, rsa.RSAPrivateKey)
        assert software.private_key.key_size == key_type.algorithm.bits
        assert software.private_key.public_key().public_numbers().e == 65537
        assert spki.algorithm == "rsa"
        assert spki.bit_size == key_type.algorithm.bits
    else:
        assert isinstance(software.private_key, ec.EllipticCurvePrivateKey)
        assert software.private_key.curve.name == key_type.algorithm.curve
        assert spki.algorithm == "ec"
        assert spki.curve == ("named", key_type.algorithm.curve)


def test_software_signer_accepts_a_given_key(signer):
    existing = signer(KeyType.P256).private_key
    wrapped = signing.SoftwareSigner(KeyType.P256, existing)
    assert wrapped.private_key is existing
    assert wrapped.public_key.dump() == signer(KeyType.P256).public_key.dump()


@pytest.mark.parametrize("key_type", CA_KEY_TYPES, ids=_ids)
def test_signatures_use_the_key_types_hash_and_padding(key_type, signer):
    software = signer(key_type)
    signature = software.sign(DATA)
    public = software.private_key.public_key()
    right = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}[key_type.algorithm.hash_name]
    wrong = hashes.SHA384() if key_type.algorithm.hash_name == "sha256" else hashes.SHA256()
    if key_type.is_rsa:
        assert len(signature) == key_type.algorithm.bits // 8
        public.verify(signature, DATA, padding.PKCS1v15(), right)
        with pytest.raises(InvalidSignature):
            public.verify(signature, DATA, padding.PKCS1v15(), wrong)
    else:
        assert algos.DSASignature.load(signature).dump(force=True) == signature  # DER r, s
        public.verify(signature, DATA, ec.ECDSA(right))
        with pytest.raises(InvalidSignature):
            public.verify(signature, DATA, ec.ECDSA(wrong))


# --- verify_signature -----------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", CA_KEY_TYPES, ids=_ids)
def test_verify_signature_accepts_a_good_signature(key_type, signer):
    software = signer(key_type)
    assert (
        signing.verify_signature(software.public_key, key_type, DATA, software.sign(DATA)) is None
    )


@pytest.mark.parametrize("key_type", CA_KEY_TYPES, ids=_ids)
def test_verify_signature_rejects_bad_signatures(key_type, signer):
    software = signer(key_type)
    other = signer(key_type, "other")
    signature = software.sign(DATA)
    flipped = signature[:-1] + bytes([signature[-1] ^ 0x01])
    cases = {
        "other data": (software.public_key, DATA + b"!", signature),
        "flipped bit": (software.public_key, DATA, flipped),
        "truncated": (software.public_key, DATA, signature[:-4]),
        "empty": (software.public_key, DATA, b""),
        "other key": (other.public_key, DATA, signature),
    }
    for case, (public_key, data, candidate) in cases.items():
        with pytest.raises(IntegrityError, match="does not verify") as caught:
            signing.verify_signature(public_key, key_type, data, candidate)
        assert caught.value.__cause__ is None, case


def test_verify_signature_rejects_a_signature_of_the_wrong_key_family(signer):
    rsa_signer = signer(KeyType.RSA2048)
    ec_signer = signer(KeyType.P256)
    with pytest.raises(IntegrityError):
        signing.verify_signature(ec_signer.public_key, KeyType.P256, DATA, rsa_signer.sign(DATA))
    with pytest.raises(IntegrityError):
        signing.verify_signature(rsa_signer.public_key, KeyType.RSA2048, DATA, ec_signer.sign(DATA))


# --- sign_certificate ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def p256_tbs(signer, ca_cert):
    """A correct server TBS issued by the P-256 CA (dotted names: no lint allowance needed)."""
    tbs, _ = server_tbs(
        signer(KeyType.P256),
        ca_cert(KeyType.P256),
        signer(KeyType.P256, "leaf"),
        ["rec1.example.com"],
        ["10.0.0.103"],
    )
    return tbs


def test_sign_certificate_signs_exactly_the_tbs(signer, ca_cert, p256_tbs):
    ca_signer = CountingSigner(signer(KeyType.P256))
    certificate, tolerated = signing.sign_certificate(
        p256_tbs, ca_signer, signer(KeyType.P256).public_key
    )
    assert ca_signer.calls == 1
    assert tolerated == []
    assert isinstance(certificate, x509.Certificate)
    reread = reparse(certificate)
    assert reread["tbs_certificate"].dump() == p256_tbs.dump(force=True)
    signing.verify_signature(
        signer(KeyType.P256).public_key,
        KeyType.P256,
        reread["tbs_certificate"].dump(),
        reread["signature_value"].native,
    )


def test_sign_certificate_refuses_a_signer_with_another_key(signer, p256_tbs):
    impostor = CountingSigner(signer(KeyType.P256, "other"))
    with pytest.raises(IntegrityError, match="does not verify with the CA's public key"):
        signing.sign_certificate(p256_tbs, impostor, signer(KeyType.P256).public_key)
    assert impostor.calls == 1


def test_sign_certificate_refuses_a_corrupted_signature(signer, p256_tbs):
    corrupting = CountingSigner(signer(KeyType.P256), corrupt=True)
    with pytest.raises(IntegrityError):
        signing.sign_certificate(p256_tbs, corrupting, signer(KeyType.P256).public_key)


def test_sign_certificate_refuses_mismatched_algorithm_identifiers_before_signing(signer):
    """A TBS that names sha256WithRSAEncryption handed to an ECDSA signer is never signed."""
    ec_signer = signer(KeyType.P256)
    not_before, not_after = x509build.validity(30)
    tbs = x509build.ca_tbs(
        x509build.parse_subject("CN=Mismatch"),
        ec_signer.public_key,
        KeyType.RSA2048,  # the inner signature field says RSA
        x509build.random_serial(),
        not_before,
        not_after,
    )
    counting = CountingSigner(ec_signer)
    with pytest.raises(LintFailure, match="signature_algorithm_mismatch"):
        signing.sign_certificate(tbs, counting, ec_signer.public_key)
    assert counting.calls == 0

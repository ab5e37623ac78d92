"""crlbuild: the fast CRL builder equals the plain asn1crypto build byte for byte, and the CRLs it
makes parse, verify and lint clean with cryptography, pkilint and openssl."""

from __future__ import annotations

import datetime as dt
import functools
import shutil
import subprocess
from operator import itemgetter

import pytest
from asn1crypto import core, crl, pem, x509
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from hsmca import crlbuild, x509build
from hsmca.crlbuild import Revocation, RevocationReason
from hsmca.errors import IntegrityError, InvalidRequest
from hsmca.models import KeyType

from .strategies import QUICK

UTC = dt.UTC
THIS_UPDATE = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)

# RFC 5280 spelling -> asn1crypto's CRLReason name, written out independently of crlbuild.
ASN1CRYPTO_REASON = {
    "unspecified": "unspecified",
    "keyCompromise": "key_compromise",
    "affiliationChanged": "affiliation_changed",
    "superseded": "superseded",
    "cessationOfOperation": "cessation_of_operation",
}
CRYPTOGRAPHY_REASON = {
    "keyCompromise": cx509.ReasonFlags.key_compromise,
    "affiliationChanged": cx509.ReasonFlags.affiliation_changed,
    "superseded": cx509.ReasonFlags.superseded,
    "cessationOfOperation": cx509.ReasonFlags.cessation_of_operation,
}

# Edge cases: every reason, a serial whose top bit is set (needs a 0x00 octet), the smallest and
# largest serials, both time types and their boundary, a fraction of a second, a non-UTC zone,
# and input that is not sorted.
EDGE_ENTRIES = [
    Revocation((1 << 159) - 1, dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC), "superseded"),
    Revocation(1, dt.datetime(1950, 1, 1, tzinfo=UTC), RevocationReason.KEY_COMPROMISE),
    Revocation(0x80, dt.datetime(2050, 1, 1, tzinfo=UTC), "cessationOfOperation"),
    Revocation(0x7F, dt.datetime(2024, 5, 6, 7, 8, 9, 999999, tzinfo=UTC), "unspecified"),
    (
        0xFF00,
        dt.datetime(2030, 1, 1, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        "affiliationChanged",
    ),
    Revocation(0x8000_0000_0000_0000_0000, dt.datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC)),
    Revocation(1 << 64, dt.datetime(2025, 2, 28, 9, 30, tzinfo=UTC), RevocationReason.SUPERSEDED),
]


def plain_tbs(issuer, key_type, crl_number, revoked, days, this_update) -> crl.TbsCertList:
    """The reference: every part of the TBSCertList built as asn1crypto structures."""
    entries = []
    for serial, when, reason in sorted(revoked, key=itemgetter(0)):
        entry = {
            "user_certificate": serial,
            "revocation_date": x509build._time(when.astimezone(UTC).replace(microsecond=0)),
        }
        if str(reason) != "unspecified":
            entry["crl_entry_extensions"] = [
                {"extn_id": "crl_reason", "extn_value": ASN1CRYPTO_REASON[str(reason)]}
            ]
        entries.append(entry)
    fields = {
        "version": "v2",
        "signature": {
            "algorithm": key_type.algorithm.signature_algorithm,
            "parameters": core.Null() if key_type.is_rsa else None,
        },
        "issuer": issuer.subject,
        "this_update": x509build._time(this_update),
        "next_update": x509build._time(this_update + dt.timedelta(days=days)),
    }
    if entries:
        fields["revoked_certificates"] = entries
    fields["crl_extensions"] = [
        {
            "extn_id": "authority_key_identifier",
            "critical": False,
            "extn_value": {"key_identifier": issuer.key_identifier},
        },
        {"extn_id": "crl_number", "critical": False, "extn_value": crl_number},
    ]
    return crl.TbsCertList(fields)


def signed_crl(signer, ca, revoked, crl_number=7, days=30, this_update=THIS_UPDATE) -> bytes:
    tbs = crlbuild.tbs_cert_list(ca, signer.key_type, crl_number, revoked, days, this_update)
    signature = signer.sign(tbs.dump())
    return crlbuild.certificate_list(tbs, signer.key_type, signature).dump()


@functools.cache
def _pkilint_crl_validator():
    """What lint_crl -t CRL -p PKIX runs, plus the RFC 5280 'no unspecified reasonCode' check."""
    from pkilint import pkix
    from pkilint.pkix import crl as pkix_crl
    from pkilint.pkix import extension, name
    from pkilint.pkix.crl import crl_extension

    return pkix_crl.create_pkix_crl_validator_container(
        [
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [
            pkix_crl.create_issuer_validator_container([]),
            pkix_crl.create_validity_validator_container([]),
            pkix_crl.create_extensions_validator_container([]),
            crl_extension.CrlReasonCodeValidator(),
        ],
    )


def pkilint_findings(der: bytes) -> list[str]:
    from pkilint import loader
    from pkilint.validation import ValidationFindingSeverity

    document = loader.RFC5280CertificateListDocumentLoader().load_der_document(der, "crl")
    return [
        f"{d.finding.severity.name} {d.finding.code} at {result.node.path}"
        for result in _pkilint_crl_validator().validate(document.root)
        for d in result.finding_descriptions
        if d.finding.severity <= ValidationFindingSeverity.WARNING
    ]


KEY_TYPES = [KeyType.RSA2048, KeyType.P256, KeyType.P384]


# --- byte identity with the plain asn1crypto build ----------------------------------------------


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_fast_tbs_equals_plain_asn1crypto_build(signer, ca_cert, key_type):
    ca = ca_cert(key_type)
    fast = crlbuild.tbs_cert_list(ca, key_type, 42, EDGE_ENTRIES, 30, THIS_UPDATE).dump()
    plain = plain_tbs(ca, key_type, 42, EDGE_ENTRIES, 30, THIS_UPDATE).dump(force=True)
    assert fast == plain
    # And the plain build, read back, is what the RFC says: sorted serials, reasons where given.
    entries = crl.TbsCertList.load(fast)["revoked_certificates"]
    assert [e["user_certificate"].native for e in entries] == sorted(e[0] for e in EDGE_ENTRIES)


def test_no_revocations_means_no_revoked_certificates_field(ca_cert):
    ca = ca_cert(KeyType.P256)
    tbs = crlbuild.tbs_cert_list(ca, KeyType.P256, 1, [], 7, THIS_UPDATE)
    assert tbs.dump() == plain_tbs(ca, KeyType.P256, 1, [], 7, THIS_UPDATE).dump(force=True)
    assert not crl.TbsCertList.load(tbs.dump())["revoked_certificates"].contents
    assert crlbuild.encode_revoked([]) == b""
    assert crlbuild.tbs_cert_list_of_entries(ca, KeyType.P256, 1, [], 7, THIS_UPDATE).dump() == (
        tbs.dump()
    )


@pytest.mark.parametrize(
    "damaged",
    [b"", b"\x31\x03\x02\x01\x01", b"\x30\x04\x02\x01\x01", b"\x30\x81\x01\x02"],
    ids=["empty", "not-a-sequence", "wrong-length", "long-form-length"],
)
def test_a_damaged_stored_entry_is_refused(damaged):
    good = crlbuild.encode_entry(5, THIS_UPDATE, "superseded")
    assert crlbuild.revoked_sequence([good]) == b"\x30" + bytes([len(good)]) + good
    with pytest.raises(IntegrityError, match="damaged"):
        crlbuild.revoked_sequence([good, damaged])


@pytest.mark.parametrize(
    ("serial", "when", "reason", "message"),
    [
        (0, THIS_UPDATE, "superseded", "positive integer"),
        (1 << 159, THIS_UPDATE, "superseded", "positive integer"),
        (True, THIS_UPDATE, "superseded", "positive integer"),
        (3, THIS_UPDATE.replace(tzinfo=None), "superseded", "time zone"),
        (3, dt.datetime(1949, 12, 31, tzinfo=UTC), "superseded", "before 1950"),
        (3, THIS_UPDATE, "key_compromise", "unknown revocation reason"),
    ],
)
def test_encode_entry_refuses_what_a_crl_cannot_hold(serial, when, reason, message):
    with pytest.raises(InvalidRequest, match=message):
        crlbuild.encode_entry(serial, when, reason)


revocations = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=(1 << 159) - 1),
        st.datetimes(
            min_value=dt.datetime(1950, 1, 1),
            max_value=dt.datetime(9999, 12, 31),
            timezones=st.just(UTC),
        ),
        st.sampled_from([*RevocationReason, *(r.value for r in RevocationReason)]),
    ),
    max_size=40,
    unique_by=itemgetter(0),
)


@QUICK
@given(revoked=revocations, crl_number=st.integers(0, (1 << 159) - 1), days=st.integers(1, 3650))
def test_fast_equals_plain_for_random_lists(ca_cert, revoked, crl_number, days):
    ca = ca_cert(KeyType.P256)
    fast = crlbuild.tbs_cert_list(ca, KeyType.P256, crl_number, revoked, days, THIS_UPDATE)
    plain = plain_tbs(ca, KeyType.P256, crl_number, revoked, days, THIS_UPDATE)
    assert fast.dump() == plain.dump(force=True)


@QUICK
@given(revoked=revocations)
def test_one_entry_at_a_time_is_the_plain_entry(ca_cert, revoked):
    """What the CA database stores per revocation (encode_entry), concatenated in serial order,
    is the plain asn1crypto list."""
    ca = ca_cert(KeyType.P256)
    stored = [crlbuild.encode_entry(*entry) for entry in sorted(revoked, key=itemgetter(0))]
    joined = crlbuild.tbs_cert_list_of_entries(ca, KeyType.P256, 9, stored, 7, THIS_UPDATE)
    plain = plain_tbs(ca, KeyType.P256, 9, revoked, 7, THIS_UPDATE)
    assert joined.dump() == plain.dump(force=True)


@pytest.mark.parametrize("length", [0, 1, 127, 128, 255, 256, 65535, 65536, 1 << 24])
def test_der_length_matches_asn1crypto(length):
    header = core.OctetString(b"\0" * length).dump()[1 : -length or None]
    assert crlbuild.der_length(length) == header


def test_entries_stay_pre_encoded_so_dump_does_not_reencode(ca_cert):
    """The performance property: asn1crypto keeps the hand-encoded list and never parses it."""
    ca = ca_cert(KeyType.P256)
    revoked = [(serial, THIS_UPDATE, "superseded") for serial in range(1, 2001)]
    tbs = crlbuild.tbs_cert_list(ca, KeyType.P256, 3, revoked, 7, THIS_UPDATE)
    der = tbs.dump()
    entries = tbs["revoked_certificates"]
    assert entries.children is None  # not parsed
    assert entries.dump() == crlbuild.encode_revoked(revoked)
    assert entries.dump() in der
    signed = crlbuild.certificate_list(tbs, KeyType.P256, b"\x30\x00")
    assert signed.dump().count(entries.dump()) == 1
    assert entries.children is None


# --- what readers make of it ---------------------------------------------------------------------


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_cryptography_parses_verifies_and_round_trips(signer, ca_cert, key_type):
    ca_signer, ca = signer(key_type), ca_cert(key_type)
    der = signed_crl(ca_signer, ca, EDGE_ENTRIES, crl_number=1234567)
    parsed = cx509.load_der_x509_crl(der)
    ca_public = serialization.load_der_public_key(ca_signer.public_key.dump())
    assert parsed.is_signature_valid(ca_public)
    assert parsed.issuer.public_bytes() == ca.subject.dump()
    assert parsed.last_update_utc == THIS_UPDATE
    assert parsed.next_update_utc == THIS_UPDATE + dt.timedelta(days=30)
    number = parsed.extensions.get_extension_for_class(cx509.CRLNumber)
    assert number.value.crl_number == 1234567 and not number.critical
    aki = parsed.extensions.get_extension_for_class(cx509.AuthorityKeyIdentifier)
    assert aki.value.key_identifier == ca.key_identifier and not aki.critical
    assert (
        parsed.signature_algorithm_oid.dotted_string
        == {
            KeyType.RSA2048: "1.2.840.113549.1.1.11",
            KeyType.P256: "1.2.840.10045.4.3.2",
            KeyType.P384: "1.2.840.10045.4.3.3",
        }[key_type]
    )

    assert [entry.serial_number for entry in parsed] == sorted(e[0] for e in EDGE_ENTRIES)
    for serial, when, reason in EDGE_ENTRIES:
        entry = parsed.get_revoked_certificate_by_serial_number(serial)
        assert entry.revocation_date_utc == when.astimezone(UTC).replace(microsecond=0)
        reasons = [ext for ext in entry.extensions if isinstance(ext.value, cx509.CRLReason)]
        if str(reason) == "unspecified":
            assert reasons == []  # RFC 5280 5.3.1: absent rather than unspecified
        else:
            assert len(reasons) == 1 and not reasons[0].critical
            assert reasons[0].value.reason == CRYPTOGRAPHY_REASON[str(reason)]


def test_a_changed_byte_breaks_the_signature(signer, ca_cert):
    ca_signer, ca = signer(KeyType.P256), ca_cert(KeyType.P256)
    der = bytearray(signed_crl(ca_signer, ca, EDGE_ENTRIES))
    serial = (1 << 64).to_bytes(9, "big")
    where = der.index(serial)
    der[where + 8] ^= 1
    parsed = cx509.load_der_x509_crl(bytes(der))
    public = serialization.load_der_public_key(ca_signer.public_key.dump())
    assert not parsed.is_signature_valid(public)


@pytest.mark.parametrize("key_type", [KeyType.RSA2048, KeyType.P384])
@pytest.mark.parametrize("revoked", [EDGE_ENTRIES, []], ids=["entries", "empty"])
def test_pkilint_finds_nothing_at_warning_or_above(signer, ca_cert, key_type, revoked):
    der = signed_crl(signer(key_type), ca_cert(key_type), revoked)
    assert pkilint_findings(der) == []


def test_pkilint_validator_would_catch_an_unspecified_reason(signer, ca_cert):
    """The linter the test relies on does look at entries: the plain build with reasonCode
    unspecified (which crlbuild omits) gets a WARNING."""
    ca_signer, ca = signer(KeyType.P256), ca_cert(KeyType.P256)
    tbs = plain_tbs(ca, KeyType.P256, 1, [], 7, THIS_UPDATE)
    tbs["revoked_certificates"] = [
        {
            "user_certificate": 5,
            "revocation_date": x509build._time(THIS_UPDATE),
            "crl_entry_extensions": [{"extn_id": "crl_reason", "extn_value": "unspecified"}],
        }
    ]
    der = crlbuild.certificate_list(tbs, KeyType.P256, ca_signer.sign(tbs.dump())).dump()
    assert any("crl_unspecified_crl_entry_reason_code" in f for f in pkilint_findings(der))


def openssl_verify_crl(openssl: str, folder) -> subprocess.CompletedProcess:
    """`openssl crl -verify` of folder/crl.der against folder/ca.pem."""
    return subprocess.run(
        [
            openssl,
            "crl",
            "-inform",
            "DER",
            "-in",
            str(folder / "crl.der"),
            "-CAfile",
            str(folder / "ca.pem"),
            "-verify",
            "-noout",
        ],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("key_type", [KeyType.RSA2048, KeyType.P256])
@pytest.mark.parametrize("revoked", [EDGE_ENTRIES, []], ids=["entries", "empty"])
def test_openssl_verifies_the_crl(signer, ca_cert, tmp_path, key_type, revoked):
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed: apt-get install openssl"
    ca_signer, ca = signer(key_type), ca_cert(key_type)
    (tmp_path / "ca.pem").write_bytes(pem.armor("CERTIFICATE", ca.dump()))
    (tmp_path / "crl.der").write_bytes(signed_crl(ca_signer, ca, revoked))
    result = openssl_verify_crl(openssl, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "verify OK" in result.stdout + result.stderr


def test_openssl_rejects_a_crl_from_another_ca(signer, ca_cert, tmp_path):
    """The openssl check is not vacuous: a CRL naming this CA but signed by another key fails."""
    ca = ca_cert(KeyType.P256)
    other = signer(KeyType.P256, role="other")
    (tmp_path / "ca.pem").write_bytes(pem.armor("CERTIFICATE", ca.dump()))
    (tmp_path / "crl.der").write_bytes(signed_crl(other, ca, EDGE_ENTRIES))
    result = openssl_verify_crl("openssl", tmp_path)
    assert "verify OK" not in result.stdout + result.stderr


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("revoked", "message"),
    [
        ([(5, THIS_UPDATE, "superseded"), (5, THIS_UPDATE, "keyCompromise")], "listed twice"),
        ([(0, THIS_UPDATE, "superseded")], "positive integer"),
        ([(-3, THIS_UPDATE, "superseded")], "positive integer"),
        ([(1 << 159, THIS_UPDATE, "superseded")], "20 octets"),
        ([(5, THIS_UPDATE, "certificateHold")], "unknown revocation reason"),
        ([(5, dt.datetime(2024, 1, 1), "superseded")], "no time zone"),
        ([(5, dt.datetime(1949, 12, 31, tzinfo=UTC), "superseded")], "before 1950"),
    ],
)
def test_bad_entries_are_refused(ca_cert, revoked, message):
    with pytest.raises(InvalidRequest, match=message):
        crlbuild.tbs_cert_list(ca_cert(KeyType.P256), KeyType.P256, 1, revoked, 7)


@pytest.mark.parametrize("crl_number", [-1, 1 << 159, True, "7"])
def test_bad_crl_numbers_are_refused(ca_cert, crl_number):
    with pytest.raises(InvalidRequest, match="CRL number"):
        crlbuild.tbs_cert_list(ca_cert(KeyType.P256), KeyType.P256, crl_number, [], 7)


@pytest.mark.parametrize("days", [0, -1, 36501])
def test_bad_validity_is_refused(ca_cert, days):
    with pytest.raises(InvalidRequest, match="CRL validity"):
        crlbuild.tbs_cert_list(ca_cert(KeyType.P256), KeyType.P256, 1, [], days)


def test_defaults_this_update_now_and_next_update_days_later(ca_cert):
    before = x509build.utc_now()
    tbs = crlbuild.tbs_cert_list(ca_cert(KeyType.P256), KeyType.P256, 1, [], 3)
    this_update = tbs["this_update"].native
    assert before <= this_update <= x509build.utc_now()
    assert tbs["next_update"].native - this_update == dt.timedelta(days=3)


def test_reason_parsing():
    assert RevocationReason.parse("keyCompromise") is RevocationReason.KEY_COMPROMISE
    assert RevocationReason.parse(RevocationReason.SUPERSEDED) is RevocationReason.SUPERSEDED
    assert [r.code for r in RevocationReason] == [0, 1, 3, 4, 5]
    with pytest.raises(InvalidRequest, match="keyCompromise"):
        RevocationReason.parse("key_compromise")


def test_x509_time_rule_matches_certificates():
    """CRL times follow the same UTCTime/GeneralizedTime rule as x509build (RFC 5280 5.1.2.4)."""
    entries = [
        (1, dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC), "superseded"),
        (2, dt.datetime(2050, 1, 1, tzinfo=UTC), "superseded"),
    ]
    parsed = crl.RevokedCertificates.load(crlbuild.encode_revoked(entries))
    assert [e["revocation_date"].name for e in parsed] == ["utc_time", "general_time"]
    assert isinstance(parsed[0]["revocation_date"].chosen, x509.UTCTime)


def test_lint_sample_covers_every_encoding_shape():
    base = dt.datetime(2030, 1, 1, tzinfo=UTC)
    revoked = [
        (serial, base + dt.timedelta(hours=serial % 997), "superseded")
        for serial in range(1000, 6000)
    ]
    revoked += [
        (1, dt.datetime(1950, 1, 1, tzinfo=UTC), "keyCompromise"),
        ((1 << 159) - 1, dt.datetime(2080, 1, 1, tzinfo=UTC), "cessationOfOperation"),
        (999, base, RevocationReason.UNSPECIFIED),
        (6001, base, "affiliationChanged"),
        (1 << 70, base, "superseded"),
    ]
    entries = crlbuild.encode_entries(revoked)
    sample = crlbuild.lint_sample(entries, limit=100)
    assert len(sample) == len(set(sample)) == 100
    assert sample == sorted(sample, key=entries.index)  # still in serial order
    assert {sample[0], sample[-1]} == {entries[0], entries[-1]}
    assert {crlbuild.entry_shape(e) for e in sample} == {crlbuild.entry_shape(e) for e in entries}
    read = crl.RevokedCertificates.load(crlbuild.revoked_sequence(sample))
    assert {e["user_certificate"].native for e in read} >= {1, (1 << 159) - 1, 999, 6001, 1 << 70}
    assert {e["revocation_date"].name for e in read} == {"utc_time", "general_time"}
    assert crlbuild.lint_sample(entries[:50], limit=100) == entries[:50]


def test_entry_shape_reads_serial_length_time_type_and_reason():
    when = dt.datetime(2030, 1, 1, tzinfo=UTC)
    short = crlbuild.encode_entry(0x7F, when, "unspecified")
    padded = crlbuild.encode_entry(0x80, when, "unspecified")
    later = crlbuild.encode_entry(0x7F, dt.datetime(2050, 1, 1, tzinfo=UTC), "unspecified")
    compromised = crlbuild.encode_entry(0x7F, when, "keyCompromise")
    superseded = crlbuild.encode_entry(0x7F, when, "superseded")
    shapes = [crlbuild.entry_shape(e) for e in (short, padded, later, compromised, superseded)]
    assert len(set(shapes)) == 5
    # Same shape: a different serial of the same length, a different time of the same type.
    assert crlbuild.entry_shape(
        crlbuild.encode_entry(0x11, when.replace(year=2031), "superseded")
    ) == (crlbuild.entry_shape(superseded))


@QUICK
@given(
    first=st.tuples(
        st.integers(1, (1 << 159) - 1),
        st.datetimes(dt.datetime(1950, 1, 1), dt.datetime(9999, 12, 31), timezones=st.just(UTC)),
        st.sampled_from(list(RevocationReason)),
    ),
    second=st.tuples(
        st.integers(1, (1 << 159) - 1),
        st.datetimes(dt.datetime(1950, 1, 1), dt.datetime(9999, 12, 31), timezones=st.just(UTC)),
        st.sampled_from(list(RevocationReason)),
    ),
)
def test_entry_shape_is_serial_length_time_type_and_reason(first, second):
    """entry_shape reads three octets; it must mean exactly what pkilint can tell apart."""

    def meaning(serial, when, reason):
        entry = crl.RevokedCertificate.load(crlbuild.encode_entry(serial, when, reason))
        return (
            len(entry["user_certificate"].contents),
            entry["revocation_date"].name,
            str(reason),
        )

    same_shape = crlbuild.entry_shape(crlbuild.encode_entry(*first)) == crlbuild.entry_shape(
        crlbuild.encode_entry(*second)
    )
    assert same_shape == (meaning(*first) == meaning(*second))


def test_a_lint_sample_crl_lints_clean(signer, ca_cert):
    base = dt.datetime(2030, 1, 1, tzinfo=UTC)
    reasons = list(RevocationReason)
    revoked = [
        (
            (serial * 0x9E3779B97F4A7C15) % (1 << 159) + 1,
            base + dt.timedelta(minutes=serial),
            reasons[serial % 5],
        )
        for serial in range(3000)
    ]
    sample = crlbuild.lint_sample(crlbuild.encode_entries(revoked), limit=200)
    assert len(sample) == 200
    tbs = crlbuild.tbs_cert_list_of_entries(ca_cert(KeyType.P256), KeyType.P256, 7, sample, 30)
    key = signer(KeyType.P256)
    der = crlbuild.certificate_list(tbs, KeyType.P256, key.sign(tbs.dump())).dump()
    assert pkilint_findings(der) == []

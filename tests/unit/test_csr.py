"""csr: PKCS#10 requests are verified, refused clearly, and only their key and names are used."""

from __future__ import annotations

import ipaddress

import pytest
from asn1crypto import core, pem
from asn1crypto import csr as acsr
from asn1crypto import x509 as ax509
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsmca import csr, signing, x509build
from hsmca.errors import InvalidRequest
from hsmca.models import KeyType

from .builders import extension
from .strategies import QUICK, ldh_names


@pytest.fixture(scope="module")
def leaf_keys(signer):
    """One private key per supported requester key type (generated once per session)."""
    return {
        key_type: signer(key_type, role="leaf").private_key
        for key_type in (KeyType.RSA2048, KeyType.P256, KeyType.P384)
    }


def make_csr(
    key,
    cn: str | None = "rec1.example.com",
    dns=(),
    ip=(),
    extra_extensions=(),
    digest=None,
    extra_subject=(),
    encoding=serialization.Encoding.PEM,
    **sign_kwargs,
) -> bytes:
    attributes = [cx509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn is not None else []
    attributes += list(extra_subject)
    builder = cx509.CertificateSigningRequestBuilder().subject_name(cx509.Name(attributes))
    names = [cx509.DNSName(n) for n in dns] + [cx509.IPAddress(ipaddress.ip_address(a)) for a in ip]
    if names:
        builder = builder.add_extension(cx509.SubjectAlternativeName(names), critical=False)
    for value, critical in extra_extensions:
        builder = builder.add_extension(value, critical=critical)
    if digest is None and not isinstance(key, ed25519.Ed25519PrivateKey):
        digest = hashes.SHA256()
    return builder.sign(key, digest, **sign_kwargs).public_bytes(encoding)


def der_of(pem_bytes: bytes) -> bytes:
    return pem.unarmor(pem_bytes)[2]


def assemble(info: acsr.CertificationRequestInfo, key, digest=None) -> bytes:
    """Sign a hand-built CertificationRequestInfo (for shapes cryptography will not build)."""
    tbs = info.dump()
    digest = digest or hashes.SHA256()
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm = {"algorithm": f"{digest.name}_rsa", "parameters": core.Null()}
        signature = key.sign(tbs, padding.PKCS1v15(), digest)
    else:
        algorithm = {"algorithm": f"{digest.name}_ecdsa"}
        signature = key.sign(tbs, ec.ECDSA(digest))
    return acsr.CertificationRequest(
        {
            "certification_request_info": acsr.CertificationRequestInfo.load(tbs),
            "signature_algorithm": algorithm,
            "signature": signature,
        }
    ).dump()


def info_of(request: bytes) -> acsr.CertificationRequestInfo:
    return acsr.CertificationRequest.load(der_of(request))["certification_request_info"]


# --- what is taken --------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", [KeyType.RSA2048, KeyType.P256, KeyType.P384])
@pytest.mark.parametrize("encoding", [serialization.Encoding.PEM, serialization.Encoding.DER])
def test_names_key_and_key_type_are_extracted(leaf_keys, key_type, encoding):
    key = leaf_keys[key_type]
    data = make_csr(
        key, dns=["rec1.example.com", "rec1"], ip=["10.0.0.103", "fd00::103"], encoding=encoding
    )
    parsed = csr.parse_csr(data, "rec1.csr")
    assert parsed.common_names == ("rec1.example.com",)
    assert parsed.dns_names == ("rec1.example.com", "rec1")
    assert parsed.ip_addresses == ("10.0.0.103", "fd00::103")
    assert parsed.key_type is key_type
    assert parsed.ignored == ()
    expected_spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert parsed.public_key.dump() == expected_spki

    request = parsed.server_request(365)
    assert request == x509build.server_request(
        ["rec1.example.com", "rec1"], ["10.0.0.103", "fd00::103"], 365, key_type
    )


def test_windows_style_pem_with_crlf_and_text_around_it(leaf_keys):
    data = (
        make_csr(leaf_keys[KeyType.RSA2048], dns=["rec2.example.com"])
        .replace(b"BEGIN CERTIFICATE REQUEST", b"BEGIN NEW CERTIFICATE REQUEST")
        .replace(b"END CERTIFICATE REQUEST", b"END NEW CERTIFICATE REQUEST")
    )
    data = b"Certificate request for rec2\r\n" + data.replace(b"\n", b"\r\n") + b"trailing note\r\n"
    parsed = csr.parse_csr(data)
    assert parsed.dns_names == ("rec2.example.com",)
    assert csr.parse_csr(data.decode()).dns_names == ("rec2.example.com",)  # str works too


def test_cn_only_request_uses_the_cn(leaf_keys):
    request, parsed = csr.server_request_from_csr(
        make_csr(leaf_keys[KeyType.P256], cn="Rec3.Example.COM"), 30, source="rec3.csr"
    )
    assert parsed.dns_names == ()
    assert request.dns_names == ("rec3.example.com",)
    assert request.days == 30 and request.key_type is KeyType.P256


def test_san_only_request_without_cn(leaf_keys):
    request, _ = csr.server_request_from_csr(
        make_csr(leaf_keys[KeyType.P256], cn=None, dns=["a.example", "b.example"]), 30
    )
    assert request.dns_names == ("a.example", "b.example")
    assert request.common_name == "a.example"


def test_overrides_replace_the_requested_names(leaf_keys):
    parsed = csr.parse_csr(
        make_csr(leaf_keys[KeyType.P256], dns=["rec1.example.com", "old.example"], ip=["10.0.0.1"])
    )
    replaced = parsed.server_request(90, dns=["new1.example.com, new2"], ip=["192.168.7.7"])
    assert replaced.dns_names == ("new1.example.com", "new2")
    assert replaced.ip_addresses == (ipaddress.ip_address("192.168.7.7"),)
    only_dns = parsed.server_request(90, dns=["new1.example.com"])
    assert only_dns.ip_addresses == (ipaddress.ip_address("10.0.0.1"),)
    no_ips = parsed.server_request(90, ip=[])
    assert no_ips.dns_names == ("rec1.example.com", "old.example") and no_ips.ip_addresses == ()


def test_override_rescues_a_request_with_unusable_names(leaf_keys):
    parsed = csr.parse_csr(make_csr(leaf_keys[KeyType.P256], cn="Recording Server 1"))
    with pytest.raises(InvalidRequest, match="--dns"):
        parsed.server_request(30)
    assert parsed.server_request(30, dns=["rec1"]).dns_names == ("rec1",)


def test_nothing_else_is_copied_into_the_certificate(signer, ca_cert, leaf_keys):
    """A greedy CSR (CA-ish key usage, email, URI, extra subject attributes, policies) yields the
    same certificate shape as `hsmca issue`: only the key and the names come from the CSR."""
    data = make_csr(
        leaf_keys[KeyType.RSA2048],
        dns=["rec1.example.com"],
        extra_subject=[
            cx509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil Corp"),
            cx509.NameAttribute(NameOID.EMAIL_ADDRESS, "x@example.com"),
        ],
        extra_extensions=[
            (cx509.KeyUsage(True, False, False, False, False, True, True, False, False), True),
            (cx509.ExtendedKeyUsage([cx509.ExtendedKeyUsageOID.CODE_SIGNING]), False),
            (cx509.BasicConstraints(ca=False, path_length=None), True),
            (
                cx509.CertificatePolicies(
                    [cx509.PolicyInformation(cx509.ObjectIdentifier("2.5.29.32.0"), None)]
                ),
                False,
            ),
        ],
    )
    parsed = csr.parse_csr(data)
    assert {text.split(" (")[0] for text in parsed.ignored} == {
        "requested extension key_usage",
        "requested extension extended_key_usage",
        "requested extension certificate_policies",
    }
    request = parsed.server_request(365)
    ca_signer, ca = signer(KeyType.P256), ca_cert(KeyType.P256)
    not_before, not_after = x509build.validity(365)
    tbs = x509build.server_tbs(
        request,
        parsed.public_key,
        ca,
        KeyType.P256,
        x509build.random_serial(),
        not_before,
        not_after,
    )
    certificate, _ = signing.sign_certificate(tbs, ca_signer, ca_signer.public_key)
    assert certificate.subject.native == {"common_name": "rec1.example.com"}
    assert extension(certificate, "basic_constraints")["extn_value"].native == {
        "ca": False,
        "path_len_constraint": None,
    }
    assert set(extension(certificate, "key_usage")["extn_value"].native) == {
        "digital_signature",
        "key_encipherment",
    }
    assert extension(certificate, "extended_key_usage")["extn_value"].native == ["server_auth"]
    assert extension(certificate, "certificate_policies") is None
    assert certificate.public_key.dump() == parsed.public_key.dump()


def test_other_san_types_are_ignored_and_reported(leaf_keys):
    data = make_csr(leaf_keys[KeyType.P256], cn="rec1.example.com")
    info = info_of(data)
    info["attributes"] = [
        {
            "type": "extension_request",
            "values": [
                [
                    {
                        "extn_id": "subject_alt_name",
                        "extn_value": [
                            ax509.GeneralName(name="dns_name", value="rec1.example.com"),
                            ax509.GeneralName(name="rfc822_name", value="ops@example.com"),
                            ax509.GeneralName(
                                name="uniform_resource_identifier", value="https://evil.example/"
                            ),
                        ],
                    }
                ]
            ],
        }
    ]
    parsed = csr.parse_csr(assemble(info, leaf_keys[KeyType.P256]))
    assert parsed.dns_names == ("rec1.example.com",)
    assert parsed.ignored == (
        "subjectAltName rfc822_name 'ops@example.com'",
        "subjectAltName uniform_resource_identifier 'https://evil.example/'",
    )


def test_legacy_microsoft_extension_request_is_read(leaf_keys):
    info = info_of(make_csr(leaf_keys[KeyType.RSA2048], cn="rec9.example.com"))
    extensions = acsr.SetOfExtensions(
        [[{"extn_id": "subject_alt_name", "extn_value": [ax509.GeneralName("dns_name", "rec9")]}]]
    )
    info["attributes"] = [
        {"type": "1.3.6.1.4.1.311.2.1.14", "values": core.Any.load(extensions.dump())}
    ]
    parsed = csr.parse_csr(assemble(info, leaf_keys[KeyType.RSA2048]))
    assert parsed.dns_names == ("rec9",)
    assert parsed.server_request(30).dns_names == ("rec9.example.com", "rec9")


def test_the_certificate_key_is_the_canonical_form_of_the_requested_one(leaf_keys):
    """A compressed EC point in the CSR becomes the usual uncompressed SubjectPublicKeyInfo."""
    key = leaf_keys[KeyType.P256]
    info = info_of(make_csr(key))
    compressed = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    info["subject_pk_info"] = {
        "algorithm": {"algorithm": "ec", "parameters": ("named", "secp256r1")},
        "public_key": compressed,
    }
    data = assemble(info, key)
    assert len(compressed) == 33 and compressed in data
    parsed = csr.parse_csr(data)
    assert parsed.public_key.dump() == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- refusals -----------------------------------------------------------------------------------


def test_bad_signature_is_refused(leaf_keys):
    der = bytearray(der_of(make_csr(leaf_keys[KeyType.RSA2048], dns=["rec1.example.com"])))
    der[-5] ^= 0x01  # inside the signature
    with pytest.raises(InvalidRequest, match=r"bad\.csr has a bad signature"):
        csr.parse_csr(bytes(der), "bad.csr")


def test_altered_request_is_refused(leaf_keys):
    """Same length, one name changed after signing: the signature no longer covers it."""
    der = der_of(make_csr(leaf_keys[KeyType.P256], dns=["rec1.example.com"]))
    altered = der.replace(b"rec1.example.com", b"evil.example.com")
    assert altered != der
    with pytest.raises(InvalidRequest, match="bad signature"):
        csr.parse_csr(altered)


def test_request_signed_by_another_key_is_refused(leaf_keys, signer):
    info = info_of(make_csr(leaf_keys[KeyType.P256]))
    other = signer(KeyType.P256, role="other").private_key
    with pytest.raises(InvalidRequest, match="bad signature"):
        csr.parse_csr(assemble(info, other))


def test_ca_true_is_refused(leaf_keys):
    data = make_csr(
        leaf_keys[KeyType.P256],
        extra_extensions=[(cx509.BasicConstraints(ca=True, path_length=0), True)],
    )
    with pytest.raises(InvalidRequest, match=r"CA certificate \(basicConstraints CA:TRUE\)"):
        csr.parse_csr(data)


@pytest.mark.parametrize(
    ("make_key", "message"),
    [
        # A deliberately weak key: the test is that it is refused.
        (lambda: rsa.generate_private_key(65537, 1024), "1024 bits, too weak"),  # noqa: S505
        (lambda: rsa.generate_private_key(65537, 2560), "2560 bits; hsmca signs RSA 2048"),
        (lambda: ec.generate_private_key(ec.SECP521R1()), "curve secp521r1"),
        (lambda: ec.generate_private_key(ec.SECP256K1()), "curve secp256k1"),
        (ed25519.Ed25519PrivateKey.generate, "Ed25519 key"),
        (lambda: dsa.generate_private_key(2048), "DSA key"),
    ],
    ids=["rsa1024", "rsa2560", "p521", "secp256k1", "ed25519", "dsa"],
)
def test_unsupported_keys_are_refused(make_key, message):
    with pytest.raises(InvalidRequest, match=message):
        csr.parse_csr(make_csr(make_key()), "x.csr")


def test_unsupported_signature_algorithms_are_refused(leaf_keys):
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), 32)
    with pytest.raises(InvalidRequest, match="signed with rsassa_pss"):
        csr.parse_csr(make_csr(leaf_keys[KeyType.RSA2048], rsa_padding=pss))
    info = info_of(make_csr(leaf_keys[KeyType.RSA2048]))
    with pytest.raises(InvalidRequest, match="signed with sha1_rsa"):
        csr.parse_csr(assemble(info, leaf_keys[KeyType.RSA2048], hashes.SHA1()))
    info = info_of(make_csr(leaf_keys[KeyType.P256]))
    sha512 = csr.parse_csr(assemble(info, leaf_keys[KeyType.P256], hashes.SHA512()))
    assert sha512.common_names == ("rec1.example.com",)  # SHA-512 is accepted


def test_an_rsa_pss_key_is_refused(leaf_keys):
    """An RSA key labelled id-RSASSA-PSS in the CSR is not silently turned into rsaEncryption."""
    key = leaf_keys[KeyType.RSA2048]
    info = info_of(make_csr(key))
    spki = info["subject_pk_info"]
    info["subject_pk_info"] = {
        "algorithm": {"algorithm": "rsassa_pss"},
        "public_key": spki["public_key"].parsed,
    }
    with pytest.raises(InvalidRequest, match="RSA-PSS key"):
        csr.parse_csr(assemble(info, key))


def test_signature_algorithm_must_fit_the_key(leaf_keys):
    """An RSA key with an ECDSA algorithm identifier is refused before any verification."""
    der = der_of(make_csr(leaf_keys[KeyType.RSA2048]))
    request = acsr.CertificationRequest.load(der)
    request["signature_algorithm"] = {"algorithm": "sha256_ecdsa"}
    with pytest.raises(InvalidRequest, match="does not fit its key"):
        csr.parse_csr(request.dump(force=True))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cn": None}, "names no server"),
        ({"cn": None, "ip": ["10.0.0.1"]}, "names no server"),
        ({"dns": ["*.example.com"]}, "wildcards are not issued"),
        ({"cn": "10.0.0.5"}, "that is an IP address"),
        ({"cn": "bad_name.example"}, "invalid DNS name 'bad_name.example'"),
        ({"cn": "a,b.example"}, "has no comma"),
        ({"dns": ["x" * 64 + ".example"]}, "must be 1-63 letters"),
        ({"cn": "ok.example", "dns": ["y" * 61 + ".example"]}, None),  # accepted: a control
    ],
)
def test_unusable_names_are_refused_with_the_file_named(leaf_keys, kwargs, message):
    parsed = csr.parse_csr(make_csr(leaf_keys[KeyType.P256], **kwargs), "site/rec7.csr")
    if message is None:
        assert parsed.server_request(30).dns_names[0] == "ok.example"
        return
    with pytest.raises(InvalidRequest, match=message) as error:
        parsed.server_request(30)
    assert str(error.value).startswith("site/rec7.csr: ")


def test_errors_in_the_callers_own_names_do_not_suggest_overriding_them(leaf_keys):
    parsed = csr.parse_csr(make_csr(leaf_keys[KeyType.P256]), "r.csr")
    with pytest.raises(InvalidRequest) as error:
        parsed.server_request(30, dns=["bad name"], ip=["10.0.0.1"])
    assert str(error.value).startswith("r.csr: invalid DNS name 'bad name'")
    assert "can be replaced" not in str(error.value)
    with pytest.raises(InvalidRequest, match=r"can be replaced with --ip\)$"):
        parsed.server_request(30, dns=["bad name"])


def test_two_common_names_are_refused_unless_overridden(leaf_keys):
    data = make_csr(
        leaf_keys[KeyType.P256],
        cn="a.example",
        extra_subject=[cx509.NameAttribute(NameOID.COMMON_NAME, "b.example")],
    )
    parsed = csr.parse_csr(data)
    with pytest.raises(InvalidRequest, match="2 common names"):
        parsed.server_request(30)
    assert parsed.server_request(30, dns=["a.example"]).dns_names == ("a.example",)


def test_a_duplicated_extension_is_refused(leaf_keys):
    info = info_of(make_csr(leaf_keys[KeyType.P256]))
    san = {"extn_id": "subject_alt_name", "extn_value": [ax509.GeneralName("dns_name", "a.ex")]}
    info["attributes"] = [{"type": "extension_request", "values": [[san, san]]}]
    with pytest.raises(InvalidRequest, match="subject_alt_name extension twice"):
        csr.parse_csr(assemble(info, leaf_keys[KeyType.P256]))


def test_unknown_version_is_refused(leaf_keys):
    info = info_of(make_csr(leaf_keys[KeyType.P256]))
    info["version"] = 1
    with pytest.raises(InvalidRequest, match="version"):
        csr.parse_csr(assemble(info, leaf_keys[KeyType.P256]))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (b"   \n", "is empty"),
        (b"hello", "not a readable PKCS#10"),
        (b"\x30\x03\x02\x01\x00", "not a readable PKCS#10"),
        (b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n", "holds CERTIFICATE"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n", "PEM text is damaged"),
        (b"0" * (csr.MAX_CSR_BYTES + 1), "far too large"),
    ],
)
def test_unreadable_input_is_refused(data, message):
    with pytest.raises(InvalidRequest, match=message):
        csr.parse_csr(data, "in.csr")


def test_truncated_trailing_and_doubled_inputs_are_refused(leaf_keys):
    good = make_csr(leaf_keys[KeyType.P256])
    der = der_of(good)
    with pytest.raises(InvalidRequest, match="not a readable"):
        csr.parse_csr(der[:-1])
    with pytest.raises(InvalidRequest, match="not a readable"):
        csr.parse_csr(der + b"\x00")
    with pytest.raises(InvalidRequest, match="exactly one"):
        csr.parse_csr(good + good)


# --- properties ---------------------------------------------------------------------------------


@settings(QUICK, max_examples=300)
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_invalid_request(data):
    try:
        csr.parse_csr(data)
    except InvalidRequest as exc:
        assert str(exc)


@settings(QUICK, max_examples=100)
@given(body=st.binary(max_size=400))
def test_arbitrary_pem_raises_only_invalid_request(body):
    with pytest.raises(InvalidRequest):
        csr.parse_csr(pem.armor("CERTIFICATE REQUEST", body))


_VALID: dict[int, bytes] = {}


def _valid_der(key) -> bytes:
    """One fixed CSR per key (ECDSA signatures are randomised; hypothesis needs a fixed input)."""
    if id(key) not in _VALID:
        _VALID[id(key)] = der_of(make_csr(key, dns=["rec1.example.com"], ip=["10.0.0.1"]))
    return _VALID[id(key)]


@settings(QUICK, max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_damaged_requests_are_refused_or_unchanged(leaf_keys, data):
    """Any corruption of a valid DER CSR is refused with InvalidRequest (or, if it happens to
    leave the meaning intact, parses to exactly the same thing)."""
    key_type = data.draw(st.sampled_from(sorted(leaf_keys, key=lambda k: k.value)))
    original = _valid_der(leaf_keys[key_type])
    damaged = bytearray(original)
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(damaged) - 1))
        damaged[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(damaged)))
    damaged = bytes(damaged[:cut])
    try:
        parsed = csr.parse_csr(damaged)
    except InvalidRequest:
        return
    expected = csr.parse_csr(original)
    assert (parsed.common_names, parsed.dns_names, parsed.ip_addresses) == (
        expected.common_names,
        expected.dns_names,
        expected.ip_addresses,
    )
    assert parsed.public_key.dump() == expected.public_key.dump()


ip_addresses = st.one_of(
    st.ip_addresses(v=4),
    st.ip_addresses(v=6),
    # IPv4-compatible and -mapped forms, which asn1crypto would print differently from Python
    st.integers(0, 2**32 - 1).map(lambda n: ipaddress.IPv6Address(n)),
    st.integers(0, 2**32 - 1).map(lambda n: ipaddress.IPv6Address((0xFFFF << 32) | n)),
).map(str)


@QUICK
@given(
    key_type=st.sampled_from([KeyType.RSA2048, KeyType.P256, KeyType.P384]),
    cn=ldh_names.filter(lambda n: len(n) <= 64),
    dns=st.lists(ldh_names, max_size=6),
    ips=st.lists(ip_addresses, max_size=4),
    pem_encoded=st.booleans(),
)
def test_valid_requests_round_trip(leaf_keys, key_type, cn, dns, ips, pem_encoded):
    encoding = serialization.Encoding.PEM if pem_encoded else serialization.Encoding.DER
    data = make_csr(leaf_keys[key_type], cn=cn, dns=dns, ip=ips, encoding=encoding)
    parsed = csr.parse_csr(data)
    assert parsed.common_names == (cn,)
    assert parsed.dns_names == tuple(dns)
    assert parsed.ip_addresses == tuple(ips)
    assert parsed.key_type is key_type
    request = parsed.server_request(365)
    assert request == x509build.server_request([cn, *dns], ips, 365, key_type)
    assert request.common_name == cn.lower()


def test_address_with_netmask_is_refused(leaf_keys):
    info = info_of(make_csr(leaf_keys[KeyType.P256]))
    san = ax509.GeneralName("ip_address", "10.0.0.0/8")
    info["attributes"] = [
        {
            "type": "extension_request",
            "values": [[{"extn_id": "subject_alt_name", "extn_value": [san]}]],
        }
    ]
    parsed = csr.parse_csr(assemble(info, leaf_keys[KeyType.P256]))
    assert parsed.ip_addresses == ("10.0.0.0/8",)
    with pytest.raises(InvalidRequest, match="without zone or prefix length"):
        parsed.server_request(30)

"""The CA database: recording, finding, listing, lifecycle, CRL numbers and schema migrations.

Certificates are built by hsmca.x509build and signed by in-memory software keys (no token).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import os
import sqlite3
import stat
import threading
import time

import pytest
from asn1crypto import crl, x509
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given
from hypothesis import strategies as st

from hsmca import crlbuild, db, x509build
from hsmca.errors import HsmcaError, IntegrityError, InvalidRequest
from hsmca.models import KeyType
from hsmca.signing import SoftwareSigner

from .strategies import FAST, QUICK

NOW = dt.datetime(2030, 6, 1, 12, 0, 0, tzinfo=dt.UTC)


# --- certificates for the tests ---------------------------------------------------------------


@functools.cache
def _pki(leaf_type: KeyType = KeyType.P256) -> tuple[SoftwareSigner, x509.Certificate, object]:
    """(CA signer, CA certificate, a leaf public key of `leaf_type`), made once per session."""
    ca_signer = SoftwareSigner(KeyType.P256)
    not_before, not_after = x509build.validity(36500, now=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    tbs = x509build.ca_tbs(
        x509build.parse_subject("CN=Test CA,O=hsmca tests"),
        ca_signer.public_key,
        KeyType.P256,
        x509build.random_serial(),
        not_before,
        not_after,
    )
    ca_cert = x509build.certificate(tbs, KeyType.P256, ca_signer.sign(tbs.dump()))
    return ca_signer, ca_cert, SoftwareSigner(leaf_type).public_key


def make_cert(
    dns=("rec1.example.com",),
    ip=(),
    *,
    serial: int | None = None,
    not_after: dt.datetime | None = None,
    days: int = 365,
    leaf_type: KeyType = KeyType.P256,
) -> bytes:
    """A server certificate as hsmca builds it, signed by the test CA; DER bytes."""
    ca_signer, ca_cert, leaf_key = _pki(leaf_type)
    request = x509build.server_request(dns, ip, days, leaf_type)
    if not_after is None:
        not_before, not_after = x509build.validity(days)
    else:
        not_before = not_after - dt.timedelta(days=days)
    tbs = x509build.server_tbs(
        request,
        leaf_key,
        ca_cert,
        KeyType.P256,
        serial if serial is not None else x509build.random_serial(),
        not_before,
        not_after,
    )
    return x509build.certificate(tbs, KeyType.P256, ca_signer.sign(tbs.dump())).dump()


def serial_of(der: bytes) -> str:
    return format(x509.Certificate.load(der).serial_number, "x")


@pytest.fixture
def ca_dir(tmp_path):
    directory = tmp_path / "ca"
    directory.mkdir()
    return directory


@pytest.fixture
def database(ca_dir):
    with db.open_database(ca_dir) as opened:
        yield opened


def crl_serials(database) -> list[int]:
    """The serials of the database's CRL entries, in their order."""
    return [
        crl.RevokedCertificate.load(der)["user_certificate"].native
        for der in database.crl_entries()
    ]


def record(database, der, profile="server", output_path=None, days=365, key_type=None):
    return database.record_issued(der, profile, key_type, days, output_path)


# --- opening ----------------------------------------------------------------------------------


def test_a_new_database_is_private_in_wal_mode_at_the_current_schema(ca_dir):
    with db.open_database(ca_dir) as database:
        assert database.schema_version == db.schema_version() == len(db.MIGRATIONS)
        assert database.path == ca_dir / "ca.sqlite3"
    assert stat.S_IMODE(os.stat(ca_dir / "ca.sqlite3").st_mode) == 0o600
    with sqlite3.connect(ca_dir / "ca.sqlite3") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
    assert {"certificates", "crl_state", "certificate_names", "audit_anchor"} <= tables


def test_opening_a_missing_directory_or_database_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidRequest, match="does not exist"):
        db.open_database(tmp_path / "nowhere")
    with pytest.raises(InvalidRequest, match="no certificate database"):
        db.open_database(tmp_path, create=False)
    assert not (tmp_path / "ca.sqlite3").exists()


def test_a_file_that_is_not_a_database_is_refused(ca_dir):
    (ca_dir / "ca.sqlite3").write_bytes(b"this is not SQLite, just text " * 100)
    with pytest.raises(HsmcaError, match="not an hsmca CA database or is damaged"):
        db.open_database(ca_dir)


def test_a_database_from_a_newer_hsmca_is_refused_untouched(ca_dir):
    with db.open_database(ca_dir):
        pass
    with sqlite3.connect(ca_dir / "ca.sqlite3") as raw:
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(HsmcaError, match="newer than this hsmca understands"):
        db.open_database(ca_dir)
    with sqlite3.connect(ca_dir / "ca.sqlite3") as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 99


# --- migrations -------------------------------------------------------------------------------

# The v1 schema exactly as it shipped, frozen here: a later edit of migration 1 must not change
# what an existing CA directory holds, so this test does not use the code's own migration.
V1_SCHEMA = [
    """
    CREATE TABLE certificates (
        id INTEGER PRIMARY KEY,
        serial TEXT NOT NULL UNIQUE
            CHECK (serial <> '' AND serial NOT GLOB '*[^0-9a-f]*'
                   AND (serial = '0' OR serial NOT GLOB '0*')),
        subject TEXT NOT NULL,
        common_name TEXT,
        dns TEXT NOT NULL DEFAULT '[]',
        ip TEXT NOT NULL DEFAULT '[]',
        not_before TEXT NOT NULL,
        not_after TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        sha1 TEXT NOT NULL,
        profile TEXT NOT NULL,
        key_type TEXT,
        days INTEGER CHECK (days IS NULL OR days >= 1),
        status TEXT NOT NULL DEFAULT 'active'
            CHECK (status IN ('active', 'superseded', 'revoked')),
        revoked_at TEXT,
        revocation_reason TEXT,
        superseded_by TEXT REFERENCES certificates (serial),
        output_path TEXT,
        output_state TEXT NOT NULL DEFAULT 'pending'
            CHECK (output_state IN ('pending', 'written', 'failed')),
        created_at TEXT NOT NULL,
        der BLOB NOT NULL,
        CHECK ((status = 'revoked') = (revoked_at IS NOT NULL)),
        CHECK ((revoked_at IS NULL) = (revocation_reason IS NULL)),
        CHECK (status <> 'superseded' OR superseded_by IS NOT NULL)
    )
    """,
    """
    CREATE TABLE crl_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        last_number INTEGER NOT NULL CHECK (last_number >= 0)
    )
    """,
    "INSERT INTO crl_state (id, last_number) VALUES (1, 0)",
]


def make_v1_database(ca_dir, certificates, crl_number=0):
    """A version-1 CA database holding `certificates` [(der, status, revoked_at, reason)]."""
    raw = sqlite3.connect(ca_dir / "ca.sqlite3")
    for statement in V1_SCHEMA:
        raw.execute(statement)
    for der, status, revoked_at, reason in certificates:
        cert = x509.Certificate.load(der)
        san = cert.subject_alt_name_value
        raw.execute(
            "INSERT INTO certificates (serial, subject, common_name, dns, ip, not_before, "
            "not_after, sha256, sha1, profile, key_type, days, status, revoked_at, "
            "revocation_reason, output_path, output_state, created_at, der) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'server', 'p256', 365, ?, ?, ?, ?, 'written', "
            "'2030-01-01T00:00:00Z', ?)",
            (
                serial_of(der),
                f"CN={cert.subject.native['common_name']}",
                cert.subject.native["common_name"],
                json.dumps([n.native for n in san if n.name == "dns_name"]),
                json.dumps([n.native for n in san if n.name == "ip_address"]),
                db.rfc3339(cert.not_valid_before),
                db.rfc3339(cert.not_valid_after),
                hashlib.sha256(der).hexdigest(),
                hashlib.sha1(der).hexdigest(),
                status,
                revoked_at,
                reason,
                f"/srv/out/{cert.subject.native['common_name']}.pfx",
                der,
            ),
        )
    raw.execute("UPDATE crl_state SET last_number = ?", (crl_number,))
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()


def test_a_v1_database_is_migrated_in_place_keeping_its_rows(ca_dir):
    active = make_cert(("rec1.example.com", "rec1"), ("10.0.0.1",))
    revoked = make_cert(("rec2.example.com",))
    make_v1_database(
        ca_dir,
        [
            (active, "active", None, None),
            (revoked, "revoked", "2030-02-01T00:00:00Z", "keyCompromise"),
        ],
        crl_number=7,
    )

    with db.open_database(ca_dir) as database:
        assert database.schema_version == len(db.MIGRATIONS)
        assert database.integrity_check() == []
        # certificate_names (new in v2) was backfilled from the v1 rows' JSON columns.
        assert database.find("REC1").serial == serial_of(active)
        assert database.find("10.0.0.1").serial == serial_of(active)
        assert database.find(serial_of(revoked)).status == "revoked"
        assert crl_serials(database) == [int(serial_of(revoked), 16)]
        # crl_entries (new in v5) was backfilled from the revoked rows.
        assert database.crl_entries() == [
            crlbuild.encode_entry(
                int(serial_of(revoked), 16), dt.datetime(2030, 2, 1, tzinfo=dt.UTC), "keyCompromise"
            )
        ]
        assert database.find_output("/srv/out/rec1.example.com.pfx").serial == serial_of(active)
        assert database.next_crl_number() == 8
        assert database.audit_anchor() is None
        # and the migrated database takes new certificates like a new one
        new = record(database, make_cert(("rec3.example.com",)))
        assert database.find("rec3.example.com") == new
        assert database.count() == 3

    with sqlite3.connect(ca_dir / "ca.sqlite3") as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(db.MIGRATIONS)


def test_a_failing_migration_step_leaves_the_database_as_it_was(ca_dir, monkeypatch):
    der = make_cert()
    with db.open_database(ca_dir) as database:
        record(database, der)

    def broken_step(conn):
        conn.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("migration step failed")

    monkeypatch.setattr(db, "MIGRATIONS", [*db.MIGRATIONS, broken_step])
    with pytest.raises(RuntimeError, match="migration step failed"):
        db.open_database(ca_dir)
    monkeypatch.undo()

    with db.open_database(ca_dir) as database:
        assert database.schema_version == len(db.MIGRATIONS)
        assert database.get(serial_of(der)) is not None
        assert database.integrity_check() == []
    with sqlite3.connect(ca_dir / "ca.sqlite3") as raw:
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
    assert "half_done" not in tables


# --- recording ----------------------------------------------------------------------------------


def test_record_issued_fills_every_column_from_the_certificate(database, tmp_path):
    der = make_cert(("rec1.example.com", "Rec1"), ("10.0.0.103", "fd00:0:0::103"), days=90)
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    rec = database.record_issued(der, "server", KeyType.P256, 90, tmp_path / "out/rec1.pfx")

    cert = x509.Certificate.load(der)
    assert rec.serial == format(cert.serial_number, "x")
    assert rec.serial_number == cert.serial_number
    assert rec.subject == "CN=rec1.example.com"
    assert rec.common_name == "rec1.example.com"
    assert rec.dns == ("rec1.example.com", "rec1")
    assert rec.ip == ("10.0.0.103", "fd00::103")
    assert rec.not_before == cert.not_valid_before
    assert rec.not_after == cert.not_valid_after
    assert rec.sha256 == hashlib.sha256(der).hexdigest()
    assert rec.sha1 == hashlib.sha1(der).hexdigest()
    assert rec.thumbprint == x509build.sha1_thumbprint(der)
    assert (rec.profile, rec.key_type, rec.days) == ("server", "p256", 90)
    assert (rec.status, rec.output_state) == ("active", "pending")
    assert rec.output_path == str(tmp_path / "out/rec1.pfx")
    assert rec.revoked_at is rec.revocation_reason is rec.superseded_by is None
    assert before <= rec.created_at <= dt.datetime.now(dt.UTC)
    assert rec.der == der
    # What was stored reads back identical.
    assert database.get(rec.serial) == rec


def test_the_key_type_is_taken_from_the_certificate_when_not_given(database):
    rsa = record(database, make_cert(("rsa.example.com",), leaf_type=KeyType.RSA2048))
    ec_ = record(database, make_cert(("ec.example.com",), leaf_type=KeyType.P384))
    named = record(database, make_cert(("named.example.com",)), key_type="rsa3072")
    assert (rsa.key_type, ec_.key_type, named.key_type) == ("rsa2048", "p384", "rsa3072")


def test_a_duplicate_serial_is_refused_and_changes_nothing(database):
    first = record(database, make_cert(("rec1.example.com",), serial=0x1234567890ABCDEF1))
    twin = make_cert(("other.example.com",), serial=0x1234567890ABCDEF1)
    with pytest.raises(db.DuplicateSerial, match="1234567890abcdef1 is already in the CA") as exc:
        record(database, twin)
    assert isinstance(exc.value, IntegrityError)
    assert database.count() == 1
    assert database.get(first.serial) == first
    with pytest.raises(db.CertificateNotFound):
        database.find("other.example.com")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"der": b"not a certificate"}, "not a DER X.509 certificate"),
        ({"profile": "Server Profile"}, "invalid certificate profile"),
        ({"days": 0}, "days must be a whole number"),
        ({"output_state": "done"}, "output state must be one of"),
    ],
)
def test_record_issued_refuses_bad_input_and_records_nothing(database, arguments, message):
    call = {"der": make_cert(), "profile": "server", "days": 365, **arguments}
    with pytest.raises(InvalidRequest, match=message):
        database.record_issued(
            call["der"],
            call["profile"],
            None,
            call["days"],
            None,
            output_state=call.get("output_state", "pending"),
        )
    assert database.count() == 0


def test_facts_given_by_the_caller_skip_parsing(database, monkeypatch):
    der = make_cert(("rec1.example.com",))
    facts = db.certificate_facts(der)

    def no_parsing(_der):
        raise AssertionError("the DER was parsed although facts were given")

    monkeypatch.setattr(db, "certificate_facts", no_parsing)
    rec = database.record_issued(der, "server", None, 365, None, facts=facts)
    assert rec == database.get(facts.serial)
    assert (rec.subject, rec.dns, rec.key_type) == (
        "CN=rec1.example.com",
        ("rec1.example.com",),
        "p256",
    )
    assert rec.sha256 == hashlib.sha256(der).hexdigest()


_DN_TYPES = [
    cx509.NameOID.COMMON_NAME,
    cx509.NameOID.ORGANIZATION_NAME,
    cx509.NameOID.ORGANIZATIONAL_UNIT_NAME,
    cx509.NameOID.LOCALITY_NAME,
    cx509.NameOID.STATE_OR_PROVINCE_NAME,
    cx509.NameOID.SERIAL_NUMBER,
]
_DN_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=16,
)
_RDNS = st.lists(
    st.lists(
        st.tuples(st.sampled_from(_DN_TYPES), _DN_TEXT),
        min_size=1,
        max_size=2,
        unique_by=lambda attribute: attribute[0],
    ),
    min_size=1,
    max_size=4,
)


@functools.cache
def _dn_signing_key():
    return ec.generate_private_key(ec.SECP256R1())


@FAST
@given(rdns=_RDNS)
def test_subject_text_is_rfc4514_as_cryptography_writes_it(rdns):
    """Special characters, leading '#'/spaces and multi-valued RDNs are escaped the same way."""
    attributes = []
    for rdn in rdns:
        chosen = []
        for oid, value in rdn:
            if oid == cx509.NameOID.SERIAL_NUMBER:
                value = "".join(ch for ch in value if ch.isascii() and ch.isalnum()) or "1"
            chosen.append(cx509.NameAttribute(oid, value))
        attributes.append(cx509.RelativeDistinguishedName(chosen))
    name = cx509.Name(attributes)
    key = _dn_signing_key()
    cert = (
        cx509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    facts = db.certificate_facts(cert.public_bytes(Encoding.DER))
    assert facts.subject == cert.subject.rfc4514_string()


# --- outputs --------------------------------------------------------------------------------------


def test_output_state_follows_the_file_and_find_output_serves_resume(
    database, tmp_path, monkeypatch
):
    written = record(database, make_cert(("a.example.com",)), output_path=tmp_path / "a.pfx")
    failed = record(database, make_cert(("b.example.com",)), output_path=tmp_path / "b.pfx")
    pending = record(database, make_cert(("c.example.com",)), output_path=tmp_path / "c.pfx")

    assert database.mark_output(written.serial, "written").output_state == "written"
    assert database.mark_output(failed.serial.upper(), "failed").output_state == "failed"
    assert [r.serial for r in database.unfinished_outputs()] == [failed.serial, pending.serial]

    monkeypatch.chdir(tmp_path)  # a relative path names the same file
    assert database.find_output("a.pfx") == dataclasses.replace(written, output_state="written")
    assert database.find_output(tmp_path / "c.pfx").output_state == "pending"
    assert database.find_output(tmp_path / "never.pfx") is None

    # Reissuing to the same path (--force): the newest record wins.
    again = record(database, make_cert(("a.example.com",)), output_path=tmp_path / "a.pfx")
    assert database.find_output(tmp_path / "a.pfx").serial == again.serial

    with pytest.raises(db.CertificateNotFound, match="no certificate with serial number abc"):
        database.mark_output("abc", "written")
    with pytest.raises(InvalidRequest, match="output state must be one of"):
        database.mark_output(written.serial, "done")


# --- transactions ---------------------------------------------------------------------------------


def test_a_transaction_records_many_at_once_or_nothing(database):
    with pytest.raises(RuntimeError), database.transaction():
        for name in ("a", "b", "c"):
            record(database, make_cert((f"{name}.example.com",)))
        raise RuntimeError("interrupted before commit")
    assert database.count() == 0

    with database.transaction():
        records = [record(database, make_cert((f"{n}.example.com",))) for n in ("a", "b")]
    assert database.count() == 2
    assert [database.find(f"{n}.example.com") for n in ("a", "b")] == records


def test_a_failed_record_inside_a_transaction_leaves_no_trace_and_the_rest_commits(database):
    with database.transaction():
        kept = record(database, make_cert(("kept.example.com",), serial=0xAAAA0001))
        with pytest.raises(db.DuplicateSerial):
            record(database, make_cert(("lost.example.com",), serial=0xAAAA0001))
        later = record(database, make_cert(("later.example.com",)))
    assert database.count() == 2
    assert database.find("kept.example.com") == kept
    assert database.find("later.example.com") == later
    with pytest.raises(db.CertificateNotFound):
        database.find("lost.example.com")
    assert database.integrity_check() == []


def test_a_second_connection_waits_for_a_writer_instead_of_failing(ca_dir):
    first = db.open_database(ca_dir)
    done = threading.Event()
    outcome = {}

    def write_from_second():
        try:
            with db.open_database(ca_dir) as second:
                outcome["record"] = record(second, make_cert(("waiter.example.com",)))
        except Exception as exc:  # reported below
            outcome["error"] = exc
        done.set()

    try:
        with first.transaction():
            record(first, make_cert(("holder.example.com",)))
            waiter = threading.Thread(target=write_from_second)
            waiter.start()
            assert not done.wait(0.5), "the second writer should wait for the first"
        waiter.join(10)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["record"].dns == ("waiter.example.com",)
        assert first.count() == 2
    finally:
        first.close()


def test_a_writer_that_waits_too_long_gets_a_clear_error(ca_dir):
    holder = db.open_database(ca_dir)
    impatient = db.open_database(ca_dir, busy_timeout=0.2)
    try:
        with holder.transaction():
            record(holder, make_cert(("holder.example.com",)))
            start = time.monotonic()
            with pytest.raises(HsmcaError, match="another hsmca process is writing"):
                impatient.next_crl_number()
            assert time.monotonic() - start >= 0.15
    finally:
        holder.close()
        impatient.close()


# --- finding ------------------------------------------------------------------------------------

_SERIALS = st.integers(min_value=1, max_value=(1 << 159) - 1)


@st.composite
def serial_spellings(draw, serial: int | None = None):
    """(serial, a way a person might write it): case, 0x, leading zeros, ':' or ' ' pairs."""
    if serial is None:
        serial = draw(_SERIALS)
    digits = format(serial, "x")
    zeros = draw(st.integers(0, 3))
    digits = "0" * zeros + digits
    digits = "".join(
        ch.upper() if upper else ch
        for ch, upper in zip(
            digits,
            draw(st.lists(st.booleans(), min_size=len(digits), max_size=len(digits))),
            strict=True,
        )
    )
    style = draw(st.sampled_from(["plain", "0x", "colons", "spaces"]))
    if style in ("colons", "spaces"):
        if len(digits) % 2:
            digits = "0" + digits
        pairs = [digits[i : i + 2] for i in range(0, len(digits), 2)]
        digits = (":" if style == "colons" else " ").join(pairs)
    elif style == "0x":
        digits = draw(st.sampled_from(["0x", "0X"])) + digits
    padding = draw(st.sampled_from(["", " ", "\t"]))
    return serial, padding + digits + padding


@FAST
@given(spelling=serial_spellings())
def test_parse_serial_normalises_every_spelling(spelling):
    serial, text = spelling
    normalized, explicit = db.parse_serial(text)
    assert normalized == format(serial, "x")
    assert explicit == any(mark in text.strip() for mark in ("0x", "0X", ":", " "))


@FAST
@given(text=st.text(max_size=30))
def test_parse_serial_never_accepts_non_hex(text):
    parsed = db.parse_serial(text)
    if parsed is not None:
        cleaned = text.strip().lower().removeprefix("0x").replace(":", "").replace(" ", "")
        assert int(cleaned, 16) == int(parsed[0], 16)


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    """A database holding a few certificates with serials of different lengths."""
    directory = tmp_path_factory.mktemp("populated")
    opened = db.open_database(directory)
    serials = [0x7F, 0x0100, 0xDEADBEEF00112233, (1 << 158) + 12345, x509build.random_serial()]
    records = [
        record(opened, make_cert((f"srv{i}.example.com",), serial=serial))
        for i, serial in enumerate(serials)
    ]
    yield opened, records
    opened.close()


@QUICK
@given(data=st.data())
def test_find_accepts_any_spelling_of_a_recorded_serial(populated, data):
    opened, records = populated
    chosen = data.draw(st.sampled_from(records))
    _, text = data.draw(serial_spellings(chosen.serial_number))
    assert opened.find(text) == chosen
    assert opened.get(text) == chosen


def test_find_by_name_is_case_insensitive_and_takes_cn_dns_ip(database):
    rec = record(
        database, make_cert(("rec1.example.com", "rec1-alias.example.com"), ("10.0.0.5", "fd00::5"))
    )
    for query in (
        "rec1.example.com",
        "REC1.Example.COM.",
        " rec1-alias.example.com ",
        "10.0.0.5",
        "fd00:0000:0::5",
    ):
        assert database.find(query) == rec, query
    with pytest.raises(db.CertificateNotFound, match="no certificate with serial number or name"):
        database.find("rec2.example.com")
    with pytest.raises(InvalidRequest, match="give a serial number or a DNS name"):
        database.find("  ")


def test_find_by_internationalised_name(database):
    rec = record(database, make_cert(("bücher.example",)))
    assert rec.dns == ("xn--bcher-kva.example",)
    assert database.find("BÜCHER.example") == rec
    assert database.find("xn--bcher-kva.example") == rec


def test_find_by_name_takes_the_newest_active_certificate(database):
    old = record(database, make_cert(("rec1.example.com",)))
    new = record(database, make_cert(("rec1.example.com",)))
    assert database.find("rec1.example.com") == new
    database.supersede(old.serial, new.serial)
    newest = record(database, make_cert(("rec1.example.com",)))
    database.revoke(newest.serial, "keyCompromise")
    # The revoked newest one is skipped; the active one is found.
    assert database.find("rec1.example.com") == new


def test_find_by_name_refuses_to_guess_between_different_certificates(database):
    a = record(database, make_cert(("rec1.example.com", "shared.example.com")))
    b = record(database, make_cert(("rec2.example.com", "shared.example.com")))
    with pytest.raises(InvalidRequest, match="names 2 different active certificates") as exc:
        database.find("shared.example.com")
    assert a.serial in str(exc.value) and b.serial in str(exc.value)
    assert database.find("rec2.example.com") == b


def test_find_by_name_explains_a_superseded_or_revoked_certificate(database):
    old = record(database, make_cert(("rec1.example.com",)))
    new = record(database, make_cert(("rec1-new.example.com",)))
    database.supersede(old.serial, new.serial)
    with pytest.raises(db.CertificateNotFound, match=f"superseded by {new.serial}"):
        database.find("rec1.example.com")
    gone = record(database, make_cert(("gone.example.com",)))
    database.revoke(gone.serial, "cessationOfOperation")
    with pytest.raises(db.CertificateNotFound, match="was revoked"):
        database.find("gone.example.com")
    # A serial still finds them, whatever their status.
    assert database.find(old.serial).status == "superseded"


def test_a_query_that_is_both_a_serial_and_a_name_is_ambiguous(database):
    by_name = record(database, make_cert(("cafe01",)))
    by_serial = record(database, make_cert(("other.example.com",), serial=0xCAFE01))
    with pytest.raises(InvalidRequest, match="both the serial number"):
        database.find("cafe01")
    assert database.find("0xcafe01") == by_serial
    assert database.find("ca:fe:01") == by_serial
    assert database.find("cafe01.") == by_name
    # Once the certificate named cafe01 is retired, the serial is what is meant.
    database.revoke(by_name.serial, "cessationOfOperation")
    assert database.find("cafe01") == by_serial


# --- listing and expiry ---------------------------------------------------------------------------


@pytest.fixture
def inventory(database):
    """Certificates in every state, relative to NOW."""
    made = {
        "long": record(
            database, make_cert(("long.example.com",), not_after=NOW + dt.timedelta(days=300))
        ),
        "soon": record(
            database,
            make_cert(("soon.example.com",), not_after=NOW + dt.timedelta(days=10, hours=12)),
        ),
        "expired": record(
            database,
            make_cert(("expired.example.com",), not_after=NOW - dt.timedelta(days=2, hours=1)),
        ),
        "old": record(
            database, make_cert(("old.example.com",), not_after=NOW + dt.timedelta(days=5))
        ),
        "revoked": record(
            database, make_cert(("revoked.example.com",), not_after=NOW + dt.timedelta(days=1))
        ),
    }
    database.supersede(made["old"].serial, made["long"].serial)
    database.revoke(made["revoked"].serial, "keyCompromise", when=NOW - dt.timedelta(days=1))
    return made


def _names(records):
    return [r.dns[0].split(".")[0] for r in records]


def test_list_by_status_with_expired_computed_from_not_after(database, inventory):
    assert _names(database.list(now=NOW)) == ["soon", "long"]
    assert _names(database.list("expired", now=NOW)) == ["expired"]
    assert _names(database.list("superseded", now=NOW)) == ["old"]
    assert _names(database.list("revoked", now=NOW)) == ["revoked"]
    assert _names(database.list("all", now=NOW)) == ["expired", "revoked", "old", "soon", "long"]
    with pytest.raises(InvalidRequest, match="unknown status 'valid'"):
        database.list("valid")


def test_list_expiring_within_days(database, inventory):
    assert _names(database.list(expiring_within_days=30, now=NOW)) == ["soon"]
    assert _names(database.list(expiring_within_days=10, now=NOW)) == []
    assert _names(database.list("all", expiring_within_days=5, now=NOW)) == [
        "expired",
        "revoked",
        "old",
    ]
    # check-expiry: active ones, expired or expiring, but not superseded or revoked ones
    assert _names(database.expiring(30, now=NOW)) == ["expired", "soon"]
    assert _names(database.expiring(0, now=NOW)) == ["expired"]
    with pytest.raises(InvalidRequest, match="0 or more"):
        database.expiring(-1)


def test_the_json_view_has_what_scripts_rely_on(database, inventory):
    rows = [r.to_dict(NOW) for r in database.list("all", now=NOW)]
    text = json.dumps(rows)  # JSON-ready as it is
    assert json.loads(text) == rows
    by_name = {row["dns"][0]: row for row in rows}
    soon = by_name["soon.example.com"]
    assert {"serial", "subject", "dns", "ip", "not_after", "days_left", "status", "sha1"} <= set(
        soon
    )
    assert soon["serial"] == inventory["soon"].serial
    assert soon["not_after"] == db.rfc3339(NOW + dt.timedelta(days=10, hours=12))
    assert soon["not_after"].endswith("Z")
    assert (soon["days_left"], soon["status"]) == (10, "active")
    assert (
        by_name["expired.example.com"]["days_left"],
        by_name["expired.example.com"]["status"],
    ) == (-3, "expired")
    assert by_name["revoked.example.com"]["status"] == "revoked"
    assert by_name["revoked.example.com"]["revocation_reason"] == "keyCompromise"
    assert by_name["old.example.com"]["superseded_by"] == inventory["long"].serial
    assert "der" not in soon


@FAST
@given(seconds=st.integers(min_value=-(10**9), max_value=10**9))
def test_days_left_is_rounded_down(seconds):
    rec = _bare_record(not_after=NOW + dt.timedelta(seconds=seconds))
    assert rec.days_left(NOW) == seconds // 86400
    assert rec.days_left(NOW) <= seconds / 86400 < rec.days_left(NOW) + 1
    assert rec.effective_status(NOW) == ("expired" if seconds <= 0 else "active")


def _bare_record(**changes) -> db.CertificateRecord:
    fields = {f.name: None for f in dataclasses.fields(db.CertificateRecord)}
    fields.update(serial="1", status="active", dns=(), ip=(), created_at=NOW, not_before=NOW)
    fields.update(changes)
    return db.CertificateRecord(**fields)


def test_days_left_at_the_boundaries():
    assert _bare_record(not_after=NOW + dt.timedelta(days=30)).days_left(NOW) == 30
    assert _bare_record(not_after=NOW + dt.timedelta(days=30, seconds=-1)).days_left(NOW) == 29
    assert _bare_record(not_after=NOW - dt.timedelta(seconds=1)).days_left(NOW) == -1
    with pytest.raises(ValueError, match="timezone-aware"):
        _bare_record(not_after=NOW).days_left(dt.datetime(2030, 1, 1))


# --- lifecycle ------------------------------------------------------------------------------------


def test_supersede_marks_the_old_certificate_and_only_once(database):
    old = record(database, make_cert(("rec1.example.com",)))
    new = record(database, make_cert(("rec1.example.com",)))
    other = record(database, make_cert(("rec1.example.com",)))

    updated = database.supersede(old.serial, new.serial)
    assert (updated.status, updated.superseded_by) == ("superseded", new.serial)
    assert database.supersede(old.serial, new.serial) == updated  # repeating is harmless
    with pytest.raises(InvalidRequest, match=f"already superseded by {new.serial}"):
        database.supersede(old.serial, other.serial)
    with pytest.raises(InvalidRequest, match="cannot supersede itself"):
        database.supersede(new.serial, new.serial)
    with pytest.raises(db.CertificateNotFound):
        database.supersede("abcdef", new.serial)
    with pytest.raises(db.CertificateNotFound):
        database.supersede(new.serial, "abcdef")
    assert database.get(new.serial).status == "active"


def test_renewing_a_revoked_certificate_keeps_it_revoked(database):
    old = record(database, make_cert(("rec1.example.com",)))
    database.revoke(old.serial, "keyCompromise")
    new = record(database, make_cert(("rec1.example.com",)))
    updated = database.supersede(old.serial, new.serial)
    assert (updated.status, updated.superseded_by) == ("revoked", new.serial)
    assert crl_serials(database) == [old.serial_number]


def test_revoke_records_reason_and_time_for_the_crl(database):
    a = record(database, make_cert(("a.example.com",)))
    b = record(database, make_cert(("b.example.com",)))
    c = record(database, make_cert(("c.example.com",)))
    when = dt.datetime(2030, 3, 4, 5, 6, 7, 890, tzinfo=dt.timezone(dt.timedelta(hours=2)))

    revoked = database.revoke(a.serial, "KEYCOMPROMISE", when)
    assert (revoked.status, revoked.revocation_reason) == ("revoked", "keyCompromise")
    assert revoked.revoked_at == dt.datetime(2030, 3, 4, 3, 6, 7, tzinfo=dt.UTC)
    database.revoke(c.serial.upper(), "superseded", when + dt.timedelta(hours=1))
    database.revoke(int(b.serial, 16), when=when + dt.timedelta(hours=2))

    # The CRL entries, as a CRL will hold them: by serial, reason code where not unspecified.
    entries = [crl.RevokedCertificate.load(der).native for der in database.crl_entries()]
    expected = [
        (a.serial_number, "key_compromise", when),
        (c.serial_number, "superseded", when + dt.timedelta(hours=1)),
        (b.serial_number, None, when + dt.timedelta(hours=2)),
    ]
    assert [
        (
            e["user_certificate"],
            e["crl_entry_extensions"][0]["extn_value"] if e["crl_entry_extensions"] else None,
            e["revocation_date"],
        )
        for e in entries
    ] == [(s, r, t.replace(microsecond=0)) for s, r, t in sorted(expected, key=lambda x: x[0])]


def test_crl_entries_are_the_encoded_revocations_in_serial_order(database):
    records = [record(database, make_cert((f"r{i}.example.com",))) for i in range(12)]
    when = dt.datetime(2030, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
    reasons = list(db.REVOCATION_REASONS)
    for i, rec in enumerate(records[:10]):
        database.revoke(rec.serial, reasons[i % len(reasons)], when + dt.timedelta(minutes=i))
    expected = crlbuild.encode_entries(
        (r.serial_number, r.revoked_at, r.revocation_reason)
        for r in database.list(status="revoked")
    )
    assert len(expected) == 10
    assert database.crl_entries() == expected


def test_crl_entries_refuse_a_database_whose_entries_do_not_match(database, ca_dir):
    rec = record(database, make_cert(("rec1.example.com",)))
    database.revoke(rec.serial, "superseded", NOW)
    with sqlite3.connect(ca_dir / "ca.sqlite3") as raw:
        raw.execute("DELETE FROM crl_entries")
    with pytest.raises(IntegrityError, match="1 revoked certificates but 0 CRL entries"):
        database.crl_entries()


def test_revoke_refuses_twice_unknown_serials_bad_reasons_and_the_ca(database):
    rec = record(database, make_cert(("rec1.example.com",)))
    database.revoke(rec.serial, "affiliationChanged", NOW)
    with pytest.raises(
        InvalidRequest,
        match=r"already revoked on 2030-06-01T12:00:00Z \(reason affiliationChanged\)",
    ):
        database.revoke(rec.serial, "keyCompromise")
    with pytest.raises(db.CertificateNotFound, match="no certificate with serial number 123abc"):
        database.revoke("12:3a:bc", "unspecified")
    with pytest.raises(
        InvalidRequest, match=r"unknown revocation reason 'caCompromise'.*cessationOfOperation"
    ):
        database.revoke(rec.serial, "caCompromise")
    with pytest.raises(InvalidRequest, match="not a serial number"):
        database.revoke("rec1.example.com", "unspecified")
    _, ca_cert, _ = _pki()
    ca = database.record_issued(ca_cert.dump(), "ca", KeyType.P256, 36500, None)
    with pytest.raises(InvalidRequest, match="the CA's own certificate"):
        database.revoke(ca.serial, "unspecified")
    with pytest.raises(ValueError, match="timezone-aware"):
        database.revoke(ca.serial, "unspecified", dt.datetime(2030, 1, 1))
    assert db.REVOCATION_REASONS == tuple(crlbuild.RevocationReason)
    assert set(db.REVOCATION_REASONS) == {
        "unspecified",
        "keyCompromise",
        "affiliationChanged",
        "superseded",
        "cessationOfOperation",
    }
    assert crl_serials(database) == [rec.serial_number]


def test_crl_numbers_increase_and_survive_reopening(ca_dir):
    with db.open_database(ca_dir) as database:
        assert database.last_crl_number() == 0
        assert [database.next_crl_number() for _ in range(3)] == [1, 2, 3]
    with db.open_database(ca_dir) as database:
        assert database.next_crl_number() == 4
        assert database.last_crl_number() == 4


def test_the_audit_anchor_only_moves_forward(database):
    assert database.audit_anchor() is None
    database.set_audit_anchor(5, "a" * 64)
    database.set_audit_anchor(3, "b" * 64)  # an older append finishing late changes nothing
    assert database.audit_anchor() == (5, "a" * 64)
    database.set_audit_anchor(6, "c" * 64)
    assert database.audit_anchor() == (6, "c" * 64)

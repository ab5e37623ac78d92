"""The CA's lifecycle through the `hsmca` command on real SoftHSM tokens.

`list`, `check-expiry`, `renew`, `revoke` + `crl`, `sign`, `batch` and `audit verify`. Every test
that changes CA state gets its own CA on a fresh token (p256, fast), made with `hsmca init`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from asn1crypto import crl as asn1_crl
from click.testing import CliRunner
from conftest import assert_error, tree
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hsmca.cli import cli

PASSWORD = "correct horse battery"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
DAY = dt.timedelta(days=1)
BACKDATE_AT_MOST = dt.timedelta(hours=1)
"""notBefore is set a little in the past for clock skew; a validity is `days` plus that."""
REQUIRED_LIST_KEYS = {"serial", "subject", "dns", "ip", "not_after", "days_left", "status", "sha1"}
CA_SUBJECT = "CN=VMS Certificate Authority"


# --- helpers -------------------------------------------------------------------------------------


def run(args, env=None, cwd=None):
    runner = CliRunner()
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return runner.invoke(cli, [str(a) for a in args], env=env or {}, catch_exceptions=False)
    finally:
        os.chdir(old)


def ok(args, env=None, cwd=None):
    result = run(args, env=env, cwd=cwd)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result


def hexserial(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "x")


def load_pfx(path: Path):
    key, certificate, chain = pkcs12.load_key_and_certificates(
        path.read_bytes(), PASSWORD.encode()
    )
    assert key is not None and certificate is not None
    return key, certificate, chain


def san_values(certificate: x509.Certificate) -> list[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name.value) for name in san]


def public_der(key) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def validity_length(certificate: x509.Certificate) -> dt.timedelta:
    return certificate.not_valid_after_utc - certificate.not_valid_before_utc


def valid_for_days(certificate: x509.Certificate, days: int) -> bool:
    length = validity_length(certificate)
    return days * DAY <= length <= days * DAY + BACKDATE_AT_MOST


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing from PATH", pytrace=False)
    return path


@dataclass
class Ca:
    """A CA made by `hsmca init` on its own fresh token, and a working directory for outputs."""

    ca_dir: Path
    token: object
    password_file: Path
    work: Path

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.ca_dir / "ca.pem").read_bytes())

    @property
    def serial(self) -> str:
        return hexserial(self.certificate)

    @property
    def audit_lines(self) -> list[str]:
        return (self.ca_dir / "audit.jsonl").read_text().splitlines()

    def signing_args(self, command: str, *extra) -> list:
        return [command, "--ca-dir", self.ca_dir, "--pin-file", self.token.pin_file, *extra]

    def pfx_args(self, command: str, *extra) -> list:
        return self.signing_args(command, "--password-file", self.password_file, *extra)

    def issue(self, dns: str, *extra, out: Path | None = None) -> x509.Certificate:
        """`hsmca issue` with a p256 server key unless `extra` says otherwise."""
        out = out or self.work / f"{dns.split(',')[0]}.pfx"
        key_type = [] if "--key-type" in extra else ["--key-type", "p256"]
        ok(self.pfx_args("issue", "--dns", dns, "--out", out, *key_type, *extra))
        return load_pfx(out)[1]

    def records(self, *extra) -> list[dict]:
        result = ok(["list", "--ca-dir", self.ca_dir, "--json", *extra])
        return json.loads(result.stdout)

    def by_serial(self, *extra) -> dict[str, dict]:
        return {record["serial"]: record for record in self.records(*extra)}

    def snapshot(self) -> tuple[list[dict], list[str]]:
        """Everything recorded (less days_left, which ticks with the clock) and the audit log."""
        recorded = [
            {key: value for key, value in record.items() if key != "days_left"}
            for record in self.records("--status", "all")
        ]
        return recorded, self.audit_lines

    def statuses(self) -> dict[str, str]:
        return {serial: r["status"] for serial, r in self.by_serial("--status", "all").items()}


def make_ca(base: Path, module: str, token) -> Ca:
    base.mkdir(parents=True, exist_ok=True)
    ca_dir = base / "ca"
    ok(["init", ca_dir, "--module", module, "--token", token.label,
        "--pin-file", token.pin_file, "--key-type", "p256"])
    password_file = base / "pfx-password.txt"
    password_file.write_text(PASSWORD + "\n")
    work = base / "work"
    work.mkdir()
    return Ca(ca_dir, token, password_file, work)


@pytest.fixture()
def ca(tmp_path, module, token_factory) -> Ca:
    return make_ca(tmp_path, module, token_factory())


def sign_with_validity(ca: Ca, name: str, not_before: dt.datetime, not_after: dt.datetime) -> str:
    """A server certificate signed by the CA's key on the token with a validity of our choosing
    (`issue` cannot backdate one), recorded and audited through the db and audit modules."""
    from asn1crypto import keys
    from asn1crypto import x509 as asn1_x509

    from hsmca import api, audit, db, signing, x509build
    from hsmca.models import KeyType

    request = x509build.server_request([name], [], 30, KeyType.P256)
    public_key = keys.PublicKeyInfo.load(public_der(p256_key().public_key()))
    issuer = asn1_x509.Certificate.load((ca.ca_dir / "root-authority-public.cer").read_bytes())
    with api.open_ca(ca.ca_dir, ca.token.pin_source) as opened:
        tbs = x509build.server_tbs(
            request,
            public_key,
            issuer,
            opened.signer.key_type,
            x509build.random_serial(),
            not_before,
            not_after,
        )
        certificate, _ = signing.sign_certificate(tbs, opened.signer, issuer.public_key)
        out = ca.work / f"{name}.cer"
        out.write_bytes(certificate.dump())
        with db.open_database(ca.ca_dir) as database, database.transaction():
            record = database.record_issued(
                certificate.dump(), "server", KeyType.P256, 30, out, output_state="written"
            )
            entry = audit.append(
                ca.ca_dir, "issue", record.serial, record.subject, ca.token.serial
            )
            database.set_audit_anchor(entry.seq, entry.line_sha256)
    return record.serial


def now_utc() -> dt.datetime:
    """Now, to the second, as hsmca's own clock reads it."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


# --- list ----------------------------------------------------------------------------------------


def test_list_json_describes_each_certificate_and_the_ca(ca):
    issued = ca.issue("rec1.example.com,rec1", "--ip", "10.0.0.11, fd00::11", "--days", "100")
    before = now_utc()
    records = ca.by_serial()
    after = now_utc()

    assert set(records) == {hexserial(issued), ca.serial}
    for serial, record in records.items():
        assert REQUIRED_LIST_KEYS <= set(record), record
        assert re.fullmatch(r"[0-9a-f]+", serial) and not serial.startswith("0")
        assert RFC3339.match(record["not_after"]), record
        assert isinstance(record["days_left"], int) and not isinstance(record["days_left"], bool)
        not_after = dt.datetime.fromisoformat(record["not_after"])
        # Whole days left, rounded down, as of the moment `list` ran.
        assert record["days_left"] in {(not_after - before) // DAY, (not_after - after) // DAY}
        assert isinstance(record["dns"], list) and isinstance(record["ip"], list)
        assert record["status"] == "active"

    leaf = records[hexserial(issued)]
    assert leaf["subject"] == "CN=rec1.example.com"
    assert leaf["dns"] == ["rec1.example.com", "rec1"]
    assert leaf["ip"] == ["10.0.0.11", "fd00::11"]
    assert leaf["not_after"] == issued.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert leaf["sha1"] == issued.fingerprint(hashes.SHA1()).hex()
    assert leaf["days_left"] in (99, 100)
    assert leaf["profile"] == "server"

    # The CA's own certificate is in the inventory too, as profile 'ca'.
    root = records[ca.serial]
    assert root["profile"] == "ca"
    assert root["subject"] == CA_SUBJECT
    assert root["dns"] == [] and root["ip"] == []
    assert root["sha1"] == ca.certificate.fingerprint(hashes.SHA1()).hex()
    assert root["sha1"].upper() == (ca.ca_dir / "ca_thumbprint.txt").read_text().strip()

    table = ok(["list", "--ca-dir", ca.ca_dir]).output.splitlines()
    assert table[0].split() == ["SERIAL", "SUBJECT", "NAMES", "NOT", "AFTER", "DAYS", "STATUS"]
    (row,) = [line for line in table if line.startswith(hexserial(issued))]
    assert "CN=rec1.example.com" in row
    assert "rec1.example.com, rec1, 10.0.0.11, fd00::11" in row
    assert f"{issued.not_valid_after_utc:%Y-%m-%d}" in row
    assert row.split()[-1] == "active" and row.split()[-2] in ("99", "100")
    assert any(line.startswith(ca.serial) and CA_SUBJECT in line for line in table)
    assert len(table) == 3


def test_list_status_filters(ca):
    a = hexserial(ca.issue("a.example.com"))
    b = hexserial(ca.issue("b.example.com"))
    c = hexserial(ca.issue("c.example.com"))
    ok(ca.pfx_args("renew", a, "--out", ca.work / "a2.pfx"))
    a2 = hexserial(load_pfx(ca.work / "a2.pfx")[1])
    ok(["revoke", "--ca-dir", ca.ca_dir, b, "--reason", "keyCompromise"])
    expired = sign_with_validity(
        ca, "old.example.com", now_utc() - 40 * DAY, now_utc() - 10 * DAY
    )

    def serials(status):
        return {r["serial"] for r in ca.records("--status", status)}

    assert serials("active") == {ca.serial, c, a2}
    assert serials("superseded") == {a}
    assert serials("revoked") == {b}
    assert serials("expired") == {expired}
    assert serials("all") == {ca.serial, a, b, c, a2, expired}
    assert [r["serial"] for r in ca.records()] == [
        r["serial"] for r in ca.records("--status", "active")]
    assert ca.statuses() == {
        ca.serial: "active", a: "superseded", b: "revoked", c: "active", a2: "active",
        expired: "expired",
    }
    everything = ca.by_serial("--status", "all")
    assert everything[a]["superseded_by"] == a2
    assert everything[b]["revocation_reason"] == "keyCompromise"
    assert everything[expired]["days_left"] == -10 or everything[expired]["days_left"] == -11

    table = ok(["list", "--ca-dir", ca.ca_dir, "--status", "revoked"]).output.splitlines()
    assert len(table) == 2 and table[1].startswith(b) and table[1].endswith("revoked")
    bogus = run(["list", "--ca-dir", ca.ca_dir, "--status", "bogus"])
    assert bogus.exit_code == 2 and "Traceback" not in bogus.output


def test_list_expiring_and_days_left_rounded_down(ca):
    soon = hexserial(ca.issue("soon.example.com", "--days", "5"))
    later = hexserial(ca.issue("later.example.com", "--days", "365"))
    # 2 days and 12 hours left: rounded down to 2.
    half = sign_with_validity(
        ca, "half.example.com", now_utc() - DAY, now_utc() + dt.timedelta(days=2, hours=12)
    )

    def expiring(days, *extra):
        return {r["serial"]: r for r in ca.records("--expiring", days, *extra)}

    assert set(expiring(10)) == {soon, half}
    assert expiring(10)[half]["days_left"] == 2
    assert expiring(10)[soon]["days_left"] in (4, 5)
    assert set(expiring(3)) == {half}
    assert set(expiring(0)) == set()
    assert set(expiring(400)) == {soon, half, later}
    assert set(expiring(4000)) == {soon, half, later, ca.serial}
    ok(["revoke", "--ca-dir", ca.ca_dir, soon])
    assert set(expiring(10)) == {half}
    assert set(expiring(10, "--status", "all")) == {soon, half}
    table = ok(["list", "--ca-dir", ca.ca_dir, "--expiring", "3"]).output.splitlines()
    assert len(table) == 2 and table[1].startswith(half)
    assert table[1].split()[-2:] == ["2", "active"]


# --- check-expiry --------------------------------------------------------------------------------


def test_check_expiry_exit_codes_and_lines(ca):
    ca.issue("year.example.com", "--days", "365")
    quiet = ok(["check-expiry", "--ca-dir", ca.ca_dir])
    assert quiet.output.strip() == "No active certificate expires within 30 days."
    assert json.loads(ok(["check-expiry", "--ca-dir", ca.ca_dir, "--json"]).stdout) == []

    soon = ca.issue("soon.example.com,soon-alias.example.com", "--days", "5")
    warned = run(["check-expiry", "--ca-dir", ca.ca_dir])
    assert warned.exit_code == 1, warned.output
    (line,) = warned.output.splitlines()
    assert "CN=soon.example.com" in line and hexserial(soon) in line
    assert "soon.example.com, soon-alias.example.com" in line
    assert re.search(r"expires in [45] days", line), line
    assert f"{soon.not_valid_after_utc:%Y-%m-%d}" in line

    # --within: 3 days ahead nothing, 400 days ahead both server certificates, one line each.
    assert ok(["check-expiry", "--ca-dir", ca.ca_dir, "--within", "3"]).output.startswith("No ")
    wide = run(["check-expiry", "--ca-dir", ca.ca_dir, "--within", "400"])
    assert wide.exit_code == 1
    assert len(wide.output.splitlines()) == 2
    assert "year.example.com" in wide.output and "soon.example.com" in wide.output

    as_json = run(["check-expiry", "--ca-dir", ca.ca_dir, "--json"])
    assert as_json.exit_code == 1
    (entry,) = json.loads(as_json.stdout)
    assert entry["serial"] == hexserial(soon) and entry["status"] == "active"
    assert entry["days_left"] in (4, 5) and RFC3339.match(entry["not_after"])

    # An expired certificate that is still active is reported; a revoked one is done with.
    gone = sign_with_validity(ca, "gone.example.com", now_utc() - 9 * DAY, now_utc() - 2 * DAY)
    with_expired = run(["check-expiry", "--ca-dir", ca.ca_dir])
    assert with_expired.exit_code == 1 and len(with_expired.output.splitlines()) == 2
    (gone_line,) = [line for line in with_expired.output.splitlines() if gone in line]
    assert "expired" in gone_line and "gone.example.com" in gone_line
    ok(["revoke", "--ca-dir", ca.ca_dir, gone])
    ok(["revoke", "--ca-dir", ca.ca_dir, hexserial(soon)])
    assert ok(["check-expiry", "--ca-dir", ca.ca_dir]).output.startswith("No active")


def test_check_expiry_needs_no_token_and_no_pin(ca, tmp_path):
    soon = hexserial(ca.issue("soon.example.com", "--days", "5"))
    empty = tmp_path / "no-tokens"
    empty.mkdir()
    # No PIN anywhere, no terminal, no module, and a SoftHSM that has no tokens at all.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSMCA_")}
    env["SOFTHSM2_CONF"] = str(empty / "softhsm2.conf")
    env["HSMCA_MODULE"] = "/nonexistent/libpkcs11.so"
    env["HSMCA_DIR"] = str(ca.ca_dir)
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('pkcs11 loaded:', 'pkcs11' in sys.modules, "
        "file=sys.stderr))\n"
        "from hsmca.cli import main\n"
        "main()\n"
    )

    def hsmca(*args):
        return subprocess.run(
            [sys.executable, "-c", code, *args], env=env, cwd=tmp_path,
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )

    warned = hsmca("check-expiry")
    assert warned.returncode == 1, warned.stderr
    (line,) = warned.stdout.splitlines()
    assert soon in line and "soon.example.com" in line
    assert "pkcs11 loaded: False" in warned.stderr
    assert "Error" not in warned.stderr
    quiet = hsmca("check-expiry", "--within", "2", "--json")
    assert quiet.returncode == 0, quiet.stderr
    assert json.loads(quiet.stdout) == []
    listed = hsmca("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert soon in {r["serial"] for r in json.loads(listed.stdout)}
    assert "pkcs11 loaded: False" in listed.stderr
    # Revoking and checking the audit log need no token either; publishing the CRL does.
    revoked = hsmca("revoke", soon)
    assert revoked.returncode == 0, revoked.stderr
    assert hsmca("check-expiry").returncode == 0
    verified = hsmca("audit", "verify")
    assert verified.returncode == 0 and "chain intact" in verified.stdout, verified.stderr
    assert "pkcs11 loaded: False" in verified.stderr
    refused = hsmca("crl")
    assert refused.returncode == 1 and refused.stderr.startswith("Error: "), refused.stderr
    assert "Traceback" not in refused.stderr


# --- renew ---------------------------------------------------------------------------------------


def test_renew_keeps_names_and_changes_key_and_serial(ca):
    ok(ca.pfx_args("issue", "--dns", "rec7.example.com,rec7", "--ip", "10.0.0.7,fd00::7",
                   "--days", "90", "--key-type", "p384"), cwd=ca.work)
    out = ca.work / "rec7.example.com.pfx"
    old_key, old, _ = load_pfx(out)
    old_bytes = out.read_bytes()

    # The default output is <first DNS name>.pfx: the renewed certificate's own file, which
    # renewal replaces without --force. Another existing file needs --force.
    elsewhere = ca.work / "elsewhere.pfx"
    elsewhere.write_bytes(b"keep")
    assert_error(run(ca.pfx_args("renew", hexserial(old), "--out", str(elsewhere)), cwd=ca.work),
                 "already exists", "--force")
    assert out.read_bytes() == old_bytes and elsewhere.read_bytes() == b"keep"
    assert ca.statuses()[hexserial(old)] == "active"

    result = ok(ca.pfx_args("renew", hexserial(old)), cwd=ca.work)
    new_key, new, chain = load_pfx(out)
    assert hexserial(new) in result.output and hexserial(old) in result.output
    assert new.serial_number != old.serial_number
    assert public_der(new_key.public_key()) != public_der(old_key.public_key())
    assert new.subject == old.subject
    assert san_values(new) == san_values(old) == [
        "rec7.example.com", "rec7", "10.0.0.7", "fd00::7"]
    assert isinstance(new.public_key(), ec.EllipticCurvePublicKey)
    assert new.public_key().curve.name == "secp384r1"
    assert validity_length(new) == validity_length(old)
    assert valid_for_days(new, 90)
    assert new.not_valid_after_utc >= old.not_valid_after_utc
    assert [c.subject for c in chain] == [ca.certificate.subject]

    superseded = ca.records("--status", "superseded")
    assert [(r["serial"], r["superseded_by"]) for r in superseded] == [
        (hexserial(old), hexserial(new))]
    active = ca.by_serial()
    assert hexserial(old) not in active
    record = active[hexserial(new)]
    assert record["status"] == "active" and record["profile"] == "server"
    assert record["key_type"] == "p384" and record["days"] == 90
    assert record["output_path"] == str(out) and record["output_state"] == "written"

    # By name: the newest active certificate carrying the name is renewed.
    ok(ca.pfx_args("renew", "rec7", "--out", ca.work / "again.pfx"))
    newest = load_pfx(ca.work / "again.pfx")[1]
    assert san_values(newest) == san_values(old)
    assert ca.statuses()[hexserial(new)] == "superseded"
    assert ca.statuses()[hexserial(newest)] == "active"
    operations = [json.loads(line)["operation"] for line in ca.audit_lines]
    assert operations == ["init", "issue", "renew", "renew"]


def test_renew_refuses_revoked_unknown_and_retired_certificates(ca):
    revoked = hexserial(ca.issue("rev.example.com"))
    ok(["revoke", "--ca-dir", ca.ca_dir, revoked])
    renewed = hexserial(ca.issue("ren.example.com"))
    ok(ca.pfx_args("renew", renewed, "--out", ca.work / "ren2.pfx"))
    csr = write_csr(ca.work / "cam.csr", make_csr(p256_key(), ["cam.example.com"]))
    ok(ca.signing_args("sign", csr, "--out-dir", ca.work))
    from_csr = hexserial(read_chain(ca.work / "cam.example.com.pem")[0])
    before = ca.statuses(), tree(ca.work), ca.audit_lines
    out = ca.work / "never.pfx"

    assert_error(run(ca.pfx_args("renew", revoked, "--out", out)), revoked, "revoked")
    assert_error(run(ca.pfx_args("renew", "0xdeadbeef", "--out", out)),
                 "no certificate with serial number deadbeef")
    assert_error(run(ca.pfx_args("renew", "nowhere.example.com", "--out", out)),
                 "no certificate", "nowhere.example.com")
    assert_error(run(ca.pfx_args("renew", renewed, "--out", out)), renewed, "superseded")
    assert_error(run(ca.pfx_args("renew", ca.serial, "--out", out)), "CA certificate")
    # hsmca never had the key of a CSR-signed certificate: renewing it means a new CSR.
    assert_error(run(ca.pfx_args("renew", from_csr, "--out", out)), "CSR", "hsmca sign")
    assert not out.exists()
    assert (ca.statuses(), tree(ca.work), ca.audit_lines) == before


def test_renew_an_expired_certificate(ca):
    """What the guide warns about: the certificate ran out. It is renewed by name all the same."""
    expired = sign_with_validity(ca, "late.example.com", now_utc() - 40 * DAY,
                                 now_utc() - 10 * DAY)
    assert ca.statuses()[expired] == "expired"
    result = ok(ca.pfx_args("renew", "late.example.com"), cwd=ca.work)
    _, renewed, _ = load_pfx(ca.work / "late.example.com.pfx")
    assert expired in result.output
    assert renewed.subject.rfc4514_string() == "CN=late.example.com"
    assert valid_for_days(renewed, 30)
    assert renewed.not_valid_before_utc <= now_utc() < renewed.not_valid_after_utc
    assert ca.statuses()[expired] == "superseded"
    assert ca.statuses()[hexserial(renewed)] == "active"
    # The expired one is done with; the renewal (30 days, like the old one) is not due yet.
    assert ok(["check-expiry", "--ca-dir", ca.ca_dir, "--within", "7"]).output.startswith("No ")


# --- revoke and crl ------------------------------------------------------------------------------


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_crl_lists_revocations_and_verifies_everywhere(ca, tmp_path):
    compromised = ca.issue("leak.example.com")
    plain = ca.issue("plain.example.com")
    kept = ca.issue("kept.example.com")
    others = {
        reason: ca.issue(f"{reason.lower()}.example.com")
        for reason in ("affiliationChanged", "superseded", "cessationOfOperation")
    }
    ok(["revoke", "--ca-dir", ca.ca_dir, hexserial(compromised), "--reason", "keyCompromise"])
    ok(["revoke", "--ca-dir", ca.ca_dir, hexserial(plain)])
    for reason, certificate in others.items():
        ok(["revoke", "--ca-dir", ca.ca_dir, hexserial(certificate), "--reason", reason])
    revoked_at = now_utc()
    result = ok(ca.signing_args("crl", "--days", "7"))
    path = ca.ca_dir / "ca.crl"
    assert str(path) in result.output and "CRL number 1" in result.output

    der = path.read_bytes()
    assert asn1_crl.CertificateList.load(der)["tbs_cert_list"]["version"].native == "v2"
    crl = x509.load_der_x509_crl(der)
    ca_cert = ca.certificate
    assert crl.is_signature_valid(ca_cert.public_key())
    assert crl.issuer == ca_cert.subject
    assert crl_number(crl) == 1
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert crl.next_update_utc - crl.last_update_utc == 7 * DAY
    assert abs(crl.last_update_utc - now_utc()) < dt.timedelta(minutes=2)

    entries = {entry.serial_number: entry for entry in crl}
    assert set(entries) == {
        compromised.serial_number, plain.serial_number,
        *(certificate.serial_number for certificate in others.values()),
    }
    assert kept.serial_number not in entries

    def reason_of(certificate):
        extension = entries[certificate.serial_number].extensions.get_extension_for_class(
            x509.CRLReason)
        return extension.value.reason

    assert reason_of(compromised) == x509.ReasonFlags.key_compromise
    assert reason_of(others["affiliationChanged"]) == x509.ReasonFlags.affiliation_changed
    assert reason_of(others["superseded"]) == x509.ReasonFlags.superseded
    assert reason_of(others["cessationOfOperation"]) == x509.ReasonFlags.cessation_of_operation
    # RFC 5280 5.3.1: 'unspecified' is expressed by leaving the reasonCode out.
    assert len(entries[plain.serial_number].extensions) == 0
    for entry in entries.values():
        assert abs(entry.revocation_date_utc - revoked_at) < dt.timedelta(minutes=1)

    verified = subprocess.run(
        [tool("openssl"), "crl", "-inform", "DER", "-in", path, "-CAfile",
         ca.ca_dir / "ca.pem", "-verify", "-noout"],
        capture_output=True, text=True, timeout=60,
    )
    assert verified.returncode == 0, verified.stderr
    assert "verify OK" in verified.stdout + verified.stderr

    linted = subprocess.run(
        [tool("lint_crl"), "lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", path],
        capture_output=True, text=True, timeout=120,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert linted.stdout.strip() == "", linted.stdout

    # Every run takes the next cRLNumber; --pem, --out (folders created) and --days.
    ok(ca.signing_args("crl"))
    second = x509.load_der_x509_crl(path.read_bytes())
    assert crl_number(second) == 2
    assert second.next_update_utc - second.last_update_utc == 30 * DAY
    published = tmp_path / "www" / "pki" / "vms.crl"
    ok(ca.signing_args("crl", "--pem", "--out", published, "--days", "1"))
    text = published.read_bytes()
    assert text.startswith(b"-----BEGIN X509 CRL-----")
    third = x509.load_pem_x509_crl(text)
    assert crl_number(third) == 3 and third.is_signature_valid(ca_cert.public_key())
    assert third.next_update_utc - third.last_update_utc == DAY
    assert {entry.serial_number for entry in third} == set(entries)
    assert path.read_bytes() == second.public_bytes(serialization.Encoding.DER)
    ok(ca.signing_args("crl", "--pem"))
    assert crl_number(x509.load_pem_x509_crl((ca.ca_dir / "ca.crl.pem").read_bytes())) == 4

    crl_entries = [json.loads(line) for line in ca.audit_lines if '"operation":"crl"' in line]
    assert [entry["crl_number"] for entry in crl_entries] == [1, 2, 3, 4]


def test_crl_refused_by_pkilint_or_from_a_damaged_database_is_not_signed(ca):
    """CRL entries come from the database as stored bytes; the worker process's pkilint and the
    structural check stop a bad one before the token signs (exit 1, no file)."""
    revoked = hexserial(ca.issue("rev.example.com"))
    ok(["revoke", "--ca-dir", ca.ca_dir, revoked])
    database = ca.ca_dir / "ca.sqlite3"
    with sqlite3.connect(database) as raw:
        (entry,) = raw.execute("SELECT entry FROM crl_entries").fetchone()
    # The same entry with an explicit reasonCode "unspecified", which RFC 5280 5.3.1 says
    # SHOULD be absent: well-formed DER that pkilint reports.
    extension = asn1_crl.CRLEntryExtensions(
        [{"extn_id": "crl_reason", "extn_value": "unspecified"}]
    ).dump()
    body = entry[2:] + extension
    flagged = b"\x30" + bytes([len(body)]) + body
    for stored, message in (
        (flagged, "pkilint refused the CRL before signing"),
        (entry[:-1], "the CA database is damaged"),
    ):
        with sqlite3.connect(database) as raw:
            raw.execute("UPDATE crl_entries SET entry = ?", (stored,))
        before = ca.audit_lines
        assert_error(run(ca.signing_args("crl")), message)
        assert not (ca.ca_dir / "ca.crl").exists()
        assert ca.audit_lines == before
    with sqlite3.connect(database) as raw:
        raw.execute("UPDATE crl_entries SET entry = ?", (entry,))
    ok(ca.signing_args("crl"))
    crl = x509.load_der_x509_crl((ca.ca_dir / "ca.crl").read_bytes())
    assert [hex(e.serial_number)[2:] for e in crl] == [revoked]


def test_revoke_errors(ca):
    issued = hexserial(ca.issue("rev.example.com"))
    done = ok(["revoke", "--ca-dir", ca.ca_dir, issued, "--reason", "cessationOfOperation"])
    assert issued in done.output and "cessationOfOperation" in done.output
    before = ca.statuses(), ca.audit_lines

    assert_error(run(["revoke", "--ca-dir", ca.ca_dir, issued]), "already revoked", issued)
    assert_error(run(["revoke", "--ca-dir", ca.ca_dir, "0xfeedface"]),
                 "no certificate with serial number feedface")
    assert_error(run(["revoke", "--ca-dir", ca.ca_dir, ca.serial]), "CA")
    bad_reason = run(["revoke", "--ca-dir", ca.ca_dir, issued, "--reason", "whim"])
    assert bad_reason.exit_code == 2 and "Traceback" not in bad_reason.output
    assert_error(run(ca.signing_args("crl", "--days", "0")), "at least 1")
    assert (ca.statuses(), ca.audit_lines) == before
    assert not (ca.ca_dir / "ca.crl").exists()
    assert ca.by_serial("--status", "revoked")[issued]["revocation_reason"] == (
        "cessationOfOperation")


# --- sign ----------------------------------------------------------------------------------------


def make_csr(
    key, names, ips=(), *, cn=None, ca_true=False, extra=()
) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or names[0]),
                   *extra_subject(extra)])
    )
    general = [x509.DNSName(name) for name in names]
    general += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
    if ca_true:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    if "extensions" in extra:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING,
                                   ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        ).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
    return builder.sign(key, hashes.SHA256())


def extra_subject(extra) -> list[x509.NameAttribute]:
    if "subject" in extra:
        return [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Someone Else Inc")]
    return []


def write_csr(path: Path, csr: x509.CertificateSigningRequest) -> Path:
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


def p256_key():
    return ec.generate_private_key(ec.SECP256R1())


def read_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def openssl_verify(ca: Ca, leaf: x509.Certificate, tmp_path: Path, *checks):
    leaf_file = tmp_path / f"leaf-{leaf.serial_number:x}.pem"
    leaf_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return subprocess.run(
        [tool("openssl"), "verify", "-x509_strict", "-purpose", "sslserver",
         "-CAfile", ca.ca_dir / "ca.pem", *checks, leaf_file],
        capture_output=True, text=True, timeout=60,
    )


def test_sign_csrs_from_rsa_and_p256_keys(ca, tmp_path):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = p256_key()
    first = write_csr(tmp_path / "cam1.csr",
                      make_csr(rsa_key, ["cam1.example.com", "cam1.site.example"], ["10.1.0.1"]))
    second = write_csr(tmp_path / "cam2.csr", make_csr(ec_key, ["cam2.example.com"]))
    out_dir = tmp_path / "signed" / "today"
    result = ok(ca.signing_args("sign", first, second, "--out-dir", out_dir, "--days", "200"))
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "cam1.example.com.pem", "cam2.example.com.pem"]

    records = ca.by_serial()
    for key, name, names in [
        (rsa_key, "cam1.example.com", ["cam1.example.com", "cam1.site.example", "10.1.0.1"]),
        (ec_key, "cam2.example.com", ["cam2.example.com"]),
    ]:
        leaf, root = read_chain(out_dir / f"{name}.pem")
        assert root == ca.certificate
        assert public_der(leaf.public_key()) == public_der(key.public_key())
        assert leaf.subject.rfc4514_string() == f"CN={name}"
        assert san_values(leaf) == names
        assert valid_for_days(leaf, 200)
        basic = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
        assert basic.ca is False
        assert hexserial(leaf) in result.output
        checked = openssl_verify(ca, leaf, tmp_path, "-verify_hostname", name)
        assert checked.returncode == 0 and checked.stdout.strip().endswith(": OK"), (
            checked.stdout + checked.stderr)
        record = records[hexserial(leaf)]
        assert record["profile"] == "csr" and record["output_state"] == "written"
        assert record["output_path"] == str(out_dir / f"{name}.pem")
    wrong = openssl_verify(ca, read_chain(out_dir / "cam2.example.com.pem")[0], tmp_path,
                           "-verify_hostname", "cam1.example.com")
    assert wrong.returncode != 0
    by_ip = openssl_verify(ca, read_chain(out_dir / "cam1.example.com.pem")[0], tmp_path,
                           "-verify_ip", "10.1.0.1")
    assert by_ip.returncode == 0, by_ip.stdout + by_ip.stderr
    operations = [json.loads(line)["operation"] for line in ca.audit_lines]
    assert operations == ["init", "sign", "sign"]

    # The default output folder is the current directory; an existing output needs --force.
    assert_error(run(ca.signing_args("sign", second, "--out-dir", out_dir)),
                 "already exists", "--force")
    ok(ca.signing_args("sign", second), cwd=ca.work)
    assert [p.name for p in ca.work.iterdir()] == ["cam2.example.com.pem"]


def test_a_csr_refused_by_the_lint_workers_stops_its_chunk_unsigned(ca, tmp_path, monkeypatch):
    """`sign` lints in forked worker processes; their refusal reaches the user and nothing of
    the chunk is signed, written or recorded. The workers are forked after this patch, so they
    run it: a finding pkilint would report for one certificate, without a real bad profile."""
    from hsmca import lint, workerpool
    from hsmca.errors import LintFailure

    real = lint.check_certificate

    linted_in = tmp_path / "linted-in"

    def refuse_one(der, allowed=frozenset()):
        with open(linted_in, "a") as pids:
            pids.write(f"{os.getpid()}\n")
        if b"refused.example.com" in der:
            raise LintFailure("pkilint refused the certificate before signing, nothing was "
                              "signed: ERROR test.finding at certificate")
        return real(der, allowed)

    monkeypatch.setattr(lint, "check_certificate", refuse_one)
    csrs = [
        write_csr(tmp_path / f"{name}.csr", make_csr(p256_key(), [f"{name}.example.com"]))
        for name in ("first", "refused", "last")
    ]
    out_dir = tmp_path / "signed"
    before = ca.snapshot()
    assert_error(run(ca.signing_args("sign", *csrs, "--out-dir", out_dir)),
                 "pkilint refused the certificate", "test.finding")
    assert not out_dir.exists() or not list(out_dir.iterdir())
    assert ca.snapshot() == before
    if workerpool.usable_cores() >= 2:
        assert str(os.getpid()) not in linted_in.read_text().split()
    monkeypatch.setattr(lint, "check_certificate", real)
    ok(ca.signing_args("sign", csrs[0], csrs[2], "--out-dir", out_dir))
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "first.example.com.pem", "last.example.com.pem"]


def test_sign_overrides_the_requested_names(ca, tmp_path):
    csr = write_csr(tmp_path / "wish.csr",
                    make_csr(p256_key(), ["wrong.example.com", "other.example.com"],
                             ["192.0.2.99"], extra=("subject", "extensions")))
    out_dir = tmp_path / "out"
    ok(ca.signing_args("sign", csr, "--out-dir", out_dir, "--dns", "cam3.example.com, cam3",
                       "--ip", "10.1.0.3"))
    assert [p.name for p in out_dir.iterdir()] == ["cam3.example.com.pem"]
    leaf, _ = read_chain(out_dir / "cam3.example.com.pem")
    assert leaf.subject.rfc4514_string() == "CN=cam3.example.com"
    assert san_values(leaf) == ["cam3.example.com", "cam3", "10.1.0.3"]
    # Nothing else the CSR asked for is copied: hsmca's own server profile only.
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    # --dns alone replaces the DNS names and keeps the requested addresses.
    ok(ca.signing_args("sign", csr, "--out-dir", out_dir, "--dns", "cam4.example.com"))
    leaf, _ = read_chain(out_dir / "cam4.example.com.pem")
    assert san_values(leaf) == ["cam4.example.com", "192.0.2.99"]


def tampered_csr(path: Path) -> Path:
    der = bytearray(make_csr(p256_key(), ["tamper.example.com"]).public_bytes(
        serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the signature value
    path.write_bytes(bytes(der))
    return path


BAD_CSRS = {
    "bad-signature": (tampered_csr, "has a bad signature"),
    "ca-true": (
        lambda path: write_csr(path, make_csr(p256_key(), ["sub.example.com"], ca_true=True)),
        "asks for a CA certificate (basicConstraints CA:TRUE)",
    ),
    "underscore": (
        lambda path: write_csr(path, make_csr(p256_key(), ["bad_name.example.com"])),
        "invalid DNS name 'bad_name.example.com'",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_CSRS))
def test_sign_refuses_a_bad_csr_and_leaves_nothing(ca, tmp_path, kind):
    make_bad, message = BAD_CSRS[kind]
    bad = make_bad(tmp_path / f"{kind}.csr")
    good = write_csr(tmp_path / "good.csr", make_csr(p256_key(), ["good.example.com"]))
    good2 = write_csr(tmp_path / "good2.csr",
                      make_csr(rsa.generate_private_key(65537, 2048), ["good2.example.com"]))
    out_dir = tmp_path / "out"
    before = ca.snapshot()

    for csrs in ([bad], [good, bad], [good, bad, good2], [bad, good]):
        result = run(ca.signing_args("sign", *csrs, "--out-dir", out_dir), cwd=ca.work)
        assert_error(result, message, str(bad))
        assert not out_dir.exists()
        assert list(ca.work.iterdir()) == []
        assert ca.snapshot() == before
    # The good ones alone go through.
    ok(ca.signing_args("sign", good, good2, "--out-dir", out_dir))
    assert len(ca.records("--status", "all")) == len(before[0]) + 2


# --- batch ---------------------------------------------------------------------------------------


def write_inventory(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def summary(output: str) -> str:
    (line,) = [line for line in output.splitlines() if line.startswith("Summary: ")]
    return line


def test_batch_issues_every_row_and_creates_folders(ca, tmp_path):
    inventory = write_inventory(tmp_path / "site.csv", (
        "dns,ip,out,days,key_type\n"
        '"rec1.example.com,rec1",10.0.1.1,,,p256\n'
        'rec2.example.com;rec2,"10.0.1.2, fd00::2",site-b/rec2.pfx,30,p256\n'
        "rec3.example.com,,,,p384\n"
    ))
    out_dir = tmp_path / "pfx" / "site-a"
    result = ok(ca.pfx_args("batch", inventory, "--out-dir", out_dir, "--days", "100"))
    assert summary(result.output) == "Summary: 3 issued, 0 skipped, 0 failed"
    for line in (2, 3, 4):
        assert f"line {line}: issued" in result.output

    expected = {
        "rec1.example.com.pfx": (["rec1.example.com", "rec1", "10.0.1.1"], 100, "secp256r1"),
        "site-b/rec2.pfx": (["rec2.example.com", "rec2", "10.0.1.2", "fd00::2"], 30, "secp256r1"),
        "rec3.example.com.pfx": (["rec3.example.com"], 100, "secp384r1"),
    }
    assert set(tree(out_dir)) == set(expected)
    records = ca.by_serial()
    for name, (names, days, curve) in expected.items():
        path = out_dir / name
        assert path.stat().st_mode & 0o777 == 0o600
        key, leaf, chain = load_pfx(path)
        assert san_values(leaf) == names
        assert leaf.subject.rfc4514_string() == f"CN={names[0]}"
        assert valid_for_days(leaf, days)
        assert key.curve.name == curve
        assert [c.subject for c in chain] == [ca.certificate.subject]
        record = records[hexserial(leaf)]
        assert record["output_path"] == str(path) and record["output_state"] == "written"
        assert record["days"] == days
        assert hexserial(leaf) in result.output
    operations = [json.loads(line)["operation"] for line in ca.audit_lines]
    assert operations == ["init", "batch", "batch", "batch"]


def test_batch_workers_make_a_different_key_for_every_server(ca, tmp_path):
    """The keys come from forked worker processes: each must have its own random state."""
    rows = "".join(f"w{i}.example.com,,,,p256\n" for i in range(12))
    inventory = write_inventory(tmp_path / "site.csv", "dns,ip,out,days,key_type\n" + rows)
    out_dir = tmp_path / "pfx"
    ok(ca.pfx_args("batch", inventory, "--out-dir", out_dir))
    keys = [load_pfx(out_dir / f"w{i}.example.com.pfx")[0] for i in range(12)]
    assert len({public_der(key.public_key()) for key in keys}) == 12


def test_batch_reports_bad_rows_by_line_and_goes_on(ca, tmp_path):
    # As Excel saves "CSV UTF-8" on Windows: a byte order mark and CRLF line ends.
    rows = [
        "dns,ip,days,key_type",                 # line 1
        "good1.example.com,,,p256",             # line 2
        "bad_name.example.com,,,p256",          # line 3
        "good2.example.com,10.0.0.300,,p256",   # line 4
        "",                                     # line 5 (blank, skipped)
        '"two\r\nlines.example.com",,,p256',  # lines 6-7: one quoted cell on two lines
        "good3.example.com,,ten,p256",          # line 8
        "good4.example.com,,,dsa",              # line 9
        "good5.example.com,10.0.2.5,,p256",     # line 10
        "good1.example.com,,,p256",             # line 11 (same output as line 2)
    ]
    inventory = tmp_path / "site.csv"
    inventory.write_bytes("\ufeff".encode() + "\r\n".join(rows).encode() + b"\r\n")
    out_dir = tmp_path / "out"
    result = run(ca.pfx_args("batch", inventory, "--out-dir", out_dir))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    failed = {int(m.group(1)): m.group(2)
              for m in re.finditer(r"^line (\d+): failed: (.*)$", result.output, re.M)}
    assert set(failed) == {3, 4, 6, 8, 9, 11}, result.output
    assert "'bad_name.example.com'" in failed[3]
    assert "'10.0.0.300'" in failed[4]
    assert "lines.example.com" in failed[6]
    assert "'ten'" in failed[8]
    assert "'dsa'" in failed[9]
    assert "line 2" in failed[11]
    assert summary(result.output) == "Summary: 2 issued, 0 skipped, 6 failed"
    assert set(tree(out_dir)) == {"good1.example.com.pfx", "good5.example.com.pfx"}
    for name in tree(out_dir):
        load_pfx(out_dir / name)
    assert len(ca.records()) == 3


def test_batch_strict_stops_before_signing(ca, tmp_path):
    inventory = write_inventory(tmp_path / "site.csv", (
        "dns,key_type\n"
        "good1.example.com,p256\n"
        "good2.example.com,p256\n"
        "bad_name.example.com,p256\n"
        "good3.example.com,p256\n"
    ))
    out_dir = tmp_path / "out"
    before = ca.snapshot()
    result = run(ca.pfx_args("batch", inventory, "--out-dir", out_dir, "--strict"))
    assert_error(result, "line 4", "'bad_name.example.com'", "--strict")
    assert not out_dir.exists()
    assert ca.snapshot() == before


def test_batch_resume_skips_what_was_issued(ca, tmp_path):
    rows = [f"res{n}.example.com,10.0.3.{n},,,p256\n" for n in range(1, 5)]
    header = "dns,ip,out,days,key_type\n"
    out_dir = tmp_path / "out"
    first = write_inventory(tmp_path / "first.csv", header + "".join(rows[:2]))
    ok(ca.pfx_args("batch", first, "--out-dir", out_dir))
    issued = tree(out_dir)
    assert len(issued) == 2

    full = write_inventory(tmp_path / "full.csv", header + "".join(rows))
    # Without --resume, rows whose output exists fail (and the others are still issued)...
    again = run(ca.pfx_args("batch", full, "--out-dir", out_dir))
    assert again.exit_code == 1
    assert "line 2: failed:" in again.output and "--resume" in again.output
    assert summary(again.output) == "Summary: 2 issued, 0 skipped, 2 failed"
    assert {k: v for k, v in tree(out_dir).items() if k in issued} == issued
    # ...with --resume, everything is done already.
    resumed = ok(ca.pfx_args("batch", full, "--out-dir", out_dir, "--resume"))
    assert summary(resumed.output) == "Summary: 0 issued, 4 skipped, 0 failed"
    assert len(ca.records()) == 5

    # A file this CA did not write is not taken for an issued one.
    rows.append("res5.example.com,,,,p256\n")
    (out_dir / "res5.example.com.pfx").write_bytes(b"someone else's file")
    rows.append("res6.example.com,,,,p256\n")
    bigger = write_inventory(tmp_path / "bigger.csv", header + "".join(rows))
    partly = run(ca.pfx_args("batch", bigger, "--out-dir", out_dir, "--resume"))
    assert partly.exit_code == 1
    assert re.search(r"^line 6: failed: .*has no record", partly.output, re.M), partly.output
    assert summary(partly.output) == "Summary: 1 issued, 4 skipped, 1 failed"
    assert (out_dir / "res5.example.com.pfx").read_bytes() == b"someone else's file"
    load_pfx(out_dir / "res6.example.com.pfx")
    serials = [r["serial"] for r in ca.records("--status", "all")]
    assert len(serials) == len(set(serials)) == 6


# --- audit verify --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audited_ca(tmp_path_factory, module, token_factory) -> Ca:
    """A CA with a few operations behind it; tests tamper with copies of its directory."""
    made = make_ca(tmp_path_factory.mktemp("audited"), module, token_factory())
    first = made.issue("one.example.com")
    made.issue("two.example.com")
    ok(["revoke", "--ca-dir", made.ca_dir, hexserial(first)])
    ok(made.signing_args("crl"))
    ok(made.pfx_args("renew", "two.example.com", "--out", made.work / "two-again.pfx"))
    return made


def copy_ca(source: Ca, tmp_path: Path) -> Path:
    target = tmp_path / "ca-copy"
    shutil.copytree(source.ca_dir, target)
    return target


def test_audit_verify_passes_after_operations(audited_ca):
    result = ok(["audit", "verify", "--ca-dir", audited_ca.ca_dir])
    lines = audited_ca.audit_lines
    assert result.output.strip() == f"{len(lines)} entries, chain intact"
    entries = [json.loads(line) for line in lines]
    assert [e["operation"] for e in entries] == ["init", "issue", "issue", "revoke", "crl",
                                                "renew"]
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    serials = {r["serial"] for r in audited_ca.records("--status", "all")}
    assert {e["serial"] for e in entries if e["operation"] != "crl"} == serials


def edit_one_character(lines: list[str]) -> tuple[list[str], int]:
    number = 3  # the second 'issue', for two.example.com
    line = lines[number - 1]
    at = line.index("two.example.com")
    lines[number - 1] = line[: at + 1] + "x" + line[at + 2 :]  # two -> txo
    return lines, number


def remove_middle(lines):
    del lines[2]
    return lines, 3


def remove_last(lines):
    count = len(lines)
    del lines[-1]
    return lines, count


def reorder(lines):
    lines[1], lines[2] = lines[2], lines[1]
    return lines, 2


def rewrite_last(lines):
    """Edit the last entry and recompute its own hash: only the database anchor can tell."""
    entry = json.loads(lines[-1])
    entry["subject"] = "CN=someone-else.example.com"
    del entry["hash"]
    canonical = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    entry["hash"] = hashlib.sha256(canonical.encode()).hexdigest()
    lines[-1] = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return lines, len(lines)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (edit_one_character, "hash does not match"),
        (remove_middle, "removed, inserted or moved"),
        (remove_last, "removed from the end"),
        (reorder, "removed, inserted or moved"),
        (rewrite_last, "not the one recorded in the CA database"),
    ],
    ids=["edit", "remove-middle", "remove-last", "reorder", "rewrite-last"],
)
def test_audit_verify_names_the_first_bad_line(audited_ca, tmp_path, tamper, message):
    ca_dir = copy_ca(audited_ca, tmp_path)
    ok(["audit", "verify", "--ca-dir", ca_dir])
    log = ca_dir / "audit.jsonl"
    lines, number = tamper(log.read_text().splitlines())
    log.write_text("".join(line + "\n" for line in lines))
    result = run(["audit", "verify", "--ca-dir", ca_dir])
    assert_error(result, f"line {number}: ", message)


def test_with_other_threads_running_sign_lints_without_forking(ca, tmp_path, monkeypatch):
    """A library caller may run threads; forking then could leave a lock held in the child,
    so the lint stays in this process (and still refuses what pkilint refuses)."""
    import threading

    from hsmca import lint
    from hsmca.errors import LintFailure

    real = lint.check_certificate
    linted_in = []

    def recording(der, allowed=frozenset()):
        linted_in.append(os.getpid())
        if b"refused.example.com" in der:
            raise LintFailure("pkilint refused the certificate before signing: test.finding")
        return real(der, allowed)

    monkeypatch.setattr(lint, "check_certificate", recording)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        csrs = [write_csr(tmp_path / f"{name}.csr", make_csr(p256_key(), [f"{name}.example.com"]))
                for name in ("kept", "refused")]
        out_dir = tmp_path / "signed"
        ok(ca.signing_args("sign", csrs[0], "--out-dir", out_dir))
        assert_error(run(ca.signing_args("sign", csrs[1], "--out-dir", out_dir)), "test.finding")
    finally:
        stop.set()
        other.join()
    assert set(linted_in) == {os.getpid()}
    assert [p.name for p in out_dir.iterdir()] == ["kept.example.com.pem"]


def test_with_other_threads_running_batch_spawns_its_workers(ca, tmp_path):
    import threading

    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        inventory = write_inventory(tmp_path / "site.csv", (
            "dns,ip,out,days,key_type\n"
            "t1.example.com,,,,p256\n"
            "t2.example.com,,,,rsa2048\n"
        ))
        out_dir = tmp_path / "pfx"
        result = ok(ca.pfx_args("batch", inventory, "--out-dir", out_dir))
    finally:
        stop.set()
        other.join()
    assert summary(result.output) == "Summary: 2 issued, 0 skipped, 0 failed"
    assert sorted(tree(out_dir)) == ["t1.example.com.pfx", "t2.example.com.pfx"]
    assert load_pfx(out_dir / "t2.example.com.pfx")[0].key_size == 2048

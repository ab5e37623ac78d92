"""Real processes on one CA_DIR at once: the lock, the database and the audit log hold up.

Each worker is a separate Python interpreter (subprocess) that signs certificates with a software
CA key (hsmca.x509build + hsmca.signing.SoftwareSigner; no token is needed for storage).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from hsmca import audit, db, locking, x509build
from hsmca.errors import HsmcaError
from hsmca.models import KeyType
from hsmca.signing import SoftwareSigner

# Shared by every worker: load the CA, build and sign a leaf certificate.
COMMON = r"""
import contextlib, json, sys, time
from pathlib import Path
from asn1crypto import x509
from cryptography.hazmat.primitives import serialization
from hsmca import audit, db, locking, x509build
from hsmca.errors import HsmcaError
from hsmca.models import KeyType
from hsmca.signing import SoftwareSigner

args = json.loads(sys.argv[1])
ca_dir = Path(args["ca_dir"])
ca_key = serialization.load_pem_private_key(Path(args["ca_key"]).read_bytes(), None)
ca_signer = SoftwareSigner(KeyType.P256, ca_key)
ca_cert = x509.Certificate.load(Path(args["ca_cert"]).read_bytes())
leaf_key = SoftwareSigner(KeyType.P256).public_key

def make_cert(name):
    request = x509build.server_request([name], [], 365, KeyType.P256)
    not_before, not_after = x509build.validity(365)
    tbs = x509build.server_tbs(
        request, leaf_key, ca_cert, KeyType.P256, x509build.random_serial(), not_before, not_after
    )
    return x509build.certificate(tbs, KeyType.P256, ca_signer.sign(tbs.dump())).dump()
"""

ISSUER = (
    COMMON
    + r"""
go = Path(args["go"])
while not go.exists():
    time.sleep(0.005)
serials, crl_numbers = [], []
started = time.time()
for n in range(args["count"]):
    name = f"w{args['worker']}-{n}.example.com"
    der = make_cert(name)
    guard = locking.ca_lock(ca_dir) if args["lock"] else contextlib.nullcontext()
    with guard:
        with db.open_database(ca_dir) as database:
            record = database.record_issued(
                der, "server", KeyType.P256, 365, ca_dir / "out" / f"{name}.pfx"
            )
            database.mark_output(record.serial, "written")
            if n % 5 == 0:
                crl_numbers.append(database.next_crl_number())
        audit.append(ca_dir, "issue", record.serial, record.subject, "softhsm-0001",
                     worker=args["worker"])
    serials.append(record.serial)
print(json.dumps({"serials": serials, "crl_numbers": crl_numbers,
                  "started": started, "finished": time.time()}))
"""
)

HOLDER = (
    COMMON
    + r"""
with locking.ca_lock(ca_dir):
    database = db.open_database(ca_dir)
    committed = database.record_issued(make_cert("committed.example.com"), "server", None, 365,
                                       ca_dir / "out" / "committed.pfx")
    audit.append(ca_dir, "issue", committed.serial, committed.subject, "softhsm-0001")
    transaction = database.transaction()
    transaction.__enter__()
    uncommitted = database.record_issued(make_cert("uncommitted.example.com"), "server", None,
                                         365, None)
    print(json.dumps({"committed": committed.serial, "uncommitted": uncommitted.serial}),
          flush=True)
    time.sleep(120)
"""
)


@pytest.fixture
def ca_material(tmp_path):
    """A software CA (key PEM and certificate DER on disk) and an empty CA_DIR."""
    signer = SoftwareSigner(KeyType.P256)
    not_before, not_after = x509build.validity(3650)
    tbs = x509build.ca_tbs(
        x509build.parse_subject("CN=Process Test CA"),
        signer.public_key,
        KeyType.P256,
        x509build.random_serial(),
        not_before,
        not_after,
    )
    cert = x509build.certificate(tbs, KeyType.P256, signer.sign(tbs.dump()))
    key_path = tmp_path / "ca-key.pem"
    key_path.write_bytes(
        signer.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path = tmp_path / "ca.der"
    cert_path.write_bytes(cert.dump())
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    return {"ca_dir": str(ca_dir), "ca_key": str(key_path), "ca_cert": str(cert_path)}


def start(code: str, arguments: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(arguments)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("use_lock", [True, False], ids=["with-ca-lock", "database-alone"])
def test_concurrent_processes_record_everything_exactly_once(ca_material, tmp_path, use_lock):
    """Three processes issue at once into a new CA_DIR (they also race to create the database).

    With ca_lock (what commands do) and without it (SQLite's own locking and the audit log's
    flock must be enough on their own): every row is there once, serials are unique, the CRL
    numbers handed out are 1..N without repeats, and the audit chain is intact.
    """
    workers, count = 3, 40
    go = tmp_path / f"go-{use_lock}"
    processes = [
        start(ISSUER, {**ca_material, "worker": w, "count": count, "lock": use_lock, "go": str(go)})
        for w in range(workers)
    ]
    time.sleep(1.0)  # let every interpreter start, so they begin together
    go.touch()
    reports = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        reports.append(json.loads(stdout))

    # They really ran at the same time.
    assert max(r["started"] for r in reports) < min(r["finished"] for r in reports)

    ca_dir = Path(ca_material["ca_dir"])
    issued = [serial for report in reports for serial in report["serials"]]
    assert len(issued) == len(set(issued)) == workers * count
    with db.open_database(ca_dir) as database:
        assert database.integrity_check() == []
        assert database.count() == workers * count
        everything = database.list("all")
        assert sorted(r.serial for r in everything) == sorted(issued)
        assert {r.dns[0] for r in everything} == {
            f"w{w}-{n}.example.com" for w in range(workers) for n in range(count)
        }
        assert all(r.output_state == "written" for r in everything)
        crl_numbers = sorted(n for report in reports for n in report["crl_numbers"])
        assert crl_numbers == list(range(1, len(crl_numbers) + 1))
        assert database.last_crl_number() == len(crl_numbers)
    with sqlite3.connect(ca_dir / "ca.sqlite3") as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert raw.execute("SELECT count(DISTINCT serial) FROM certificates").fetchone()[0] == (
            workers * count
        )

    result = audit.verify(ca_dir / "audit.jsonl")
    assert result.ok, result.message
    assert result.entries == workers * count
    audited = [json.loads(line)["serial"] for line in (ca_dir / "audit.jsonl").open()]
    assert sorted(audited) == sorted(issued)


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, "the holder did not report in time: " + (
        process.stderr.read() if process.poll() is not None else "still running"
    )
    return process.stdout.readline()


def test_a_killed_lock_holder_does_not_block_the_next_process(ca_material):
    ca_dir = Path(ca_material["ca_dir"])
    holder = start(HOLDER, ca_material)
    try:
        held = json.loads(_read_line(holder, 60))
        # It holds the lock and an open write transaction; nobody else gets in meanwhile.
        with pytest.raises(HsmcaError, match="has been working on"):
            with locking.ca_lock(ca_dir, timeout=0.3):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=30)
    assert holder.returncode == -signal.SIGKILL

    begin = time.monotonic()
    with locking.ca_lock(ca_dir, timeout=5):
        assert time.monotonic() - begin < 2
        with db.open_database(ca_dir) as database:
            assert database.integrity_check() == []
            committed = database.get(held["committed"])
            assert committed is not None and committed.output_state == "pending"
            assert [r.serial for r in database.unfinished_outputs()] == [committed.serial]
            assert database.get(held["uncommitted"]) is None  # rolled back by its death
    assert audit.verify(ca_dir / "audit.jsonl").entries == 1

    # And the next real process runs through normally.
    go = ca_dir.parent / "go-next"
    go.touch()
    follower = start(ISSUER, {**ca_material, "worker": 9, "count": 3, "lock": True, "go": str(go)})
    stdout, stderr = follower.communicate(timeout=120)
    assert follower.returncode == 0, stderr
    serials = json.loads(stdout)["serials"]
    with db.open_database(ca_dir) as database:
        assert database.count() == 4
        assert all(database.get(serial) for serial in serials)
    assert audit.verify(ca_dir / "audit.jsonl").entries == 4


def test_the_lock_is_free_as_soon_as_a_holder_dies_without_cleanup(ca_material):
    """No stale-lock files to remove by hand: the kernel drops the flock with the process."""
    ca_dir = Path(ca_material["ca_dir"])
    code = (
        "import sys, time\n"
        "from hsmca import locking\n"
        "with locking.ca_lock(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(ca_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert _read_line(holder, 60).strip() == "held"
        assert (ca_dir / ".hsmca.lock").read_text().strip() == str(holder.pid)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.communicate(timeout=30)
    assert (ca_dir / ".hsmca.lock").exists()  # the file stays; the lock does not
    started = dt.datetime.now()
    with locking.ca_lock(ca_dir, timeout=2):
        assert (dt.datetime.now() - started).total_seconds() < 1.5

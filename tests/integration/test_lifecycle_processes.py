"""`hsmca` as real processes on real SoftHSM tokens: a batch killed midway and resumed, and
several processes issuing from one CA_DIR at the same time."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from hsmca.cli import cli

PASSWORD = "correct horse battery"
HSMCA = [sys.executable, "-c", "from hsmca.cli import main; main()"]


def run(args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def ok(args):
    result = run(args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture()
def ca(tmp_path, module, token_factory):
    token = token_factory()
    ca_dir = tmp_path / "ca"
    ok(["init", ca_dir, "--module", module, "--token", token.label,
        "--pin-file", token.pin_file, "--key-type", "p256"])
    return ca_dir, token


def environment(token) -> dict[str, str]:
    return dict(os.environ, HSMCA_PIN=token.pin, HSMCA_PFX_PASSWORD=PASSWORD)


def spawn(args, token, log: Path) -> subprocess.Popen:
    """`hsmca ARGS` in its own process group, output to `log`."""
    with open(log, "wb") as stream:
        return subprocess.Popen(
            [*HSMCA, *map(str, args)], env=environment(token), stdin=subprocess.DEVNULL,
            stdout=stream, stderr=subprocess.STDOUT, start_new_session=True,
        )


def finish(process: subprocess.Popen, timeout: float = 120) -> int:
    try:
        return process.wait(timeout=timeout)
    finally:
        # The batch's key-generation workers are in the same group; none may outlive the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def records(ca_dir: Path) -> list[dict]:
    return json.loads(run(["list", "--ca-dir", ca_dir, "--status", "all", "--json"]).stdout)


def pfx_serial(path: Path) -> str:
    _, certificate, _ = pkcs12.load_key_and_certificates(path.read_bytes(), PASSWORD.encode())
    return format(certificate.serial_number, "x")


def audit_entries(ca_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (ca_dir / "audit.jsonl").read_text().splitlines()]


def assert_database_sound(ca_dir: Path) -> None:
    connection = sqlite3.connect(ca_dir / "ca.sqlite3")
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        connection.close()
    verified = run(["audit", "verify", "--ca-dir", ca_dir])
    assert verified.exit_code == 0, verified.output
    assert verified.output.strip() == f"{len(audit_entries(ca_dir))} entries, chain intact"


def _password_file(tmp_path: Path) -> Path:
    path = tmp_path / "pfx-password.txt"
    path.write_text(PASSWORD + "\n")
    return path


def write_csrs(folder: Path, names: list[str]) -> list[Path]:
    """One CSR file per name (CN and DNS SAN), all for one P-256 key."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    folder.mkdir()
    paths = []
    for name in names:
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        paths.append(folder / f"{name}.csr")
        paths[-1].write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return paths


def write_inventory(path: Path, rows: list[str]) -> Path:
    path.write_text("dns,ip,out,key_type\n" + "".join(f"{row}\n" for row in rows))
    return path


# --- a batch killed in the middle, then --resume -------------------------------------------------


def test_batch_killed_midway_then_resumed(ca, tmp_path):
    ca_dir, token = ca
    count = 30
    rows = [
        f"rec{n:02d}.example.com,10.9.0.{n},{'site-b/' if n % 3 == 0 else ''}"
        f"rec{n:02d}.pfx,{'rsa2048' if n % 5 == 0 else 'p256'}"
        for n in range(1, count + 1)
    ]
    inventory = write_inventory(tmp_path / "site.csv", rows)
    out_dir = tmp_path / "out"
    paths = [
        out_dir / ("site-b" if n % 3 == 0 else "") / f"rec{n:02d}.pfx"
        for n in range(1, count + 1)
    ]

    process = spawn(["batch", "--ca-dir", ca_dir, inventory, "--out-dir", out_dir],
                    token, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 60
        while sum(path.exists() for path in paths) < 5:
            assert process.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "the batch wrote no PFX in 60 s"
            time.sleep(0.002)
        # Killing the moment a file appears lands, often, between its rename and its 'written'
        # mark (the bug below); a little later, the kill hits the next row's work.
        time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        assert finish(process) == -signal.SIGKILL
    written_before = {path for path in paths if path.exists()}
    assert 5 <= len(written_before) < count, "the kill did not land in the middle of the batch"
    after_kill = records(ca_dir)
    unfinished = [r for r in after_kill if r["output_state"] != "written"]
    # Only what was in flight is recorded without its 'written' mark, and it is still 'pending'.
    assert len(unfinished) < count - len(written_before), unfinished
    assert all(r["output_state"] == "pending" for r in unfinished)
    # What the kill left is consistent: a row marked 'written' has its file, a file its row.
    servers_after_kill = {r["serial"]: r for r in after_kill if r["profile"] == "server"}
    assert all(Path(r["output_path"]).exists() for r in servers_after_kill.values()
               if r["output_state"] == "written")
    assert {pfx_serial(path) for path in written_before} <= set(servers_after_kill)
    race = [r for r in unfinished if Path(r["output_path"]).exists()]

    resumed = subprocess.run(
        [*HSMCA, "batch", "--ca-dir", str(ca_dir), str(inventory), "--out-dir", str(out_dir),
         "--resume"],
        env=environment(token), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=180, start_new_session=True,
    )
    # A kill between the rename and the 'written' commit (race) is finished by --resume too.
    assert all(r["serial"] == pfx_serial(Path(r["output_path"])) for r in race), (
        "a file left by the kill holds the certificate its row names"
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (
        f"Summary: {count - len(written_before)} issued, {len(written_before)} skipped, 0 failed"
        in resumed.stdout
    ), resumed.stdout

    final = {r["serial"]: r for r in records(ca_dir)}
    servers = [r for r in final.values() if r["profile"] == "server"]
    assert len(final) == len(servers) + 1
    # Every row ended with a PFX whose certificate is recorded, active and 'written' for it.
    in_files = [pfx_serial(path) for path in paths]
    assert len(set(in_files)) == count
    for path, serial in zip(paths, in_files, strict=True):
        record = final[serial]
        assert record["output_path"] == str(path)
        assert record["output_state"] == "written" and record["status"] == "active"
    # Nothing else is active: the row the kill interrupted was superseded by its reissue.
    assert {r["serial"] for r in servers if r["status"] == "active"} == set(in_files)
    for record in unfinished:
        retired = final[record["serial"]]
        assert retired["status"] == "superseded", retired
        assert retired["superseded_by"] == pfx_serial(Path(record["output_path"]))
        assert retired["output_state"] == "pending"
    assert len(servers) == count + len(unfinished)
    # The audit log has every recorded certificate, once. A certificate signed when the kill
    # came may be in the log without a row (its line is written before the row is committed),
    # but then it was never delivered: no file carries it.
    audited = [e["serial"] for e in audit_entries(ca_dir) if e["operation"] == "batch"]
    assert len(audited) == len(set(audited))
    assert {r["serial"] for r in servers} <= set(audited)
    assert not (set(audited) - set(final)) & set(in_files)
    assert_database_sound(ca_dir)
    # Files the CA did not record are nowhere among the outputs.
    assert sorted(out_dir.rglob("*.pfx")) == sorted(paths)


def batch_then_interrupt(ca, tmp_path, name: str) -> tuple[Path, Path, str]:
    """A finished 3-row batch, then its middle row put back in the state a kill leaves between
    committing the row ('pending') and the 'written' mark. Returns (inventory, out, serial)."""
    ca_dir, token = ca
    inventory = write_inventory(
        tmp_path / "site.csv", [f"{name}{n}.example.com,,,p256" for n in range(1, 4)]
    )
    out_dir = tmp_path / "out"
    first = subprocess.run(
        [*HSMCA, "batch", "--ca-dir", str(ca_dir), str(inventory), "--out-dir", str(out_dir)],
        env=environment(token), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=120,
    )
    assert first.returncode == 0, first.stderr
    serial = pfx_serial(out_dir / f"{name}2.example.com.pfx")
    connection = sqlite3.connect(ca_dir / "ca.sqlite3")
    with connection:
        connection.execute(
            "UPDATE certificates SET output_state = 'pending' WHERE serial = ?", (serial,)
        )
    connection.close()
    return inventory, out_dir, serial


def test_resume_reissues_a_row_recorded_but_never_written(ca, tmp_path):
    """Killed after the row was committed, before the file was renamed into place."""
    ca_dir, token = ca
    inventory, out_dir, serial = batch_then_interrupt(ca, tmp_path, "gap")
    (out_dir / "gap2.example.com.pfx").unlink()
    resumed = run(["batch", "--ca-dir", ca_dir, inventory, "--out-dir", out_dir, "--resume",
                   "--pin-file", token.pin_file, "--password-file", _password_file(tmp_path)])
    assert resumed.exit_code == 0, resumed.output
    assert "Summary: 1 issued, 2 skipped, 0 failed" in resumed.output
    reissued = pfx_serial(out_dir / "gap2.example.com.pfx")
    final = {r["serial"]: r for r in records(ca_dir)}
    assert final[serial]["status"] == "superseded"
    assert final[serial]["superseded_by"] == reissued
    assert final[reissued]["status"] == "active"
    assert final[reissued]["output_state"] == "written"
    assert len([r for r in final.values() if r["status"] == "active"]) == 4
    assert_database_sound(ca_dir)


def test_resume_finishes_a_row_whose_file_was_written_but_not_marked(ca, tmp_path):
    """Killed after the rename, before the 'written' mark: the PFX is in place, its row says
    'pending'. hsmca says it has 'no record of writing it' and fails the row."""
    ca_dir, token = ca
    inventory, out_dir, serial = batch_then_interrupt(ca, tmp_path, "mark")
    resumed = run(["batch", "--ca-dir", ca_dir, inventory, "--out-dir", out_dir, "--resume",
                   "--pin-file", token.pin_file, "--password-file", _password_file(tmp_path)])
    assert resumed.exit_code == 0, resumed.output
    assert "Summary: 0 issued, 3 skipped, 0 failed" in resumed.output
    (record,) = [r for r in records(ca_dir) if r["serial"] == serial]
    assert record["output_state"] == "written" and record["status"] == "active"


def long_run(command: str, ca_dir: Path, tmp_path: Path, out_dir: Path, key_type: str) -> list:
    """Arguments for a `batch` of 40 servers (`key_type` keys) or a `sign` of 400 CSRs: long
    enough to be stopped in the middle, with worker processes running."""
    if command == "batch":
        rows = [f"long{n:02d}.example.com,,,{key_type}" for n in range(40)]
        return ["batch", "--ca-dir", ca_dir, write_inventory(tmp_path / "site.csv", rows),
                "--out-dir", out_dir]
    names = [f"long{n:03d}.example.com" for n in range(400)]
    return ["sign", "--ca-dir", ca_dir, "--out-dir", out_dir,
            *write_csrs(tmp_path / "csrs", names)]


@pytest.mark.parametrize("command", ["batch", "sign"])
def test_ctrl_c_stops_the_command_and_its_workers_with_one_error_line(ca, tmp_path, command):
    """Ctrl-C reaches the whole process group: the workers ignore it, the main process stops
    them and says one line; what was written before is complete and recorded."""
    ca_dir, token = ca
    out_dir = tmp_path / "out"
    args = long_run(command, ca_dir, tmp_path, out_dir, key_type="p256")
    log = tmp_path / "run.log"
    process = spawn(args, token, log)
    try:
        deadline = time.monotonic() + 60
        # A finished output, not the temporary file of one being written (".name.xxx.tmp").
        while not (out_dir.exists() and any(not p.name.startswith(".")
                                            for p in out_dir.iterdir())):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "nothing was written in 60 s"
            time.sleep(0.005)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=60) == 1
        deadline = time.monotonic() + 10
        while live_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_members(process.pid) == [], "a worker outlived the interrupted command"
    finally:
        finish(process)
    output = log.read_text()
    errors = [line for line in output.splitlines() if not line.startswith(("line ", "Wrote "))]
    assert errors == [
        "Error: interrupted; any file already written is complete and recorded, none is "
        "half-written ('hsmca list' shows what was issued)"
    ], output
    # Every file is complete, and its row says 'written', or (batch: the PFX packed but not
    # yet marked when Ctrl-C came) 'pending', which --resume finishes. No temporary file is left.
    states = {r["output_path"]: r["output_state"] for r in records(ca_dir)}
    on_disk = sorted(out_dir.iterdir())
    assert on_disk
    for path in on_disk:
        assert states.get(str(path)) in ("written", "pending"), (path, states.get(str(path)))
        if command == "batch":
            assert pfx_serial(path)
        else:
            assert x509.load_pem_x509_certificates(path.read_bytes())
    assert_database_sound(ca_dir)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_on_one_core_sign_and_crl_lint_in_their_own_process(ca, tmp_path):
    """Pinned to one core (as a container may be), there is nothing to gain from workers:
    sign, batch and crl lint in the main process, and still lint."""
    ca_dir, token = ca
    one_core = ["taskset", "-c", str(min(os.sched_getaffinity(0)))]
    out_dir = tmp_path / "out"
    csrs = write_csrs(tmp_path / "csrs", [f"one{n}.example.com" for n in range(3)])
    inventory = write_inventory(tmp_path / "site.csv", ["solo.example.com,,,p256"])
    for args in (
        ["sign", "--ca-dir", ca_dir, "--out-dir", out_dir, *csrs],
        ["batch", "--ca-dir", ca_dir, inventory, "--out-dir", out_dir],
        ["revoke", "--ca-dir", ca_dir, "one1.example.com"],
        ["crl", "--ca-dir", ca_dir],
    ):
        ran = subprocess.run(
            [*one_core, *HSMCA, *map(str, args)], env=environment(token), capture_output=True,
            text=True, timeout=120, stdin=subprocess.DEVNULL,
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "one0.example.com.pem", "one1.example.com.pem", "one2.example.com.pem",
        "solo.example.com.pfx"]
    crl = x509.load_der_x509_crl((ca_dir / "ca.crl").read_bytes())
    assert len(crl) == 1
    assert_database_sound(ca_dir)


def live_members(group: int) -> list[int]:
    """The processes of process group `group` that are alive (not zombies, which a container's
    init may leave unreaped)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group and fields[0] != "Z":
                alive.append(int(stat.parent.name))
    return alive


@pytest.mark.parametrize("command", ["batch", "sign"])
def test_workers_die_with_a_killed_main_process(ca, tmp_path, command):
    """kill -9 of the main process alone (an OOM kill, a supervisor): its workers must not live
    on, waiting for work that never comes."""
    ca_dir, token = ca
    args = long_run(command, ca_dir, tmp_path, tmp_path / "out", key_type="rsa2048")
    process = spawn(args, token, tmp_path / "run.log")
    try:
        deadline = time.monotonic() + 60
        while len(live_members(process.pid)) < 2:  # the workers have started
            assert process.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, "no worker process in 60 s"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while live_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_members(process.pid) == []
    finally:
        finish(process)


# --- several processes on one CA_DIR at once -----------------------------------------------------


def test_two_batches_at_once_on_one_ca_dir(ca, tmp_path):
    ca_dir, token = ca
    runs = []
    for name in ("north", "south"):
        inventory = write_inventory(
            tmp_path / f"{name}.csv",
            [f"{name}{n}.example.com,10.{len(runs)}.0.{n},,p256" for n in range(1, 9)],
        )
        runs.append((name, inventory, tmp_path / name))
    processes = [
        spawn(["batch", "--ca-dir", ca_dir, inventory, "--out-dir", out], token,
              tmp_path / f"{name}.log")
        for name, inventory, out in runs
    ]
    codes = [finish(process) for process in processes]
    logs = [(tmp_path / f"{name}.log").read_text() for name, _, _ in runs]
    assert codes == [0, 0], logs
    for log in logs:
        assert "Summary: 8 issued, 0 skipped, 0 failed" in log

    final = {r["serial"]: r for r in records(ca_dir)}
    serials = []
    for name, _, out in runs:
        files = sorted(out.glob("*.pfx"))
        assert [f.name for f in files] == [f"{name}{n}.example.com.pfx" for n in range(1, 9)]
        for path in files:
            serial = pfx_serial(path)
            serials.append(serial)
            assert final[serial]["output_path"] == str(path)
            assert final[serial]["output_state"] == "written"
            assert final[serial]["status"] == "active"
    assert len(set(serials)) == 16
    assert len(final) == 17
    audited = [e["serial"] for e in audit_entries(ca_dir)]
    assert sorted(audited) == sorted(final)
    assert_database_sound(ca_dir)


def test_many_issue_and_crl_commands_at_once(ca, tmp_path):
    ca_dir, token = ca
    work = tmp_path / "work"
    work.mkdir()
    first = ok(["issue", "--ca-dir", ca_dir, "--pin-file", token.pin_file, "--dns",
                "gone.example.com", "--key-type", "p256", "--out", work / "gone.pfx",
                "--password-file", _password_file(tmp_path)])
    assert "Wrote" in first.output
    ok(["revoke", "--ca-dir", ca_dir, pfx_serial(work / "gone.pfx")])

    commands = [
        ["issue", "--ca-dir", ca_dir, "--dns", f"par{n}.example.com", "--key-type", "p256",
         "--out", work / f"par{n}.pfx"]
        for n in range(1, 5)
    ] + [["crl", "--ca-dir", ca_dir, "--out", work / f"ca-{n}.crl"] for n in range(1, 3)]
    processes = [
        spawn(command, token, tmp_path / f"p{index}.log")
        for index, command in enumerate(commands)
    ]
    codes = [finish(process) for process in processes]
    assert codes == [0] * len(commands), [
        (tmp_path / f"p{i}.log").read_text() for i in range(len(commands))]

    numbers = sorted(
        x509.load_der_x509_crl((work / f"ca-{n}.crl").read_bytes())
        .extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        for n in range(1, 3)
    )
    assert numbers == [1, 2]
    final = {r["serial"]: r for r in records(ca_dir)}
    serials = {pfx_serial(work / f"par{n}.pfx") for n in range(1, 5)}
    assert len(serials) == 4 and serials <= set(final)
    assert all(final[s]["output_state"] == "written" for s in serials)
    assert len(final) == 6
    operations = sorted(e["operation"] for e in audit_entries(ca_dir))
    assert operations == sorted(["init", "issue", "revoke", *["issue"] * 4, "crl", "crl"])
    # Both CRLs list the certificate revoked before they ran.
    for n in (1, 2):
        crl = x509.load_der_x509_crl((work / f"ca-{n}.crl").read_bytes())
        assert [entry.serial_number for entry in crl] == [int(pfx_serial(work / "gone.pfx"), 16)]
    assert_database_sound(ca_dir)

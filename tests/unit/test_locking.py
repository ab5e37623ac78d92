"""The CA directory lock: exclusive, waiting, re-entrant, and never outliving its holder."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from hsmca import locking
from hsmca.errors import HsmcaError, InvalidRequest

REPO = Path(__file__).resolve().parents[2]


def held_elsewhere(ca_dir: Path) -> bool:
    """Whether another holder has the lock: try it from a fresh thread without waiting long."""
    outcome = {}

    def attempt():
        try:
            with locking.ca_lock(ca_dir, timeout=0.1):
                outcome["held"] = False
        except HsmcaError:
            outcome["held"] = True

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join(10)
    return outcome["held"]


def test_the_lock_file_is_private_and_names_its_holder(tmp_path):
    with locking.ca_lock(tmp_path) as path:
        assert path == tmp_path / ".hsmca.lock"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().strip() == str(os.getpid())
        assert held_elsewhere(tmp_path)
    assert not held_elsewhere(tmp_path)


def test_nested_use_in_one_thread_does_not_deadlock(tmp_path):
    with locking.ca_lock(tmp_path):
        with locking.ca_lock(tmp_path, timeout=1):
            assert held_elsewhere(tmp_path)
        assert held_elsewhere(tmp_path), "leaving the inner block must not release the lock"
    assert not held_elsewhere(tmp_path)


def test_a_second_holder_waits_and_is_told_why(tmp_path):
    messages = []
    order = []
    started = threading.Event()

    def second():
        started.set()
        with locking.ca_lock(tmp_path, on_wait=messages.append):
            order.append("second")

    with locking.ca_lock(tmp_path):
        thread = threading.Thread(target=second)
        thread.start()
        started.wait(5)
        time.sleep(0.3)
        assert order == []
        order.append("first done")
    thread.join(10)
    assert order == ["first done", "second"]
    assert messages == [
        f"waiting for another hsmca process (pid {os.getpid()}) working on {tmp_path}"
    ]


def test_waiting_can_time_out_with_a_clear_error(tmp_path):
    with locking.ca_lock(tmp_path):
        outcome = {}

        def impatient():
            start = time.monotonic()
            try:
                with locking.ca_lock(tmp_path, timeout=0.3):
                    outcome["got"] = True
            except HsmcaError as exc:
                outcome["error"] = str(exc)
            outcome["waited"] = time.monotonic() - start

        thread = threading.Thread(target=impatient)
        thread.start()
        thread.join(10)
    assert "got" not in outcome
    assert outcome["error"].startswith(
        f"another hsmca process (pid {os.getpid()}) has been working"
    )
    assert "more than 0.3 seconds" in outcome["error"]
    assert outcome["waited"] >= 0.25


def test_a_missing_ca_directory_is_named(tmp_path):
    with pytest.raises(InvalidRequest, match="does not exist"), locking.ca_lock(tmp_path / "nope"):
        pass
    assert not (tmp_path / "nope").exists()


def test_a_symlinked_lock_file_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep me\n")
    (tmp_path / ".hsmca.lock").symlink_to(target)
    with pytest.raises(HsmcaError, match="is a symbolic link"), locking.ca_lock(tmp_path):
        pass
    assert target.read_text() == "keep me\n"


def test_a_read_only_ca_directory_is_a_clear_error():
    """Run as an unprivileged user: root ignores directory permissions."""
    directory = Path(tempfile.mkdtemp(prefix="hsmca-ro-"))
    try:
        directory.chmod(0o555)
        code = (
            "import sys\n"
            "from hsmca import locking\n"
            "from hsmca.errors import HsmcaError\n"
            "try:\n"
            "    with locking.ca_lock(sys.argv[1]):\n"
            "        print('LOCKED')\n"
            "except HsmcaError as exc:\n"
            "    print('ERROR', exc)\n"
        )
        if os.geteuid() == 0:
            # The project's interpreter may live under /root; the system one can run as nobody.
            python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
            extra = {"user": 65534, "group": 65534, "extra_groups": []}
        else:
            python, extra = sys.executable, {}
        result = subprocess.run(
            [python, "-c", code, str(directory)],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            **extra,
        )
        assert result.stdout.startswith("ERROR cannot lock the CA directory"), result.stderr
        assert "not writable for this user" in result.stdout
        assert not (directory / ".hsmca.lock").exists()
    finally:
        directory.chmod(0o755)
        shutil.rmtree(directory)


def test_a_forked_child_does_not_keep_the_lock_alive(tmp_path):
    """A worker forked while the lock is held must not hold it after its parent lets go."""
    with locking.ca_lock(tmp_path):
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # the child: report what it holds, then linger like a pool worker
            try:
                os.close(read_end)
                os.write(write_end, b"clean" if not locking._held else b"holds")
                os.close(write_end)
                time.sleep(30)
            finally:
                os._exit(0)
        os.close(write_end)
        report = os.read(read_end, 16)
        os.close(read_end)
    try:
        assert report == b"clean"
        assert not held_elsewhere(tmp_path), "the lingering child kept the lock"
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)

"""store.write_file: atomic, exclusive, and not cut short by Ctrl-C."""

from __future__ import annotations

import os
import signal

import pytest

from hsmca import store
from hsmca.errors import OutputExists


def test_write_file_is_exclusive_unless_forced_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "new" / "folder" / "out.pem"
    store.write_file(path, b"first", mode=0o640)
    assert path.read_bytes() == b"first"
    assert path.stat().st_mode & 0o777 == 0o640
    with pytest.raises(OutputExists, match="--force"):
        store.write_file(path, b"second")
    assert path.read_bytes() == b"first"
    store.write_file(path, b"second", force=True)
    assert path.read_bytes() == b"second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.pem"]


def test_ctrl_c_during_a_write_is_raised_after_the_file_is_complete(tmp_path, monkeypatch):
    path = tmp_path / "out.pfx"
    real_publish = store._publish

    def interrupted_publish(temporary, target, force):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives mid-write...
        real_publish(temporary, target, force)  # ...and the write still finishes

    monkeypatch.setattr(store, "_publish", interrupted_publish)
    with pytest.raises(KeyboardInterrupt):
        store.write_file(path, b"complete")
    assert path.read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["out.pfx"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_deferred_interrupts_nest_and_are_raised_once_at_the_outer_end():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with store.interrupts_deferred():
            with store.interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                reached.append("inner")
            reached.append("outer")
    assert reached == ["inner", "outer"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with store.interrupts_deferred():
        reached.append("quiet")
    assert reached[-1] == "quiet"

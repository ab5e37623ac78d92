"""The hash-chained audit log: appending, and detecting edited, removed, reordered lines."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
import threading
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsmca import audit
from hsmca.errors import HsmcaError, IntegrityError, InvalidRequest

from .strategies import QUICK

WHEN = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)
_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    _TEXT,
    st.floats(allow_nan=False, allow_infinity=False),
)
_EXTRA = st.dictionaries(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=10).filter(
        lambda key: key not in audit.REQUIRED_FIELDS and key != "when"
    ),
    st.one_of(_JSON_SCALARS, st.lists(_JSON_SCALARS, max_size=3)),
    max_size=3,
)
_ENTRY = st.fixed_dictionaries(
    {
        "operation": st.sampled_from(["init", "issue", "sign", "renew", "revoke", "crl"]),
        "serial": st.one_of(
            st.none(), st.integers(1, 2**159), st.from_regex(r"[0-9a-f]{1,40}", fullmatch=True)
        ),
        "subject": st.one_of(st.none(), _TEXT),
        "token_serial": st.one_of(st.none(), st.from_regex(r"[0-9a-f]{16}", fullmatch=True)),
        "extra": _EXTRA,
    }
)


def write_log(directory: Path, entries) -> Path:
    with audit.AuditLog(directory, sync_each=False) as log:
        for entry in entries:
            log.append(
                entry["operation"],
                entry["serial"],
                entry["subject"],
                entry["token_serial"],
                when=WHEN,
                **entry["extra"],
            )
    return directory / "audit.jsonl"


def simple_log(directory: Path, count: int) -> Path:
    return write_log(
        directory,
        [
            {
                "operation": "issue",
                "serial": 1000 + n,
                "subject": f"CN=rec{n}.example.com",
                "token_serial": "0123456789abcdef",
                "extra": {"output": f"/srv/rec{n}.pfx"},
            }
            for n in range(count)
        ],
    )


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def fresh_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("audit")


# --- appending --------------------------------------------------------------------------------


def test_entries_carry_the_fields_and_chain_to_each_other(tmp_path):
    first = audit.append(tmp_path, "init", 0xABC, "CN=VMS CA", "tok-1", key_type="rsa3072")
    second = audit.append(tmp_path, "issue", "7f", "CN=rec1", "tok-1", output=tmp_path / "r.pfx")
    path = tmp_path / "audit.jsonl"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    raw = lines_of(path)
    assert len(raw) == 2 and all(line.endswith(b"\n") for line in raw)
    one, two = (json.loads(line) for line in raw)
    assert one["operation"] == "init" and one["serial"] == "abc" and one["subject"] == "CN=VMS CA"
    assert one["token_serial"] == "tok-1" and one["key_type"] == "rsa3072"
    assert one["seq"] == 1 and one["prev"] == "0" * 64
    assert dt.datetime.fromisoformat(one["time"]).tzinfo is not None
    assert one["time"].endswith("Z")
    body = {key: value for key, value in one.items() if key != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert one["hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert two["seq"] == 2 and two["output"] == str(tmp_path / "r.pfx")
    assert two["prev"] == hashlib.sha256(raw[0].rstrip(b"\n")).hexdigest()
    assert (first.seq, second.seq) == (1, 2)
    assert second.line_sha256 == hashlib.sha256(raw[1].rstrip(b"\n")).hexdigest()

    result = audit.verify(path)
    assert result.ok and bool(result)
    assert (result.entries, result.line, result.last_line_sha256) == (2, None, second.line_sha256)
    assert result.message == "2 entries, chain intact"


def test_an_empty_or_missing_log(tmp_path):
    missing = audit.verify(tmp_path / "audit.jsonl")
    assert not missing.ok and missing.line is None and "does not exist" in missing.reason
    (tmp_path / "audit.jsonl").write_bytes(b"")
    empty = audit.verify(tmp_path / "audit.jsonl")
    assert empty.ok and empty.entries == 0


def test_bad_entries_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(InvalidRequest, match="may not be named hash, prev"):
        audit.append(tmp_path, "issue", "1", "CN=x", "t", prev="0" * 64, hash="1" * 64)
    with pytest.raises(InvalidRequest, match="not JSON data"):
        audit.append(tmp_path, "issue", "1", "CN=x", "t", blob=object())
    with pytest.raises(InvalidRequest, match="not JSON data"):
        audit.append(tmp_path, "issue", "1", "CN=x", "t", ratio=float("nan"))
    with pytest.raises(InvalidRequest, match="needs an operation"):
        audit.append(tmp_path, "", "1", "CN=x", "t")
    with pytest.raises(ValueError, match="timezone-aware"):
        audit.append(tmp_path, "issue", "1", "CN=x", "t", when=dt.datetime(2030, 1, 1))
    with pytest.raises(InvalidRequest, match="does not exist"):
        audit.append(tmp_path / "missing", "issue", "1", "CN=x", "t")
    assert (tmp_path / "audit.jsonl").read_bytes() == b""


def test_a_failed_write_leaves_no_half_line(tmp_path, monkeypatch):
    audit.append(tmp_path, "issue", "1", "CN=a", "t")
    before = (tmp_path / "audit.jsonl").read_bytes()
    real_write = os.write

    def short_write(fd, data):
        return real_write(fd, data[: len(data) // 2])  # as when the disk fills up

    with audit.AuditLog(tmp_path) as log:
        monkeypatch.setattr(audit.os, "write", short_write)
        with pytest.raises(HsmcaError, match="cannot append to the audit log"):
            log.append("issue", "2", "CN=b", "t")
        monkeypatch.undo()
        assert (tmp_path / "audit.jsonl").read_bytes() == before
        assert log.append("issue", "3", "CN=c", "t").seq == 2
    assert audit.verify(tmp_path / "audit.jsonl").entries == 2


def test_append_refuses_to_chain_onto_a_damaged_last_line(tmp_path):
    path = simple_log(tmp_path, 3)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(IntegrityError, match="incomplete or damaged; run 'hsmca audit verify'"):
        audit.append(tmp_path, "issue", "4", "CN=d", "t")
    path.write_bytes(data.replace(b"rec2", b"rec9"))  # complete, but edited
    with pytest.raises(IntegrityError, match="incomplete or damaged"):
        audit.append(tmp_path, "issue", "4", "CN=d", "t")
    path.write_bytes(data)
    assert audit.append(tmp_path, "issue", "4", "CN=d", "t").seq == 4


def test_batched_appends_fsync_once(tmp_path, monkeypatch):
    (tmp_path / "audit.jsonl").touch()
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(audit.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    with audit.AuditLog(tmp_path, sync_each=False) as log:
        for n in range(50):
            log.append("sign", n + 1, f"CN=s{n}", "t")
    assert len(synced) == 1
    synced.clear()
    audit.append(tmp_path, "sign", 99, "CN=one", "t")
    assert len(synced) == 1  # a single append is on disk when it returns
    assert audit.verify(tmp_path / "audit.jsonl").entries == 51


def test_another_writer_appending_in_between_is_picked_up(tmp_path):
    with audit.AuditLog(tmp_path) as one, audit.AuditLog(tmp_path) as two:
        one.append("issue", 1, "CN=a", "t")
        two.append("issue", 2, "CN=b", "t")
        assert one.append("issue", 3, "CN=c", "t").seq == 3
    assert audit.verify(tmp_path / "audit.jsonl").entries == 3


def test_threads_appending_at_once_keep_one_chain(tmp_path):
    def work(n):
        with audit.AuditLog(tmp_path) as log:
            for i in range(25):
                log.append("sign", n * 100 + i + 1, f"CN=t{n}-{i}", "t")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = audit.verify(tmp_path / "audit.jsonl")
    assert result.ok, result.message
    assert result.entries == 100
    serials = [json.loads(line)["serial"] for line in lines_of(tmp_path / "audit.jsonl")]
    assert len(set(serials)) == 100


# --- verification -------------------------------------------------------------------------------


@QUICK
@given(entries=st.lists(_ENTRY, min_size=1, max_size=8))
def test_any_chain_of_entries_verifies(tmp_path_factory, entries):
    path = write_log(fresh_dir(tmp_path_factory), entries)
    result = audit.verify(path)
    assert result.ok, result.message
    assert result.entries == len(entries)
    raw = lines_of(path)
    assert result.last_line_sha256 == hashlib.sha256(raw[-1].rstrip(b"\n")).hexdigest()
    for number, (line, entry) in enumerate(zip(raw, entries, strict=True), start=1):
        parsed = json.loads(line)
        assert parsed["seq"] == number
        assert parsed["operation"] == entry["operation"]
        assert parsed["subject"] == entry["subject"]
        for key, value in entry["extra"].items():
            assert parsed[key] == json.loads(json.dumps(value))


@QUICK
@given(entries=st.lists(_ENTRY, min_size=1, max_size=5), data=st.data())
def test_any_single_byte_edit_is_caught_on_its_line(tmp_path_factory, entries, data):
    path = write_log(fresh_dir(tmp_path_factory), entries)
    original = path.read_bytes()
    offset = data.draw(st.integers(0, len(original) - 1), label="offset")
    value = data.draw(st.integers(0, 255).filter(lambda b: b != original[offset]), label="byte")
    edited = original[:offset] + bytes([value]) + original[offset + 1 :]
    path.write_bytes(edited)

    result = audit.verify(path)
    line = original[:offset].count(b"\n") + 1
    assert not result.ok
    assert result.line == line, result.message
    assert result.entries == line - 1


@QUICK
@given(count=st.integers(2, 8), data=st.data())
def test_a_removed_line_is_caught_where_the_chain_breaks(tmp_path_factory, count, data):
    directory = fresh_dir(tmp_path_factory)
    path = simple_log(directory, count)
    raw = lines_of(path)
    anchor = (count, hashlib.sha256(raw[-1].rstrip(b"\n")).hexdigest())
    removed = data.draw(st.integers(1, count), label="removed line")
    path.write_bytes(b"".join(raw[: removed - 1] + raw[removed:]))

    with_anchor = audit.verify(path, anchor=anchor)
    assert not with_anchor.ok
    assert with_anchor.line == removed
    plain = audit.verify(path)
    if removed < count:
        assert (plain.ok, plain.line) == (False, removed)
        assert "removed" in plain.reason
    else:
        # Dropping the last entries leaves a valid shorter chain: only an anchor catches it.
        assert plain.ok and plain.entries == count - 1
        assert "removed from the end" in with_anchor.reason


@QUICK
@given(count=st.integers(2, 8), data=st.data())
def test_reordered_lines_are_caught_at_the_first_moved_one(tmp_path_factory, count, data):
    path = simple_log(fresh_dir(tmp_path_factory), count)
    raw = lines_of(path)
    first = data.draw(st.integers(0, count - 2), label="first")
    second = data.draw(st.integers(first + 1, count - 1), label="second")
    raw[first], raw[second] = raw[second], raw[first]
    path.write_bytes(b"".join(raw))
    result = audit.verify(path)
    assert (result.ok, result.line) == (False, first + 1)


def test_a_duplicated_line_is_caught(tmp_path):
    path = simple_log(tmp_path, 3)
    raw = lines_of(path)
    path.write_bytes(b"".join([raw[0], raw[1], raw[1], raw[2]]))
    result = audit.verify(path)
    assert (result.ok, result.line) == (False, 3)


@QUICK
@given(count=st.integers(1, 4), data=st.data())
def test_a_truncated_last_line_is_caught(tmp_path_factory, count, data):
    path = simple_log(fresh_dir(tmp_path_factory), count)
    original = path.read_bytes()
    last_start = original.rstrip(b"\n").rfind(b"\n") + 1
    cut = data.draw(st.integers(last_start + 1, len(original) - 1), label="cut")
    path.write_bytes(original[:cut])
    result = audit.verify(path)
    assert (result.ok, result.line, result.entries) == (False, count, count - 1)
    assert "incomplete line" in result.reason


def test_a_log_rewritten_with_a_valid_chain_is_caught_by_the_anchor(tmp_path):
    real = tmp_path / "real"
    forged = tmp_path / "forged"
    real.mkdir()
    forged.mkdir()
    simple_log(real, 3)
    anchor = audit.verify(real / "audit.jsonl")
    write_log(
        forged,
        [
            {"operation": "issue", "serial": n, "subject": "CN=x", "token_serial": "t", "extra": {}}
            for n in range(4)
        ],
    )
    assert audit.verify(forged / "audit.jsonl").ok  # self-consistent on its own
    result = audit.verify(forged / "audit.jsonl", anchor=(3, anchor.last_line_sha256))
    assert (result.ok, result.line) == (False, 3)
    assert "not the one recorded" in result.reason


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"seq":1}\n', "missing operation, serial"),
        (b"[1,2,3]\n", "not a JSON object"),
        (b"\xff\xfe\n", "not valid JSON"),
    ],
)
def test_foreign_lines_are_named(tmp_path, line, reason):
    path = simple_log(tmp_path, 2)
    path.write_bytes(path.read_bytes() + line)
    result = audit.verify(path)
    assert (result.ok, result.line) == (False, 3)
    assert reason in result.reason
    assert result.message.startswith("line 3: ")


def test_a_reformatted_but_equivalent_line_is_caught(tmp_path):
    """Pretty-printing an entry keeps its content and hash, but it is no longer the line."""
    path = simple_log(tmp_path, 2)
    raw = lines_of(path)
    reformatted = json.dumps(json.loads(raw[0]), sort_keys=True).encode() + b"\n"
    assert reformatted != raw[0]
    path.write_bytes(reformatted + raw[1])
    result = audit.verify(path)
    assert (result.ok, result.line) == (False, 1)
    assert "canonical" in result.reason


def test_verification_streams_with_flat_memory(tmp_path):
    path = simple_log(tmp_path, 6000)
    size = path.stat().st_size
    assert size > 1_500_000
    tracemalloc.start()
    try:
        result = audit.verify(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.ok and result.entries == 6000
    assert peak < 200_000, f"peak {peak} bytes for a {size}-byte log"

"""The audit log: CA_DIR/audit.jsonl, one hash-chained JSON entry per signing operation.

Each line is the canonical JSON (sorted keys, no spaces, UTF-8) of an entry such as

    {"hash": "...", "operation": "issue", "prev": "...", "seq": 7, "serial": "7a3f...",
     "subject": "CN=rec1.example.com", "time": "2030-01-31T12:00:00Z", "token_serial": "..."}

plus any extra fields. `hash` is the SHA-256 of the canonical JSON of the entry without `hash`;
`prev` is the SHA-256 of the previous line's bytes (without its newline), or 64 zeros for the
first line; `seq` is the entry's line number. So an edited line fails its own hash (or is not
canonical JSON any more), and a removed, inserted or reordered line breaks `prev` and `seq` of the
line that follows. Removing the *last* lines leaves a valid shorter chain; that is caught only
against an anchor (the seq and line hash of the newest entry) kept elsewhere, e.g. in the CA
database (db.CaDatabase.set_audit_anchor) and passed to verify().

Appends are O_APPEND writes under an flock of the log itself (so two processes cannot fork the
chain), fsynced before append() returns; AuditLog batches many appends with one fsync at the end.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import store
from .errors import HsmcaError, IntegrityError, InvalidRequest

AUDIT_NAME = "audit.jsonl"
AUDIT_MODE = 0o600
GENESIS = "0" * 64
MAX_LINE = 1 << 20
"""Longest line (bytes) append writes and verify reads; longer is damage, not an entry."""

REQUIRED_FIELDS = ("seq", "operation", "serial", "subject", "time", "token_serial", "prev", "hash")
_HASH = re.compile(r"^[0-9a-f]{64}$")
_TAIL_CHUNK = 8192


def canonical_json(value: Any) -> str:
    """The one JSON spelling of `value` that hashes are computed over."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 hex over the canonical JSON of `entry` without its 'hash' field."""
    body = {key: value for key, value in entry.items() if key != "hash"}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def line_hash(line: bytes) -> str:
    """What the next entry's 'prev' holds: SHA-256 hex of a line's bytes (no newline)."""
    return hashlib.sha256(line).hexdigest()


def _now_text(when: dt.datetime | None) -> str:
    when = dt.datetime.now(dt.UTC) if when is None else when
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"a timezone-aware datetime is needed, not {when!r}")
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def audit_path(ca_dir: Path | str) -> Path:
    return Path(ca_dir) / AUDIT_NAME


@dataclass(frozen=True)
class AppendedEntry:
    seq: int
    """The entry's 1-based line number."""
    line_sha256: str
    """The SHA-256 of the line: the next entry's 'prev', and an anchor for verify()."""
    entry: dict[str, Any] = field(repr=False)


class AuditLog:
    """CA_DIR/audit.jsonl opened for appending. `sync_each=False` fsyncs only on flush/close.

    `path` names the log file itself instead (a ceremony transcript uses the same format).
    """

    def __init__(
        self,
        ca_dir: Path | str | None = None,
        *,
        sync_each: bool = True,
        path: Path | str | None = None,
    ):
        if (ca_dir is None) == (path is None):
            raise ValueError("AuditLog needs exactly one of a CA directory and a path")
        self.path = audit_path(ca_dir) if path is None else Path(path)
        self.sync_each = sync_each
        self._tail: tuple[int, int, str] | None = None  # (file size, last seq, last line hash)
        self._dirty = False
        if ca_dir is not None and not Path(ca_dir).is_dir():
            raise InvalidRequest(
                f"CA directory {ca_dir} does not exist; pass --ca-dir or set HSMCA_DIR"
            )
        if not self.path.parent.is_dir():
            raise InvalidRequest(f"the folder of {self.path} does not exist")
        created = not self.path.exists()
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            self._fd = os.open(self.path, flags, AUDIT_MODE)
        except OSError as exc:
            raise HsmcaError(
                f"cannot open the audit log {self.path}: {exc.strerror}; run hsmca as the user "
                "that owns the CA directory or fix its permissions"
            ) from None
        if created:
            store.sync_directory(self.path.parent)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self.flush()
        finally:
            os.close(self._fd)
            self._fd = -1

    def flush(self) -> None:
        """fsync what was appended since the last flush."""
        if self._dirty:
            os.fsync(self._fd)
            self._dirty = False

    def append(
        self,
        operation: str,
        serial: str | int | None,
        subject: str | None,
        token_serial: str | None,
        *,
        when: dt.datetime | None = None,
        **extra: Any,
    ) -> AppendedEntry:
        """Append one entry chained to the last one; returns its seq and line hash."""
        if not operation or not isinstance(operation, str):
            raise InvalidRequest("an audit entry needs an operation name")
        clash = set(extra) & set(REQUIRED_FIELDS)
        if clash:
            raise InvalidRequest(f"audit extra fields may not be named {', '.join(sorted(clash))}")
        if isinstance(serial, int) and not isinstance(serial, bool):
            serial = format(serial, "x")
        entry: dict[str, Any] = {
            **extra,
            "operation": operation,
            "serial": serial,
            "subject": subject,
            "time": _now_text(when),
            "token_serial": token_serial,
        }
        try:
            # Round trip so the entry is exactly what a reader will parse (tuples, Paths...).
            entry = json.loads(canonical_json(_jsonable(entry)))
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"audit entry is not JSON data: {exc}") from None
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(self._fd).st_size
            if self._tail is None or self._tail[0] != size:
                self._tail = (size, *self._read_tail(size))
            _, last_seq, prev = self._tail
            entry["seq"] = last_seq + 1
            entry["prev"] = prev
            entry["hash"] = entry_hash(entry)
            try:
                line = canonical_json(entry).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidRequest(f"audit entry is not valid text: {exc}") from None
            if len(line) >= MAX_LINE:
                raise InvalidRequest(f"audit entry of {len(line)} bytes is too long")
            self._write(line + b"\n", size)
            self._tail = (size + len(line) + 1, entry["seq"], line_hash(line))
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        return AppendedEntry(entry["seq"], line_hash(line), entry)

    def _write(self, data: bytes, size: int) -> None:
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(0, f"short write ({written} of {len(data)} bytes)")
            if self.sync_each:
                os.fsync(self._fd)
            else:
                self._dirty = True
        except OSError as exc:
            # Never leave half a line behind: the next append would chain onto garbage.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
            self._tail = None
            raise HsmcaError(
                f"cannot append to the audit log {self.path}: {exc.strerror}"
            ) from None

    def _read_tail(self, size: int) -> tuple[int, str]:
        """(seq, line hash) of the last entry; (0, GENESIS) for an empty log."""
        if size == 0:
            return 0, GENESIS
        damaged = (
            f"the last entry of the audit log {self.path} is incomplete or damaged; run "
            "'hsmca audit verify' and restore the log before signing again"
        )
        if os.pread(self._fd, 1, size - 1) != b"\n":
            raise IntegrityError(damaged)
        end = size - 1
        start = end
        buffer = b""
        while start > 0 and b"\n" not in buffer:
            if end - start > MAX_LINE:
                raise IntegrityError(damaged)
            step = min(_TAIL_CHUNK, start)
            start -= step
            buffer = os.pread(self._fd, step, start) + buffer
        line = buffer[buffer.rfind(b"\n") + 1 :]
        try:
            entry = json.loads(line.decode("utf-8"))
            seq = entry["seq"]
            valid = (
                isinstance(seq, int)
                and seq >= 1
                and canonical_json(entry) == line.decode("utf-8")
                and entry.get("hash") == entry_hash(entry)
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            valid = False
        if not valid:
            raise IntegrityError(damaged)
        return seq, line_hash(line)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def append(
    ca_dir: Path | str,
    operation: str,
    serial: str | int | None,
    subject: str | None,
    token_serial: str | None,
    **extra: Any,
) -> AppendedEntry:
    """Append one entry to CA_DIR/audit.jsonl and fsync it."""
    with AuditLog(ca_dir) as log:
        return log.append(operation, serial, subject, token_serial, **extra)


# --- verification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    """Entries that verified, in order, before the first problem (all of them when ok)."""
    line: int | None = None
    """The first bad line (1-based), or None when ok."""
    reason: str | None = None
    last_line_sha256: str | None = None
    """The line hash of the last good entry: an anchor for the next verify()."""

    def __bool__(self) -> bool:
        return self.ok

    @property
    def message(self) -> str:
        if self.ok:
            return f"{self.entries} entries, chain intact"
        if self.line is None:
            return self.reason or "audit log not verified"
        return f"line {self.line}: {self.reason}"


def verify(path: Path | str, *, anchor: tuple[int, str] | None = None) -> VerifyResult:
    """Check every line of an audit log and the chain between them, reading it once, streaming.

    `anchor` = (seq, line SHA-256) of an entry known to have been written (e.g. from the CA
    database): the log must still hold exactly that entry at that line, which catches the removal
    of entries from the end.
    """
    path = Path(path)
    try:
        stream = open(path, "rb")
    except FileNotFoundError:
        return VerifyResult(False, 0, None, f"{path} does not exist")
    except OSError as exc:
        return VerifyResult(False, 0, None, f"cannot read {path}: {exc.strerror}")
    prev = GENESIS
    number = 0
    with stream:
        for raw in iter(lambda: stream.readline(MAX_LINE + 1), b""):
            number += 1
            problem = _check_line(raw, prev)
            if isinstance(problem, str):
                return VerifyResult(
                    False, number - 1, number, problem, prev if number > 1 else None
                )
            if problem["seq"] != number:
                return VerifyResult(
                    False,
                    number - 1,
                    number,
                    f"sequence number {problem['seq']} where {number} was expected: an entry "
                    "was removed, inserted or moved",
                    prev if number > 1 else None,
                )
            prev = line_hash(raw[:-1])
            if anchor is not None and number == anchor[0] and prev != anchor[1]:
                return VerifyResult(
                    False,
                    number - 1,
                    number,
                    "this entry is not the one recorded in the CA database: the log was "
                    "rewritten from here on",
                )
    if anchor is not None and number < anchor[0]:
        return VerifyResult(
            False,
            number,
            number + 1,
            f"the log ends after {number} entries but {anchor[0]} were recorded in the CA "
            "database: entries were removed from the end",
            prev if number else None,
        )
    return VerifyResult(True, number, None, None, prev if number else None)


def _check_line(raw: bytes, prev: str) -> dict[str, Any] | str:
    """The parsed entry, or why this line is bad."""
    if not raw.endswith(b"\n"):
        if len(raw) > MAX_LINE:
            return f"longer than {MAX_LINE} bytes: not an audit entry"
        return "incomplete line (no newline at the end): the log was truncated or a write was cut"
    line = raw[:-1]
    try:
        text = line.decode("utf-8")
        entry = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return "not valid JSON: the entry was edited or damaged"
    if not isinstance(entry, dict):
        return "not a JSON object: the entry was edited or damaged"
    missing = [name for name in REQUIRED_FIELDS if name not in entry]
    if missing:
        return f"missing {', '.join(missing)}: the entry was edited or damaged"
    try:
        canonical = canonical_json(entry)
    except ValueError:
        canonical = None
    if canonical != text:
        return "not in canonical form (sorted keys, no spaces): the entry was edited"
    stored = entry["hash"]
    if not isinstance(stored, str) or not _HASH.match(stored) or stored != entry_hash(entry):
        return "its hash does not match its contents: the entry was edited"
    if entry["prev"] != prev:
        if prev == GENESIS:
            return "the first entry does not start the chain: entries before it were removed"
        return (
            "'prev' does not match the line before it: an entry was removed, inserted or moved "
            "before this one"
        )
    if not isinstance(entry["seq"], int) or isinstance(entry["seq"], bool):
        return "its sequence number is not a number: the entry was edited"
    return entry

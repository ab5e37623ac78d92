"""One lock per CA directory, so hsmca commands on the same CA_DIR wait for each other.

SoftHSM rewrites its token files on login and the database and audit log are written by several
commands, so every command that uses the token or writes to CA_DIR holds `ca_lock(ca_dir)` while
it works. The lock is an exclusive `flock` on CA_DIR/.hsmca.lock: the kernel releases it when the
holder exits for any reason (SIGKILL included), so a crashed process never blocks the next one.

The lock is re-entrant within one thread, and a process forked while holding it (a worker pool
started with 'fork') does not keep it alive: the child closes its inherited copy at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import HsmcaError, InvalidRequest

LOCK_NAME = ".hsmca.lock"
LOCK_MODE = 0o600

_POLL_INTERVAL = 0.05

# (thread id, lock file path) -> [file descriptor, depth]; guarded by _registry_lock.
_held: dict[tuple[int, str], list[int]] = {}
_registry_lock = threading.Lock()


def lock_path(ca_dir: Path) -> Path:
    return Path(ca_dir) / LOCK_NAME


def _holder(fd: int) -> str:
    """'process 1234' from the lock file's contents, or 'another hsmca process'."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode("ascii").strip())
        return f"another hsmca process (pid {pid})"
    return "another hsmca process"


def _open_lock_file(ca_dir: Path) -> int:
    path = lock_path(ca_dir)
    if not ca_dir.is_dir():
        raise InvalidRequest(
            f"CA directory {ca_dir} does not exist or is not a directory; pass --ca-dir or set "
            "HSMCA_DIR"
        )
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        return os.open(path, flags, LOCK_MODE)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            what = f"its lock file {path}" if path.exists() else "it"
            raise HsmcaError(
                f"cannot lock the CA directory {ca_dir}: {what} is not writable for this user "
                f"({exc.strerror}); run hsmca as the user that owns {ca_dir} or fix its "
                "permissions"
            ) from None
        if exc.errno == errno.ELOOP:
            raise HsmcaError(
                f"{path} is a symbolic link; remove it (hsmca creates its own lock file)"
            ) from None
        raise HsmcaError(f"cannot create the lock file {path}: {exc.strerror}") from None


def _acquire(
    fd: int, ca_dir: Path, timeout: float | None, on_wait: Callable[[str], None] | None
) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    except OSError as exc:
        raise HsmcaError(f"cannot lock {lock_path(ca_dir)}: {exc.strerror}") from None
    holder = _holder(fd)
    if on_wait is not None:
        on_wait(f"waiting for {holder} working on {ca_dir}")
    if timeout is None:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks; Ctrl-C still interrupts it
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise HsmcaError(
                    f"{_holder(fd)} has been working on {ca_dir} for more than {timeout:g} "
                    "seconds; try again when it has finished"
                ) from None
            time.sleep(_POLL_INTERVAL)


_notify_wait: Callable[[str], None] | None = None


def notify_waits(callback: Callable[[str], None] | None) -> None:
    """Tell the person at the keyboard, through `callback`, whenever a command has to wait."""
    global _notify_wait
    _notify_wait = callback


@contextlib.contextmanager
def ca_lock(
    ca_dir: Path | str,
    *,
    timeout: float | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[Path]:
    """Hold the exclusive lock of `ca_dir` for the duration of the `with` block.

    Waits for another process holding it (forever, or `timeout` seconds and then HsmcaError);
    `on_wait` gets one message for the person at the keyboard when waiting starts. Nested use in
    the same thread is fine. Yields the lock file's path.
    """
    ca_dir = Path(ca_dir)
    path = lock_path(ca_dir)
    key = (threading.get_ident(), os.path.abspath(path))
    with _registry_lock:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is not None:
        try:
            yield path
        finally:
            with _registry_lock:
                entry[1] -= 1
        return

    fd = _open_lock_file(ca_dir)
    try:
        _acquire(fd, ca_dir, timeout, on_wait or _notify_wait)
    except BaseException:
        os.close(fd)
        raise
    # Who holds it, for the message of whoever waits next (best effort).
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    entry = [fd, 1]
    with _registry_lock:
        _held[key] = entry
    try:
        yield path
    finally:
        with _registry_lock:
            entry[1] -= 1
            release = entry[1] == 0 and _held.get(key) is entry
            if release:
                del _held[key]
        if release:
            # Closing the last descriptor releases the flock; no explicit LOCK_UN, which would
            # also release it for a forked child sharing the open file description.
            os.close(fd)


def _forget_inherited_locks() -> None:
    """In a forked child: drop the copies of the parent's lock descriptors, never unlocking."""
    for fd, _depth in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()
    global _registry_lock
    _registry_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_inherited_locks)

"""Worker processes for the host's share of bulk work (pkilint, server keys, PFX files), beside
the one process that holds the token session.

Workers are forked, not spawned, since a fresh interpreter costs more than it saves on two cores;
so they are made before the main process logs in to a token and hold no token state. They leave
Ctrl-C to the main process and die with it however it ends.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import lint

if TYPE_CHECKING:
    from multiprocessing.pool import Pool

_PR_SET_PDEATHSIG = 1


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or taskset may
    narrow), not the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def fork_is_safe() -> bool:
    """Whether this process can fork workers: not while other threads run (a library caller's),
    since a thread holding a lock at the fork leaves that lock held forever in the child."""
    import threading

    return threading.active_count() == 1


def start_worker(parent_pid: int) -> None:
    """In a worker process: leave Ctrl-C to the main process, which stops the workers itself,
    and die with the main process however it ends (kill -9 included) rather than wait for work
    for ever: an executor's worker holds its queue's both ends, so it never sees the end."""
    import ctypes
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):  # prctl is Linux's; hsmca runs on Linux
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)  # the main process ended before prctl took effect


def _start_lint_worker(parent_pid: int) -> None:
    start_worker(parent_pid)
    lint.prepare()


@contextlib.contextmanager
def lint_workers(processes: int) -> Iterator[Pool | None]:
    """Processes for pre-issuance linting, forked now and importing pkilint at once; None with
    one core, in a process with other threads, or where no process can be had (the caller then
    lints in this process).

    pkilint takes about 0.3 s to import and several times a signature to lint a certificate;
    the workers spend that on the other core while this process reads its inputs, logs in and
    signs. Call it before logging in to a token.
    """
    import multiprocessing

    if processes < 1 or usable_cores() < 2 or not fork_is_safe():
        yield None
        return
    try:
        pool = multiprocessing.get_context("fork").Pool(
            processes, initializer=_start_lint_worker, initargs=(os.getpid(),)
        )
    except OSError:
        yield None
        return
    try:
        yield pool
    finally:
        # On success nothing is left running; on an error, do not wait for the workers.
        pool.terminate()
        pool.join()

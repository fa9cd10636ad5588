"""One daemon per lock file: the lock our interceptord and ``jasmin-credits-settled`` take.

The lock is an ``flock`` on ``<path>.lock``, so the kernel releases it when its holder dies,
however it dies. (A link-based lock such as the ``lockfile`` package's, which Jasmin's own
daemons use, stays behind after a SIGKILL or the OOM killer, and every later start is then
refused until someone deletes the file by hand.) The holder's pid is written into the file,
for operators.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class AnotherRuns(Exception):
    """Another daemon holds the lock file."""


@contextmanager
def single_instance(path: str, program: str, timeout: float = 2.0) -> Iterator[None]:
    """Hold the lock ``path`` for the ``with`` block; release it after.

    Raises :class:`AnotherRuns` (after telling stderr, in ``program``'s name) when another
    live process holds it for ``timeout`` seconds.
    """
    lock_path = f"{path}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, timeout)
    except BlockingIOError:
        os.close(fd)
        print(f"{program}: another one runs (lock {lock_path})", file=sys.stderr)
        raise AnotherRuns(lock_path) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _acquire(fd: int, timeout: float) -> None:
    """flock ``fd`` exclusively, trying every 50 ms for ``timeout`` seconds (this runs at
    start-up, before any reactor, so the short blocking wait is harmless)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)

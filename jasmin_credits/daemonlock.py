"""One daemon per lock file: the lock our interceptord and ``jasmin-credits-settled`` take."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from lockfile import AlreadyLocked, FileLock, LockTimeout


class AnotherRuns(Exception):
    """Another daemon holds the lock file."""


@contextmanager
def single_instance(path: str, program: str) -> Iterator[None]:
    """Hold the lock file ``path`` for the ``with`` block; release it after.

    Raises :class:`AnotherRuns` (after telling stderr, in ``program``'s name) when another
    daemon holds it within 2 s.
    """
    lock = FileLock(path)
    try:
        lock.acquire(timeout=2)
    except (LockTimeout, AlreadyLocked):
        print(f"{program}: another one runs (lock {path})", file=sys.stderr)
        raise AnotherRuns(path) from None
    try:
        yield
    finally:
        if lock.i_am_locking():
            lock.release()

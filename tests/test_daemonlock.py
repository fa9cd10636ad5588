"""One daemon per lock file (our interceptord, jasmin-credits-settled)."""

from __future__ import annotations

import subprocess
import sys

from jasmin_credits.daemonlock import single_instance

SECOND = """
import sys
from jasmin_credits.daemonlock import AnotherRuns, single_instance
try:
    with single_instance(sys.argv[1], "second"):
        pass
except AnotherRuns:
    sys.exit(1)
"""


def second_daemon(path: str) -> subprocess.CompletedProcess:
    """Another process taking the same lock (a lock is per process)."""
    return subprocess.run([sys.executable, "-c", SECOND, path], capture_output=True, text=True,
                          timeout=30)


def test_second_daemon_on_the_same_lock_is_refused(tmp_path):
    path = str(tmp_path / "settled")
    with single_instance(path, "first"):
        refused = second_daemon(path)
    assert refused.returncode == 1
    assert "second: another one runs (lock " in refused.stderr
    assert second_daemon(path).returncode == 0  # released after the first block


HOLDER = """
import sys
from jasmin_credits.daemonlock import single_instance
with single_instance(sys.argv[1], "holder"):
    print("held", flush=True)
    sys.stdin.read()  # until killed
"""


def test_lock_of_a_killed_daemon_is_free_at_once(tmp_path):
    """SIGKILL (or the OOM killer) leaves no stale lock: the next daemon starts."""
    path = str(tmp_path / "settled")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert second_daemon(path).returncode == 1
        assert (tmp_path / "settled.lock").read_text() == f"{holder.pid}\n"
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert second_daemon(path).returncode == 0

"""Prometheus's ``promtool`` for tests (Debian's prometheus package: scripts/setup.sh)."""

from __future__ import annotations

import shutil
import subprocess


def lint_metrics(text: str) -> str:
    """``promtool check metrics``'s complaints about ``text`` (Prometheus's text format),
    for the ``jasmin_credits_`` families only ("" when none)."""
    ours = "".join(line + "\n" for line in text.splitlines()
                   if line.startswith(("jasmin_credits_", "# HELP jasmin_credits_",
                                       "# TYPE jasmin_credits_")))
    promtool = shutil.which("promtool")
    if promtool is None:
        raise AssertionError("promtool not found: scripts/setup.sh installs Debian's "
                             "prometheus")
    done = subprocess.run([promtool, "check", "metrics"], input=ours, capture_output=True,
                          text=True, timeout=60)
    return (done.stdout + done.stderr).strip()

"""Our log lines in the log of the Jasmin daemon we run inside (jasmind, interceptord)."""

from __future__ import annotations

import logging


def share_log(daemon_log: logging.Logger) -> None:
    """Our logger (``jasmin-credits``) writes where ``daemon_log`` does (jasmind: its
    standard output; the interceptord: its log file), in its format, from INFO up; unless
    the operator gave it handlers of their own. Without this only its warnings would show,
    bare, through logging's last-resort handler."""
    ours = logging.getLogger("jasmin-credits")
    if ours.handlers:
        return
    for handler in daemon_log.handlers:
        ours.addHandler(handler)
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.INFO)

"""``jasmin-credits-dlrlookupd``, ``-dlrd`` and ``-deliversmd``: Jasmin's own daemons, restored
after a RabbitMQ restart.

Jasmin 0.11.1's ``dlrlookupd.py``, ``dlrd.py`` and ``deliversmd.py`` reconnect to the broker
like jasmind and, like it, never consume again (:mod:`jasmin_credits.amqp_recovery`): delivery
receipts and MO messages stop reaching clients until they are restarted. These commands run
the released daemon, with the same flags and lock, with the recovery installed on its AMQP
factory. They charge nothing; our launcher restores jasmind the same way.

How: the daemon's module is run as Jasmin ships it (``runpy``), with ``jasmin.bin.BaseDaemon``
replaced for that run by a subclass whose component map installs the recovery on the AMQP
factory the moment the daemon stores it, before it connects.
"""

from __future__ import annotations

import runpy
from typing import Any

from twisted.internet import reactor

from .amqp_recovery import AmqpRecovery
from .daemonlog import share_log

FACTORY = "amqp-broker-factory"


class _Components(dict):
    """A daemon's ``components``: the recovery goes on its AMQP factory when it is stored."""

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        if key == FACTORY:
            share_log(value.log)  # (our lines in the factory's log, amqp-client.log)
            AmqpRecovery(value, self, reactor).install()


def recovering_base(base: type) -> type:
    """A subclass of Jasmin's ``BaseDaemon`` with a :class:`_Components` map."""

    class RecoveringDaemon(base):  # type: ignore[valid-type, misc]
        def __init__(self, opt: Any) -> None:
            super().__init__(opt)
            self.components = _Components(self.components)

    return RecoveringDaemon


def run(daemon: str) -> None:
    """Run ``jasmin.bin.<daemon>`` as its own ``__main__``, restored after reconnections."""
    import jasmin.bin

    base = jasmin.bin.BaseDaemon
    jasmin.bin.BaseDaemon = recovering_base(base)
    try:
        runpy.run_module(f"jasmin.bin.{daemon}", run_name="__main__", alter_sys=True)
    finally:
        jasmin.bin.BaseDaemon = base


def dlrlookupd() -> None:
    """``jasmin-credits-dlrlookupd``: Jasmin's ``dlrlookupd.py`` (same flags)."""
    run("dlrlookupd")


def dlrd() -> None:
    """``jasmin-credits-dlrd``: Jasmin's ``dlrd.py`` (same flags)."""
    run("dlrd")


def deliversmd() -> None:
    """``jasmin-credits-deliversmd``: Jasmin's ``deliversmd.py`` (same flags)."""
    run("deliversmd")


__all__ = ["deliversmd", "dlrd", "dlrlookupd", "recovering_base", "run"]


if __name__ == "__main__":  # python -m jasmin_credits.jasmin_daemons DAEMON [its flags]
    import sys

    run(sys.argv.pop(1))

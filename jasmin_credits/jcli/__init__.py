"""jCli commands of jasmin-credits: ``credit`` (wallets, top-ups, limits, logs) and ``price``
(rate cards, quotes, reload, assignments).

:func:`install_jcli` swaps the protocol of Jasmin's JCliFactory for
:class:`CreditsJCliProtocol`, a subclass of Jasmin's ``JCliProtocol``: same login, same
commands, plus ours.
"""

from ._protocol import CreditsJCliProtocol, install_jcli

__all__ = ["CreditsJCliProtocol", "install_jcli"]

"""Option parsing for our jCli commands: Jasmin's ``@options`` with one-line errors.

Jasmin's :func:`jasmin.protocols.cli.options.options` answers a parse error with the error
and then the whole usage text. Ours answers one line naming the command and pointing at
``help <command>``, and stops option parsing at the first plain argument, so the words of a
reason (``credit -t alice -25 refund -- test``) stay text. Options taking two values
(``-t UID AMOUNT``) use ``nargs=2``: optparse then takes both words as they are, so a
negative amount such as ``-25`` is a value, not an unknown option.
"""

from __future__ import annotations

import optparse
from collections.abc import Callable
from typing import Any

from jasmin.protocols.cli.options import remaining_args


class OptionParser(optparse.OptionParser):
    """An optparse parser that raises instead of exiting and prints its epilog verbatim."""

    def __init__(self, epilog: str = "") -> None:
        super().__init__(add_help_option=False, epilog=epilog)
        self.disable_interspersed_args()

    def error(self, msg: str) -> None:  # noqa: D401 - optparse API
        raise optparse.OptParseError(msg)

    def format_epilog(self, formatter: Any) -> str:
        return "\n" + self.epilog if self.epilog else ""


def options(option_list: list[optparse.Option], arg_desc: str = "",
            epilog: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate ``do_<cmd>(self, arg, opts)`` like Jasmin's ``@options``.

    ``help <cmd>`` shows the method's docstring, then the usage, every option's help and
    ``epilog`` (kept as written).
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        command = func.__name__[3:]
        parser = OptionParser(epilog=epilog)
        for option in option_list:
            parser.add_option(option)
        parser.set_usage(f"{command} [options] {arg_desc}".rstrip())

        def run(instance: Any, arg: str) -> Any:
            try:
                opts, rest = parser.parse_args(arg.split())
            except optparse.OptParseError as error:
                return instance.sendData(
                    f"Error: {command}: {error}; type 'help {command}' for usage")
            return func(instance, remaining_args(arg, rest) if rest else "", opts)

        run.__name__ = func.__name__
        run.__doc__ = func.__doc__
        run.__extended_doc__ = parser.format_help()
        return run

    return decorate

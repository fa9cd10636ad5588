"""Option parsing for our jCli commands: Jasmin's ``@options`` with one-line errors.

Jasmin's :func:`jasmin.protocols.cli.options.options` answers a parse error with the error
and then the whole usage text. Ours answers one line naming the command and pointing at
``help <command>``, and stops option parsing at the first plain argument, so the words of a
reason (``credit -t alice -25 refund -- test``) stay text. Options taking two values
(``-t UID AMOUNT``) use ``nargs=2``: optparse then takes both words as they are, so a
negative amount such as ``-25`` is a value, not an unknown option.

A command declares its :class:`Action` options (``-s``, ``-t``, ...) and what each accepts:
which other options, and whether the rest of the line. A line with two actions, or with an
option or words its action does not take, is refused with one line naming them, before
anything runs: silently ignoring ``--page`` or a second action would do something else than
the operator asked.
"""

from __future__ import annotations

import optparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Action:
    """An option choosing what a command does, and what may come with it."""

    dest: str
    """The option's ``dest`` (``top_up`` for ``-t/--top-up``)."""
    method: str
    """The manager method running it."""
    takes: frozenset[str] = frozenset()
    """``dest`` of the other options it accepts (``page`` for ``--page``)."""
    text: bool = False
    """Whether it reads the rest of the line (a reason, a message)."""


def check_action(parser: optparse.OptionParser, actions: Sequence[Action], opts: Any,
                 rest: list[str]) -> str | None:
    """Why this parsed line cannot run (None: it can).

    Refuses two actions at once, an option the action does not take, and words after the
    options when the action reads none. Without any action it answers None: the command
    itself says an action is missing.
    """
    given = [o for o in parser.option_list if getattr(opts, o.dest, None) is not None]
    chosen = [a for a in actions if getattr(opts, a.dest, None) is not None]
    names = {o.dest: str(o) for o in parser.option_list}
    if len(chosen) > 1:
        return " and ".join(names[a.dest] for a in chosen) + " cannot be used together"
    if not chosen:
        return None
    action = chosen[0]
    stray = [names[o.dest] for o in given if o.dest != action.dest and o.dest not in action.takes]
    if stray:
        return f"{names[action.dest]} does not take {', '.join(stray)}"
    if rest and not action.text:
        return f"{names[action.dest]} takes nothing more, got '{' '.join(rest)}'"
    return None


def options(option_list: list[optparse.Option], arg_desc: str = "",
            epilog: str = "", actions: Sequence[Action] = ()
            ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate ``do_<cmd>(self, arg, opts)`` like Jasmin's ``@options``.

    ``help <cmd>`` shows the method's docstring, then the usage, every option's help and
    ``epilog`` (kept as written). ``actions``: see :func:`check_action`; the decorated
    function runs only when the line passes it.
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
                refusal = check_action(parser, actions, opts, rest)
                if refusal is not None:
                    raise optparse.OptParseError(refusal)
            except optparse.OptParseError as error:
                return instance.sendData(
                    f"Error: {command}: {error}; type 'help {command}' for usage")
            return func(instance, remaining_args(arg, rest) if rest else "", opts)

        run.__name__ = func.__name__
        run.__doc__ = func.__doc__
        run.__extended_doc__ = parser.format_help()
        return run

    return decorate

"""The hook into Jasmin's MT interceptor step.

- :class:`InProcessInterceptor`: replaces Jasmin's interceptor PB client inside our
  jasmind launcher (no PB hop).
- :mod:`.interceptord`: ``jasmin-credits-interceptord``, a drop-in for Jasmin's
  ``interceptord.py`` for gateways that keep stock ``jasmind.py``.

Both run the operator's interceptor script exactly as Jasmin does, then charge the
message if the script let it through.
"""

from .inprocess import InProcessInterceptor
from .script import ScriptResult, run_script

__all__ = ["InProcessInterceptor", "ScriptResult", "run_script"]

"""A small synchronous jCli (Jasmin's telnet console) client for provisioning and tests.

>>> with JCliClient(port=8990) as jcli:
...     jcli.run("group -a", ["gid customers"])
...     print(jcli.run("user -l"))

:meth:`JCliClient.run` sends a command, answers an interactive session (``user -a``,
``smppccm -u cid``, ...) with the given lines then ``ok``, and returns the console's output
(telnet negotiation, terminal escapes, the echo and the prompt removed). Outside the reactor
only (it blocks); every read has a deadline.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterable

IAC = 255
_TELNET_SB = 250
_TELNET_SE = 240
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>78cDEHMZ]")
BANNER = "Authentication required."
PROMPTS = ("jcli : ", "> ", "Username: ", "Password: ")


class JCliError(Exception):
    """jCli refused a command, or did not answer in time."""


def _strip_telnet(data: bytes) -> tuple[bytes, bytes, bytes]:
    """Return (text without telnet commands, our replies refusing every option, leftover).

    ``leftover`` is an incomplete telnet command at the end of ``data``.
    """
    out = bytearray()
    replies = bytearray()
    i = 0
    while i < len(data):
        byte = data[i]
        if byte != IAC:
            out.append(byte)
            i += 1
            continue
        if i + 1 >= len(data):
            return bytes(out), bytes(replies), data[i:]
        command = data[i + 1]
        if command == IAC:
            out.append(IAC)
            i += 2
        elif command in (251, 252, 253, 254):  # WILL, WONT, DO, DONT
            if i + 2 >= len(data):
                return bytes(out), bytes(replies), data[i:]
            option = data[i + 2]
            if command == 253:  # DO -> WONT
                replies += bytes([IAC, 252, option])
            elif command == 251:  # WILL -> DONT
                replies += bytes([IAC, 254, option])
            i += 3
        elif command == _TELNET_SB:
            end = data.find(bytes([IAC, _TELNET_SE]), i)
            if end < 0:
                return bytes(out), bytes(replies), data[i:]
            i = end + 2
        else:
            i += 2
    return bytes(out), bytes(replies), b""


class JCliClient:
    """A logged-in jCli telnet session.

    :param timeout: seconds to wait for each answer (connect, login, every command).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8990, username: str = "jcliadmin",
                 password: str = "jclipwd", timeout: float = 10.0) -> None:
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._pending = b""

    def connect(self) -> JCliClient:
        """Connect and log in; raise :class:`JCliError` on refused credentials."""
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        # jCli shows no prompt before the first line: only this banner.
        _, prompt = self._read_until_prompt(banner=BANNER)
        if prompt == "jcli : ":  # authentication disabled
            return self
        self._send_line(self.username)
        self._read_until_prompt()
        self._send_line(self.password)
        output, prompt = self._read_until_prompt()
        if prompt != "jcli : ":
            self.close()
            raise JCliError(f"jCli login refused: {output.strip()!r}")
        return self

    def close(self) -> None:
        """Say ``quit`` and close the socket."""
        if self.sock is None:
            return
        try:
            self._send_line("quit")
        except OSError:
            pass
        self.sock.close()
        self.sock = None

    def __enter__(self) -> JCliClient:
        return self.connect() if self.sock is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, command: str, session: Iterable[str] | None = None, *,
            check: bool = True, timeout: float | None = None) -> str:
        """Run ``command``; with ``session``, send those lines then ``ok`` inside its session.

        Returns every output line (the echo of what we typed and the prompts removed). With
        ``check``, raises :class:`JCliError` when the output looks like a refusal (``Unknown``,
        ``Error``, ``Incorrect``, ``Missing``, ``Cannot``, ``not found``, ``Failed``).
        """
        outputs = [self._exchange(command, timeout)]
        if session is not None:
            for line in [*session, "ok"]:
                outputs.append(self._exchange(line, timeout))
        text = "\n".join(part for part in outputs if part)
        if check and _looks_like_error(text):
            raise JCliError(f"jCli refused {command!r}: {text}")
        return text

    def _exchange(self, line: str, timeout: float | None) -> str:
        self._send_line(line)
        output, _ = self._read_until_prompt(timeout)
        lines = [row.rstrip() for row in output.replace("\r", "").split("\n")]
        if lines and lines[0].strip().endswith(line.strip()):
            lines = lines[1:]
        return "\n".join(row for row in lines if row.strip())

    def _send_line(self, line: str) -> None:
        if self.sock is None:
            raise JCliError("not connected")
        self.sock.sendall(line.encode() + b"\r\n")

    def _read_until_prompt(self, timeout: float | None = None,
                           banner: str | None = None) -> tuple[str, str]:
        if self.sock is None:
            raise JCliError("not connected")
        deadline = time.monotonic() + (timeout or self.timeout)
        buffer = b""
        while True:
            text = _ANSI.sub(b"", buffer).decode("utf-8", "replace")
            for prompt in PROMPTS:
                if text.endswith(prompt):
                    return text[: -len(prompt)], prompt
            if banner is not None and banner in text:
                return text, banner
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JCliError(f"no jCli prompt after {timeout or self.timeout}s: {text!r}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise JCliError(f"jCli closed the connection: {text!r}")
            data, _, self._pending = _strip_telnet(self._pending + chunk)
            buffer += data


_ERRORS = re.compile(r"^(Unknown|Error|Incorrect|Missing|Cannot|Failed)|not found|Invalid",
                     re.IGNORECASE | re.MULTILINE)


def _looks_like_error(text: str) -> bool:
    return bool(_ERRORS.search(text))

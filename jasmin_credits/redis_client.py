"""Our Redis connection pool: txredisapi with a faster command encoder and writes.

txredisapi builds every command through generic per-argument encoding (about 4 us per
argument in CPython); a reserve call has ~30 arguments, so building it cost more than the
script's run inside Redis. :class:`FastRedisProtocol` encodes the same RESP bytes with
hiredis (or one Python pass), and sends them at once (:func:`write_at_once`). Replies are
parsed by txredisapi as usual (with hiredis when it is installed).
"""

from __future__ import annotations

import logging
from typing import Any

import txredisapi
from twisted.internet import ssl, tcp
from twisted.internet.interfaces import IReactorTCP, ISSLTransport

try:  # hiredis is a dependency; pack_command came with hiredis-py 2.1
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - an older hiredis
    _pack_command = None

log = logging.getLogger("jasmin-credits.redis")


def write_at_once(transport: Any) -> None:
    """Make a TCP transport's ``write`` send at once when nothing waits in its buffer.

    Twisted buffers every write and sends it on the reactor's next turn, once epoll says
    the socket is writable: per Redis call one more turn of the reactor before the
    request even leaves (plus an epoll_wait and two epoll_ctl). A hold waits for Redis's
    answer before Jasmin can answer its client, so that turn is latency on every message:
    about 40-50 us of a 130 us round trip here (docs/benchmarks.md). A request is small
    and the socket's send buffer is almost always empty, so it goes now; whatever the
    socket does not take, or an error, takes Twisted's buffered path as before, which
    keeps the order of the bytes and reports a broken connection as usual.

    TLS connections (a transport that is not a plain ``tcp.Connection``) are left alone.
    """
    if not isinstance(transport, tcp.Connection) or ISSLTransport.providedBy(transport):
        return
    buffered = transport.write

    def write(data: bytes) -> None:
        if (transport.connected and not transport.disconnecting
                and not transport.dataBuffer and not transport._tempDataBuffer):
            try:
                sent = transport.socket.send(data)
            except OSError:  # would block, or broken: the buffered path finds out
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        buffered(data)

    transport.write = write


class FastRedisProtocol(txredisapi.RedisProtocol):
    """txredisapi's protocol with a faster RESP encoder, whose requests leave at once
    (:func:`write_at_once`).

    The encoder is hiredis's ``pack_command`` (C, about three times faster than a Python
    loop on the 50-odd arguments of a batch call), with the bytes txredisapi would write
    for str, int and bytes. Other types (bool, bytearray, None...) and a hiredis without
    ``pack_command`` take a one-pass Python encoder with txredisapi's own rules; floats,
    which nothing of ours sends, go as Python's ``repr`` where txredisapi rounds them to
    six decimals.
    """

    def makeConnection(self, transport: Any) -> None:  # noqa: N802 - Twisted's name
        if self.factory.write_at_once:
            write_at_once(transport)
        super().makeConnection(transport)

    def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
        if _pack_command is not None:
            try:
                return _pack_command(args)
            except TypeError:  # a type hiredis does not take: txredisapi's rules below
                pass
        return self._build_command_python(args)

    def _build_command_python(self, args: tuple[Any, ...]) -> bytes:
        out = [b"*%d\r\n" % len(args)]
        append = out.append
        for arg in args:
            kind = type(arg)
            if kind is str:
                data = arg.encode()
            elif kind is int:
                data = b"%d" % arg
            elif kind is bytes:
                data = arg
            else:  # floats, bytearrays, subclasses: txredisapi's own rules
                data = self._encode_value(arg)
            append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(out)


class _Factory(txredisapi.RedisFactory):
    protocol = FastRedisProtocol
    write_at_once = True


def connection_pool(
    reactor: IReactorTCP,
    host: str,
    port: int,
    *,
    db: int = 0,
    poolsize: int = 4,
    password: str | None = None,
    username: str | None = None,
    tls: bool = False,
    connect_timeout: float = 2.0,
    lazy: bool = True,
    immediate_writes: bool = True,
) -> Any:
    """A reconnecting pool of ``poolsize`` connections, as txredisapi's ``makeConnection``.

    Lazy (the default): the handler is returned at once and commands wait for a
    connection; callers bound every call with a timeout. Not lazy: a Deferred firing with
    the handler once every connection is up. ``immediate_writes`` False: Twisted's
    buffered writes instead of :func:`write_at_once` (bench/bench_hold.py compares them).
    """
    factory = _Factory(f"{host}:{port}", db, poolsize, lazy, txredisapi.ConnectionHandler,
                       "utf-8", password, None, False, username)
    factory.continueTrying = True
    factory.write_at_once = immediate_writes
    for _ in range(poolsize):
        if tls:
            reactor.connectSSL(host, port, factory, ssl.ClientContextFactory(),
                               connect_timeout)
        else:
            reactor.connectTCP(host, port, factory, connect_timeout)
    if not lazy:
        return factory.deferred
    # Lazy: nobody awaits the pool's "ready" Deferred, and txredisapi fails it when Redis
    # refuses AUTH or SELECT (and stops reconnecting). Say so once, clearly; unconsumed it
    # is an "Unhandled error in Deferred" traceback. Calls then fail as store unavailable.
    factory.deferred.addErrback(_set_up_failed, f"{host}:{port}")
    return factory.handler


def _set_up_failed(failure: Any, where: str) -> None:
    log.error("Redis at %s refused the connection set-up: %s (check redis.password, "
              "redis.username and redis.db); every credit operation fails until a restart",
              where, failure.getErrorMessage())

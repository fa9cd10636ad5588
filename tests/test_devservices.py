"""The free ports local services get (jasmin_credits.devservices.free_port)."""

from __future__ import annotations

import socket

from jasmin_credits import devservices
from jasmin_credits.devservices import _ephemeral_range, free_port, port_is_free


def test_ports_are_outside_the_ephemeral_range_and_never_handed_out_twice():
    """A port the kernel could give an outgoing connection as its source port could be
    taken before our server binds it: service ports come from below that range, free,
    and one process never gets the same one twice."""
    low, high = _ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(port < low and port_is_free(port) for port in ports)
    with socket.socket() as client:  # what an outgoing connection's source port looks like
        client.bind(("127.0.0.1", 0))
        assert low <= client.getsockname()[1] <= high


def test_a_span_of_ports_is_free_and_reserved_whole():
    first = free_port(span=11)
    assert all(port_is_free(port) for port in range(first, first + 11))
    later = [free_port() for _ in range(200)]
    assert not set(later) & set(range(first, first + 11))


def test_a_port_in_use_is_skipped(monkeypatch):
    """A port something listens on is not handed out: the next free one is."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        taken = server.getsockname()[1]
        low, _ = _ephemeral_range()
        spare = next(p for p in range(low - 100, low)
                     if port_is_free(p) and p not in devservices._ISSUED)
        draws = iter([taken, spare])
        monkeypatch.setattr(devservices.random, "randint", lambda a, b: next(draws))
        assert free_port() == spare

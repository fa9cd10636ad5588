"""One private RabbitMQ broker for the test session, started only if a test asks for it.

Use it from a trial TestCase with ``@pytest.mark.usefixtures("rabbitmq")`` after importing
the fixtures into the test module (``from .rabbitmq_support import rabbitmq,
rabbitmq_server``): the class then has ``self.rabbitmq`` (a started
:class:`~jasmin_credits.devservices.RabbitMQServer`) and ``self.amqp_settings``. With
``JC_TEST_RABBITMQ_PORT`` set, an already running broker (guest/guest) is used instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from jasmin_credits.amqp import AmqpConnection, AmqpSettings
from jasmin_credits.devservices import RABBITMQ_SERVER, RabbitMQServer


class ExternalBroker:
    """A broker someone else runs (JC_TEST_RABBITMQ_PORT): it cannot be restarted."""

    def __init__(self, port: int):
        self.port = port

    def stop(self) -> None:
        raise RuntimeError("cannot restart an external broker")

    start = stop


def settings_for(server, **overrides) -> AmqpSettings:
    """AmqpSettings for ``server``, with quick reconnection for tests."""
    values = dict(host="127.0.0.1", port=server.port, connect_timeout=5.0,
                  initial_retry_delay=0.2, max_retry_delay=1.0)
    values.update(overrides)
    return AmqpSettings(**values)


@pytest.fixture(scope="session")
def rabbitmq_server():
    """Start RabbitMQ on loopback once per session (lazily: only when a test needs it)."""
    if os.environ.get("JC_TEST_RABBITMQ_PORT"):
        yield ExternalBroker(int(os.environ["JC_TEST_RABBITMQ_PORT"]))
        return
    if not os.access(RABBITMQ_SERVER, os.X_OK):
        pytest.skip("rabbitmq-server is not installed")
    rundir = Path(tempfile.mkdtemp(prefix="jc-rabbitmq-"))
    server = RabbitMQServer(rundir).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(rundir, ignore_errors=True)


@pytest.fixture(scope="class")
def rabbitmq(request, rabbitmq_server):
    """Give a TestCase class ``self.rabbitmq`` and ``self.amqp_settings``."""
    request.cls.rabbitmq = rabbitmq_server
    request.cls.amqp_settings = settings_for(rabbitmq_server)
    yield rabbitmq_server


async def listen(test: Any, settings: AmqpSettings, queue: str,
                 declare: Callable[[Any], Awaitable[Any]]) -> Any:
    """Consume ``queue`` (no acks) on a connection of its own, once ``declare(channel)`` has
    declared and bound it; the txAMQP queue of its deliveries. Stopped at the test's end."""
    got = {}

    async def on_ready(client, channel):
        await declare(channel)
        await channel.basic_consume(queue=queue, no_ack=True, consumer_tag="t")
        got["incoming"] = await client.queue("t")

    connection = AmqpConnection(settings, on_ready)
    connection.start()
    test.addCleanup(connection.stop)
    await connection.when_ready()
    return got["incoming"]

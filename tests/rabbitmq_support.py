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


async def private_broker(test: Any, prefix: str) -> RabbitMQServer:
    """A broker of ``test``'s own, for tests that stop and start it (the session's is
    shared); stopped and removed at the test's end."""
    from twisted.internet.threads import deferToThread

    rundir = Path(tempfile.mkdtemp(prefix=prefix))
    test.addCleanup(shutil.rmtree, rundir, True)
    server = RabbitMQServer(rundir)
    test.addCleanup(deferToThread, server.stop)
    await deferToThread(server.start)
    return server


async def jasmind_factory(test: Any, server: RabbitMQServer,
                          before_connect: Callable[[Any], Any] = lambda factory: None) -> Any:
    """Jasmin's own ``AmqpFactory`` as jasmind runs it, connected to ``server`` and
    reconnecting 1 s after a loss (Jasmin's default: 10); ``before_connect(factory)`` runs
    first (where our launcher installs its recovery). Disconnected at the test's end."""
    from jasmin.queues.configs import AmqpConfig
    from jasmin.queues.factory import AmqpFactory
    from twisted.internet import reactor

    from jasmin_credits.amqp import default_spec_path

    config = AmqpConfig()
    config.port = server.port
    config.spec = default_spec_path()
    config.log_file = str(server.rundir / "jasmin-amqp-client.log")
    config.reconnectOnConnectionLossDelay = config.reconnectOnConnectionFailureDelay = 1
    factory = AmqpFactory(config)
    before_connect(factory)
    factory.preConnect()
    reactor.connectTCP("127.0.0.1", server.port, factory)
    test.addCleanup(factory.disconnectAndDontRetryToConnect)
    await factory.getChannelReadyDeferred()
    return factory


"""Run as a script: ``python -m tests.e2e.amqp_peek PORT ROUTING_KEY``.

Binds a temporary queue to Jasmin's ``messaging`` exchange under ``ROUTING_KEY`` on the
RabbitMQ at ``PORT``, prints ``ready``, then prints the properties of the first message it
receives as one JSON line and exits (bytes shown as latin-1 text). Gives up after 60 s.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import defer, reactor, task

from jasmin_credits.amqp import EXCHANGE, AmqpConnection, AmqpSettings, declare_exchange


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


async def peek(port: int, routing_key: str) -> None:
    incoming = {}

    async def on_ready(client, channel):
        await declare_exchange(channel)
        declared = await channel.queue_declare(exclusive=True, auto_delete=True)
        await channel.queue_bind(queue=declared.queue, exchange=EXCHANGE,
                                 routing_key=routing_key)
        await channel.basic_consume(queue=declared.queue, no_ack=True, consumer_tag="peek")
        incoming["queue"] = await client.queue("peek")

    connection = AmqpConnection(AmqpSettings(port=port), on_ready)
    connection.start()
    await connection.when_ready()
    print("ready", flush=True)
    message = await incoming["queue"].get().addTimeout(60, reactor)
    print(json.dumps(_plain(dict(message.content.properties))), flush=True)
    await defer.maybeDeferred(connection.stop)


if __name__ == "__main__":
    task.react(lambda _: defer.Deferred.fromCoroutine(peek(int(sys.argv[1]), sys.argv[2])))

"""LocalGateway's own helpers (the whole gateway runs in tests/e2e and tests/faults)."""

from __future__ import annotations

import pytest

from jasmin_credits.jcli_client import JCliError
from jasmin_credits.localgateway import LocalGateway


class _RefusingJCli:
    def run(self, command, session=None, **kwargs):
        raise JCliError(f"jCli refused {command!r}: Failed adding connector, check log for "
                        "details")


def test_a_refused_connector_carries_the_logs_that_say_why(tmp_path):
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "smppclient-manager.log").write_text(
        "".join(f"line {i}\n" for i in range(40)) + "ERROR AMQP Broker channel is not yet ready\n")
    gateway = LocalGateway(tmp_path)
    gateway.ports["smsc"] = 2775
    with pytest.raises(JCliError) as raised:
        gateway.add_smsc_connector(_RefusingJCli())
    text = str(raised.value)
    assert "Failed adding connector" in text
    assert "--- smppclient-manager.log:" in text
    assert text.endswith("(unreadable: [Errno 2] No such file or directory: "
                         f"'{tmp_path}/log/amqp-client.log')")
    assert "ERROR AMQP Broker channel is not yet ready" in text
    assert "line 25\n" not in text  # only the end of each log

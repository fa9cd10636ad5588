"""The launcher's credits hooks, with a stub runtime (run as this file's ``__main__``).

LocalGateway starts ``python tests/e2e/test_launcher_hooks.py <jasmind flags>``, which runs
``jasmin_credits.launcher.main`` with :class:`StubRuntime`; the stub appends every hook call to
an events file named in its JSON config.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()


class StubRuntime:
    """Records the launcher's calls; intercepts in process, passing every message on."""

    def __init__(self, events: Path, in_process: bool) -> None:
        self.events = events
        self.in_process = in_process

    @classmethod
    def from_config_file(cls, path: str) -> StubRuntime:
        """Read ``{"events": PATH, "in_process": bool}``; ``"invalid": true`` → ConfigError."""
        import yaml  # LocalGateway rewrites the config as YAML (JSON is YAML too)

        from jasmin_credits.errors import ConfigError

        config = yaml.safe_load(Path(path).read_text())
        if config.get("invalid"):
            raise ConfigError(path, "invalid", "stub told to refuse")
        return cls(Path(config["events"]), config.get("in_process", True))

    def record(self, event: str) -> None:
        """Append one event line."""
        with open(self.events, "a") as events:
            events.write(event + "\n")

    def start(self):
        """Hook: before services start."""
        from twisted.internet import defer

        self.record("start")
        return defer.succeed(None)

    def stop(self):
        """Hook: at shutdown."""
        self.record("stop")

    def make_interceptor_client(self):
        """Hook: the in-process interceptor client."""
        runtime = self

        class Client:
            isConnected = True

            def run_script(self, script, routable):
                from twisted.internet import defer

                destination = routable.pdu.params["destination_addr"].decode()
                runtime.record(f"run_script {routable.user.uid} {destination}")
                return defer.succeed(pickle.dumps(routable, pickle.HIGHEST_PROTOCOL))

        self.record("make_interceptor_client")
        return Client()

    def install_amqp_broker(self, factory) -> None:
        """Hook: jasmind's AMQP broker client built (in process only); from then on, every
        ``dlr.*`` event jasmind publishes through it is recorded."""
        self.record(f"install_amqp_broker {type(factory).__name__}")
        publish = factory.publish

        def recording(**kw):
            if str(kw.get("routing_key")).startswith("dlr."):
                content = kw["content"]
                self.record(f"publish {kw['routing_key']} {content.body} "
                            f"{content.properties.get('message-id')}")
            return publish(**kw)

        factory.publish = recording

    def install_client_manager(self, manager) -> None:
        """Hook: jasmind's SMPP client manager built (in process only)."""
        self.record(f"install_client_manager {type(manager).__name__}")

    def install_jcli(self, factory) -> None:
        """Hook: jCli factory built."""
        self.record(f"install_jcli {type(factory).__name__}")

    def install_http(self, resource) -> None:
        """Hook: HTTP API resource built."""
        self.record(f"install_http {type(resource).__name__}")


@pytest.fixture(scope="module")
def hooked_gateway():
    """A gateway whose jasmind is our launcher with the stub runtime (no interceptord)."""
    from jasmin_credits.localgateway import LocalGateway

    rundir = Path(tempfile.mkdtemp(prefix="jc-hooks-"))
    events = rundir / "events.txt"
    config = rundir / "credits.json"
    config.write_text(json.dumps({"events": str(events), "in_process": True}))
    gateway = LocalGateway(rundir, config, launcher_argv=[sys.executable, str(HERE)])
    try:
        gateway.start()
        yield gateway, events
    finally:
        gateway.stop()
    yield_events = events.read_text().splitlines() if events.exists() else []
    assert yield_events and yield_events[-1] == "stop", yield_events
    shutil.rmtree(rundir, ignore_errors=True)


def test_hooks_called_in_order(hooked_gateway):
    """start, the interceptor client, then install_amqp_broker, install_client_manager,
    install_http and install_jcli with Jasmin's types."""
    _, events = hooked_gateway
    lines = events.read_text().splitlines()
    assert lines[:6] == ["start", "make_interceptor_client",
                         "install_amqp_broker AmqpFactory",
                         "install_client_manager SMPPClientManagerPB", "install_http HTTPApi",
                         "install_jcli JCliFactory"], lines


def test_amqp_broker_hook_sees_the_connectors_answers(hooked_gateway):
    """The factory the hook got is the one the SMPP client connector's listener publishes
    its submit_sm_resp through: the answer of a message sent now is seen there."""
    from jasmin_credits.localgateway import wait_until
    from tests.smpp_client import SmppTestClient

    gateway, events = hooked_gateway
    client = SmppTestClient(gateway.smpp_port, "alice", "alicepwd")
    try:
        seq = client.submit("33655500003", b"answer seen")
        client.pump(lambda: client.response_for(seq) is not None)
        response = client.response_for(seq)
        assert response.status == 0
    finally:
        client.close()
    msgid = response.message_id
    msgid = msgid.decode() if isinstance(msgid, bytes) else msgid
    seen = f"publish dlr.submit_sm_resp ESME_ROK {msgid}"
    wait_until(lambda: seen in events.read_text().splitlines(), 15,
               message="the connector's submit_sm_resp published through the hooked factory")


def test_in_process_interceptor_sees_smpp_and_http(hooked_gateway):
    """The in-process client is wired into the SMPP server and the HTTP API like Jasmin's."""
    import urllib.parse
    import urllib.request

    from jasmin_credits.localgateway import wait_until
    from tests.smpp_client import SmppTestClient

    gateway, events = hooked_gateway
    client = SmppTestClient(gateway.smpp_port, "alice", "alicepwd")
    try:
        seq = client.submit("33655500001", b"via smpp", registered_delivery=True)
        client.pump(lambda: client.response_for(seq) is not None and client.delivered)
        assert client.response_for(seq).status == 0
    finally:
        client.close()
    query = urllib.parse.urlencode({"username": "alice", "password": "alicepwd",
                                    "to": "33655500002", "content": "via http"})
    with urllib.request.urlopen(f"{gateway.http_url}/send?{query}", timeout=10) as response:
        assert response.read().startswith(b"Success")
    lines = events.read_text().splitlines()
    assert "run_script alice 33655500001" in lines
    assert "run_script alice 33655500002" in lines
    wait_until(lambda: {"33655500001", "33655500002"} <= {
        r["destination_addr"] for r in gateway.smsc_received()}, 15, message="both delivered")


def test_config_error_exits_2_without_traceback(tmp_path):
    """A ConfigError from the runtime prints its message and exits with status 2."""
    import jasmin_credits

    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"invalid": True}))
    env = {"PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(Path(jasmin_credits.__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, str(HERE), "--credits-config", str(config),
                           "--lock-file", str(tmp_path / "lock")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "stub told to refuse" in done.stderr
    assert "Traceback" not in done.stderr


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent.parent.parent))
    from jasmin_credits import launcher

    launcher.main(sys.argv[1:], runtime_loader=StubRuntime.from_config_file)

"""jasmin-credits-settled refuses bad metrics options with one clear line and an exit status,
started for real (nothing listens on its Redis and RabbitMQ ports: it starts anyway, as a
gateway does when Redis is down, then stops on the bad option)."""

from __future__ import annotations

import socket
import subprocess
import sys

from jasmin_credits.devservices import free_port


def run_settled(tmp_path, *options: str) -> subprocess.CompletedProcess:
    config = tmp_path / "credits.yaml"
    config.write_text(f"redis: {{host: 127.0.0.1, port: {free_port()}}}\n"
                      f"amqp: {{host: 127.0.0.1, port: {free_port()}}}\n")
    return subprocess.run(
        [sys.executable, "-m", "jasmin_credits.settled", "--credits-config", str(config),
         "--lock-file", str(tmp_path / "lock"), *options],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_metrics_fd_not_open(tmp_path):
    done = run_settled(tmp_path, "--metrics-fd", "57")
    assert done.returncode == 2
    assert "CRITICAL jasmin-credits --metrics-fd 57: Bad file descriptor" in done.stderr
    assert "Traceback" not in done.stderr


def test_metrics_port_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_settled(tmp_path, "--metrics-port", str(port))
    assert done.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr

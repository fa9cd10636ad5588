"""Test session set-up: one private redis-server for the whole run.

Trial test cases read its address from ``JC_TEST_REDIS_PORT``; each test uses its own key
prefix, so tests never see each other's keys.
"""

import os
import tempfile
from pathlib import Path

import pytest

from jasmin_credits.devservices import RedisServer


@pytest.fixture(scope="session", autouse=True)
def redis_server():
    """Start redis-server on loopback for the test session (or reuse JC_TEST_REDIS_PORT)."""
    if os.environ.get("JC_TEST_REDIS_PORT"):
        yield int(os.environ["JC_TEST_REDIS_PORT"])
        return
    rundir = Path(tempfile.mkdtemp(prefix="jc-redis-"))
    server = RedisServer(rundir).start()
    os.environ["JC_TEST_REDIS_PORT"] = str(server.port)
    try:
        yield server.port
    finally:
        os.environ.pop("JC_TEST_REDIS_PORT", None)
        server.stop()

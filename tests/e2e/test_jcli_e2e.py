"""``credit``/``price`` through a real telnet jCli of jasmind run by our launcher, and ``/credit``.

The gateway runs the credits runtime in process (``--credits-config``: the example config
pointed at the gateway's own Redis and RabbitMQ).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from jasmin_credits.localgateway import REPO_ROOT, LocalGateway

CREDITS_CONFIG = REPO_ROOT / "config" / "credits.yaml"
# The example config with its cards (default card world), a prefix of our own, and every
# wallet charged in process; nothing else of the example changes.
OVERRIDES = {"redis": {"key_prefix": "jce2e"}, "money": {"decimals": 4, "display_decimals": 2},
             "timezone": "UTC", "wallets": {"missing": "pass"},
             "charging": {"mode": "in-process"}}


@pytest.fixture(scope="module")
def gateway() -> Iterator[LocalGateway]:
    """A provisioned gateway (user alice/alicepwd) with the credits runtime in jasmind."""
    rundir = Path(tempfile.mkdtemp(prefix="jc-e2e-jcli-"))
    gw = LocalGateway(rundir, CREDITS_CONFIG, credits_overrides=OVERRIDES)
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()
    shutil.rmtree(rundir, ignore_errors=True)


def balance_in(text: str) -> str:
    match = re.search(r"balance (-?[0-9.]+)", text)
    assert match, text
    return match.group(1)


def test_top_up_show_list_and_log(gateway):
    """credit -t (also -25), -s, -l and --log answer over a real telnet session."""
    with gateway.jcli() as jcli:
        out = jcli.run("credit -t alice 100 e2e payment")
        assert out.startswith("Successfully added 100.00 credits to alice"), out
        out = jcli.run("credit -t alice -25 refund of test traffic")
        assert out.startswith("Successfully subtracted 25.00 credits from alice"), out
        balance = balance_in(out)
        show = jcli.run("credit -s alice")
        assert f"balance {balance}" in show.splitlines()
        assert "rate_card world" in show.splitlines()
        assert "plan -" in show.splitlines()
        listing = jcli.run("credit -l")
        assert any(line.startswith("#alice") and balance in line
                   for line in listing.splitlines()), listing
        log = jcli.run("credit --log alice")
        assert "refund of test traffic" in log
        assert "jcli:jcliadmin" in log
        bad = jcli.run("credit -t alice ten", check=False)
        assert bad.splitlines() == [
            "Error: amount: must be a decimal number such as '12' or '0.8', got 'ten'"]
        assert "Traceback" not in bad
        assert f"balance {balance}" in jcli.run("credit -s alice")


def test_price_quote(gateway):
    """price -q quotes with the world card and says whether the wallet accepts it."""
    with gateway.jcli() as jcli:
        jcli.run("credit -t alice 1")
        out = jcli.run("price -q alice +447700900123 Hello").splitlines()
        assert "prefix 447" in out
        assert "card world" in out
        assert "unit_price 0.05" in out
        assert "would_accept yes" in out
        assert "world" in jcli.run("price -l")


def test_persist_and_load_keep_balances(gateway):
    """persist says credits live in Redis; load (as at jasmind start) leaves balances alone."""
    with gateway.jcli() as jcli:
        balance = balance_in(jcli.run("credit -t alice 3"))
        out = jcli.run("persist", check=False)
        assert "nothing to persist" in out, out
        out = jcli.run("load", check=False)
        assert "load leaves them untouched" in out, out
    # Jasmin's smppcc manager answers load late (after the prompt): read in a new session.
    with gateway.jcli() as jcli:
        assert f"balance {balance}" in jcli.run("credit -s alice")


def test_http_credit(gateway):
    """GET /credit answers alice's own wallet; a wrong password gets 403."""
    with gateway.jcli() as jcli:
        balance = balance_in(jcli.run("credit -t alice 2"))
    query = urllib.parse.urlencode({"username": "alice", "password": "alicepwd"})
    with urllib.request.urlopen(f"{gateway.http_url}/credit?{query}", timeout=10) as response:
        body = json.loads(response.read())
    assert body["wallet"]["uid"] == "alice"
    assert body["wallet"]["balance"] == balance
    query = urllib.parse.urlencode({"username": "alice", "password": "wrong"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{gateway.http_url}/credit?{query}", timeout=10)
    assert refused.value.code == 403

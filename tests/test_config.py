"""The YAML config: defaults, the shipped example, and one clear error per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jasmin_credits.config import DEFAULT_LEASE_MESSAGES, load_config, parse_config
from jasmin_credits.errors import ConfigError, Refusal

REPO = Path(__file__).resolve().parent.parent


def test_example_config_loads_with_its_cards():
    """config/credits.yaml is valid and names both shipped cards."""
    config = load_config(REPO / "config" / "credits.yaml")
    assert config.cards.default == "world"
    assert [p.name for p in config.cards.files] == ["world.yaml", "premium.yaml"]
    assert config.decimals == 4


def test_store_writes_amounts_with_the_money_settings():
    """money.decimals and display_decimals reach the store (plan runs' reasons use them)."""
    config = parse_config({"money": {"decimals": 2, "display_decimals": 1}}, "x.yaml")
    assert (config.store.decimals, config.store.display_decimals) == (2, 1)


def test_defaults_never_use_esme_rsyserr():
    """Every default refusal status is a real SMPP code other than ESME_RSYSERR."""
    config = parse_config({}, "x.yaml")
    assert set(config.statuses) == set(Refusal)
    assert all(s.smpp not in (0, 8) for s in config.statuses.values())
    assert config.status(Refusal.INSUFFICIENT_CREDIT).http == 402
    assert config.status(Refusal.DAILY_CREDIT_LIMIT).http == 429


@pytest.mark.parametrize(
    "data, message",
    [
        ({"redis": {"port": "x"}}, "f.yaml: redis.port: must be a whole number from 1 to 65535"),
        ({"redsi": {}}, "f.yaml: redsi: unknown key"),
        ({"timezone": "Mars/Base"}, "f.yaml: timezone: unknown timezone 'Mars/Base'"),
        ({"wallets": {"missing": "maybe"}}, "f.yaml: wallets.missing: must be one of pass, refuse"),
        ({"charging": {"statuses": {"not_priced": {"smpp": "ESME_NOPE"}}}},
         "f.yaml: charging.statuses.not_priced.smpp: unknown SMPP status 'ESME_NOPE'"),
        ({"charging": {"statuses": {"no_wallet": {"smpp": 8}}}},
         "f.yaml: charging.statuses.no_wallet.smpp: ESME_RSYSERR makes clients retry"),
        ({"charging": {"statuses": {"no_wallet": {"http": 200}}}},
         "f.yaml: charging.statuses.no_wallet.http: must be a whole number from 400 to 599"),
        ({"cards": {"files": ["nope.yaml"]}}, "f.yaml: cards.files[0]: no such file"),
        ({"money": {"decimals": 2, "display_decimals": 3}},
         "f.yaml: money.display_decimals: must be a whole number from 0 to 2"),
        ({"settlement": {"unqueued_timeout": 100, "unanswered_timeout": 50}},
         "f.yaml: settlement.unanswered_timeout: must be longer than unqueued_timeout"),
        ([1, 2], "f.yaml: (top level): must be a mapping of keys"),
        ({"retention": {"reservation_days": 0}},
         "f.yaml: retention.reservation_days: must be a whole number from 1 to 365"),
        ({"retention": {"reservation_days": 1}, "settlement": {"unanswered_timeout": 86400}},
         "f.yaml: settlement.unanswered_timeout: must be shorter than retention.reservation_days"),
        ({"settlement": {"link": "consumer"}},
         "f.yaml: settlement.link: must be one of queueing, events, got 'consumer'"),
        ({"charging": {"mode": "interceptor-pb"}, "settlement": {"link": "queueing"}},
         "f.yaml: settlement.link: queueing needs charging.mode in-process or pre-routing"),
        ({"charging": {"lease": {"messages": -1}}},
         "f.yaml: charging.lease.messages: must be a whole number from 0 to 100000"),
        ({"charging": {"lease": {"mesages": 10}}}, "f.yaml: charging.lease.mesages: unknown key"),
        ({"charging": {"lease": {"gateway": "gw 1"}}},
         "f.yaml: charging.lease.gateway: must be 1 to 200 printable characters without spaces"),
        ({"charging": {"lease": {"gateway": 7}}},
         "f.yaml: charging.lease.gateway: must be a non-empty string, got 7"),
        ({"charging": {"lease": {"messages": 10}}, "settlement": {"link": "queueing"}},
         "f.yaml: charging.lease: credit leases need settlement.link: events"),
        ({"settlement": {"nice": 20}},
         "f.yaml: settlement.nice: must be a whole number from 0 to 19, got 20"),
        ({"settlement": {"nice": "low"}},
         "f.yaml: settlement.nice: must be a whole number from 0 to 19, got 'low'"),
    ],
)
def test_bad_values_name_file_key_and_problem(data, message, tmp_path):
    """Each mistake raises one ConfigError naming the file, the key and the problem."""
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "f.yaml", tmp_path)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    "mode, link, expected",
    [
        ("in-process", None, "events"),
        ("pre-routing", None, "events"),
        ("interceptor-pb", None, "events"),
        ("in-process", "events", "events"),
        ("pre-routing", "events", "events"),
        ("interceptor-pb", "events", "events"),
        ("pre-routing", "queueing", "queueing"),
    ],
)
def test_settlement_link_defaults_by_charging_mode(mode, link, expected):
    """Every mode links from events by default (durable); queueing is the launcher's opt-in."""
    settlement = {} if link is None else {"link": link}
    config = parse_config({"charging": {"mode": mode}, "settlement": settlement}, "f.yaml")
    assert config.settlement.link == expected


@pytest.mark.parametrize("sections, expected", [
    ({}, DEFAULT_LEASE_MESSAGES),
    ({"charging": {"mode": "in-process"}}, DEFAULT_LEASE_MESSAGES),
    ({"charging": {"mode": "interceptor-pb"}}, DEFAULT_LEASE_MESSAGES),  # (tenth session)
    ({"charging": {"mode": "interceptor-pb", "lease": {"messages": 10}}}, 10),
    ({"charging": {"lease": {"seconds": 20}}}, DEFAULT_LEASE_MESSAGES),
    ({"charging": {"lease": {"messages": None}}}, DEFAULT_LEASE_MESSAGES),
    ({"charging": {"lease": {"messages": 0}}}, 0),
    # where leases cannot work, the default is off rather than a refused file
    ({"settlement": {"link": "queueing"}}, 0),
    ({"settlement": {"enabled": False}}, 0),
])
def test_credit_leases_are_on_by_default_where_they_work(sections, expected):
    """Left unset, ``charging.lease.messages`` is 100 with events links in every charging
    mode, and off where settlement cannot write leased holds."""
    assert parse_config(sections, "f.yaml").lease.messages == expected


def test_example_config_takes_credit_leases():
    """The shipped example runs with the default lease (it leaves the section commented)."""
    assert load_config(REPO / "config" / "credits.yaml").lease.messages == DEFAULT_LEASE_MESSAGES


def test_credit_lease_settings():
    """``charging.lease`` sets their size and times."""
    lease = parse_config({"charging": {"lease": {"messages": 50, "seconds": 20,
                                                 "idle_seconds": 4}}}, "f.yaml").lease
    assert (lease.messages, lease.seconds, lease.idle) == (50, 20.0, 4.0)
    assert lease.gateway is None  # the host name and the launcher's lock file
    named = parse_config({"charging": {"lease": {"gateway": "gw-paris-1"}}}, "f.yaml").lease
    assert named.gateway == "gw-paris-1"


def test_example_config_links_from_events():
    """The shipped example documents the launcher's default."""
    assert load_config(REPO / "config" / "credits.yaml").settlement.link == "events"


def test_reservation_days_sets_reservation_and_link_lifetimes(tmp_path):
    store = parse_config({"retention": {"reservation_days": 3}}, "f.yaml", tmp_path).store
    assert store.reservation_ttl.days == 3 and store.message_link_ttl.days == 3


def test_malformed_yaml_names_the_line(tmp_path):
    """Broken YAML is reported with its file and line."""
    path = tmp_path / "credits.yaml"
    path.write_text("redis:\n  port: [1, 2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: line ")
    assert "not valid YAML" in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path):
    """A config path that does not exist is one clear error."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=10,
)
sections = st.sampled_from(["redis", "amqp", "money", "retention", "wallets", "charging",
                            "cards", "settlement", "timezone"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(sections, yaml_values, max_size=4))
def test_fuzzed_configs_load_or_fail_with_config_error(data):
    """Any YAML-shaped document either loads or raises ConfigError, never another error."""
    try:
        parse_config(data, "fuzz.yaml", REPO / "config")
    except ConfigError as error:
        assert str(error).startswith("fuzz.yaml")


def test_settled_child_runs_below_jasmind_by_default(tmp_path):
    assert parse_config({}, "f.yaml", tmp_path).settlement.nice == 10
    assert parse_config({"settlement": {"nice": 0}}, "f.yaml", tmp_path).settlement.nice == 0


def test_publisher_confirms_are_opt_in():
    """Confirm mode on jasmind's channel costs ingest at window 1 (docs/benchmarks.md)."""
    assert parse_config({}, "f.yaml").amqp.publisher_confirms is False
    on = parse_config({"amqp": {"publisher_confirms": True}}, "f.yaml")
    assert on.amqp.publisher_confirms is True

"""The one YAML configuration file of jasmin-credits, validated at load.

Found by ``--credits-config PATH`` or the ``JASMIN_CREDITS_CONFIG`` environment variable.
Every problem raises :class:`~jasmin_credits.errors.ConfigError` naming the file, the key
and what is wrong; nothing starts with a half-valid configuration. See README.md,
"Configuration reference", and ``config/credits.yaml`` for every key with its default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from smpp.pdu.constants import command_status_name_map

from .amqp import AmqpSettings
from .errors import ConfigError, Refusal
from .events_out import WebhookSettings
from .store import StoreSettings

ENV_VAR = "JASMIN_CREDITS_CONFIG"

# Refusal statuses. SMPP codes must be ones Jasmin's SMPP stack knows (others become
# ESME_RSYSERR, which clients retry forever). Permanent refusals use ESME_RX_P_APPN
# (0x65, "permanent application error": do not retry); limits use ESME_RX_T_APPN
# (0x64, "temporary": retry after the period resets); destinations use ESME_RINVDSTADR
# as Jasmin does for "no route"; a store outage uses ESME_RMSGQFUL (0x14, retry later).
DEFAULT_STATUSES: dict[Refusal, tuple[str, int]] = {
    Refusal.INSUFFICIENT_CREDIT: ("ESME_RX_P_APPN", 402),
    Refusal.DAILY_CREDIT_LIMIT: ("ESME_RX_T_APPN", 429),
    Refusal.WEEKLY_CREDIT_LIMIT: ("ESME_RX_T_APPN", 429),
    Refusal.MONTHLY_CREDIT_LIMIT: ("ESME_RX_T_APPN", 429),
    Refusal.DAILY_MESSAGE_LIMIT: ("ESME_RX_T_APPN", 429),
    Refusal.WEEKLY_MESSAGE_LIMIT: ("ESME_RX_T_APPN", 429),
    Refusal.MONTHLY_MESSAGE_LIMIT: ("ESME_RX_T_APPN", 429),
    Refusal.NO_WALLET: ("ESME_RX_P_APPN", 402),
    Refusal.NOT_PRICED: ("ESME_RINVDSTADR", 412),
    Refusal.INVALID_DESTINATION: ("ESME_RINVDSTADR", 400),
    Refusal.STORE_UNAVAILABLE: ("ESME_RMSGQFUL", 503),
}


@dataclass(frozen=True)
class RedisConfig:
    host: str = "127.0.0.1"
    port: int = 6379
    password: str | None = None
    username: str | None = None
    tls: bool = False
    db: int = 0
    key_prefix: str = "jc"
    poolsize: int = 4
    connect_timeout: float = 2.0


@dataclass(frozen=True)
class Status:
    """What a client is told for one refusal reason."""

    smpp: int
    smpp_name: str
    http: int


@dataclass(frozen=True)
class SettlementConfig:
    enabled: bool = True
    process: str = "child"
    link: str = "events"
    """``queueing`` (our launcher links each hold as Jasmin queues the message) or
    ``events`` (settlement links from the ``submit.sm.*`` events); see config/credits.yaml."""
    queue_prefix: str = "jasmin_credits"
    unqueued_timeout: float = 600.0
    unanswered_timeout: float = 86_400.0
    unanswered_policy: str = "refund"
    dlr_refund: frozenset[str] = frozenset()
    sweep_interval: float = 30.0
    nice: int = 10
    """Niceness ``jasmin-credits-settled`` adds to itself when a gateway starts it
    (``process: child``): its work can wait, jasmind's answers cannot."""
    retry_statuses: frozenset[str] = frozenset(
        {"ESME_RSYSERR", "ESME_RTHROTTLED", "ESME_RMSGQFUL", "ESME_RINVSCHED"})


@dataclass(frozen=True)
class EventsConfig:
    """Event delivery from the outbox (see jasmin_credits.events_out)."""

    enabled: bool = True
    amqp: bool = True
    exchange: str = "credits"
    webhook: WebhookSettings | None = None
    interval: float = 1.0
    claim_idle: float = 60.0


@dataclass(frozen=True)
class LeaseConfig:
    """Credit leases (see jasmin_credits.leasing); ``messages`` 0: off."""

    messages: int = 0
    """0 in a config built in code; a file that does not set it gets
    :data:`DEFAULT_LEASE_MESSAGES` where leases can work (:func:`parse_config`)."""
    seconds: float = 30.0
    idle: float = 10.0
    gateway: str | None = None
    """Names this gateway's leases in Redis, so that it ends them when it starts again
    after dying; None: the host name and the launcher's lock file."""


@dataclass(frozen=True)
class PlansConfig:
    """The plan scheduler (see jasmin_credits.plans)."""

    enabled: bool = True
    interval: float = 30.0
    catch_up: float | None = None


@dataclass(frozen=True)
class CardsConfig:
    files: tuple[Path, ...] = ()
    default: str | None = None
    users: dict[str, str] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CreditsConfig:
    """Everything the YAML file says, with defaults filled in."""

    source: str = "<defaults>"
    redis: RedisConfig = field(default_factory=RedisConfig)
    amqp: AmqpSettings = field(default_factory=AmqpSettings)
    decimals: int = 4
    display_decimals: int | None = 2
    currency: str = "credits"
    store: StoreSettings = field(default_factory=StoreSettings)
    missing_wallet: str = "pass"
    on_store_error: str = "refuse"
    charge_in_process: bool = True
    charging_mode: str = "pre-routing"
    """``pre-routing``, ``in-process`` or ``interceptor-pb`` (see config/credits.yaml)."""
    ensure_interceptor: bool = True
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    unrecorded_journal: Path = Path("/var/lib/jasmin-credits/unrecorded.jsonl")
    statuses: dict[Refusal, Status] = field(default_factory=dict)
    cards: CardsConfig = field(default_factory=CardsConfig)
    settlement: SettlementConfig = field(default_factory=SettlementConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    plans: PlansConfig = field(default_factory=PlansConfig)

    def status(self, refusal: Refusal) -> Status:
        """The SMPP and HTTP status for ``refusal``."""
        return self.statuses[refusal]


class _Section:
    """Typed reads from one mapping of the file, with errors naming the key."""

    def __init__(self, source: str, data: Any, path: str = ""):
        self.source, self.path = source, path
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(source, path or "(top level)", "must be a mapping of keys")
        self.data = data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), problem)

    def raw(self, name: str, default: Any = None) -> Any:
        """The value of ``name``; an absent key or an empty value (``key:``) is the default."""
        self.used.add(name)
        value = self.data.get(name)
        return default if value is None else value

    def section(self, name: str) -> _Section:
        return _Section(self.source, self.raw(name), self.key(name))

    def string(self, name: str, default: str | None, choices: tuple[str, ...] = ()) -> Any:
        value = self.raw(name, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self.error(name, f"must be a non-empty string, got {value!r}")
        if choices and value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def integer(self, name: str, default: int | None, low: int = 0, high: int = 2**53) -> Any:
        value = self.raw(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(name, f"must be a whole number from {low} to {high}, got {value!r}")
        return value

    def seconds(self, name: str, default: float) -> float:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.error(name, f"must be a positive number of seconds, got {value!r}")
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, got {value!r}")
        return value

    def mapping(self, name: str) -> dict[str, str]:
        value = self.raw(name, {}) or {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str | int) and isinstance(v, str) for k, v in value.items()
        ):
            raise self.error(name, "must map ids to card names")
        return {str(k): v for k, v in value.items()}

    def finish(self) -> None:
        """Refuse keys nobody read: a typo must not silently fall back to a default."""
        unknown = sorted(set(map(str, self.data)) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def _statuses(section: _Section) -> dict[Refusal, Status]:
    statuses = {}
    for refusal, (smpp_default, http_default) in DEFAULT_STATUSES.items():
        entry = section.section(refusal.label)
        smpp = entry.raw("smpp", smpp_default)
        if isinstance(smpp, str):
            if smpp not in command_status_name_map:
                raise entry.error("smpp", f"unknown SMPP status {smpp!r}")
            code, name = command_status_name_map[smpp], smpp
        elif isinstance(smpp, int) and not isinstance(smpp, bool):
            names = [n for n, v in command_status_name_map.items() if v == smpp]
            if not names or smpp == 0:
                raise entry.error("smpp", f"{smpp:#x} is not an SMPP status Jasmin can send")
            code, name = smpp, names[0]
        else:
            raise entry.error("smpp", f"must be an SMPP status name or number, got {smpp!r}")
        if code == 0x08:
            raise entry.error("smpp", "ESME_RSYSERR makes clients retry forever; choose another")
        http = entry.integer("http", http_default, 400, 599)
        entry.finish()
        statuses[refusal] = Status(code, name, http)
    section.finish()
    return statuses


def _status_names(section: _Section, name: str, default: frozenset[str]) -> frozenset[str]:
    value = section.raw(name, sorted(default))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise section.error(name, "must be a list of SMPP status names")
    unknown = [v for v in value if v not in command_status_name_map]
    if unknown:
        raise section.error(name, f"unknown SMPP status {unknown[0]!r}")
    return frozenset(value)


def _timezone(section: _Section) -> ZoneInfo:
    name = section.string("timezone", "UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise section.error("timezone", f"unknown timezone {name!r}") from None


def _events(e: _Section) -> EventsConfig:
    a = e.section("amqp")
    amqp_enabled = a.boolean("enabled", True)
    exchange = a.string("exchange", "credits")
    if exchange == "messaging":
        raise a.error("exchange", "must not be Jasmin's own exchange 'messaging'")
    a.finish()
    webhook = None
    if e.raw("webhook") is not None:
        h = e.section("webhook")
        url = h.string("url", None)
        if url is None or not url.startswith(("http://", "https://")):
            raise h.error("url", f"must be an http:// or https:// URL, got {url!r}")
        webhook = WebhookSettings(
            url=url, secret=h.string("secret", None), timeout=h.seconds("timeout", 5.0),
            retries=h.integer("retries", 5, 0, 100), backoff=h.seconds("backoff", 1.0),
        )
        h.finish()
    events = EventsConfig(
        enabled=e.boolean("enabled", True), amqp=amqp_enabled, exchange=exchange,
        webhook=webhook, interval=e.seconds("interval", 1.0),
        claim_idle=e.seconds("claim_idle", 60.0),
    )
    e.finish()
    return events


DEFAULT_LEASE_MESSAGES = 100
"""``charging.lease.messages`` when the file does not set it and leases can work."""


def _lease(section: _Section) -> LeaseConfig:
    """The lease section; ``messages`` None when the file does not set it."""
    lease = LeaseConfig(
        messages=section.integer("messages", None, 0, 100_000),
        seconds=section.seconds("seconds", 30.0),
        idle=section.seconds("idle_seconds", 10.0),
        gateway=section.string("gateway", None),
    )
    if lease.gateway is not None and not valid_gateway_name(lease.gateway):
        raise section.error("gateway", "must be 1 to 200 printable characters without "
                            f"spaces, got {lease.gateway!r}")
    section.finish()
    return lease


def valid_gateway_name(name: str) -> bool:
    """A gateway name for ``charging.lease.gateway``: part of a Redis key."""
    return 0 < len(name) <= 200 and name.isprintable() and not any(c.isspace() for c in name)


def _plans(p: _Section) -> PlansConfig:
    catch_up = p.raw("catch_up")
    plans = PlansConfig(
        enabled=p.boolean("enabled", True), interval=p.seconds("interval", 30.0),
        catch_up=None if catch_up is None else p.seconds("catch_up", 0.0),
    )
    p.finish()
    return plans


def parse_config(data: Any, source: str, base_dir: Path | None = None) -> CreditsConfig:
    """Validate a parsed YAML document; ``base_dir`` resolves relative card paths."""
    top = _Section(source, data)
    base_dir = base_dir or Path.cwd()

    r = top.section("redis")
    redis = RedisConfig(
        host=r.string("host", "127.0.0.1"),
        port=r.integer("port", 6379, 1, 65535),
        password=r.string("password", None),
        username=r.string("username", None),
        tls=r.boolean("tls", False),
        db=r.integer("db", 0, 0, 15),
        key_prefix=r.string("key_prefix", "jc"),
        poolsize=r.integer("poolsize", 4, 1, 64),
        connect_timeout=r.seconds("connect_timeout", 2.0),
    )
    if any(c in redis.key_prefix for c in " {}"):
        raise r.error("key_prefix", "must not contain spaces or braces")
    call_timeout = r.seconds("timeout", 2.0)
    r.finish()

    a = top.section("amqp")
    amqp = AmqpSettings(
        host=a.string("host", "127.0.0.1"),
        port=a.integer("port", 5672, 1, 65535),
        vhost=a.string("vhost", "/"),
        username=a.string("username", "guest"),
        password=a.string("password", "guest"),
        heartbeat=a.integer("heartbeat", 0, 0, 3600),
        connect_timeout=a.seconds("connect_timeout", 5.0),
        publisher_confirms=a.boolean("publisher_confirms", False),
    )
    a.finish()

    m = top.section("money")
    decimals = m.integer("decimals", 4, 0, 8)
    display = m.integer("display_decimals", min(2, decimals), 0, decimals)
    currency = m.string("currency", "credits")
    m.finish()

    timezone = _timezone(top)

    ret = top.section("retention")
    store = StoreSettings(
        timezone=timezone,
        call_timeout=call_timeout,
        decimals=decimals,
        display_decimals=display,
        log_retention=timedelta(days=ret.integer("log_days", 400, 1, 100_000)),
        events_retention=timedelta(days=ret.integer("events_days", 90, 1, 100_000)),
    )
    # A settled reservation and its message links stay this long for late refunds (a DLR,
    # an operator); each message costs a few hundred bytes of Redis memory for that time.
    reservation_days = ret.integer("reservation_days", 8, 1, 365)
    store = replace(store, reservation_ttl=timedelta(days=reservation_days),
                    message_link_ttl=timedelta(days=reservation_days))
    ret.finish()

    w = top.section("wallets")
    missing_wallet = w.string("missing", "pass", ("pass", "refuse"))
    w.finish()

    c = top.section("charging")
    charging_mode = c.string("mode", "pre-routing",
                             ("pre-routing", "in-process", "interceptor-pb"))
    in_process = charging_mode != "interceptor-pb"
    on_store_error = c.string("on_store_error", "refuse", ("refuse", "pass"))
    ensure_interceptor = c.boolean("ensure_interceptor", True)
    journal = base_dir / c.string("unrecorded_journal", "/var/lib/jasmin-credits/unrecorded.jsonl")
    statuses = _statuses(c.section("statuses"))
    lease = _lease(c.section("lease"))
    c.finish()

    k = top.section("cards")
    files_raw = k.raw("files", [])
    if not isinstance(files_raw, list) or not all(isinstance(f, str) for f in files_raw):
        raise k.error("files", "must be a list of rate card file paths")
    files = tuple((base_dir / f).resolve() for f in files_raw)
    for i, path in enumerate(files):
        if not path.is_file():
            raise k.error(f"files[{i}]", f"no such file: {path}")
    cards = CardsConfig(
        files=files,
        default=k.string("default", None),
        users=k.mapping("users"),
        groups=k.mapping("groups"),
    )
    k.finish()

    s = top.section("settlement")
    dlr_refund = s.raw("dlr_refund", []) or []
    if not isinstance(dlr_refund, list) or not all(isinstance(x, str) for x in dlr_refund):
        raise s.error("dlr_refund", "must be a list of DLR stats such as [UNDELIV, REJECTD]")
    settlement = SettlementConfig(
        enabled=s.boolean("enabled", True),
        # child by default: settlement off jasmind's reactor, durable (tests/faults kill
        # jasmind alone and check the child stops and the new one takes over)
        process=s.string("process", "child", ("gateway", "child", "separate")),
        # events is the durable default: under queueing, a link or an answer still in the
        # launcher's memory when jasmind dies is lost (tests/faults caught one such message)
        link=s.string("link", "events",
                      ("queueing", "events")),
        queue_prefix=s.string("queue_prefix", "jasmin_credits"),
        unqueued_timeout=s.seconds("unqueued_timeout", 600.0),
        unanswered_timeout=s.seconds("unanswered_timeout", 86_400.0),
        unanswered_policy=s.string("unanswered_policy", "refund", ("refund", "commit")),
        dlr_refund=frozenset(x.upper() for x in dlr_refund),
        sweep_interval=s.seconds("sweep_interval", 30.0),
        # below jasmind's priority: on a busy machine settlement's work waits a little,
        # jasmind's answers do not (docs/benchmarks.md, ninth session)
        nice=s.integer("nice", 10, 0, 19),
        retry_statuses=_status_names(s, "retry_statuses", SettlementConfig.retry_statuses),
    )
    if settlement.unanswered_timeout <= settlement.unqueued_timeout:
        raise s.error("unanswered_timeout", "must be longer than unqueued_timeout")
    if settlement.unanswered_timeout >= store.reservation_ttl.total_seconds():
        raise s.error("unanswered_timeout", "must be shorter than retention.reservation_days "
                      "(a reservation must outlive its settlement)")
    # (queueing links at queueing time, from the PDU: a leased hold is written from the event)
    leases_work = settlement.link == "events"
    if lease.messages is None:
        # on by default where they can work: the window-1 cost of a hold is its Redis round
        # trip (docs/benchmarks.md); a configuration that cannot use them holds one by one
        default = DEFAULT_LEASE_MESSAGES if leases_work and settlement.enabled else 0
        lease = replace(lease, messages=default)
    elif lease.messages and not leases_work:
        raise c.error("lease", "credit leases need settlement.link: events (settlement "
                      "writes each leased hold from the message's submit.sm event)")
    if settlement.link == "queueing" and charging_mode == "interceptor-pb":
        raise s.error("link", "queueing needs charging.mode in-process or pre-routing (our "
                      "launcher links as Jasmin queues); with interceptor-pb use events")
    s.finish()
    events = _events(top.section("events"))
    plans = _plans(top.section("plans"))
    top.finish()

    return CreditsConfig(
        source=source, redis=redis, amqp=amqp, decimals=decimals, display_decimals=display,
        currency=currency, store=store, missing_wallet=missing_wallet,
        on_store_error=on_store_error, charge_in_process=in_process,
        charging_mode=charging_mode,
        ensure_interceptor=ensure_interceptor, lease=lease, unrecorded_journal=journal,
        statuses=statuses,
        cards=cards, settlement=settlement, events=events, plans=plans,
    )


def load_config(path: str | os.PathLike | None = None) -> CreditsConfig:
    """Read and validate the config file at ``path`` (or ``$JASMIN_CREDITS_CONFIG``)."""
    if path is None:
        path = os.environ.get(ENV_VAR)
        if not path:
            raise ConfigError(ENV_VAR, "", "no config file given (--credits-config or "
                              f"${ENV_VAR})")
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except OSError as error:
        raise ConfigError(str(path), "", f"cannot read: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise ConfigError(str(path), where, f"not valid YAML: "
                          f"{getattr(error, 'problem', None) or error}") from None
    return parse_config(data, str(path), path.resolve().parent)

"""Exceptions and refusal reasons shared by every part of jasmin-credits."""

from __future__ import annotations

from enum import IntEnum


class CreditsError(Exception):
    """Base class of every error jasmin-credits raises on purpose."""


class ConfigError(CreditsError):
    """A configuration or rate card file is wrong.

    The message names the file, the key and what is wrong, e.g.
    ``config/cards/world.yaml: entries[12].price: must be >= 0, got '-1'``.
    """

    def __init__(self, source: str, key: str, problem: str):
        self.source, self.key, self.problem = str(source), key, problem
        where = f"{self.source}: {key}" if key else self.source
        super().__init__(f"{where}: {problem}")


class InvalidDestination(CreditsError):
    """A destination address cannot be an E.164 number; the message says why."""


class InvalidAmount(CreditsError):
    """An amount is not a number with at most the configured number of decimals."""


class NotPriced(CreditsError):
    """No rate card entry matches the destination and the card has no default price."""


class StoreUnavailable(CreditsError):
    """The credit store (Redis) did not answer in time or is not connected."""


class UnknownWallet(CreditsError):
    """The operation needs a wallet the user does not have."""


class Refusal(IntEnum):
    """Why a message was refused. The Lua scripts return these codes as their status.

    0 is never a refusal: scripts return it for success.
    """

    INSUFFICIENT_CREDIT = 1
    DAILY_CREDIT_LIMIT = 2
    WEEKLY_CREDIT_LIMIT = 3
    MONTHLY_CREDIT_LIMIT = 4
    DAILY_MESSAGE_LIMIT = 5
    WEEKLY_MESSAGE_LIMIT = 6
    MONTHLY_MESSAGE_LIMIT = 7
    NO_WALLET = 8
    NOT_PRICED = 9
    INVALID_DESTINATION = 10
    STORE_UNAVAILABLE = 11

    @property
    def label(self) -> str:
        """Lower-case name used in config keys, logs and metrics (``daily_credit_limit``)."""
        return self.name.lower()

    @property
    def text(self) -> str:
        """What a client is told, e.g. ``Daily credit limit reached``."""
        return _TEXTS[self]


_TEXTS = {
    Refusal.INSUFFICIENT_CREDIT: "Insufficient credit",
    Refusal.DAILY_CREDIT_LIMIT: "Daily credit limit reached",
    Refusal.WEEKLY_CREDIT_LIMIT: "Weekly credit limit reached",
    Refusal.MONTHLY_CREDIT_LIMIT: "Monthly credit limit reached",
    Refusal.DAILY_MESSAGE_LIMIT: "Daily message limit reached",
    Refusal.WEEKLY_MESSAGE_LIMIT: "Weekly message limit reached",
    Refusal.MONTHLY_MESSAGE_LIMIT: "Monthly message limit reached",
    Refusal.NO_WALLET: "No credit wallet",
    Refusal.NOT_PRICED: "Destination not priced",
    Refusal.INVALID_DESTINATION: "Invalid destination",
    Refusal.STORE_UNAVAILABLE: "Credit store unavailable, retry later",
}

"""jasmin-credits: prepaid, country-priced SMS credits for the Jasmin SMS gateway.

The public surface: what operators' scripts and the other modules use. Everything else
is an implementation detail that may change.
"""

from .charging import Charger, Decision
from .config import CreditsConfig, load_config
from .destinations import normalise
from .errors import (
    ConfigError,
    CreditsError,
    InvalidAmount,
    InvalidDestination,
    NotPriced,
    Refusal,
    StoreUnavailable,
    UnknownWallet,
)
from .keys import Keys
from .money import format_amount, parse_amount
from .parts import Parts, count_pdu, count_text
from .pricing import Pricer, Quote
from .ratecard import Rate, RateCard, load_card
from .runtime import CreditsRuntime
from .store import CreditStore, Hold, LogEntry, Settled, StoreSettings, Wallet

__version__ = "0.1.0"

__all__ = [
    "Charger", "ConfigError", "CreditStore", "CreditsConfig", "CreditsError",
    "CreditsRuntime", "Decision", "Hold", "InvalidAmount", "InvalidDestination", "Keys",
    "LogEntry", "NotPriced", "Parts", "Pricer", "Quote", "Rate", "RateCard", "Refusal",
    "Settled", "StoreSettings", "StoreUnavailable", "UnknownWallet", "Wallet",
    "count_pdu", "count_text", "format_amount", "load_card", "load_config", "normalise",
    "parse_amount",
]

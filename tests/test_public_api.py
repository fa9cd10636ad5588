"""The package's public names are pinned: removing or renaming one is a visible change."""

import jasmin_credits

PUBLIC = {
    "Charger", "ConfigError", "CreditStore", "CreditsConfig", "CreditsError",
    "CreditsRuntime", "Decision", "Hold", "InvalidAmount", "InvalidDestination", "Keys",
    "LogEntry", "NotPriced", "Parts", "Pricer", "Quote", "Rate", "RateCard", "Refusal",
    "Settled", "StoreSettings", "StoreUnavailable", "UnknownWallet", "Wallet",
    "count_pdu", "count_text", "format_amount", "load_card", "load_config", "normalise",
    "parse_amount",
}


def test_public_names_are_exported():
    """__all__ lists exactly the public names, and each one resolves."""
    assert set(jasmin_credits.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(jasmin_credits, name) is not None


def test_public_things_have_docstrings():
    """Every public class and function explains itself."""
    for name in PUBLIC:
        assert getattr(jasmin_credits, name).__doc__, name

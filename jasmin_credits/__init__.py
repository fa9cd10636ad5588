"""jasmin-credits: prepaid, country-priced SMS credits for the Jasmin SMS gateway."""

__version__ = "0.1.0"

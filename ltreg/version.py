"""The ltreg version (one place; saved into config.json and model cards)."""

__version__ = "0.2.0"

"""snackloc: train, evaluate and register a two-head (class + box) localization model."""

__version__ = "0.1.0"

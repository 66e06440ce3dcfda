"""snackloc: train, evaluate and register a two-head (class + box) localization model."""

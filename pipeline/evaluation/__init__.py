"""Metrics, plots and the promotion gate: plain functions of predictions and numbers.

Imports ``pipeline.core`` and ``pipeline.data``."""

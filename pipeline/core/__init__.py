"""Foundations every room may import: params, user errors, output paths, file writing and
process settings. Imports nothing else from ``pipeline``."""

"""Annotation formats of labeling tools: import into the snacks layout, export back.

Imports ``pipeline.core`` and ``pipeline.data``."""

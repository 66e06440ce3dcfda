"""The checks the validate and dedup stages run: the Great Expectations suite, image-file
checks, the near-duplicate index and contact sheets. Imports ``pipeline.core`` and
``pipeline.data``."""

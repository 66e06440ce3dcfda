"""The data contract and everything that reads, checks, converts or makes data.

Imports ``pipeline.core`` only."""

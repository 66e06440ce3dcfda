"""`python -m pipeline` is the same as the `snackloc` command."""

from pipeline.cli import main

main()

"""Errors caused by the user's data, files or parameters.

The CLI prints these as one clear message (no traceback) and exits with status 2.
"""


class UserError(Exception):
    """A mistake the user can fix: bad params, bad data layout, missing inputs."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message

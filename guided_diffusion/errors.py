"""Exceptions shared across the package."""


class UserError(ValueError):
    """Bad input from the user. The CLI prints the message as one line (no traceback); it names the
    problem and the fix."""

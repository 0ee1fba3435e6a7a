class MinimechError(Exception):
    """Base class of every error minimech raises on purpose; the CLI prints it as one line."""


class UsageError(MinimechError, ValueError):
    """An argument with a value the function does not accept (the message names the accepted ones)."""

class MinimechError(Exception):
    """Base class of every error minimech raises on purpose; the CLI prints it as one line."""

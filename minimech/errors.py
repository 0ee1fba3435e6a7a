class MinimechError(Exception):
    """Base class of every error minimech raises on purpose; the CLI prints it as one line."""


class UsageError(MinimechError, ValueError):
    """An argument with a value the function does not accept (the message names the accepted ones)."""


def check_positions(pos, n_pos: int, what: str = "pos") -> None:
    """One clear error when an int position (or a list/tensor of them) is outside a prompt of n_pos tokens;
    slices, masks and None pass through (they cannot be out of range in the same way)."""
    if pos is None or isinstance(pos, slice):
        return
    if hasattr(pos, "dtype") and getattr(pos, "dtype", None) is not None and str(pos.dtype) == "torch.bool":
        return
    values = [pos] if isinstance(pos, int) else list(pos.flatten().tolist() if hasattr(pos, "flatten") else pos)
    bad = [p for p in values if isinstance(p, int) and not -n_pos <= p < n_pos]
    if bad:
        raise UsageError(f"{what}={bad[0]} is outside the prompt, which has {n_pos} positions: use "
                         f"{-n_pos} .. {n_pos - 1} (-1 is the last token)")

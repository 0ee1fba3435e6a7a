"""Helpers for checks.py's compare functions. Each returns None when right, else one message about the learner's
value: its type, shape, dtype, first NaN or first wrong entry (with the learner's value there, never the reference's).
"""

from __future__ import annotations

import math
from numbers import Number

import torch


def _type_name(x) -> str:
    return "a tensor" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}" if x is not None else "None"


def _index(flat: int, shape) -> tuple:
    index = []
    for size in reversed(shape):
        index.append(flat % size)
        flat //= size
    return tuple(reversed(index))


def expect_shape(got, shape, what: str = "your output") -> "str | None":
    """None if `got` is a tensor of `shape` (None in `shape` matches any size), else a message."""
    if not isinstance(got, torch.Tensor):
        return f"{what} is {_type_name(got)}; return a torch.Tensor of shape {list(shape)}"
    wanted = list(shape)
    if got.ndim != len(wanted) or any(w is not None and g != w for g, w in zip(got.shape, wanted)):
        shown = [("any" if w is None else w) for w in wanted]
        return f"{what} has shape {list(got.shape)}; expected shape {shown}"
    return None


def _close_tensor(got, want: torch.Tensor, atol: float, rtol: float, what: str) -> "str | None":
    if not isinstance(got, torch.Tensor):
        return f"{what} is {_type_name(got)}; return a torch.Tensor"
    problem = expect_shape(got, want.shape, what)
    if problem:
        return problem
    if want.dtype == torch.bool and got.dtype != torch.bool:
        return f"{what} has dtype {got.dtype}; expected a bool tensor (True/False)"
    if want.is_floating_point() and not (got.is_floating_point() or got.is_complex()):
        return f"{what} has dtype {got.dtype}; expected a floating-point tensor (integer division or a cast?)"
    if got.is_complex() != want.is_complex():
        return f"{what} has dtype {got.dtype}, which does not match the expected kind of number ({want.dtype})"
    g = got.detach().cpu().to(torch.complex128 if got.is_complex() else torch.float64)
    w = want.detach().cpu().to(g.dtype)
    if g.numel() == 0:
        return None
    bad_nan = torch.isnan(g) & ~torch.isnan(w)
    if bad_nan.any():
        idx = _index(int(bad_nan.flatten().nonzero()[0]), g.shape)
        return f"{what} contains NaN (first at index {idx}): a division by zero, or a softmax over all -inf?"
    wrong = ~torch.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True)
    if wrong.any():
        flat = int(wrong.flatten().nonzero()[0])
        idx = _index(flat, g.shape)
        value = got.detach().flatten()[flat].item()
        return (f"{what} is wrong at {int(wrong.sum())} of {g.numel()} entries; the first is index {idx}, "
                f"where your value is {value:.6g} (tolerance atol={atol:g}, rtol={rtol:g})")
    return None


def close(got, want, atol: float = 1e-5, rtol: float = 1e-4, what: str = "your output") -> "str | None":
    """None if `got` matches `want` (tensors, numbers, bools, strings, None, nested lists/tuples/dicts of these)
    within atol + rtol * |want|, else a message naming the first property that broke and the learner's value."""
    if isinstance(want, torch.Tensor):
        return _close_tensor(got, want, atol, rtol, what)
    if isinstance(want, bool) or want is None or isinstance(want, str):
        if type(got) is not type(want) and not (isinstance(want, bool) and isinstance(got, bool)):
            return f"{what} is {_type_name(got)}; expected {_type_name(want)}"
        return None if got == want else f"{what} is {got!r}, which is not right"
    if isinstance(want, Number):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, Number) or isinstance(got, bool):
            return f"{what} is {_type_name(got)}; expected a number"
        if math.isnan(got) and not math.isnan(want):
            return f"{what} is NaN"
        if abs(got - want) > atol + rtol * abs(want):
            return f"{what} is {got:.6g}, which is not right (tolerance atol={atol:g}, rtol={rtol:g})"
        return None
    if isinstance(want, (list, tuple)):
        if not isinstance(got, (list, tuple)):
            return f"{what} is {_type_name(got)}; expected a {type(want).__name__} of {len(want)} items"
        if len(got) != len(want):
            return f"{what} has {len(got)} items; expected {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            problem = close(g, w, atol, rtol, f"{what}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return f"{what} is {_type_name(got)}; expected a dict"
        if set(got) != set(want):
            missing, extra = sorted(map(str, set(want) - set(got))), sorted(map(str, set(got) - set(want)))
            return f"{what} has the wrong keys (missing {missing}, unexpected {extra})"
        for key in want:
            problem = close(got[key], want[key], atol, rtol, f"{what}[{key!r}]")
            if problem:
                return problem
        return None
    raise TypeError(f"close() cannot compare a reference of type {type(want).__name__}")

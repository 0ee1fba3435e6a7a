"""How a learner's outputs travel from the process that ran them to the grading process, without pickle.

encode(value) splits a value into a JSON-able structure and a dict of tensors; the tensors are written with
safetensors (a header of names, dtypes and shapes, then raw bytes: loading it runs no code) and the structure as
JSON. Supported: tensors, numpy arrays (as tensors), bools, ints, floats (NaN and inf too), strings, None, and
(nested) tuples, lists and dicts with str or int keys.
"""

from __future__ import annotations

import math

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from .api import GradingError

MAX_OUTPUT_BYTES = 1 << 30  # one learner's outputs for one exercise; more is certainly a bug


class WireError(GradingError):
    """A learner's function returned something the grader cannot carry back (e.g. a generator or a model)."""


def encode(value, tensors: dict, prefix: str) -> object:
    """The JSON structure of `value`; each tensor goes into `tensors` under a key starting with `prefix`."""
    if isinstance(value, torch.Tensor) or type(value).__module__ == "numpy" and hasattr(value, "shape"):
        t = torch.as_tensor(value).detach()
        if t.is_sparse or t.device.type == "meta":
            raise WireError("returned a sparse or meta tensor; return a dense tensor")
        key = f"{prefix}.{len(tensors)}"
        tensors[key] = t.cpu().contiguous().clone()
        return {"tensor": key}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**53 else {"bigint": str(value)}
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, torch.Size):
        value = tuple(value)
    if isinstance(value, (list, tuple)):
        items = [encode(v, tensors, prefix) for v in value]
        return {"tuple": items} if isinstance(value, tuple) else {"list": items}
    if isinstance(value, dict):
        if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in value):
            raise WireError("returned a dict whose keys are not all strings or ints")
        return {"dict": [[k, encode(v, tensors, prefix)] for k, v in value.items()]}
    raise WireError(f"returned {type(value).__name__}, which the grader cannot read back: return a tensor, a number, "
                    "a bool, a string, or a tuple/list/dict of these")


def decode(structure, tensors: dict):
    """The value that encode() took apart."""
    if structure is None or isinstance(structure, (bool, int, float, str)):
        return structure
    if not isinstance(structure, dict) or len(structure) != 1:
        raise WireError(f"malformed output structure {str(structure)[:80]}")
    (kind, body), = structure.items()
    if kind == "tensor":
        return tensors[body]
    if kind == "float":
        return float(body)
    if kind == "bigint":
        return int(body)
    if kind in ("tuple", "list"):
        items = [decode(v, tensors) for v in body]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict":
        return {k: decode(v, tensors) for k, v in body}
    raise WireError(f"malformed output structure: unknown kind {kind!r}")


def tensors_to_bytes(tensors: dict) -> bytes:
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    if size > MAX_OUTPUT_BYTES:
        raise WireError(f"returned {size / 2**20:.0f} MiB of tensors; the grader accepts at most "
                        f"{MAX_OUTPUT_BYTES / 2**20:.0f} MiB")
    return save_tensors(tensors) if tensors else b""


def tensors_from_bytes(data: bytes) -> dict:
    return load_tensors(data) if data else {}

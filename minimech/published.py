"""GPT-2's published checkpoints: the manifest (weights/gpt2-manifest.json), checking a Hugging Face file against it
when it is one the manifest lists, and knowing GPT-2 small by its weights rather than by the name it was loaded by.

    load("path/to/gpt2")                # model.safetensors of 548,105,171 bytes: its sha256 is checked (about a
                                        # second), a mismatch is a ChecksumError; any other file loads unchecked
    identify_gpt2(model)                # GPT2Identity("gpt2", published=True, reason="GPT-2 small: ...")
    is_gpt2_small(model)                # what the lessons' paper checks ask

Only a file whose name and size the manifest records is hashed, so loading anything else costs nothing extra.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import loading  # weights_dir, sha256_file and the errors, looked up at call time (tests repoint weights_dir)
from .config import PRESETS


def read_manifest() -> dict:
    """weights/gpt2-manifest.json: the official checkpoints' repositories, files, sizes and sha256."""
    path = loading.weights_dir() / "gpt2-manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise loading.WeightsError(f"cannot read the checksum manifest {path} ({e}): reinstall minimech") from None


def published_files() -> list[tuple[str, str, int, str]]:
    """(checkpoint, file name, size, sha256) of every file the manifest records both a size and a sha256 for (none
    when an installation has no manifest at all)."""
    if not (loading.weights_dir() / "gpt2-manifest.json").exists():
        return []
    return [(name, filename, spec["size"], spec["sha256"]) for name, entry in read_manifest().items()
            if not name.startswith("_") for section in ("files", "verified_files")
            for filename, spec in entry.get(section, {}).items() if spec.get("size") and spec.get("sha256")]


_HASHED: dict[tuple, str] = {}  # (real path, size, mtime) -> sha256: a process hashes each file once


def check_published(path) -> str | None:
    """If `path` is a file the manifest lists (same file name, same size: a quick test that skips every other file),
    check its sha256: return the checkpoint's name ("gpt2") when it matches, raise ChecksumError when not.
    None for a file the manifest does not list."""
    path = Path(path)
    size = path.stat().st_size
    listed = [(name, sha) for name, filename, length, sha in published_files() if (filename, length) == (path.name,
                                                                                                             size)]
    if not listed:
        return None
    key = (str(path.resolve()), size, path.stat().st_mtime_ns)
    actual = _HASHED.get(key) or loading.sha256_file(path)
    name = next((name for name, sha in listed if sha == actual), None)
    if name is None:
        name, expected = listed[0]
        raise loading.ChecksumError(
            f"{path} is damaged: it has the size of {name}'s published {path.name} ({size:,} bytes) but its sha256 is "
            f"{actual}, not {expected} (weights/gpt2-manifest.json), so it would load as subtly wrong weights. "
            f"Download it again (`minimech fetch {name}`, or delete it from the Hugging Face cache). If it holds other "
            "weights on purpose (a fine-tuned GPT-2 saved in the same layout), load it with verify=False "
            "(`minimech --no-verify ...`)")
    _HASHED[key] = actual
    return name


def fingerprint(model) -> tuple:
    """What tells, later, that the weights changed after loading (fold_ln, an edit): each parameter's storage and
    in-place version counter (free to read), and one float32 sum per parameter (for a model that was copied or moved,
    whose storage differs)."""
    params = [p.detach() for p in model.parameters()]
    return [(p.data_ptr(), p._version) for p in params], torch.stack([p.float().sum().cpu() for p in params])


def _unchanged(model) -> bool:
    storage, sums = model.published_fingerprint
    if [(p.detach().data_ptr(), p._version) for p in model.parameters()] == storage:
        return True
    return torch.allclose(fingerprint(model)[1], sums, rtol=1e-5, atol=1e-5)


@dataclass(frozen=True)
class GPT2Identity:
    """Which official GPT-2 checkpoint a model is, from its weights (not the name it was loaded by)."""

    checkpoint: str | None  # the official checkpoint whose architecture it has (gpt2, gpt2-medium, ...), or None
    published: bool  # its weights are that checkpoint's published file: sha256 checked at load, unchanged since
    reason: str  # one sentence, for messages

    @property
    def is_gpt2_small(self) -> bool:
        return self.checkpoint == "gpt2" and self.published


def identify_gpt2(model) -> GPT2Identity:
    """Whether `model` is GPT-2 small (or another official GPT-2 checkpoint): its config has that checkpoint's
    architecture and its weights came from the published file, checked against the manifest's sha256 when loaded
    (load(verify=True), the default) and unchanged since. The lessons' GPT-2-small paper checks run only then."""
    def shape(cfg):
        return {k: v for k, v in cfg.to_dict().items() if k != "model_name"}

    cfg = model.cfg
    checkpoint = next((name for name, preset in PRESETS.items() if shape(preset) == shape(cfg)), None)
    if checkpoint is None:
        return GPT2Identity(None, False, f"{cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, d_vocab "
                                         f"{cfg.d_vocab} is none of the official GPT-2 checkpoints (not GPT-2 small)")
    published = getattr(model, "published_as", None) == checkpoint and _unchanged(model)
    if checkpoint != "gpt2":
        return GPT2Identity(checkpoint, published, f"{checkpoint}, not GPT-2 small: the papers' GPT-2-small figures "
                                                   "do not apply to it")
    if getattr(model, "published_as", None) != checkpoint:
        return GPT2Identity(checkpoint, False, f"GPT-2 small's architecture, but its weights were not checked against "
                            f"the sha256 of GPT-2 small's published file: it was loaded from {model.source}, a file "
                            "weights/gpt2-manifest.json does not list (or with verify off); the published "
                            "model.safetensors that `minimech fetch gpt2` downloads is recognised")
    if not published:
        return GPT2Identity(checkpoint, False, "GPT-2 small's published weights, changed since loading (a weight "
                                               "transform or an edit)")
    return GPT2Identity(checkpoint, True, "GPT-2 small: its weights file matched the manifest's sha256")


def is_gpt2_small(model) -> bool:
    """identify_gpt2(model).is_gpt2_small: the test the lessons' GPT-2-small paper checks run under."""
    return identify_gpt2(model).is_gpt2_small

"""The SAE shipped beside a shipped model: weights/NAME/sae-HOOK/ (sae.safetensors + sae.json, its card).

    sae = sae_for(model)            # the shipped SAE of a shipped model (its middle MLP), checked against the weights
    minimech sae train --ship       # retrain it for the model weights/DEFAULT names (or --model NAME), then measure
                                    # it and write it there: a few minutes on 2 CPU cores

The hook is the middle MLP's output neurons, blocks.{n_layers // 2}.mlp.hook_post (hook_resid_pre of that block for
an attention-only model), so the same command fits whatever model is the default.
"""

from __future__ import annotations

import time
from pathlib import Path

from .autoencoder import SAEError, SparseAutoencoder
from .training import SAETrainSettings

# The shipped SAE's recipe (`minimech sae train --ship`); README's and the card's figures come from it.
SHIPPED_SETTINGS = SAETrainSettings(expansion=4, activation="relu", l1_coefficient=3.0, lr=2e-3, batch_size=4096,
                                    training_tokens=2_000_000, dead_window=100, resample_every=100, seed=0)
DIR_PREFIX = "sae-"


def default_hook(model) -> str:
    """The middle MLP's neurons (blocks.{n_layers // 2}.mlp.hook_post), or that block's resid_pre without MLPs."""
    layer = model.cfg.n_layers // 2
    return f"blocks.{layer}.hook_resid_pre" if model.cfg.attn_only else f"blocks.{layer}.mlp.hook_post"


def shipped_dir(name: str, hook: str) -> Path:
    from ..loading import weights_dir

    return weights_dir() / name / f"{DIR_PREFIX}{hook}"


def _model_name(model) -> str:
    name = (getattr(model, "card", None) or {}).get("name")
    if name is None:
        raise SAEError("only minimech's shipped models have SAEs shipped beside them, and this model has no card "
                       "naming one: train one with minimech.sae.train_sae(model, hook) (command line: minimech sae "
                       "train --model MODEL --hook HOOK --out DIR)")
    return name


def sae_for(model, hook: str | None = None) -> SparseAutoencoder:
    """The SAE shipped for a shipped model at `hook` (default: default_hook(model)), bound to the model."""
    name = _model_name(model)
    hook = hook or default_hook(model)
    path = shipped_dir(name, hook)
    if not path.is_dir():
        from ..loading import weights_dir

        there = sorted(p.name.removeprefix(DIR_PREFIX) for p in (weights_dir() / name).glob(f"{DIR_PREFIX}*"))
        shipped = f"; shipped for {name}: {', '.join(there)}" if there else ""
        raise SAEError(f"no SAE shipped for {name!r} at {hook} ({path} does not exist){shipped}. Train it with "
                       f"`minimech sae train --model {name} --hook {hook} --ship`")
    return SparseAutoencoder.load(path, model)


def train_shipped(model, hook: str | None = None, settings: SAETrainSettings | None = None, progress: bool = True,
                  out: Path | None = None):
    """Train the shipped recipe on `model`, measure it (evaluate_sae) and save it to `out` (default: beside the
    shipped model). Returns (sae, metrics, folder)."""
    from .metrics import evaluate_sae, record
    from .training import train_sae

    hook = hook or default_hook(model)
    folder = Path(out) if out is not None else shipped_dir(_model_name(model), hook)
    if folder.exists() and not folder.is_dir():
        raise SAEError(f"{folder} is a file; an SAE is saved into a folder")
    start = time.perf_counter()
    sae = train_sae(model, hook, settings or SHIPPED_SETTINGS, progress=progress)
    metrics = evaluate_sae(model, sae, progress=progress)
    record(sae, metrics)
    if out is None:  # the shipped recipe, written where sae_for finds it
        sae.cfg.training["command"] = f"minimech sae train --model {_model_name(model)} --ship" + (
            "" if hook == default_hook(model) else f" --hook {hook}")
    sae.cfg.training["wall_time_with_eval_s"] = round(time.perf_counter() - start, 1)
    return sae, metrics, sae.save(folder)

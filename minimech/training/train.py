"""The training loop for minimech's shipped models: AdamW, linear warm-up then cosine decay, periodic evaluation.

Deterministic given a seed (data order, initialisation and dropout-free training all come from seeded generators;
CPU float results can still differ across torch versions or thread counts, which the card records).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.nn.utils import parametrize
from ..notebook import tqdm  # a widget in Jupyter, text elsewhere; never "IProgress not found"

from ..model import GPT


@dataclass
class TrainSettings:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 100
    seed: int = 0
    tie_embeddings: bool = False  # train with W_U = W_E^T, as GPT-2 was trained (see tied())
    schedule_steps: int | None = None  # the steps the lr schedule spans (default: steps); more than steps runs the
    # first `steps` steps of a longer run, as `minimech train RECIPE --steps N` does

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        total = max(self.steps, self.schedule_steps or 0)
        progress = min(1.0, (step - self.warmup) / max(1, total - self.warmup))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class Phase:
    """Rows to train on until step `until` (None: to the end), and which next-token targets count in the loss."""
    rows: torch.Tensor  # [n_rows, row_len] token ids, each row starting with BOS
    targets: torch.Tensor | None = None  # [n_rows, row_len - 1] bool: targets in the loss (None: all of them)
    until: int | None = None
    batch_size: int | None = None  # rows per step in this phase (None: the settings' batch_size)


@dataclass
class TrainLog:
    history: list[dict] = field(default_factory=list)  # one row per evaluation: step, loss, metrics
    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0  # this process's CPU time: on a shared machine, wall time includes waiting for a core


def optimizer_for(model: GPT, settings: TrainSettings) -> torch.optim.AdamW:
    # No weight decay on biases and LayerNorm weights (GPT-2's recipe): decaying them towards 0 has no meaning.
    decay = [p for n, p in model.named_parameters() if n.split(".")[-1].startswith("W_")]
    no_decay = [p for n, p in model.named_parameters() if not n.split(".")[-1].startswith("W_")]
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.95))


class _Transposed(torch.nn.Module):
    """W_U computed as W_E^T on every use, so the two stay one matrix while training."""

    def __init__(self, embed):
        super().__init__()
        self.embed = [embed]  # a list, so the embedding is not registered (and counted) twice

    def forward(self, _unused: torch.Tensor) -> torch.Tensor:
        return self.embed[0].W_E.T  # [d_model, d_vocab]


@contextmanager
def tied(model: GPT, enabled: bool = True):
    """Within the block, model.unembed.W_U is W_E^T (GPT-2 ties its embeddings). On exit W_U becomes an ordinary
    parameter again, holding W_E^T's final value, so saving and loading need nothing special.

    Tying matters for copying: a token's unembedding then equals its embedding, so a head that copies what it
    attends to (an OV circuit near the identity) can copy tokens it was rarely trained to predict."""
    if not enabled:
        yield model
        return
    parametrize.register_parametrization(model.unembed, "W_U", _Transposed(model.embed), unsafe=True)
    try:
        yield model
    finally:
        parametrize.remove_parametrizations(model.unembed, "W_U", leave_parametrized=True)


def train(model: GPT, data: torch.Tensor | list[Phase], settings: TrainSettings,
          evaluate: Callable[[GPT], dict] | None = None, progress: bool = True) -> TrainLog:
    """Train `model` in place on rows of `data` [n_rows, n_ctx] (or on phases of rows, one after another), sampled
    without replacement epoch by epoch."""
    phases = [Phase(data)] if isinstance(data, torch.Tensor) else list(data)
    if not phases or any(p.until is None for p in phases[:-1]):
        raise ValueError("phases: give at least one, and an `until` step to every phase but the last")
    untils = [p.until for p in phases[:-1]]
    if untils != sorted(set(untils)):
        raise ValueError(f"phases: the `until` steps must be increasing, got {untils}")
    with tied(model, settings.tie_embeddings):
        return _train(model, phases, settings, evaluate, progress)


class _Sampler:
    """Batches of one phase's rows, without replacement epoch by epoch."""

    def __init__(self, phase: Phase, batch_size: int, gen: torch.Generator):
        self.phase, self.batch_size, self.gen = phase, batch_size, gen
        self.order, self.cursor = torch.randperm(len(phase.rows), generator=gen), 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.cursor + self.batch_size > len(self.order):
            self.order, self.cursor = torch.randperm(len(self.phase.rows), generator=self.gen), 0
        idx = self.order[self.cursor: self.cursor + self.batch_size]
        self.cursor += self.batch_size
        targets = self.phase.targets
        return self.phase.rows[idx], (None if targets is None else targets[idx])


def _train(model: GPT, phases: list[Phase], settings: TrainSettings, evaluate, progress: bool) -> TrainLog:
    gen = torch.Generator().manual_seed(settings.seed)
    opt = optimizer_for(model, settings)
    log, start, cpu_start, recent = TrainLog(), time.perf_counter(), time.process_time(), []
    samplers = [_Sampler(phase, phase.batch_size or settings.batch_size, gen) for phase in phases]
    bar = tqdm(range(settings.steps), desc="training", disable=not progress, unit="step")
    for step in bar:
        current = next(i for i, p in enumerate(phases) if p.until is None or step < p.until)
        batch, targets = samplers[current].next()
        for group in opt.param_groups:
            group["lr"] = settings.lr_at(step)
        model.train()
        per_token = model.loss(model(batch), batch, per_token=True)  # [batch, pos - 1]
        if targets is None:
            loss = per_token.mean()
        else:  # a batch with no target kept gets a zero loss, not the NaN of an empty mean
            loss = per_token[targets].sum() / targets.sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        opt.step()
        recent.append(loss.item())
        last = step == settings.steps - 1
        if (step + 1) % settings.eval_every == 0 or last:
            row = {"step": step + 1, "loss": sum(recent) / len(recent), "lr": settings.lr_at(step)}
            recent = []
            if evaluate is not None:
                model.eval()
                with torch.no_grad():
                    row.update(evaluate(model))
            log.history.append(row)
            bar.set_postfix({k: round(v, 3) for k, v in row.items() if k != "step" and isinstance(v, float)})
    model.eval()
    log.wall_time_s = time.perf_counter() - start
    log.cpu_time_s = time.process_time() - cpu_start
    return log

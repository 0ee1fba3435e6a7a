"""The training loop for minimech's shipped models: AdamW, linear warm-up then cosine decay, periodic evaluation.

Deterministic given a seed (data order, initialisation and dropout-free training all come from seeded generators;
CPU float results can still differ across torch versions or thread counts, which the card records).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

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

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class TrainLog:
    history: list[dict] = field(default_factory=list)  # one row per evaluation: step, loss, metrics
    wall_time_s: float = 0.0


def optimizer_for(model: GPT, settings: TrainSettings) -> torch.optim.AdamW:
    # No weight decay on biases and LayerNorm weights (GPT-2's recipe): decaying them towards 0 has no meaning.
    decay = [p for n, p in model.named_parameters() if n.split(".")[-1].startswith("W_")]
    no_decay = [p for n, p in model.named_parameters() if not n.split(".")[-1].startswith("W_")]
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.95))


def train(model: GPT, data: torch.Tensor, settings: TrainSettings,
          evaluate: Callable[[GPT], dict] | None = None, progress: bool = True) -> TrainLog:
    """Train `model` in place on rows of `data` [n_rows, n_ctx], sampled without replacement epoch by epoch."""
    gen = torch.Generator().manual_seed(settings.seed)
    opt = optimizer_for(model, settings)
    log, start = TrainLog(), time.perf_counter()
    order, cursor, recent = torch.randperm(len(data), generator=gen), 0, []
    bar = tqdm(range(settings.steps), desc="training", disable=not progress, unit="step")
    for step in bar:
        if cursor + settings.batch_size > len(order):
            order, cursor = torch.randperm(len(data), generator=gen), 0
        batch = data[order[cursor: cursor + settings.batch_size]]
        cursor += settings.batch_size
        for group in opt.param_groups:
            group["lr"] = settings.lr_at(step)
        model.train()
        loss = model(batch, return_type="loss")
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
    return log

"""Repeated spans for induction at every distance: a chunk of random tokens written into a row of running text and
copied once, the copy starting `distance` tokens after the chunk, with distances drawn log-uniformly from just past
the chunk to the end of the row (short distances are as common in text as long ones are rare, and a copying head
that works at 8 tokens must still work at 100)."""

from __future__ import annotations

import math

import numpy as np
import torch


def copy_spans(rows: torch.Tensor, token_pool: torch.Tensor, seed: int, fraction: float,
               chunk_len: tuple[int, int] = (4, 10)) -> tuple[torch.Tensor, list[list[tuple]]]:
    """(rows with chunks written in, each row's [(start, length, copy_start)]): in `fraction` of the rows (chosen at
    random) one chunk of chunk_len random tokens (inclusive range) from token_pool at a random start, copied
    distance = copy_start - start tokens later, log-uniform in [length + 1, row_len - 1 - length]. Column 0 (BOS)
    is never touched. The spans feed fresh_targets_mask: fresh random tokens are noise to the loss."""
    gen = np.random.default_rng(seed)
    pool = torch.as_tensor(token_pool).numpy()
    out = rows.clone().numpy()
    n, width = out.shape
    spans: list[list[tuple]] = [[] for _ in range(n)]
    for r in np.flatnonzero(gen.random(n) < fraction):
        length = int(gen.integers(chunk_len[0], chunk_len[1] + 1))
        lo, hi = length + 1, width - 1 - length
        distance = int(round(math.exp(gen.uniform(math.log(lo), math.log(hi)))))
        start = int(gen.integers(1, width - distance - length + 1))
        chunk = pool[gen.integers(len(pool), size=length)]
        out[r, start: start + length] = chunk
        out[r, start + distance: start + distance + length] = chunk
        spans[r].append((start, length, start + distance))
    return torch.from_numpy(out), spans

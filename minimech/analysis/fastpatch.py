"""The engine behind fast activation patching: many patched runs in one batched pass, computing only what changes.

A patched run differs from the run it patches only *after* the patch: in a causal model, positions before the
patched position and layers below the patched layer are exactly those of the unpatched run. So each patch is
described as a *suffix*: "from layer `start` on, the residual stream at positions s, s+1, ... is `values`; every
earlier position, at every layer, is the target run's". The engine runs all the suffixes that begin at the same
position s together, layer by layer, adding the patches that start at a layer when it gets there, with the
target run's keys and values for positions < s (its KV cache) so attention still sees the whole prompt.

At the end it needs the logits only where the metric reads them: a `LogitDiff` reads two unembedding columns at
one position, so nothing else of the [batch, pos, d_vocab] logits is computed. Any other metric gets the full
logits of each patched run, spliced from the target run's logits before s.

The block maths below is the model's (model.py), re-spelled for a suffix that attends to a cached prefix; tests
hold it equal to one-patch-per-forward runs with hooks within 1e-5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .metrics import LogitDiff


@dataclass
class Suffix:
    """One patched run: from block `start` (n_layers = straight to ln_final), positions pos..end hold `values`."""
    key: tuple  # where the result goes, e.g. (layer, position) or (layer, head)
    start: int  # the first block that runs on the patched stream
    pos: int  # the first position that differs from the target run
    values: torch.Tensor  # [batch, pos_total - pos, d_model]: resid_pre of block `start` from `pos` on


def _attention(attn, x: torch.Tensor, k_prefix: torch.Tensor, v_prefix: torch.Tensor) -> torch.Tensor:
    """Attention output for suffix rows x [rows, s, d_model] (after ln1) that also attend to a cached prefix.

    k_prefix, v_prefix: [rows, p, head, d_head], the target run's keys and values at the p earlier positions.
    """
    q = torch.einsum("bpm,hme->bhpe", x, attn.W_Q) + attn.b_Q[:, None]  # [rows, head, s, d_head]
    k = torch.einsum("bpm,hme->bhpe", x, attn.W_K) + attn.b_K[:, None]  # [rows, head, s, d_head]
    v = torch.einsum("bpm,hme->bhpe", x, attn.W_V) + attn.b_V[:, None]  # [rows, head, s, d_head]
    k = torch.cat([k_prefix.transpose(1, 2), k], dim=2)  # [rows, head, p + s, d_head]
    v = torch.cat([v_prefix.transpose(1, 2), v], dim=2)
    p, s = k_prefix.shape[1], x.shape[1]
    # query i of the suffix sits at position p + i and may see keys 0 .. p + i
    allowed = torch.arange(p + s)[None, :] <= (p + torch.arange(s))[:, None]  # [s, p + s]
    z = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # [rows, head, s, d_head]
    return z.transpose(1, 2).flatten(2) @ attn.W_O.flatten(0, 1) + attn.b_O  # [rows, s, d_model]


def run_block_suffix(block, resid: torch.Tensor, k_prefix: torch.Tensor, v_prefix: torch.Tensor) -> torch.Tensor:
    """One block on suffix rows resid [rows, s, d_model]: the same maths as Block.forward."""
    resid = resid + _attention(block.attn, block.ln1(resid), k_prefix, v_prefix)  # resid_mid
    if block.cfg.attn_only:
        return resid
    return resid + block.mlp(block.ln2(resid))  # resid_post


def finish_mlp(block, resid_mid: torch.Tensor) -> torch.Tensor:
    """resid_post from resid_mid [..., d_model]: the second half of a block (identity for attention-only)."""
    if block.cfg.attn_only:
        return resid_mid
    return resid_mid + block.mlp(block.ln2(resid_mid))


class Target:
    """The run being patched, with what the engine reuses: resid_pre of every block, keys and values, logits."""

    def __init__(self, model, tokens: torch.Tensor):
        n = model.cfg.n_layers
        names = [f"blocks.{l}.{h}" for l in range(n) for h in ("hook_resid_pre", "attn.hook_k", "attn.hook_v")]
        self.logits, self.cache = model.run_with_cache(tokens, names=names)
        self.batch, self.n_pos = tokens.shape

    def resid_pre(self, layer: int) -> torch.Tensor:  # [batch, pos, d_model]
        return self.cache[f"blocks.{layer}.hook_resid_pre"]

    def kv(self, layer: int, upto: int) -> tuple[torch.Tensor, torch.Tensor]:  # [batch, upto, head, d_head] each
        return self.cache[f"blocks.{layer}.attn.hook_k"][:, :upto], self.cache[f"blocks.{layer}.attn.hook_v"][:, :upto]


def _metric_per_run(model, target: Target, metric, final: torch.Tensor, pos: int, n_runs: int) -> torch.Tensor:
    """[n_runs]: the metric of each patched run, from its final residual stream final [n_runs * batch, s, d_model]."""
    batch = target.batch
    if isinstance(metric, LogitDiff):
        q = metric.pos % target.n_pos
        if q < pos:  # the metric reads a position before the patch: nothing it reads changed
            return metric(target.logits).expand(n_runs).clone()
        normed = model.ln_final(final[:, q - pos])  # [runs * batch, d_model]
        direction, offset = metric.direction(model.unembed.W_U, model.unembed.b_U, batch)  # [batch, d_model]
        per_row = (normed.view(n_runs, batch, -1) * direction).sum(-1) + offset  # [runs, batch]
        return per_row.mean(1)
    suffix_logits = model.unembed(model.ln_final(final)).view(n_runs, batch, -1, model.cfg.d_vocab)
    out = torch.empty(n_runs)
    for i in range(n_runs):
        logits = torch.cat([target.logits[:, :pos], suffix_logits[i]], dim=1)  # [batch, pos, d_vocab]
        value = metric(logits)
        out[i] = value.item() if isinstance(value, torch.Tensor) else float(value)
    return out


def run_suffixes(model, target: Target, suffixes: list[Suffix], metric, max_tokens: int = 1 << 17) -> dict:
    """{suffix.key: metric of that patched run}, running suffixes that begin at the same position together.

    max_tokens bounds rows x positions in one pass (memory); bigger groups are split.
    """
    out = {}
    by_pos: dict[int, list[Suffix]] = {}
    for sfx in suffixes:
        by_pos.setdefault(sfx.pos, []).append(sfx)
    for pos, group in sorted(by_pos.items()):
        per_pass = max(1, max_tokens // (target.batch * (target.n_pos - pos)))
        for i in range(0, len(group), per_pass):
            part = sorted(group[i:i + per_pass], key=lambda s: s.start)
            values = _run_group(model, target, part, metric, pos)
            out.update({s.key: v for s, v in zip(part, values.tolist())})
    return out


def _run_group(model, target: Target, group: list[Suffix], metric, pos: int) -> torch.Tensor:
    """Runs of one start position, sorted by start block; each joins the batch when its block comes."""
    resid = group[0].values[:0]  # [0, s, d_model]: no rows yet
    joined = 0
    for layer, block in enumerate(model.blocks):
        entering = [s.values for s in group[joined:] if s.start == layer]
        if entering:
            resid = torch.cat([resid, *entering])  # [rows, s, d_model]
            joined += len(entering)
        if len(resid) == 0:
            continue
        k_prefix, v_prefix = target.kv(layer, pos)  # [batch, pos, head, d_head]
        runs = len(resid) // target.batch
        k_prefix = k_prefix.repeat(runs, 1, 1, 1)  # [rows, pos, head, d_head]
        v_prefix = v_prefix.repeat(runs, 1, 1, 1)
        resid = run_block_suffix(block, resid, k_prefix, v_prefix)
    # patches that start after the last block (resid_post of the last layer) join only now
    resid = torch.cat([resid, *[s.values for s in group[joined:]]])
    return _metric_per_run(model, target, metric, resid, pos, len(group))

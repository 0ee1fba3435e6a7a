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
from functools import cached_property

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


class FastBlock:
    """One block's weights laid out for many rows at once: q, k and v as one matmul, each bias fused into its matmul
    (addmm), LayerNorm as torch's fused kernel. The same maths as Block.forward (model.py); only the layout differs."""

    def __init__(self, block):
        self.attn, self.cfg = block.attn, block.cfg
        self.n_heads, _, self.d_head = block.attn.W_Q.shape
        self.hd = self.n_heads * self.d_head
        self.ln1 = (block.ln1.w, block.ln1.b, block.ln1.eps)
        if not self.cfg.attn_only:
            self.ln2 = (block.ln2.w, block.ln2.b, block.ln2.eps)
            mlp = block.mlp
            self.W_in, self.b_in, self.W_out, self.b_out, self.act = mlp.W_in, mlp.b_in, mlp.W_out, mlp.b_out, mlp.act

    @cached_property
    def W_qkv(self) -> torch.Tensor:  # [d_model, 3 * head * d_head]: columns (q | k | v), head-major inside each
        d_model = self.attn.W_Q.shape[1]
        return torch.cat([W.permute(1, 0, 2).reshape(d_model, self.hd)
                          for W in (self.attn.W_Q, self.attn.W_K, self.attn.W_V)], dim=1)

    @cached_property
    def b_qkv(self) -> torch.Tensor:  # [3 * head * d_head]
        return torch.cat([self.attn.b_Q.flatten(), self.attn.b_K.flatten(), self.attn.b_V.flatten()])

    @staticmethod
    def _layer_norm(x: torch.Tensor, params) -> torch.Tensor:
        w, b, eps = params
        return F.layer_norm(x, (x.shape[-1],), w, b, eps)

    def attention(self, x: torch.Tensor, k_prefix: torch.Tensor, v_prefix: torch.Tensor,
                  query: int | None = None) -> torch.Tensor:
        """Attention output [rows, s, d_model] for suffix rows x [rows, s, d_model] (after ln1) that also attend to
        a cached prefix k_prefix, v_prefix [rows, p, head, d_head]. query=i: only suffix position i asks
        ([rows, 1, d_model]); keys and values are still needed at every position."""
        rows, s, _ = x.shape
        p, hd = k_prefix.shape[1], self.hd
        if query is None:
            qkv = _linear(x, self.W_qkv, self.b_qkv)  # [rows, s, 3 * head * d_head]
            q, kv = qkv[..., :hd], qkv[..., hd:]
        else:
            q = _linear(x[:, query:query + 1], self.W_qkv[:, :hd], self.b_qkv[:hd])  # [rows, 1, head * d_head]
            kv = _linear(x, self.W_qkv[:, hd:], self.b_qkv[hd:])  # [rows, s, 2 * head * d_head]
        heads = (self.n_heads, self.d_head)
        q = q.reshape(rows, -1, *heads).transpose(1, 2)  # [rows, head, queries, d_head]
        k, v = kv.reshape(rows, s, 2, *heads).unbind(2)  # [rows, s, head, d_head] each
        k = torch.cat([k_prefix, k], dim=1).transpose(1, 2)  # [rows, head, p + s, d_head]
        v = torch.cat([v_prefix, v], dim=1).transpose(1, 2)
        if p == 0 and query is None:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [rows, head, s, d_head]
        else:  # suffix position i sits at p + i and may see keys 0 .. p + i
            asking = torch.arange(s) if query is None else torch.tensor([query])
            allowed = torch.arange(p + s)[None, :] <= (p + asking)[:, None]  # [queries, p + s]
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # [rows, head, queries, d_head]
        W_O = self.attn.W_O.flatten(0, 1)  # [head * d_head, d_model]
        return _linear(z.transpose(1, 2).flatten(2), W_O, self.attn.b_O)  # [rows, queries, d_model]

    def finish_mlp(self, resid_mid: torch.Tensor) -> torch.Tensor:
        """resid_post from resid_mid [..., d_model] (identity for attention-only models)."""
        if self.cfg.attn_only:
            return resid_mid
        post = self.act(_linear(self._layer_norm(resid_mid, self.ln2), self.W_in, self.b_in))  # [..., d_mlp]
        return torch.addmm(resid_mid.flatten(0, -2), post.flatten(0, -2), self.W_out).add_(self.b_out).view_as(resid_mid)

    def run(self, resid: torch.Tensor, k_prefix: torch.Tensor, v_prefix: torch.Tensor,
            query: int | None = None) -> torch.Tensor:
        """resid_post of suffix rows resid [rows, s, d_model] (only at suffix position `query` if given)."""
        attn_out = self.attention(self._layer_norm(resid, self.ln1), k_prefix, v_prefix, query)
        kept = resid if query is None else resid[:, query:query + 1]
        return self.finish_mlp(kept + attn_out)


def _linear(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x @ W + b for x [..., n] and W [n, m], as one addmm."""
    return torch.addmm(b, x.reshape(-1, x.shape[-1]), W).view(*x.shape[:-1], W.shape[1])


def finish_mlp(block, resid_mid: torch.Tensor) -> torch.Tensor:
    """resid_post from resid_mid [..., d_model]: the second half of a block (identity for attention-only)."""
    return FastBlock(block).finish_mlp(resid_mid)


class Target:
    """The run being patched, with what the engine reuses: resid_pre of every block, keys and values, logits."""

    def __init__(self, model, tokens: torch.Tensor, extra_names=()):
        """One forward of `tokens`, caching what the engine needs plus extra_names (what a caller reads too)."""
        n = model.cfg.n_layers
        names = [f"blocks.{l}.{h}" for l in range(n) for h in ("hook_resid_pre", "attn.hook_k", "attn.hook_v")]
        self.logits, self.cache = model.run_with_cache(tokens, names=sorted(set(names) | set(extra_names)))
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
    blocks = [FastBlock(b) for b in model.blocks]
    by_pos: dict[int, list[Suffix]] = {}
    for sfx in suffixes:
        by_pos.setdefault(sfx.pos, []).append(sfx)
    for pos, group in sorted(by_pos.items()):
        per_pass = max(1, max_tokens // (target.batch * (target.n_pos - pos)))
        for i in range(0, len(group), per_pass):
            part = sorted(group[i:i + per_pass], key=lambda s: s.start)
            values = _run_group(model, blocks, target, part, metric, pos)
            out.update({s.key: v for s, v in zip(part, values.tolist())})
    return out


def _run_group(model, blocks: list[FastBlock], target: Target, group: list[Suffix], metric, pos: int) -> torch.Tensor:
    """Runs of one start position, sorted by start block; each joins the batch when its block comes."""
    if isinstance(metric, LogitDiff) and metric.pos % target.n_pos < pos:
        # the metric reads a position before the patch: nothing it reads changed
        return metric(target.logits).expand(len(group)).clone()
    # A LogitDiff reads one position, so the last block computes only that position (keys and values still at all).
    query = metric.pos % target.n_pos - pos if isinstance(metric, LogitDiff) else None
    resid = group[0].values[:0]  # [0, s, d_model]: no rows yet
    joined, last = 0, len(blocks) - 1
    for layer, block in enumerate(blocks):
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
        resid = block.run(resid, k_prefix, v_prefix, query=query if layer == last else None)
    # patches that start after the last block (resid_post of the last layer) join only now
    late = [s.values for s in group[joined:]]
    if query is not None:
        if len(resid) == 0:  # no block ran, so nothing was trimmed yet
            resid = resid[:, query:query + 1]
        late = [v[:, query:query + 1] for v in late]
    resid = torch.cat([resid, *late])
    return _metric_per_run(model, target, metric, resid, pos if query is None else pos + query, len(group))

"""The logit lens (nostalgebraist 2020): read the residual stream before every block as if it were the last one.

Each point of the residual stream goes through the final LayerNorm and the unembedding, giving the distribution the
model "would" predict if the remaining blocks did nothing. The points are those of cache.accumulated_resid:

    L0_pre   embed + pos_embed (nothing has run yet)
    L{l}_mid after block l's attention (incl_mid=True, models with MLPs only)
    L{l}_pre after blocks 0..l-1
    final    after the last block: the model's own prediction

ln="recompute" normalizes each point by its own statistics (the plain lens, and what the model does to the final
point). ln="cached" divides every point by the final stream's cached ln_final scale instead: a linear map, so the
lens of a sum is the sum of the lenses (direct logit attribution), but early points with a small norm read as
under-confident. Both add ln_final's bias, so the final point is the model's output in both.

How far each point is from the model's own answer: LensResult.kl_to_final() gives KL(final || point) in nats per
point, row and position (the tuned-lens paper's measure; 0 at the final point), and lens_kl(model, tokens) its mean
over a batch of text. lens=TunedLens(...) (tuned_lens.py) passes each point through a learned affine translator first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..cache import ActivationCache
from ..errors import MinimechError


@dataclass
class LensResult:
    labels: list[str]  # one per point, as cache.accumulated_resid labels them
    log_probs: torch.Tensor  # [n_points, batch, d_vocab], or [n_points, batch, pos, d_vocab] when pos=None
    pos: int | None  # the position read (None: every position)
    tokenizer: object | None = field(default=None, repr=False)
    k: int = 5  # rows shown by __repr__

    @property
    def probs(self) -> torch.Tensor:  # same shape as log_probs
        return self.log_probs.exp()

    def _tok_str(self, token_id: int) -> str:
        return self.tokenizer.id_to_str(token_id) if self.tokenizer is not None else str(token_id)

    def top_k(self, k: int = 5, batch: int = 0) -> list:
        """For each point, the k likeliest (token str, prob) of one batch row.

        pos=None results give, for each point, one such list per position.
        """
        d_vocab = self.log_probs.shape[-1]
        if not 1 <= k <= d_vocab:
            raise MinimechError(f"k={k}: choose 1 .. {d_vocab} (the vocabulary's size)")
        values, ids = self.log_probs[:, batch].topk(k, dim=-1)  # [n_points, (pos,) k]
        def pairs(v, i):
            return [(self._tok_str(t), p) for t, p in zip(i.tolist(), v.exp().tolist())]
        if self.pos is not None:
            return [pairs(v, i) for v, i in zip(values, ids)]
        return [[pairs(vp, ip) for vp, ip in zip(v, i)] for v, i in zip(values, ids)]

    def rank_of(self, token_id) -> torch.Tensor:
        """[n_points, batch(, pos)] rank of token_id at each point: 0 = the top token.

        token_id: an int, or a tensor broadcastable to [batch(, pos)] (e.g. each row's correct next token).
        """
        if isinstance(token_id, str):  # " Mary": one token of this model's vocabulary
            if self.tokenizer is None:
                raise MinimechError(f"rank_of({token_id!r}) needs a tokenizer; this result has none: pass the id")
            token_id = self.tokenizer.to_single_token(token_id)
        target = torch.as_tensor(token_id, device=self.log_probs.device)
        target = target.expand(self.log_probs.shape[1:-1])  # [batch(, pos)]
        index = target[None, ..., None].expand(*self.log_probs.shape[:-1], 1)  # [n_points, batch(, pos), 1]
        chosen = self.log_probs.gather(-1, index)  # [n_points, batch(, pos), 1]
        # Count strictly likelier tokens, so ties share the better rank
        return (self.log_probs > chosen).sum(-1)

    def kl_to_final(self) -> torch.Tensor:
        """[n_points, batch(, pos)] KL(final || point) in nats: how much the model's own distribution (the last point)
        loses when a point's distribution stands in for it. 0 at the final point; the direction of Belrose et al.
        2023, who train the tuned lens to minimise it."""
        if self.labels[-1] != "final":
            raise MinimechError(f"kl_to_final needs the final point as the last one; these points end at "
                                f"{self.labels[-1]!r}: run logit_lens on the whole model")
        return kl_to(self.log_probs[-1], self.log_probs)

    def grid(self, batch: int = 0, target: int | None = None) -> tuple[torch.Tensor, list[list[str]]]:
        """For plot.lens: (probs [n_points, pos], top-token strs [n_points][pos]) of one batch row.

        probs is the top token's probability, or target's when given. Needs pos=None.
        """
        if self.pos is not None:
            raise MinimechError("grid() needs every position: run logit_lens(..., pos=None)")
        lp = self.log_probs[:, batch]  # [n_points, pos, d_vocab]
        top_lp, top_ids = lp.max(-1)  # [n_points, pos]
        probs = top_lp.exp() if target is None else lp[..., target].exp()
        strs = [[self._tok_str(i) for i in row] for row in top_ids.tolist()]
        return probs, strs

    def __repr__(self) -> str:
        if self.pos is None:
            return (f"LensResult: {len(self.labels)} points x every position, log_probs "
                    f"{tuple(self.log_probs.shape)}; use grid() or top_k()")
        width = max(len(label) for label in self.labels)
        lines = [f"LensResult at pos {self.pos} (batch row 0), top {self.k}:"]
        for label, row in zip(self.labels, self.top_k(self.k)):
            cells = "  ".join(f"{s!r} {p:.3f}" for s, p in row)
            lines.append(f"  {label:<{width}}  {cells}")
        return "\n".join(lines)


def kl_to(target_log_probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """KL(target || q) in nats over the last axis: sum p (log p - log q). Shapes broadcast; [..., d_vocab] -> [...]."""
    # A target probability that underflows to 0 contributes 0 (p log p -> 0), as it should.
    return (target_log_probs.exp() * (target_log_probs - log_probs)).sum(-1)


RESID_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "ln_final.hook_scale")


def read_points(model, points: torch.Tensor, ln: str = "recompute", cache=None, pos=None) -> torch.Tensor:
    """Log-probs [n_points, ..., d_vocab] of residual points [n_points, ..., d_model]: ln_final (recomputed per point,
    or ln="cached": with the cache's final scale at `pos`) then the unembedding. Differentiable in `points` only."""
    if cache is None:
        if ln == "cached":
            raise MinimechError("ln='cached' divides by a cached ln_final scale: pass the cache (and pos)")
        cache = ActivationCache({}, model)  # recomputing needs no stored activations
    normed = cache.apply_ln_final(points, pos=pos, recompute=(ln == "recompute"))
    if ln == "cached":  # apply_ln_final leaves the bias out in this mode (it belongs to no component)
        normed = normed + model.ln_final.b.detach()
    logits = normed @ model.W_U.detach() + model.b_U.detach()  # [n_points, batch, (pos,) d_vocab]
    return logits.log_softmax(-1)


@torch.no_grad()
def logit_lens(model, tokens, pos: int | None = -1, k: int = 5, ln: str = "recompute",
               incl_mid: bool = False, lens=None) -> LensResult:
    """The logit lens at one position (pos=None: every position). See the module docstring for the points and ln.

    lens: a TunedLens trained for this model: each point but the final one goes through its layer's translator
    before ln_final and the unembedding (needs ln="recompute" and incl_mid=False, which is how it was trained).
    """
    if ln not in ("recompute", "cached"):
        raise MinimechError(f"ln must be 'recompute' or 'cached', got {ln!r}")
    if lens is not None:
        if ln != "recompute" or (incl_mid and not model.cfg.attn_only):
            raise MinimechError("a tuned lens has translators for the resid_pre points only and was trained with "
                                "ln_final recomputed: call it with ln='recompute' and incl_mid=False")
        lens.check_model(model)
    tokens = model.check_tokens(tokens)  # [batch, pos]
    _, cache = model.run_with_cache(tokens, names=lambda n: n.endswith(RESID_HOOKS))
    points = cache.accumulated_resid(pos=pos, incl_mid=incl_mid)  # tensor [n_points, batch, (pos,) d_model]
    resid = points.tensor if lens is None else lens.translate(points.tensor)  # [n_points, batch, (pos,) d_model]
    return LensResult(points.labels, read_points(model, resid, ln, cache, pos), pos, model.tokenizer, k)


# Memory bounds, so that GPT-2-sized models (d_vocab 50,257, n_ctx 1,024) run in a few GB: one chunk of lens log-probs
# [n_points, positions, d_vocab] holds at most LOGITS_BYTES (a step keeps about four such tensors), and one forward
# pass runs at most FORWARD_TOKENS tokens.
LOGITS_BYTES = 128 * 2**20
FORWARD_TOKENS = 4096


def positions_per_chunk(model, n_points: int) -> int:
    """How many positions' log-probs over every point fit in LOGITS_BYTES."""
    per_position = n_points * model.cfg.d_vocab * model.W_U.element_size()
    return max(1, LOGITS_BYTES // per_position)


def final_points(model, tokens: torch.Tensor, batch_size: int | None = None, progress: bool = False):
    """The lens points of every position, [n_layers + 1, rows * pos, d_model] (L0_pre .. final), FORWARD_TOKENS tokens
    (or batch_size rows) a forward, without the logits (return_type=None): what lens_kl and the tuned lens read."""
    from ..notebook import tqdm  # a widget in Jupyter, text elsewhere

    n = model.cfg.n_layers
    wanted = {f"blocks.{l}.hook_resid_pre" for l in range(n)} | {f"blocks.{n - 1}.hook_resid_post"}
    rows = batch_size or max(1, FORWARD_TOKENS // tokens.shape[1])
    points = None  # filled in place: a list of chunks and their concatenation would hold everything twice
    done = 0
    for part in tqdm(tokens.split(rows), desc="residual streams", disable=not progress, leave=False):
        _, cache = model.run_with_cache(part, names=lambda name: name in wanted, return_type=None)
        chunk = cache.accumulated_resid().tensor.flatten(1, 2)  # [n_points, rows * pos, d_model]
        if points is None:
            points = chunk.new_empty(chunk.shape[0], tokens.numel(), chunk.shape[-1])
        points[:, done:done + chunk.shape[1]] = chunk
        done += chunk.shape[1]
    return points


@torch.no_grad()
def lens_kl(model, tokens, lens=None, batch_size: int | None = None, progress: bool = False) -> torch.Tensor:
    """[n_layers + 1] mean KL(final || point) in nats of each lens point (L0_pre, ..., final), over every row and
    position of tokens [batch, pos]. lens=None: the logit lens; a TunedLens: the tuned lens.

    Memory stays bounded whatever the size of tokens: batch_size rows (default: FORWARD_TOKENS tokens) a forward pass,
    then LOGITS_BYTES of log-probs at a time.
    """
    tokens = model.check_tokens(tokens)  # [batch, pos]
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if lens is not None:
        lens.check_model(model)
    from ..notebook import tqdm  # a widget in Jupyter, text elsewhere

    n_points = model.cfg.n_layers + 1
    rows = batch_size or max(1, FORWARD_TOKENS // tokens.shape[1])
    total = torch.zeros(n_points, dtype=torch.float64)
    bar = tqdm(total=tokens.numel(), desc="lens KL", unit="tok", disable=not progress)
    for part in tokens.split(rows):
        points = final_points(model, part)  # [n_points, rows * pos, d_model]
        points = points if lens is None else lens.translate(points)
        for chunk in points.split(positions_per_chunk(model, n_points), dim=1):
            log_probs = read_points(model, chunk)  # [n_points, chunk, d_vocab]
            total += kl_to(log_probs[-1], log_probs).double().sum(1).cpu()
            bar.update(chunk.shape[1])
    bar.close()
    return (total / tokens.numel()).float()

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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

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
        target = torch.as_tensor(token_id, device=self.log_probs.device)
        target = target.expand(self.log_probs.shape[1:-1])  # [batch(, pos)]
        index = target[None, ..., None].expand(*self.log_probs.shape[:-1], 1)  # [n_points, batch(, pos), 1]
        chosen = self.log_probs.gather(-1, index)  # [n_points, batch(, pos), 1]
        # Count strictly likelier tokens, so ties share the better rank
        return (self.log_probs > chosen).sum(-1)

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


@torch.no_grad()
def logit_lens(model, tokens, pos: int | None = -1, k: int = 5, ln: str = "recompute",
               incl_mid: bool = False) -> LensResult:
    """The logit lens at one position (pos=None: every position). See the module docstring for the points and ln."""
    if ln not in ("recompute", "cached"):
        raise MinimechError(f"ln must be 'recompute' or 'cached', got {ln!r}")
    tokens = model.check_tokens(tokens)  # [batch, pos]
    names = lambda n: n.endswith(("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "ln_final.hook_scale"))
    _, cache = model.run_with_cache(tokens, names=names)
    points = cache.accumulated_resid(pos=pos, incl_mid=incl_mid)  # tensor [n_points, batch, (pos,) d_model]
    normed = cache.apply_ln_final(points.tensor, pos=pos, recompute=(ln == "recompute"))
    if ln == "cached":  # apply_ln_final leaves the bias out in this mode (it belongs to no component)
        normed = normed + model.ln_final.b.detach()
    logits = normed @ model.W_U.detach() + model.b_U.detach()  # [n_points, batch, (pos,) d_vocab]
    return LensResult(points.labels, logits.log_softmax(-1), pos, model.tokenizer, k)

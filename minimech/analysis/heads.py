"""Head detectors: how much each head attends where a previous-token, duplicate-token or induction head would.

A detector is a target mask over (query, key) pairs built from the tokens alone; a head's score is the attention
mass it puts on the targets, averaged over the query positions that have a target. On repeated random tokens
[BOS, r_1..r_n, r_1..r_n] this is the usual score: an induction head at r_i of the second half attends to the token
after r_i's first occurrence.
"""

from __future__ import annotations

import torch

from ..errors import MinimechError


def repeated_random_tokens(model, seq_len: int = 20, batch: int = 8, seed: int = 0,
                           token_pool: torch.Tensor | None = None, prepend_bos: bool = True) -> torch.Tensor:
    """[batch, 1 + 2 * seq_len] tokens: BOS, then seq_len random tokens, then the same tokens again.

    token_pool: the ids to draw from (default: every id but BOS/eot, or the tokenizer's non-special ids).
    """
    if 2 * seq_len + prepend_bos > model.cfg.n_ctx:
        raise MinimechError(f"2 * seq_len{' + 1 (BOS)' if prepend_bos else ''} = {2 * seq_len + prepend_bos} "
                            f"exceeds the model's context n_ctx={model.cfg.n_ctx}: use seq_len <= "
                            f"{(model.cfg.n_ctx - prepend_bos) // 2}")
    gen = torch.Generator().manual_seed(seed)
    tok = model.tokenizer
    bos = tok.bos_id if tok is not None else 0
    if token_pool is None:
        special = {bos} | ({tok.unk_id} if tok is not None and tok.unk_id is not None else set())
        token_pool = torch.tensor([i for i in range(model.cfg.d_vocab) if i not in special])
    first = token_pool[torch.randint(len(token_pool), (batch, seq_len), generator=gen)]
    parts = [torch.full((batch, 1), bos)] if prepend_bos else []
    return torch.cat(parts + [first, first], dim=1)


def target_mask(tokens: torch.Tensor, kind: str) -> torch.Tensor:
    """[batch, q_pos, k_pos] bool: where a head of this kind would attend."""
    batch, pos = tokens.shape
    q = torch.arange(pos)[:, None]
    k = torch.arange(pos)[None, :]
    if kind == "previous_token":
        return (k == q - 1).expand(batch, pos, pos)
    same = tokens[:, :, None] == tokens[:, None, :]  # [batch, q, k]: token at q equals token at k
    if kind == "duplicate_token":
        return same & (k < q)
    if kind == "induction":  # key k follows an earlier occurrence (at k - 1) of the query's token
        shifted = torch.zeros_like(same)
        shifted[:, :, 1:] = same[:, :, :-1]
        return shifted & (k <= q)
    raise MinimechError(f"unknown detector {kind!r}: choose previous_token, duplicate_token or induction")


def head_scores(patterns: torch.Tensor, tokens: torch.Tensor, kind: str, exclude_bos: bool = True) -> torch.Tensor:
    """Scores [layer, head] from patterns [layer, batch, head, q, k] and the tokens that produced them."""
    mask = target_mask(tokens, kind)  # [batch, q, k]
    if exclude_bos:  # attention to BOS is a resting place, never a detector target
        mask = mask.clone()
        mask[:, :, 0] = False
    rows = mask.any(-1)  # [batch, q]: queries that have a target
    if not rows.any():
        raise MinimechError(f"these tokens give no query a {kind} target (e.g. no repeated token): "
                            "use repeated_random_tokens(model)")
    mass = (patterns * mask[None, :, None]).sum(-1)  # [layer, batch, head, q]
    weights = rows[None, :, None].float()
    return (mass * weights).sum((1, 3)) / weights.sum((1, 3))


def detector_scores(model, tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """previous_token, duplicate_token and induction scores [n_layers, n_heads] on tokens (default: repeated random)."""
    if tokens is None:  # 20 repeated tokens, or as many as the context holds
        tokens = repeated_random_tokens(model, seq_len=min(20, (model.cfg.n_ctx - 1) // 2))
    tokens = model.check_tokens(tokens)
    _, cache = model.run_with_cache(tokens, names=lambda n: n.endswith("hook_pattern"))
    patterns = torch.stack([cache["pattern", l] for l in range(model.cfg.n_layers)])
    return {kind: head_scores(patterns, tokens, kind) for kind in ("previous_token", "duplicate_token", "induction")}


def in_context_losses(model, seq_len: int = 20, batch: int = 16, seed: int = 0) -> tuple[float, float]:
    """Mean loss on the first and on the repeated half of repeated random tokens (an induction model's second is low)."""
    tokens = repeated_random_tokens(model, seq_len, batch, seed)
    with torch.no_grad():
        per_token = model.loss(model(tokens), tokens, per_token=True)  # [batch, 2 * seq_len]
    # per_token[:, i] predicts token i + 1; the first half's predictions are of tokens 2..seq_len (after the first)
    return per_token[:, 1:seq_len].mean().item(), per_token[:, seq_len:].mean().item()

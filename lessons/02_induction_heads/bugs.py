"""Planted bugs for lesson 02: each is one classic mistake, and the checks must name it."""

from __future__ import annotations

import torch

from minimech.grading import Bug


# ---- 02.1 ---------------------------------------------------------------------------------------------------------
def probe_indices_not_ids(token_pool, bos_id, seq_len, batch, gen):
    first = torch.randint(len(token_pool), (batch, seq_len), generator=gen)
    return torch.cat([torch.full((batch, 1), bos_id), first, first], dim=1)


def probe_second_copy_redrawn(token_pool, bos_id, seq_len, batch, gen):
    draw = lambda: token_pool[torch.randint(len(token_pool), (batch, seq_len), generator=gen)]  # noqa: E731
    return torch.cat([torch.full((batch, 1), bos_id), draw(), draw()], dim=1)


def probe_no_bos(token_pool, bos_id, seq_len, batch, gen):
    first = token_pool[torch.randint(len(token_pool), (batch, seq_len), generator=gen)]
    return torch.cat([first, first], dim=1)


def probe_same_row(token_pool, bos_id, seq_len, batch, gen):
    first = token_pool[torch.randint(len(token_pool), (1, seq_len), generator=gen)].expand(batch, -1)
    return torch.cat([torch.full((batch, 1), bos_id), first, first], dim=1)


# ---- 02.2 ---------------------------------------------------------------------------------------------------------
def loss_unshifted(logits, tokens):
    return -logits[:, 1:].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]


def loss_rolled_targets(logits, tokens):  # every position gets a target, the last one wrapping round to the first
    return -logits.log_softmax(-1).gather(-1, tokens.roll(-1, dims=1)[..., None])[..., 0]


def loss_softmax_over_positions(logits, tokens):
    return -logits[:, :-1].log_softmax(1).gather(-1, tokens[:, 1:, None])[..., 0]


# ---- 02.3 ---------------------------------------------------------------------------------------------------------
def _per_token(model, tokens):
    with torch.no_grad():
        logits = model(tokens)
    return -logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]  # [batch, pos - 1]


def icl_halves_from_zero(model, tokens, seq_len):  # each half starts one prediction early
    losses = _per_token(model, tokens)
    return torch.stack([losses[:, :seq_len].mean(), losses[:, seq_len:].mean()])


def icl_repeat_includes_first_token(model, tokens, seq_len):
    losses = _per_token(model, tokens)
    return torch.stack([losses[:, 1:seq_len].mean(), losses[:, seq_len:].mean()])


# ---- 02.4 ---------------------------------------------------------------------------------------------------------
def _patterns(model, tokens):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names=lambda n: n.endswith("hook_pattern"))
    return torch.stack([cache["pattern", l] for l in range(model.cfg.n_layers)])  # [layer, batch, head, q, k]


def _scores(patterns, seq_len, induction_offset, previous_from=2, induction_queries=None):
    n = seq_len
    previous = torch.stack([patterns[..., q, q - 1] for q in range(previous_from, 2 * n + 1)], -1)
    queries = induction_queries or range(n + 1, 2 * n + 1)
    induction = torch.stack([patterns[..., q, q - induction_offset] for q in queries], -1)
    return {"previous_token": previous.mean((1, 3)), "induction": induction.mean((1, 3))}


def detector_attends_to_itself(model, tokens, seq_len):  # key q - n: the earlier copy of the token itself
    return _scores(_patterns(model, tokens), seq_len, induction_offset=seq_len)


def detector_key_query_swapped(model, tokens, seq_len):  # reads pattern[k, q]
    return _scores(_patterns(model, tokens).transpose(-1, -2), seq_len, induction_offset=seq_len - 1)


def detector_previous_from_bos(model, tokens, seq_len):  # query 1 included: its previous token is BOS
    return _scores(_patterns(model, tokens), seq_len, induction_offset=seq_len - 1, previous_from=1)


def detector_induction_queries_shifted(model, tokens, seq_len):  # range(n, 2n): one query early at both ends
    return _scores(_patterns(model, tokens), seq_len, induction_offset=seq_len - 1,
                   induction_queries=range(seq_len, 2 * seq_len))


def detector_previous_misses_last(model, tokens, seq_len):  # queries 2..2n-1: the last query left out
    patterns = _patterns(model, tokens)
    out = _scores(patterns, seq_len, induction_offset=seq_len - 1)
    out["previous_token"] = torch.stack([patterns[..., q, q - 1] for q in range(2, 2 * seq_len)], -1).mean((1, 3))
    return out


# ---- 02.5 ---------------------------------------------------------------------------------------------------------
def _composition(model, sender_layer, receiver_layer, transpose_qk=True, normalise=True, table_t=False):
    senders = [h.OV.AB for h in model.blocks[sender_layer].attn.heads]
    receivers = [h.QK.AB for h in model.blocks[receiver_layer].attn.heads]
    scores = torch.zeros(len(senders), len(receivers))
    for s, ov in enumerate(senders):
        for r, qk in enumerate(receivers):
            scores[s, r] = (ov @ (qk.T if transpose_qk else qk)).norm()
            if normalise:
                scores[s, r] /= ov.norm() * qk.norm()
    return scores.T if table_t else scores


def composition_q_instead_of_k(model, sender_layer, receiver_layer):
    return _composition(model, sender_layer, receiver_layer, transpose_qk=False)


def composition_unnormalised(model, sender_layer, receiver_layer):
    return _composition(model, sender_layer, receiver_layer, normalise=False)


def composition_transposed_table(model, sender_layer, receiver_layer):
    return _composition(model, sender_layer, receiver_layer, table_t=True)


# ---- 02.6 ---------------------------------------------------------------------------------------------------------
def baseline_full_rank(d_model, d_head, n_samples, gen):  # dense [d_model, d_model] matrices: rank ignored
    scores = []
    for _ in range(n_samples):
        ov, qk = torch.randn(d_model, d_model, generator=gen), torch.randn(d_model, d_model, generator=gen)
        scores.append((ov @ qk.T).norm() / (ov.norm() * qk.norm()))
    return torch.stack(scores)


def baseline_unnormalised(d_model, d_head, n_samples, gen):
    scores = []
    for _ in range(n_samples):
        ov = torch.randn(d_model, d_head, generator=gen) @ torch.randn(d_head, d_model, generator=gen)
        qk = torch.randn(d_model, d_head, generator=gen) @ torch.randn(d_model, d_head, generator=gen).T
        scores.append((ov @ qk.T).norm())
    return torch.stack(scores)


def baseline_mean_only(d_model, d_head, n_samples, gen):
    ov = torch.randn(n_samples, d_model, d_head, generator=gen) @ torch.randn(n_samples, d_head, d_model, generator=gen)
    qk = torch.randn(n_samples, d_model, d_head, generator=gen) @ torch.randn(n_samples, d_head, d_model, generator=gen)
    ratio = (ov @ qk.transpose(-1, -2)).norm(dim=(-2, -1)) / (ov.norm(dim=(-2, -1)) * qk.norm(dim=(-2, -1)))
    return ratio.mean()


# ---- 02.7 ---------------------------------------------------------------------------------------------------------
def _qv(model, sender_layer, receiver_layer, q_matrix, v_matrix):
    n = model.cfg.n_heads
    out = {"Q": torch.zeros(n, n), "V": torch.zeros(n, n)}
    for s, sender in enumerate(model.blocks[sender_layer].attn.heads):
        ov = sender.OV.AB
        for r, receiver in enumerate(model.blocks[receiver_layer].attn.heads):
            for kind, matrix in (("Q", q_matrix(receiver)), ("V", v_matrix(receiver))):
                out[kind][s, r] = (ov @ matrix).norm() / (ov.norm() * matrix.norm())
    return out


def qv_q_transposed(model, sender_layer, receiver_layer):  # W_QK^T: that is K-composition
    return _qv(model, sender_layer, receiver_layer, lambda h: h.QK.AB.T, lambda h: h.OV.AB)


def qv_swapped(model, sender_layer, receiver_layer):
    return _qv(model, sender_layer, receiver_layer, lambda h: h.OV.AB, lambda h: h.QK.AB)


# ---- 02.8 ---------------------------------------------------------------------------------------------------------
def _ablate(model, tokens, seq_len, heads, how, head_shift=0, over_positions=False, zero_always=False):
    n_heads = model.cfg.n_heads
    layers = sorted({l for l, _ in heads})
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names=[f"blocks.{l}.attn.hook_z" for l in layers])
    hooks = []
    for layer in layers:
        chosen = [(h + head_shift) % n_heads for l, h in heads if l == layer]
        z_clean = cache["z", layer]  # [batch, pos, head, d_head]
        mean_z = z_clean.mean((0, 1)) if over_positions else z_clean.mean(0)

        def ablate(z, hook, chosen=chosen, mean_z=mean_z):
            z = z.clone()
            z[:, :, chosen] = 0.0 if (how == "zero" or zero_always) else mean_z[..., chosen, :]
            return z

        hooks.append((f"blocks.{layer}.attn.hook_z", ablate))
    with model.hooks(hooks):
        losses = _per_token(model, tokens)
    return torch.stack([losses[:, 1:seq_len].mean(), losses[:, seq_len + 1:].mean()])


def ablation_wrong_head(model, tokens, seq_len, heads, how="mean"):  # the head index off by one
    return _ablate(model, tokens, seq_len, heads, how, head_shift=1)


def ablation_always_zero(model, tokens, seq_len, heads, how="mean"):
    return _ablate(model, tokens, seq_len, heads, how, zero_always=True)


def ablation_mean_over_positions(model, tokens, seq_len, heads, how="mean"):
    return _ablate(model, tokens, seq_len, heads, how, over_positions=True)


def ablation_forgot_hooks(model, tokens, seq_len, heads, how="mean"):  # the hooks are built but never attached
    losses = _per_token(model, tokens)
    return torch.stack([losses[:, 1:seq_len].mean(), losses[:, seq_len + 1:].mean()])


# ---- 02.9 ---------------------------------------------------------------------------------------------------------
def phase_ignores_direction(history, key):  # "above the midpoint": wrong for a falling metric
    midpoint = (history[0][key] + history[-1][key]) / 2
    return next(r["step"] for r in history if r[key] >= midpoint)


def phase_returns_index(history, key):
    start, end = history[0][key], history[-1][key]
    return next(i for i, r in enumerate(history) if (r[key] - start) / (end - start) >= 0.5)


def phase_largest_jump(history, key):
    jumps = [abs(history[i][key] - history[i - 1][key]) for i in range(1, len(history))]
    return history[1 + max(range(len(jumps)), key=jumps.__getitem__)]["step"]


BUGS = [
    Bug("02.1", probe_indices_not_ids, "indices into token_pool"),
    Bug("02.1", probe_second_copy_redrawn, "not a copy of the first"),
    Bug("02.1", probe_no_bos, "BOS is missing"),
    Bug("02.1", probe_same_row, "every row holds the same sequence"),
    Bug("02.2", loss_unshifted, "not shifted"),
    Bug("02.2", loss_rolled_targets, "no next token"),
    Bug("02.2", loss_softmax_over_positions, "wrong axis"),
    Bug("02.3", icl_halves_from_zero, "predicting r_1"),
    Bug("02.3", icl_repeat_includes_first_token, "off by one position"),
    Bug("02.4", detector_attends_to_itself, "token AFTER the earlier copy"),
    Bug("02.4", detector_key_query_swapped, "pattern[k, q]"),
    Bug("02.4", detector_previous_from_bos, "include query 1"),
    Bug("02.4", detector_induction_queries_shifted, "average queries n..2n-1"),
    Bug("02.4", detector_previous_misses_last, "average queries 2..2n-1"),
    Bug("02.5", composition_q_instead_of_k, "Q-composition"),
    Bug("02.5", composition_unnormalised, "not normalised"),
    Bug("02.5", composition_transposed_table, "transposed"),
    Bug("02.6", baseline_full_rank, "FULL-rank"),
    Bug("02.6", baseline_unnormalised, "divide"),
    Bug("02.6", baseline_mean_only, "not a summary"),
    Bug("02.7", qv_q_transposed, "K-composition"),
    Bug("02.7", qv_swapped, "swapped"),
    Bug("02.8", ablation_wrong_head, "wrong head"),
    Bug("02.8", ablation_always_zero, "zero instead of the mean"),
    Bug("02.8", ablation_mean_over_positions, "over the batch and the positions"),
    Bug("02.8", ablation_forgot_hooks, "ablation did nothing"),
    Bug("02.9", phase_ignores_direction, "falling"),
    Bug("02.9", phase_returns_index, "index"),
    Bug("02.9", phase_largest_jump, "largest single jump"),
]

"""Planted bugs for lesson 02: each is one classic mistake, and the checks must name it."""

from __future__ import annotations

import torch

from minimech.grading import Bug


# ---- 02.1 ---------------------------------------------------------------------------------------------------------
def loss_unshifted(logits, tokens):
    return -logits[:, 1:].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]


def loss_rolled_targets(logits, tokens):  # every position gets a target, the last one wrapping round to the first
    return -logits.log_softmax(-1).gather(-1, tokens.roll(-1, dims=1)[..., None])[..., 0]


def loss_softmax_over_positions(logits, tokens):
    return -logits[:, :-1].log_softmax(1).gather(-1, tokens[:, 1:, None])[..., 0]


# ---- 02.2 ---------------------------------------------------------------------------------------------------------
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


# ---- 02.3 ---------------------------------------------------------------------------------------------------------
def _patterns(model, tokens):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names=lambda n: n.endswith("hook_pattern"))
    return torch.stack([cache["pattern", l] for l in range(model.cfg.n_layers)])  # [layer, batch, head, q, k]


def _scores(patterns, seq_len, induction_offset, previous_from=2):
    n = seq_len
    previous = torch.stack([patterns[..., q, q - 1] for q in range(previous_from, 2 * n + 1)], -1)
    induction = torch.stack([patterns[..., q, q - induction_offset] for q in range(n + 1, 2 * n + 1)], -1)
    return {"previous_token": previous.mean((1, 3)), "induction": induction.mean((1, 3))}


def detector_attends_to_itself(model, tokens, seq_len):  # key q - n: the earlier copy of the token itself
    return _scores(_patterns(model, tokens), seq_len, induction_offset=seq_len)


def detector_key_query_swapped(model, tokens, seq_len):  # reads pattern[k, q]
    return _scores(_patterns(model, tokens).transpose(-1, -2), seq_len, induction_offset=seq_len - 1)


def detector_previous_from_bos(model, tokens, seq_len):  # query 1 included: its previous token is BOS
    return _scores(_patterns(model, tokens), seq_len, induction_offset=seq_len - 1, previous_from=1)


# ---- 02.4 ---------------------------------------------------------------------------------------------------------
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


# ---- 02.5 ---------------------------------------------------------------------------------------------------------
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


# ---- 02.6 ---------------------------------------------------------------------------------------------------------
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
    Bug("02.1", loss_unshifted, "not shifted"),
    Bug("02.1", loss_rolled_targets, "no next token"),
    Bug("02.1", loss_softmax_over_positions, "wrong axis"),
    Bug("02.2", icl_halves_from_zero, "predicting r_1"),
    Bug("02.2", icl_repeat_includes_first_token, "off by one position"),
    Bug("02.3", detector_attends_to_itself, "token AFTER the earlier copy"),
    Bug("02.3", detector_key_query_swapped, "pattern[k, q]"),
    Bug("02.3", detector_previous_from_bos, "include query 1"),
    Bug("02.4", composition_q_instead_of_k, "Q-composition"),
    Bug("02.4", composition_unnormalised, "not normalised"),
    Bug("02.4", composition_transposed_table, "transposed"),
    Bug("02.5", ablation_wrong_head, "wrong head"),
    Bug("02.5", ablation_always_zero, "zero instead of the mean"),
    Bug("02.5", ablation_mean_over_positions, "over the batch and the positions"),
    Bug("02.5", ablation_forgot_hooks, "ablation did nothing"),
    Bug("02.6", phase_ignores_direction, "falling"),
    Bug("02.6", phase_returns_index, "index"),
    Bug("02.6", phase_largest_jump, "largest single jump"),
]

"""Reference solutions for lesson 02 (induction heads). Never imported by checks.py."""

from __future__ import annotations

import torch


def repeated_tokens(token_pool: torch.Tensor, bos_id: int, seq_len: int, batch: int,
                    gen: torch.Generator) -> torch.Tensor:
    """[batch, 1 + 2 seq_len]: BOS, seq_len ids drawn uniformly from token_pool, then the same ids again."""
    first = token_pool[torch.randint(len(token_pool), (batch, seq_len), generator=gen)]  # [batch, seq_len]
    return torch.cat([torch.full((batch, 1), bos_id, dtype=first.dtype), first, first], dim=1)


def per_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[batch, pos - 1]: entry [b, i] is -log p(tokens[b, i + 1] | tokens[b, :i + 1]), read from logits [batch, pos,
    d_vocab] at position i."""
    log_probs = logits[:, :-1].log_softmax(dim=-1)  # [batch, pos - 1, d_vocab]: the last position has no target
    targets = tokens[:, 1:]  # [batch, pos - 1]: position i predicts token i + 1
    return -log_probs.gather(-1, targets[..., None])[..., 0]


@torch.no_grad()
def in_context_losses(model, tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[2]: mean loss of predicting r_2..r_n in the first half and in the repeated half of
    tokens = [BOS, r_1..r_n, r_1..r_n] (n = seq_len)."""
    losses = per_token_loss(model(tokens), tokens)  # [batch, 2n]: losses[:, i] predicts tokens[:, i + 1]
    first = losses[:, 1:seq_len]  # predicts tokens 2..n: r_2..r_n
    repeated = losses[:, seq_len + 1:]  # predicts tokens n+2..2n: r_2..r_n again
    return torch.stack([first.mean(), repeated.mean()])


@torch.no_grad()
def detector_scores(model, tokens: torch.Tensor, seq_len: int) -> dict:
    """Previous-token and induction scores, each [n_layers, n_heads], on repeated random tokens."""
    _, cache = model.run_with_cache(tokens, names=lambda name: name.endswith("hook_pattern"))
    patterns = torch.stack([cache["pattern", l] for l in range(model.cfg.n_layers)])  # [layer, batch, head, q, k]
    n = seq_len
    previous = patterns.diagonal(offset=-1, dim1=-2, dim2=-1)  # [layer, batch, head, 2n]: entry j is [q=j+1, k=j]
    previous = previous[..., 1:]  # queries 2..2n: query 1's previous token is BOS, where heads rest
    induction = patterns.diagonal(offset=-(n - 1), dim1=-2, dim2=-1)  # [layer, batch, head, n + 2]: [q = k + n - 1, k]
    induction = induction[..., 2:]  # queries n+1..2n (r_i, second copy) reading key q - n + 1 (r_{i+1}, first copy)
    return {"previous_token": previous.mean(dim=(1, 3)), "induction": induction.mean(dim=(1, 3))}


def k_composition_scores(model, sender_layer: int, receiver_layer: int) -> torch.Tensor:
    """[n_heads (senders), n_heads (receivers)]: ||W_OV^send W_QK^recv T||_F / (||W_OV^send||_F ||W_QK^recv||_F)."""
    senders = [head.OV.AB for head in model.blocks[sender_layer].attn.heads]  # each [d_model, d_model]
    receivers = [head.QK.AB for head in model.blocks[receiver_layer].attn.heads]  # each [d_model, d_model]
    scores = torch.zeros(len(senders), len(receivers))
    for s, ov in enumerate(senders):
        for r, qk in enumerate(receivers):
            # The sender writes ov's output into the stream; the receiver reads its keys from there: x_q QK (y OV)^T
            scores[s, r] = (ov @ qk.T).norm() / (ov.norm() * qk.norm())
    return scores


def _frobenius_ratio(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    return (A @ B).norm() / (A.norm() * B.norm())


def composition_baseline(d_model: int, d_head: int, n_samples: int, gen: torch.Generator) -> torch.Tensor:
    """[n_samples]: K-composition scores of random heads (Gaussian W_V, W_O, W_Q, W_K of the given shapes)."""
    scores = []
    for _ in range(n_samples):
        W_V, W_O = torch.randn(d_model, d_head, generator=gen), torch.randn(d_head, d_model, generator=gen)
        W_Q, W_K = torch.randn(d_model, d_head, generator=gen), torch.randn(d_model, d_head, generator=gen)
        ov, qk = W_V @ W_O, W_Q @ W_K.T  # each [d_model, d_model], rank d_head
        scores.append(_frobenius_ratio(ov, qk.T))
    return torch.stack(scores)


def q_and_v_composition_scores(model, sender_layer: int, receiver_layer: int) -> dict:
    """{"Q": [senders, receivers], "V": [senders, receivers]}: the composition score with W_QK (Q) and with W_OV (V)
    as the receiver's matrix."""
    senders = model.blocks[sender_layer].attn.heads
    receivers = model.blocks[receiver_layer].attn.heads
    scores = {"Q": torch.zeros(len(senders), len(receivers)), "V": torch.zeros(len(senders), len(receivers))}
    for s, sender in enumerate(senders):
        ov = sender.OV.AB  # [d_model, d_model]
        for r, receiver in enumerate(receivers):
            scores["Q"][s, r] = _frobenius_ratio(ov, receiver.QK.AB)  # the sender writes the receiver's query input
            scores["V"][s, r] = _frobenius_ratio(ov, receiver.OV.AB)  # ... or what the receiver moves
    return scores


@torch.no_grad()
def ablated_in_context_losses(model, tokens: torch.Tensor, seq_len: int, heads: list,
                              how: str = "mean") -> torch.Tensor:
    """in_context_losses with each (layer, head) in `heads` ablated at hook_z: set to its mean over the batch at
    each position ("mean") or to zero ("zero")."""
    layers = sorted({layer for layer, _ in heads})
    _, cache = model.run_with_cache(tokens, names=[f"blocks.{l}.attn.hook_z" for l in layers])
    hooks = []
    for layer in layers:
        chosen = [h for l, h in heads if l == layer]
        mean_z = cache["z", layer].mean(dim=0)  # [pos, head, d_head]: the average over the batch, per position

        def ablate(z, hook, chosen=chosen, mean_z=mean_z):  # z: [batch, pos, head, d_head]
            z = z.clone()
            z[:, :, chosen] = 0.0 if how == "zero" else mean_z[:, chosen]
            return z

        hooks.append((f"blocks.{layer}.attn.hook_z", ablate))
    with model.hooks(hooks):
        return in_context_losses(model, tokens, seq_len)


def phase_change_step(history: list, key: str) -> int:
    """The step of the first record where `key` has covered at least half of its change from the first record to
    the last one."""
    start, end = history[0][key], history[-1][key]
    for record in history:
        if (record[key] - start) / (end - start) >= 0.5:
            return record["step"]
    return history[-1]["step"]

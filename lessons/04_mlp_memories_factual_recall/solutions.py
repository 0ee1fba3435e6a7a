"""Reference solutions for lesson 04 (MLP memories and factual recall). The checks never import this file."""

import math

import torch

KIND_HOOKS = {"resid": "hook_resid_post", "mlp": "hook_mlp_out", "attn": "hook_attn_out"}


def memory_value_logits(model, layer: int, index: int) -> torch.Tensor:
    """-> [d_vocab]: the memory's value (row `index` of W_out) read through the unembedding."""
    value = model.blocks[layer].mlp.W_out[index]  # [d_model]
    return value @ model.W_U  # [d_vocab]


def neuron_activation(model, cache, layer: int, index: int) -> torch.Tensor:
    """-> [batch, pos]: neuron `index` of MLP `layer`, recomputed from the cached resid_mid of that layer."""
    resid_mid = cache[f"blocks.{layer}.hook_resid_mid"]  # [batch, pos, d_model]
    ln2 = model.blocks[layer].ln2
    centred = resid_mid - resid_mid.mean(-1, keepdim=True)
    normed = centred / (centred.pow(2).mean(-1, keepdim=True) + ln2.eps).sqrt() * ln2.w + ln2.b  # [batch, pos, d_model]
    mlp = model.blocks[layer].mlp
    pre = normed @ mlp.W_in[:, index] + mlp.b_in[index]  # [batch, pos]: the key is a column of W_in
    return 0.5 * pre * (1 + torch.tanh(math.sqrt(2 / math.pi) * (pre + 0.044715 * pre ** 3)))  # GPT-2's GELU


def top_activating_positions(model, layer: int, index: int, tokens: torch.Tensor, k: int):
    """-> (values [k], prompt indices [k], positions [k]): the k highest activations of the neuron over
    tokens [n, pos], best first, never at position 0 (the BOS)."""
    name = f"blocks.{layer}.mlp.hook_post"
    _, cache = model.run_with_cache(tokens, names=[name])
    acts = cache[name][..., index].clone()  # [n, pos]
    acts[:, 0] = float("-inf")
    values, flat = acts.flatten().topk(k)
    n_pos = tokens.shape[1]
    return values, flat // n_pos, flat % n_pos


def _noise_hook(subject_positions, noise):
    def add_noise(embed, hook):  # embed: [samples, pos, d_model]; noise: [samples, n_subject, d_model]
        embed = embed.clone()
        embed[:, subject_positions] = embed[:, subject_positions] + noise
        return embed
    return add_noise


def noised_answer_probs(model, tokens: torch.Tensor, subject_positions: list, answer: int,
                        noise: torch.Tensor) -> torch.Tensor:
    """-> [samples]: P(answer) at the last position, one run per noise sample added to the subject's embeddings."""
    batch = tokens.expand(noise.shape[0], -1)  # [samples, pos]
    with model.hooks([("hook_embed", _noise_hook(subject_positions, noise))]):
        logits = model(batch)  # [samples, pos, d_vocab]
    return logits[:, -1].softmax(-1)[:, answer]


def _restored_probs(model, tokens, subject_positions, answer, noise, kind, layers, pos, clean=None) -> torch.Tensor:
    """[samples]: P(answer) of the noised runs with the clean `kind` state of each of `layers` restored at pos
    (clean: a cache of the clean run holding those states, if one is at hand)."""
    names = [f"blocks.{l}.{KIND_HOOKS[kind]}" for l in layers]
    if clean is None:
        _, clean = model.run_with_cache(tokens, names=names)

    def restore(act, hook):  # act: [samples, pos, d_model]
        act = act.clone()
        act[:, pos] = clean[hook.name][0, pos]
        return act

    batch = tokens.expand(noise.shape[0], -1)
    hooks = [("hook_embed", _noise_hook(subject_positions, noise))] + [(name, restore) for name in names]
    with model.hooks(hooks):
        logits = model(batch)
    return logits[:, -1].softmax(-1)[:, answer]


def restored_answer_prob(model, tokens: torch.Tensor, subject_positions: list, answer: int, noise: torch.Tensor,
                         kind: str, layer: int, pos: int) -> float:
    """Mean P(answer) over the noised runs with one clean state (kind, layer, pos) restored."""
    return _restored_probs(model, tokens, subject_positions, answer, noise, kind, [layer], pos).mean().item()


def causal_trace_grid(model, tokens: torch.Tensor, subject_positions: list, answer: int, noise: torch.Tensor,
                      kind: str, window: int = 1) -> torch.Tensor:
    """-> [n_layers, pos]: mean P(answer) with the clean state restored at each (layer, position); for "mlp" and
    "attn" a window of layers around each layer (ROME's: layers max(0, l - w // 2) up to l + ceil(w / 2), exclusive);
    "resid" is never windowed (the stream after layer l already holds every earlier layer's output)."""
    n_layers, n_pos = model.cfg.n_layers, tokens.shape[1]
    width = 1 if kind == "resid" else window
    _, clean = model.run_with_cache(tokens, names=[f"blocks.{l}.{KIND_HOOKS[kind]}" for l in range(n_layers)])
    out = torch.zeros(n_layers, n_pos)
    for layer in range(n_layers):  # the clean run once: one run per cell, not two (half the time on GPT-2)
        layers = range(max(0, layer - width // 2), min(n_layers, layer + (width + 1) // 2))
        for pos in range(n_pos):
            out[layer, pos] = _restored_probs(model, tokens, subject_positions, answer, noise, kind, layers, pos,
                                              clean).mean()
    return out


def recovered_fraction_grid(model, tokens: torch.Tensor, noised_positions: list, answer: int, noise: torch.Tensor,
                            kind: str, window: int = 1) -> torch.Tensor:
    """-> [n_layers, pos]: (P_restored - P_noised) / (P_clean - P_noised), the share of the probability the noise
    took away that each restoration gives back (04.4's noised runs, 04.6's grid)."""
    clean = model(tokens)[0, -1].softmax(-1)[answer]
    noised = noised_answer_probs(model, tokens, noised_positions, answer, noise).mean()
    grid = causal_trace_grid(model, tokens, noised_positions, answer, noise, kind, window)  # [n_layers, pos]
    return (grid - noised) / (clean - noised)


def noise_sensitive_neurons(model, tokens: torch.Tensor, noised_positions: list, noise: torch.Tensor, layer: int,
                            pos: int, k: int):
    """-> (indices [k], clean activations [k], mean noised activations [k]): the k neurons of MLP `layer` whose
    activation at position pos changes most (|clean - mean noised|) when the noise is added, largest first."""
    name = f"blocks.{layer}.mlp.hook_post"
    _, clean_cache = model.run_with_cache(tokens, names=[name])
    with model.hooks([("hook_embed", _noise_hook(noised_positions, noise))]):
        _, noised_cache = model.run_with_cache(tokens.expand(noise.shape[0], -1), names=[name])
    clean = clean_cache[name][0, pos]  # [d_mlp]
    noised = noised_cache[name][:, pos].mean(0)  # [d_mlp]: the same position in every noised run
    indices = (clean - noised).abs().topk(k).indices
    return indices, clean[indices], noised[indices]

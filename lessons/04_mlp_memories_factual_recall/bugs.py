"""Planted bugs for lesson 04: each is a classic mistake, and the checks must fail it with a message that names it."""

import torch
import torch.nn.functional as F

from minimech.grading import Bug

KIND_HOOKS = {"resid": "hook_resid_post", "mlp": "hook_mlp_out", "attn": "hook_attn_out"}


# ---- 04.1 memory_value_logits ---------------------------------------------------------------------------------------

def value_reads_the_key(model, layer, index):
    return model.blocks[layer].mlp.W_in[:, index] @ model.W_U


def value_reads_a_column(model, layer, index):
    return model.blocks[layer].mlp.W_out[:, index] @ model.W_U  # a column: runs only when d_mlp == d_model


# ---- 04.2 neuron_activation -----------------------------------------------------------------------------------------

def _activation(model, cache, layer, index, act=lambda x: F.gelu(x, approximate="tanh"), row=False,
                source="hook_resid_mid"):
    block = model.blocks[layer]
    normed = block.ln2(cache[f"blocks.{layer}.{source}"])  # [batch, pos, d_model]
    key = block.mlp.W_in[index] if row else block.mlp.W_in[:, index]  # a row runs only when d_mlp == d_model
    return act(normed @ key + block.mlp.b_in[index])


def act_no_gelu(model, cache, layer, index):
    return _activation(model, cache, layer, index, act=lambda x: x)


def act_erf_gelu(model, cache, layer, index):
    return _activation(model, cache, layer, index, act=F.gelu)


def act_w_in_row(model, cache, layer, index):
    return _activation(model, cache, layer, index, row=True)


def act_from_resid_pre(model, cache, layer, index):
    return _activation(model, cache, layer, index, source="hook_resid_pre")


# ---- 04.3 top_activating_positions ----------------------------------------------------------------------------------

def _top(model, layer, index, tokens, k, skip_bos=True, largest=True, name="hook_post", divisor=None):
    hook = f"blocks.{layer}.mlp.{name}"
    acts = model.run_with_cache(tokens, names=[hook])[1][hook][..., index].clone()  # [n, pos]
    if skip_bos:
        acts[:, 0] = float("-inf") if largest else float("inf")
    values, flat = acts.flatten().topk(k, largest=largest)
    divisor = divisor or tokens.shape[1]
    return values, flat // divisor, flat % divisor


def top_includes_bos(model, layer, index, tokens, k):
    return _top(model, layer, index, tokens, k, skip_bos=False)


def top_lowest(model, layer, index, tokens, k):
    return _top(model, layer, index, tokens, k, largest=False)


def top_before_gelu(model, layer, index, tokens, k):
    return _top(model, layer, index, tokens, k, name="hook_pre")


def top_wrong_unravel(model, layer, index, tokens, k):
    return _top(model, layer, index, tokens, k, divisor=tokens.shape[0])  # divides by n, not pos


def top_forgets_plus_one(model, layer, index, tokens, k):
    hook = f"blocks.{layer}.mlp.hook_post"
    acts = model.run_with_cache(tokens, names=[hook])[1][hook][:, 1:, index]  # [n, pos - 1]: BOS left out
    values, flat = acts.flatten().topk(k)
    return values, flat // acts.shape[1], flat % acts.shape[1]  # column j of acts[:, 1:] is position j + 1


# ---- 04.4 noised_answer_probs ---------------------------------------------------------------------------------------

def _noised(model, tokens, positions, answer, noise, read="prob"):
    def add_noise(embed, hook):
        embed = embed.clone()
        embed[:, positions] = embed[:, positions] + noise
        return embed

    with model.hooks([("hook_embed", add_noise)]):
        logits = model(tokens.expand(noise.shape[0], -1))[:, -1]
    return (logits.softmax(-1) if read == "prob" else logits)[:, answer]


def noise_after_subject(model, tokens, subject_positions, answer, noise):
    last = tokens.shape[1] - 1
    return _noised(model, tokens, [min(p + 1, last) for p in subject_positions], answer, noise)


def noise_returns_logits(model, tokens, subject_positions, answer, noise):
    return _noised(model, tokens, subject_positions, answer, noise, read="logit")


# ---- 04.5 restored_answer_prob --------------------------------------------------------------------------------------

def _restored(model, tokens, positions, answer, noise, names, pos, clean_source=True):
    def add_noise(embed, hook):
        embed = embed.clone()
        embed[:, positions] = embed[:, positions] + noise
        return embed

    batch = tokens.expand(noise.shape[0], -1)
    if clean_source:
        _, cache = model.run_with_cache(tokens, names=names)
    else:  # the noised runs' own states: restores nothing
        with model.hooks([("hook_embed", add_noise)]):
            _, cache = model.run_with_cache(batch, names=names)

    def restore(act, hook):
        act = act.clone()
        act[:, pos] = cache[hook.name][:, pos]  # broadcasts the clean [1, ...] over the samples
        return act

    with model.hooks([("hook_embed", add_noise)] + [(n, restore) for n in names]):
        logits = model(batch)
    return logits[:, -1].softmax(-1)[:, answer].mean().item()


def restore_next_layer(model, tokens, subject_positions, answer, noise, kind, layer, pos):
    target = min(layer + 1, model.cfg.n_layers - 1)
    return _restored(model, tokens, subject_positions, answer, noise, [f"blocks.{target}.{KIND_HOOKS[kind]}"], pos)


def restore_every_position(model, tokens, subject_positions, answer, noise, kind, layer, pos):
    return _restored(model, tokens, subject_positions, answer, noise, [f"blocks.{layer}.{KIND_HOOKS[kind]}"],
                     slice(None))


def restore_from_noised_run(model, tokens, subject_positions, answer, noise, kind, layer, pos):
    return _restored(model, tokens, subject_positions, answer, noise, [f"blocks.{layer}.{KIND_HOOKS[kind]}"], pos,
                     clean_source=False)


# ---- 04.6 causal_trace_grid -----------------------------------------------------------------------------------------

def _grid(model, tokens, positions, answer, noise, kind, window, transpose=False, minus_corrupt=False,
          window_resid=False):
    n_layers, n_pos = model.cfg.n_layers, tokens.shape[1]
    window = window if kind != "resid" or window_resid else 1
    out = torch.zeros(n_layers, n_pos)
    for layer in range(n_layers):
        layers = range(max(0, layer - window // 2), min(n_layers, layer + (window + 1) // 2))
        names = [f"blocks.{l}.{KIND_HOOKS[kind]}" for l in layers]
        for pos in range(n_pos):
            out[layer, pos] = _restored(model, tokens, positions, answer, noise, names, pos)
    if minus_corrupt:
        out = out - _restored(model, tokens, positions, answer, noise, [], 0)
    return out.T.contiguous() if transpose else out


def grid_transposed(model, tokens, subject_positions, answer, noise, kind, window=1):
    return _grid(model, tokens, subject_positions, answer, noise, kind, window, transpose=True)


def grid_indirect_effect(model, tokens, subject_positions, answer, noise, kind, window=1):
    return _grid(model, tokens, subject_positions, answer, noise, kind, window, minus_corrupt=True)


def grid_ignores_window(model, tokens, subject_positions, answer, noise, kind, window=1):
    return _grid(model, tokens, subject_positions, answer, noise, kind, 1)


def grid_windows_resid(model, tokens, subject_positions, answer, noise, kind, window=1):
    return _grid(model, tokens, subject_positions, answer, noise, kind, window, window_resid=True)


# ---- 04.7 recovered_fraction_grid -----------------------------------------------------------------------------------

def _fraction(model, tokens, positions, answer, noise, kind, window, how):
    clean = model(tokens)[0, -1].softmax(-1)[answer]
    noised = _noised(model, tokens, positions, answer, noise)  # [samples]
    grid = _grid(model, tokens, positions, answer, noise, kind, window)
    if how == "over_clean":
        return grid / clean
    if how == "unnormalised":
        return grid - noised.mean()
    return (grid - noised[0]) / (clean - noised[0])  # one sample's P_noised


def fraction_over_clean(model, tokens, noised_positions, answer, noise, kind, window=1):
    return _fraction(model, tokens, noised_positions, answer, noise, kind, window, "over_clean")


def fraction_unnormalised(model, tokens, noised_positions, answer, noise, kind, window=1):
    return _fraction(model, tokens, noised_positions, answer, noise, kind, window, "unnormalised")


def fraction_one_sample(model, tokens, noised_positions, answer, noise, kind, window=1):
    return _fraction(model, tokens, noised_positions, answer, noise, kind, window, "one_sample")


# ---- 04.8 noise_sensitive_neurons -----------------------------------------------------------------------------------

def _neurons(model, tokens, positions, noise, layer, pos, k, clean_pos=None, signed=False, one_run=False):
    name = f"blocks.{layer}.mlp.hook_post"
    _, clean_cache = model.run_with_cache(tokens, names=[name])

    def add_noise(embed, hook):
        embed = embed.clone()
        embed[:, positions] = embed[:, positions] + noise
        return embed

    with model.hooks([("hook_embed", add_noise)]):
        _, noised_cache = model.run_with_cache(tokens.expand(noise.shape[0], -1), names=[name])
    clean = clean_cache[name][0, pos if clean_pos is None else clean_pos]
    noised = noised_cache[name][0, pos] if one_run else noised_cache[name][:, pos].mean(0)
    change = clean - noised
    indices = (change if signed else change.abs()).topk(k).indices
    return indices, clean[indices], noised[indices]


def neurons_signed_change(model, tokens, noised_positions, noise, layer, pos, k):
    return _neurons(model, tokens, noised_positions, noise, layer, pos, k, signed=True)


def neurons_clean_at_last_token(model, tokens, noised_positions, noise, layer, pos, k):
    return _neurons(model, tokens, noised_positions, noise, layer, pos, k, clean_pos=-1)  # positions mixed


def neurons_one_noised_run(model, tokens, noised_positions, noise, layer, pos, k):
    return _neurons(model, tokens, noised_positions, noise, layer, pos, k, one_run=True)


BUGS = [
    Bug("04.1", value_reads_the_key, "key"),
    Bug("04.1", value_reads_a_column, "column of W_out"),
    Bug("04.2", act_no_gelu, "GELU"),
    Bug("04.2", act_erf_gelu, "tanh"),
    Bug("04.2", act_w_in_row, "column W_in[:, i]"),
    Bug("04.2", act_from_resid_pre, "resid_mid"),
    Bug("04.3", top_includes_bos, "position 0"),
    Bug("04.3", top_lowest, "highest"),
    Bug("04.3", top_before_gelu, "before the GELU"),
    Bug("04.3", top_wrong_unravel, "i // pos"),
    Bug("04.3", top_forgets_plus_one, "add 1"),
    Bug("04.4", noise_after_subject, "wrong tokens"),
    Bug("04.4", noise_returns_logits, "probabilities"),
    Bug("04.5", restore_next_layer, "wrong layer"),
    Bug("04.5", restore_every_position, "every position"),
    Bug("04.5", restore_from_noised_run, "CLEAN"),
    Bug("04.6", grid_transposed, "transposed"),
    Bug("04.6", grid_indirect_effect, "indirect effect"),
    Bug("04.6", grid_ignores_window, "window"),
    Bug("04.6", grid_windows_resid, "one layer at a time"),
    Bug("04.7", fraction_over_clean, "subtract P_noised first"),
    Bug("04.7", fraction_unnormalised, "did not divide"),
    Bug("04.7", fraction_one_sample, "mean over all the samples"),
    Bug("04.8", neurons_signed_change, "absolute value"),
    Bug("04.8", neurons_clean_at_last_token, "read both at `pos`"),
    Bug("04.8", neurons_one_noised_run, "mean over the noised runs"),
]

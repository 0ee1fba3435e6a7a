"""Planted bugs for lesson 06: each is a classic mistake, and the checks must fail it with a message that names it."""

import copy

import torch

from minimech.grading import Bug


# ---- 06.1 mean_ablated_logits ---------------------------------------------------------------------------------------

def _ablate(model, tokens, heads, source, fill="mean", whole_layer=False):
    names = sorted({f"blocks.{l}.attn.hook_z" for l, _ in heads})
    _, cache = model.run_with_cache(source, names=names)

    def hook(z, hook):
        layer = int(hook.name.split(".")[1])
        chosen = range(z.shape[2]) if whole_layer else [h for l, h in heads if l == layer]
        mean = cache[hook.name].mean((0, 1)) if fill == "pooled" else cache[hook.name].mean(0)
        z = z.clone()
        for h in chosen:
            z[:, :, h] = 0.0 if fill == "zero" else mean[..., h, :]
        return z

    with model.hooks([(n, hook) for n in names]):
        return model(tokens)


def ablate_with_zeros(model, tokens, heads, reference_tokens):
    return _ablate(model, tokens, heads, reference_tokens, fill="zero")


def ablate_means_pooled_over_positions(model, tokens, heads, reference_tokens):
    return _ablate(model, tokens, heads, reference_tokens, fill="pooled")


def ablate_means_of_the_run_itself(model, tokens, heads, reference_tokens):
    return _ablate(model, tokens, heads, tokens)


def ablate_whole_layers(model, tokens, heads, reference_tokens):
    return _ablate(model, tokens, heads, reference_tokens, whole_layer=True)


# ---- 06.2 damage_table ----------------------------------------------------------------------------------------------

def _table(model, behaviours, heads, fill="mean", swap=False, change=False, own_tokens=False):
    rows = []
    for tokens, reference, metric in behaviours.values():
        before = metric(model(tokens)).item()
        after = metric(_ablate(model, tokens, heads, tokens if own_tokens else reference, fill=fill)).item()
        if change:
            after = after - before
        rows.append([after, before] if swap else [before, after])
    return torch.tensor(rows)


def damage_columns_swapped(model, behaviours, heads):
    return _table(model, behaviours, heads, swap=True)


def damage_change_not_after(model, behaviours, heads):
    return _table(model, behaviours, heads, change=True)


def damage_zero_ablation(model, behaviours, heads):
    return _table(model, behaviours, heads, fill="zero")


def damage_means_of_own_tokens(model, behaviours, heads):
    return _table(model, behaviours, heads, own_tokens=True)  # the reference prompts never used


# ---- 06.3 steering_vector -------------------------------------------------------------------------------------------

def _last(model, prompts, hook):
    acts = []
    for prompt in prompts:
        _, cache = model.run_with_cache(model.to_tokens(prompt), names=[hook])
        acts.append(cache[hook][0, -1])
    return torch.stack(acts)


def vector_sign_flipped(model, positive, negative, hook):
    return _last(model, negative, hook).mean(0) - _last(model, positive, hook).mean(0)


def vector_padded_last_position(model, positive, negative, hook):
    def mean(prompts):
        _, cache = model.run_with_cache(model.to_tokens(prompts), names=[hook])  # right-padded batch
        return cache[hook][:, -1].mean(0)  # position -1 is padding for the shorter prompts
    return mean(positive) - mean(negative)


def vector_summed(model, positive, negative, hook):
    return _last(model, positive, hook).sum(0) - _last(model, negative, hook).sum(0)


# ---- 06.4 steered_logits --------------------------------------------------------------------------------------------

def _steer(model, tokens, hook, vector, coeff, where):
    def add(act, hook):
        act = act.clone()
        act[:, where] = act[:, where] + coeff * vector
        return act

    with model.hooks([(hook, add)]):
        return model(tokens)


def steer_subtracts(model, tokens, hook, vector, coeff, pos=None):
    return _steer(model, tokens, hook, vector, -coeff, slice(None) if pos is None else pos)


def steer_every_position(model, tokens, hook, vector, coeff, pos=None):
    return _steer(model, tokens, hook, vector, coeff, slice(None))  # ignores pos


def steer_position_off_by_one(model, tokens, hook, vector, coeff, pos=None):
    return _steer(model, tokens, hook, vector, coeff, slice(None) if pos is None else pos - 1)


def steer_without_coeff(model, tokens, hook, vector, coeff, pos=None):
    return _steer(model, tokens, hook, vector, 1.0, slice(None) if pos is None else pos)


# ---- 06.5 steering_by_layer -----------------------------------------------------------------------------------------

def _by_layer(model, positive, negative, prompts, target, baseline, coeff, kind="hook_resid_mid", where=-1,
              probs=False):
    out = []
    for layer in range(model.cfg.n_layers):
        hook = f"blocks.{layer}.{kind}"
        vector = _last(model, positive, hook).mean(0) - _last(model, negative, hook).mean(0)
        diffs = []
        for prompt in prompts:
            last = _steer(model, model.to_tokens(prompt), hook, vector, coeff, where)[0, -1]
            last = last.softmax(-1) if probs else last
            diffs.append(last[target] - last[baseline])
        out.append(torch.stack(diffs).mean())
    return torch.stack(out)


def by_layer_resid_post(model, positive, negative, prompts, target, baseline, coeff=1.0):
    return _by_layer(model, positive, negative, prompts, target, baseline, coeff, kind="hook_resid_post")


def by_layer_resid_pre(model, positive, negative, prompts, target, baseline, coeff=1.0):
    return _by_layer(model, positive, negative, prompts, target, baseline, coeff, kind="hook_resid_pre")


def by_layer_every_position(model, positive, negative, prompts, target, baseline, coeff=1.0):
    return _by_layer(model, positive, negative, prompts, target, baseline, coeff, where=slice(None))


def by_layer_probabilities(model, positive, negative, prompts, target, baseline, coeff=1.0):
    return _by_layer(model, positive, negative, prompts, target, baseline, coeff, probs=True)


# ---- 06.6 key_second_moment ------------------------------------------------------------------------------------------

def _moment(model, layer, tokens, mask, centre=False, every=False):
    name = f"blocks.{layer}.mlp.hook_post"
    keys = model.run_with_cache(tokens, names=[name])[1][name]
    keys = keys.flatten(0, 1) if every else keys[mask]
    if centre:
        keys = keys - keys.mean(0)
    return keys.T @ keys / len(keys)


def moment_centred(model, layer, tokens, mask):
    return _moment(model, layer, tokens, mask, centre=True)


def moment_ignores_mask(model, layer, tokens, mask):
    return _moment(model, layer, tokens, mask, every=True)


def moment_over_rows(model, layer, tokens, mask):
    name = f"blocks.{layer}.mlp.hook_post"
    keys = model.run_with_cache(tokens, names=[name])[1][name][mask]
    return keys.T @ keys / tokens.shape[0]  # divides by the number of prompts


# ---- 06.7 value_delta -----------------------------------------------------------------------------------------------

def _delta(model, tokens, pos, layer, target, steps, lr, max_norm, sign=1.0, clip=True):
    delta = torch.zeros(model.cfg.d_model, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=lr)

    def add(act, hook):
        act = act.clone()
        act[:, pos] = act[:, pos] + delta
        return act
    for _ in range(steps):
        with torch.enable_grad(), model.hooks([(f"blocks.{layer}.hook_mlp_out", add)]):
            loss = -sign * model(tokens)[0, -1].log_softmax(-1)[target]
            (delta.grad,) = torch.autograd.grad(loss, [delta])
        optimiser.step()
        if clip:
            with torch.no_grad():
                delta.mul_(min(1.0, max_norm / (delta.norm().item() + 1e-12)))
    return delta.detach()


def delta_at_last_token(model, tokens, subject_pos, layer, target, steps=60, lr=0.5, max_norm=10.0):
    return _delta(model, tokens, tokens.shape[1] - 1, layer, target, steps, lr, max_norm)


def delta_not_clipped(model, tokens, subject_pos, layer, target, steps=60, lr=0.5, max_norm=10.0):
    return _delta(model, tokens, subject_pos, layer, target, steps, lr, max_norm, clip=False)


def delta_ascends_the_loss(model, tokens, subject_pos, layer, target, steps=60, lr=0.5, max_norm=10.0):
    return _delta(model, tokens, subject_pos, layer, target, steps, lr, max_norm, sign=-1.0)


def delta_without_gradients(model, tokens, subject_pos, layer, target, steps=60, lr=0.5, max_norm=10.0):
    return torch.zeros(model.cfg.d_model)  # the loss was computed under no_grad: nothing to step on


# ---- 06.8 rome_update -----------------------------------------------------------------------------------------------

def update_with_c_not_its_inverse(W, key, value, cov):
    c_key = cov @ key  # C k where ROME has C^-1 k
    return torch.outer(c_key, value - key @ W) / (key @ c_key)


def update_transposed(W, key, value, cov):
    c_inv_key = torch.linalg.solve(cov, key)
    return (torch.outer(c_inv_key, value - key @ W) / (key @ c_inv_key)).T


def update_forgets_the_old_value(W, key, value, cov):
    c_inv_key = torch.linalg.solve(cov, key)
    return torch.outer(c_inv_key, value) / (key @ c_inv_key)  # value, not value - key @ W


def update_ignores_the_covariance(W, key, value, cov):
    return torch.outer(key, value - key @ W) / (key @ key)  # as if C were the identity


# ---- 06.9 edit_answer_probs -----------------------------------------------------------------------------------------

def _probs(model, prompts, answers):
    return torch.stack([model(model.to_tokens(p))[0, -1].softmax(-1)[a] for p, a in zip(prompts, answers)])


def _edited(model, layer, update):
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.blocks[layer].mlp.W_out += update
    return edited


def edit_subtracts(model, layer, update, prompts, answers):
    return torch.stack([_probs(model, prompts, answers), _probs(_edited(model, layer, -update), prompts, answers)])


def edit_padded_last_position(model, layer, update, prompts, answers):
    rows = torch.arange(len(prompts))
    out = []
    for m in (model, _edited(model, layer, update)):
        out.append(m(m.to_tokens(prompts))[:, -1].softmax(-1)[rows, answers])  # -1 is padding for short prompts
    return torch.stack(out)


def edit_rows_swapped(model, layer, update, prompts, answers):
    return torch.stack([_probs(_edited(model, layer, update), prompts, answers), _probs(model, prompts, answers)])


def edit_in_place_and_undo(model, layer, update, prompts, answers):
    before = _probs(model, prompts, answers)
    with torch.no_grad():
        model.blocks[layer].mlp.W_out += update  # edits the caller's model ...
    after = _probs(model, prompts, answers)
    with torch.no_grad():
        model.blocks[layer].mlp.W_out -= update  # ... and "undoes" it: W + u - u is not W in floating point
    return torch.stack([before, after])


BUGS = [
    Bug("06.1", ablate_with_zeros, "zeros"),
    Bug("06.1", ablate_means_pooled_over_positions, "one mean per position"),
    Bug("06.1", ablate_means_of_the_run_itself, "reference_tokens"),
    Bug("06.1", ablate_whole_layers, "every head of the layers"),
    Bug("06.2", damage_columns_swapped, "swapped"),
    Bug("06.2", damage_change_not_after, "the change"),
    Bug("06.2", damage_zero_ablation, "zeros"),
    Bug("06.2", damage_means_of_own_tokens, "reference_tokens"),
    Bug("06.3", vector_sign_flipped, "sign"),
    Bug("06.3", vector_padded_last_position, "padded batch"),
    Bug("06.3", vector_summed, "summed"),
    Bug("06.4", steer_subtracts, "subtracted"),
    Bug("06.4", steer_every_position, "every position"),
    Bug("06.4", steer_position_off_by_one, "one position too early"),
    Bug("06.4", steer_without_coeff, "coeff"),
    Bug("06.5", by_layer_resid_post, "hook_resid_mid"),
    Bug("06.5", by_layer_resid_pre, "hook_resid_mid"),
    Bug("06.5", by_layer_every_position, "last token only"),
    Bug("06.5", by_layer_probabilities, "logit difference"),
    Bug("06.6", moment_centred, "uncentred"),
    Bug("06.6", moment_ignores_mask, "mask is True"),
    Bug("06.6", moment_over_rows, "number of keys kept"),
    Bug("06.7", delta_at_last_token, "subject's last token"),
    Bug("06.7", delta_not_clipped, "max_norm"),
    Bug("06.7", delta_ascends_the_loss, "LOWERS"),
    Bug("06.7", delta_without_gradients, "all zeros"),
    Bug("06.8", update_with_c_not_its_inverse, "instead of its inverse"),
    Bug("06.8", update_transposed, "transposed"),
    Bug("06.8", update_forgets_the_old_value, "v* - W k"),
    Bug("06.8", update_ignores_the_covariance, "identity"),
    Bug("06.9", edit_subtracts, "subtracted"),
    Bug("06.9", edit_padded_last_position, "padded batch"),
    Bug("06.9", edit_rows_swapped, "swapped"),
    Bug("06.9", edit_in_place_and_undo, "changed the model"),
]

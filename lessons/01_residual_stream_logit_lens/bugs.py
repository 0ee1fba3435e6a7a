"""Planted bugs for lesson 01: each is a classic mistake, and the checks must fail it with a message that names it."""

import importlib.util
from pathlib import Path

import torch

from minimech.grading import Bug


def _solutions():  # loaded by path: the lesson folder is not a package
    spec = importlib.util.spec_from_file_location("lesson01_solutions", Path(__file__).with_name("solutions.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


S = _solutions()


# ---- 01.1 residual_stack ------------------------------------------------------------------------------------------

def stack_after_each_block(cache, n_layers):
    points = [cache[f"blocks.{l}.hook_resid_post"] for l in range(n_layers)]
    return torch.stack(points + [cache[f"blocks.{n_layers - 1}.hook_resid_post"]])


def stack_without_final(cache, n_layers):
    return torch.stack([cache[f"blocks.{l}.hook_resid_pre"] for l in range(n_layers)])


# ---- 01.2 decompose_resid -----------------------------------------------------------------------------------------

def decompose_without_bias(model, cache, layer, pos):
    return {k: v for k, v in S.decompose_resid(model, cache, layer, pos).items() if not k.endswith("attn_bias")}


def decompose_one_block_too_many(model, cache, layer, pos):
    if layer == model.cfg.n_layers:  # there is no block after the last: only the earlier cases can show it
        return S.decompose_resid(model, cache, layer, pos)
    return S.decompose_resid(model, cache, layer + 1, pos)


def decompose_bias_in_heads(model, cache, layer, pos):
    parts = S.decompose_resid(model, cache, layer, pos)
    for l in range(layer):
        for h in range(model.cfg.n_heads):
            parts[f"L{l}H{h}"] = parts[f"L{l}H{h}"] + model.blocks[l].attn.b_O.detach()
    return parts


# ---- 01.3 logit_lens ----------------------------------------------------------------------------------------------

def lens_without_ln_final(model, tokens, pos=-1):
    _, cache = model.run_with_cache(tokens)
    points = S.residual_stack(cache, model.cfg.n_layers)[:, :, pos]
    return (points @ model.W_U + model.b_U).log_softmax(-1).detach()


def lens_with_cached_scale(model, tokens, pos=-1):
    _, cache = model.run_with_cache(tokens)
    points = S.residual_stack(cache, model.cfg.n_layers)[:, :, pos]
    normed = cache.apply_ln_final(points, pos=pos) + model.ln_final.b  # the final stream's scale for every point
    return (normed @ model.W_U + model.b_U).log_softmax(-1).detach()


def lens_logits_not_log_probs(model, tokens, pos=-1):
    _, cache = model.run_with_cache(tokens)
    points = S.residual_stack(cache, model.cfg.n_layers)[:, :, pos]
    return (cache.apply_ln_final(points, recompute=True) @ model.W_U + model.b_U).detach()


# ---- 01.4 prediction_forms_at -------------------------------------------------------------------------------------

def forms_first_top1(log_probs):
    top = log_probs.argmax(-1)  # [n_points, batch]
    return (top == top[-1]).long().argmax(0)  # first agreement, even if it is lost again


def forms_off_by_one(log_probs):
    return S.prediction_forms_at(log_probs) - 1  # the last point that disagreed


# ---- 01.5 lens_kl ----------------------------------------------------------------------------------------------------

def kl_reversed(log_probs):
    return (log_probs.exp() * (log_probs - log_probs[-1:])).sum(-1)  # KL(point || final)


def kl_mean_over_vocab(log_probs):
    return (log_probs[-1:].exp() * (log_probs[-1:] - log_probs)).mean(-1)


def kl_against_first_point(log_probs):
    return (log_probs[:1].exp() * (log_probs[:1] - log_probs)).sum(-1)


# ---- 01.6 head_logit_attribution ----------------------------------------------------------------------------------

def _dla(model, cache, correct, wrong, pos, scaled=True, diff=True):
    W_U, ln = model.W_U.detach(), model.ln_final
    direction = W_U[:, correct] - (W_U[:, wrong] if diff else 0)  # [d_model, batch]
    rows = []
    for l in range(model.cfg.n_layers):
        z = cache[f"blocks.{l}.attn.hook_z"][:, pos]
        result = torch.einsum("bhe,hem->bhm", z, model.blocks[l].attn.W_O.detach())
        result = result - result.mean(-1, keepdim=True)
        if scaled:
            result = result / cache["ln_final.hook_scale"][:, pos][:, None]
        rows.append(torch.einsum("bhm,mb->bh", result * ln.w.detach(), direction).mean(0))
    return torch.stack(rows)


def dla_without_ln_scale(model, cache, correct, wrong, pos=-1):
    return _dla(model, cache, correct, wrong, pos, scaled=False)


def dla_correct_logit_only(model, cache, correct, wrong, pos=-1):
    return _dla(model, cache, correct, wrong, pos, diff=False)


def dla_flipped_sign(model, cache, correct, wrong, pos=-1):
    return -_dla(model, cache, correct, wrong, pos)


# ---- 01.7 component_logit_attribution --------------------------------------------------------------------------------

def components_without_biases(model, cache, correct, wrong, pos=-1):
    out = S.component_logit_attribution(model, cache, correct, wrong, pos)
    return {k: v for k, v in out.items() if k not in ("ln_final.b", "b_U")}  # the two leftover terms forgotten


def components_unscaled(model, cache, correct, wrong, pos=-1):
    out = S.component_logit_attribution(model, cache, correct, wrong, pos)
    scale = cache["ln_final.hook_scale"][:, pos, 0]  # [batch]
    return {k: v if k in ("ln_final.b", "b_U") else v * scale for k, v in out.items()}  # never divided by it


def components_mean_over_prompts(model, cache, correct, wrong, pos=-1):
    return {k: v.mean() for k, v in S.component_logit_attribution(model, cache, correct, wrong, pos).items()}


BUGS = [
    Bug("01.1", stack_after_each_block, "already includes block 0"),
    Bug("01.1", stack_without_final, "n_layers + 1"),
    Bug("01.2", decompose_without_bias, "attention biases"),
    Bug("01.2", decompose_one_block_too_many, "own components"),
    Bug("01.2", decompose_bias_in_heads, "includes b_O"),
    Bug("01.3", lens_without_ln_final, "without the final LayerNorm"),
    Bug("01.3", lens_with_cached_scale, "cached ln_final scale"),
    Bug("01.3", lens_logits_not_log_probs, "you returned logits"),
    Bug("01.4", forms_first_top1, "stays"),
    Bug("01.4", forms_off_by_one, "off by one"),
    Bug("01.5", kl_reversed, "KL(point || final)"),
    Bug("01.5", kl_mean_over_vocab, "averaged over the vocabulary"),
    Bug("01.5", kl_against_first_point, "first point"),
    Bug("01.6", dla_without_ln_scale, "scale"),
    Bug("01.6", dla_correct_logit_only, "logit difference"),
    Bug("01.6", dla_flipped_sign, "signs are flipped"),
    Bug("01.7", components_without_biases, "belong to no component"),
    Bug("01.7", components_unscaled, "scale"),
    Bug("01.7", components_mean_over_prompts, "one value per prompt"),
]

"""Planted bugs for lesson 07: each is one classic mistake, and the checks must name it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minimech.grading import Bug


# ---- 07.1 ---------------------------------------------------------------------------------------------------------
def forward_no_b_dec(x, W_enc, b_enc, W_dec, b_dec):
    f = torch.relu(x @ W_enc + b_enc)
    return f, f @ W_dec + b_dec


def forward_no_relu(x, W_enc, b_enc, W_dec, b_dec):
    f = (x - b_dec) @ W_enc + b_enc
    return f, f @ W_dec + b_dec


def forward_no_decoder_bias(x, W_enc, b_enc, W_dec, b_dec):
    f = torch.relu((x - b_dec) @ W_enc + b_enc)
    return f, f @ W_dec


# ---- 07.2 ---------------------------------------------------------------------------------------------------------
def loss_mse_default(x, f, x_hat, l1_coefficient):
    return F.mse_loss(x_hat, x) + l1_coefficient * f.abs().sum(-1).mean()


def loss_no_l1(x, f, x_hat, l1_coefficient):
    return (x_hat - x).pow(2).sum(-1).mean()


def loss_l1_summed_over_batch(x, f, x_hat, l1_coefficient):
    return (x_hat - x).pow(2).sum(-1).mean() + l1_coefficient * f.abs().sum()


# ---- 07.3 ---------------------------------------------------------------------------------------------------------
def _forward_loss(params, x, l1):
    f = torch.relu((x - params["b_dec"]) @ params["W_enc"] + params["b_enc"])
    x_hat = f @ params["W_dec"] + params["b_dec"]
    return (x_hat - x).pow(2).sum(-1).mean() + l1 * f.sum(-1).mean()


def step_no_renormalise(params, optimizer, x, l1_coefficient):
    optimizer.zero_grad()
    _forward_loss(params, x, l1_coefficient).backward()
    W = params["W_dec"]
    with torch.no_grad():
        W.grad -= (W.grad * W).sum(-1, keepdim=True) * W
    optimizer.step()
    return params


def step_no_zero_grad(params, optimizer, x, l1_coefficient):
    _forward_loss(params, x, l1_coefficient).backward()
    W = params["W_dec"]
    with torch.no_grad():
        W.grad -= (W.grad * W).sum(-1, keepdim=True) * W
    optimizer.step()
    with torch.no_grad():
        W /= W.norm(dim=-1, keepdim=True)
    return params


def step_no_projection(params, optimizer, x, l1_coefficient):
    optimizer.zero_grad()
    _forward_loss(params, x, l1_coefficient).backward()
    optimizer.step()
    with torch.no_grad():
        params["W_dec"] /= params["W_dec"].norm(dim=-1, keepdim=True)
    return params


# ---- 07.4 ---------------------------------------------------------------------------------------------------------
def _flat(*ts):
    return [t.reshape(-1, t.shape[-1]) for t in ts]


def metrics_uncentred(x, f, x_hat):
    x, f, x_hat = _flat(x, f, x_hat)
    l0 = (f != 0).sum(-1).float().mean().item()
    return l0, (1 - (x - x_hat).pow(2).sum(-1).mean() / x.pow(2).sum(-1).mean()).item()


def metrics_legacy_per_token(x, f, x_hat):
    x, f, x_hat = _flat(x, f, x_hat)
    l0 = (f != 0).sum(-1).float().mean().item()
    per_token = 1 - (x - x_hat).pow(2).sum(-1) / (x - x.mean(0)).pow(2).sum(-1)
    return l0, per_token.mean().item()


def metrics_l0_total(x, f, x_hat):
    x, f, x_hat = _flat(x, f, x_hat)
    total = (x - x.mean(0)).pow(2).sum(-1).mean()
    return float((f != 0).sum()), (1 - (x - x_hat).pow(2).sum(-1).mean() / total).item()


# ---- 07.5 ---------------------------------------------------------------------------------------------------------
def _losses(model, tokens, hook, reconstruct, keep_bos, skip_first):
    def splice(act, hook_point):
        new = reconstruct(act)
        if keep_bos:
            new[:, 0] = act[:, 0]
        return new

    def zero(act, hook_point):
        new = torch.zeros_like(act)
        if keep_bos:
            new[:, 0] = act[:, 0]
        return new

    def loss(logits):
        per_token = model.loss(logits, tokens, per_token=True)
        return (per_token[:, 1:] if skip_first else per_token).mean().item()

    with torch.no_grad():
        clean = loss(model(tokens))
        with model.hooks([(hook, splice)]):
            spliced = loss(model(tokens))
        with model.hooks([(hook, zero)]):
            ablated = loss(model(tokens))
    return clean, spliced, ablated


def ce_bos_prediction_counted(model, tokens, hook, reconstruct):
    c, s, a = _losses(model, tokens, hook, reconstruct, keep_bos=True, skip_first=False)
    return c, s, a, (a - s) / (a - c)


def ce_bos_replaced(model, tokens, hook, reconstruct):
    c, s, a = _losses(model, tokens, hook, reconstruct, keep_bos=False, skip_first=True)
    return c, s, a, (a - s) / (a - c)


def ce_ratio_inverted(model, tokens, hook, reconstruct):
    c, s, a = _losses(model, tokens, hook, reconstruct, keep_bos=True, skip_first=True)
    return c, s, a, (s - c) / (a - c)


# ---- 07.6 ---------------------------------------------------------------------------------------------------------
def activations_no_b_dec(model, tokens, hook, W_enc, b_enc, b_dec, feature):
    x = model.run_with_cache(tokens, names=[hook])[1][hook]
    return torch.relu(x @ W_enc[:, feature] + b_enc[feature])


def activations_of_the_neuron(model, tokens, hook, W_enc, b_enc, b_dec, feature):
    x = model.run_with_cache(tokens, names=[hook])[1][hook]
    return x[..., feature % x.shape[-1]]


# ---- 07.7 ---------------------------------------------------------------------------------------------------------
def logits_through_w_in(model, layer, direction):
    return direction @ model.blocks[layer].mlp.W_in.detach().T @ model.W_U.detach()


def logits_with_b_out(model, layer, direction):
    mlp = model.blocks[layer].mlp
    return (direction @ mlp.W_out.detach() + mlp.b_out.detach()) @ model.W_U.detach()


# ---- 07.8 ---------------------------------------------------------------------------------------------------------
def ablate_without_error_term(model, tokens, hook, W_enc, b_enc, W_dec, b_dec, feature):
    def remove(act, hook_point):
        f = torch.relu((act - b_dec) @ W_enc + b_enc)
        f[..., feature] = 0
        return f @ W_dec + b_dec

    with torch.no_grad(), model.hooks([(hook, remove)]):
        return model(tokens)


def ablate_with_encoder_direction(model, tokens, hook, W_enc, b_enc, W_dec, b_dec, feature):
    def remove(act, hook_point):
        f = torch.relu((act - b_dec) @ W_enc + b_enc)
        return act - f[..., feature, None] * W_enc[:, feature]

    with torch.no_grad(), model.hooks([(hook, remove)]):
        return model(tokens)


def ablate_hook_returns_nothing(model, tokens, hook, W_enc, b_enc, W_dec, b_dec, feature):
    def remove(act, hook_point):
        f = torch.relu((act - b_dec) @ W_enc + b_enc)
        error = act - (f @ W_dec + b_dec)
        f[..., feature] = 0
        f @ W_dec + b_dec + error  # computed, but never returned

    with torch.no_grad(), model.hooks([(hook, remove)]):
        return model(tokens)


BUGS = [
    Bug("07.1", forward_no_b_dec, "subtract the decoder bias before encoding"),
    Bug("07.1", forward_no_relu, "apply the ReLU"),
    Bug("07.1", forward_no_decoder_bias, "missing the decoder bias"),
    Bug("07.2", loss_mse_default, "summed over d_in"),
    Bug("07.2", loss_no_l1, "the L1 penalty is missing"),
    Bug("07.2", loss_l1_summed_over_batch, "averaged over the tokens"),
    Bug("07.3", step_no_renormalise, "back to unit norm"),
    Bug("07.3", step_no_zero_grad, "zero_grad"),
    Bug("07.3", step_no_projection, "radial part"),
    Bug("07.4", metrics_uncentred, "around the mean"),
    Bug("07.4", metrics_legacy_per_token, "legacy per-token"),
    Bug("07.4", metrics_l0_total, "not the total count"),
    Bug("07.5", ce_bos_prediction_counted, "prediction made at the BOS"),
    Bug("07.5", ce_bos_replaced, "keeps its own activation"),
    Bug("07.5", ce_ratio_inverted, "recovered is (ablated - spliced)"),
    Bug("07.6", activations_no_b_dec, "subtract b_dec"),
    Bug("07.6", activations_of_the_neuron, "encode the activations with the SAE first"),
    Bug("07.7", logits_through_w_in, "not back through W_in"),
    Bug("07.7", logits_with_b_out, "leave out b_out"),
    Bug("07.8", ablate_without_error_term, "error term"),
    Bug("07.8", ablate_with_encoder_direction, "decoder row"),
    Bug("07.8", ablate_hook_returns_nothing, "nothing was removed"),
]

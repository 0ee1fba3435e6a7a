"""Reference solutions for lesson 07 (sparse autoencoders). Never imported by checks.py."""

from __future__ import annotations

import torch


def sae_forward(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor,
                b_dec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = torch.relu((x - b_dec) @ W_enc + b_enc)  # [..., d_sae]
    x_hat = f @ W_dec + b_dec  # [..., d_in]
    return f, x_hat


def sae_loss(x: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor, l1_coefficient: float) -> torch.Tensor:
    reconstruction = (x_hat - x).pow(2).sum(-1).mean()
    sparsity = f.abs().sum(-1).mean()
    return reconstruction + l1_coefficient * sparsity


def training_step(params: dict, optimizer, x: torch.Tensor, l1_coefficient: float) -> dict:
    optimizer.zero_grad()
    f, x_hat = sae_forward(x, params["W_enc"], params["b_enc"], params["W_dec"], params["b_dec"])
    loss = sae_loss(x, f, x_hat, l1_coefficient)
    loss.backward()
    W_dec = params["W_dec"]
    with torch.no_grad():
        W_dec.grad -= (W_dec.grad * W_dec).sum(-1, keepdim=True) * W_dec  # the radial part of the gradient
    optimizer.step()
    with torch.no_grad():
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
    return params


def l0_and_variance_explained(x: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor) -> tuple[float, float]:
    x, f, x_hat = x.reshape(-1, x.shape[-1]), f.reshape(-1, f.shape[-1]), x_hat.reshape(-1, x_hat.shape[-1])
    l0 = (f != 0).sum(-1).float().mean().item()
    total = (x - x.mean(0)).pow(2).sum(-1).mean()
    residual = (x - x_hat).pow(2).sum(-1).mean()
    return l0, (1 - residual / total).item()


def ce_loss_recovered(model, tokens: torch.Tensor, hook: str, reconstruct) -> tuple[float, float, float, float]:
    def splice(activation, hook_point):
        new = reconstruct(activation)
        new[:, 0] = activation[:, 0]  # the BOS keeps its own activation
        return new

    def zero(activation, hook_point):
        new = torch.zeros_like(activation)
        new[:, 0] = activation[:, 0]
        return new

    def loss(logits):
        return model.loss(logits, tokens, per_token=True)[:, 1:].mean().item()  # not the prediction at the BOS

    with torch.no_grad():
        clean = loss(model(tokens))
        with model.hooks([(hook, splice)]):
            spliced = loss(model(tokens))
        with model.hooks([(hook, zero)]):
            ablated = loss(model(tokens))
    return clean, spliced, ablated, (ablated - spliced) / (ablated - clean)


def feature_activations(model, tokens: torch.Tensor, hook: str, W_enc: torch.Tensor, b_enc: torch.Tensor,
                        b_dec: torch.Tensor, feature: int) -> torch.Tensor:
    _, cache = model.run_with_cache(tokens, names=[hook])
    x = cache[hook]  # [batch, pos, d_in]
    return torch.relu((x - b_dec) @ W_enc[:, feature] + b_enc[feature])


def feature_logit_effect(model, layer: int, direction: torch.Tensor) -> torch.Tensor:
    return direction @ model.blocks[layer].mlp.W_out.detach() @ model.W_U.detach()


def ablate_feature(model, tokens: torch.Tensor, hook: str, W_enc: torch.Tensor, b_enc: torch.Tensor,
                   W_dec: torch.Tensor, b_dec: torch.Tensor, feature: int) -> torch.Tensor:
    def remove(activation, hook_point):
        f = torch.relu((activation - b_dec) @ W_enc + b_enc)  # [batch, pos, d_sae]
        x_hat = f @ W_dec + b_dec
        error = activation - x_hat
        f = f.clone()
        f[..., feature] = 0
        return f @ W_dec + b_dec + error

    with torch.no_grad(), model.hooks([(hook, remove)]):
        return model(tokens)

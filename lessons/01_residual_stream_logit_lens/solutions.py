"""Reference solutions for lesson 01 (the residual stream and the logit lens). The checks never import this file."""

import torch


def residual_stack(cache, n_layers: int) -> torch.Tensor:
    """The stream before each block and after the last: [n_layers + 1, batch, pos, d_model]."""
    points = [cache[f"blocks.{l}.hook_resid_pre"] for l in range(n_layers)]
    points.append(cache[f"blocks.{n_layers - 1}.hook_resid_post"])
    return torch.stack(points)


def decompose_resid(model, cache, layer: int, pos: int) -> dict:
    """What wrote the stream before block `layer` (layer = n_layers: the final stream), at position pos."""
    parts = {"embed": cache["hook_embed"][:, pos], "pos_embed": cache["hook_pos_embed"][:, pos]}  # [batch, d_model]
    for l in range(layer):
        attn = model.blocks[l].attn
        z = cache[f"blocks.{l}.attn.hook_z"][:, pos]  # [batch, head, d_head]
        for h in range(model.cfg.n_heads):
            parts[f"L{l}H{h}"] = z[:, h] @ attn.W_O[h]  # [batch, d_model]
        parts[f"L{l}attn_bias"] = attn.b_O.expand_as(parts["embed"])  # belongs to no head
        if not model.cfg.attn_only:
            parts[f"L{l}MLP"] = cache[f"blocks.{l}.hook_mlp_out"][:, pos]
    return {name: t.detach() for name, t in parts.items()}


def logit_lens(model, tokens: torch.Tensor, pos: int = -1) -> torch.Tensor:
    """Log-probs [n_layers + 1, batch, d_vocab] read from the stream before each block and after the last."""
    _, cache = model.run_with_cache(tokens)
    points = residual_stack(cache, model.cfg.n_layers)[:, :, pos]  # [n_points, batch, d_model]
    ln = model.ln_final
    centred = points - points.mean(-1, keepdim=True)
    normed = centred / (centred.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt() * ln.w + ln.b
    return (normed @ model.W_U + model.b_U).log_softmax(-1).detach()


def prediction_forms_at(log_probs: torch.Tensor) -> torch.Tensor:
    """[n_points, batch, d_vocab] -> [batch]: the first point from which the final top-1 token stays top-1."""
    top = log_probs.argmax(-1)  # [n_points, batch]
    agrees = top == top[-1]  # [n_points, batch]; the final point always agrees with itself
    # Walk back from the end while the points agree: flip, then a cumulative product stays 1 until the first miss.
    stays = agrees.flip(0).long().cumprod(0).flip(0)  # [n_points, batch]: 1 where every later point agrees
    return log_probs.shape[0] - stays.sum(0)


def lens_kl(log_probs: torch.Tensor) -> torch.Tensor:
    """[n_points, batch, d_vocab] -> [n_points, batch]: KL(P_final || P_point) in nats, the final point being the
    last one."""
    final = log_probs[-1]  # [batch, d_vocab]
    return (final.exp() * (final - log_probs)).sum(-1)


def head_logit_attribution(model, cache, correct: torch.Tensor, wrong: torch.Tensor, pos: int = -1) -> torch.Tensor:
    """Each head's direct effect on logit[correct] - logit[wrong] at pos, averaged over prompts: [n_layers, n_heads]."""
    W_U, ln = model.W_U.detach(), model.ln_final
    direction = (W_U[:, correct] - W_U[:, wrong]).T  # [batch, d_model]
    scale = cache["ln_final.hook_scale"][:, pos]  # [batch, 1]: the final LayerNorm's divisor in this run
    rows = []
    for l in range(model.cfg.n_layers):
        z = cache[f"blocks.{l}.attn.hook_z"][:, pos]  # [batch, head, d_head]
        result = torch.einsum("bhe,hem->bhm", z, model.blocks[l].attn.W_O.detach())  # [batch, head, d_model]
        normed = (result - result.mean(-1, keepdim=True)) / scale[:, None] * ln.w.detach()  # ln_final, linear part
        rows.append(torch.einsum("bhm,bm->bh", normed, direction).mean(0))  # [head]
    return torch.stack(rows)


def component_logit_attribution(model, cache, correct: torch.Tensor, wrong: torch.Tensor, pos: int = -1) -> dict:
    """{label: [batch]}: each component of the final stream at pos (decompose_resid's labels) through ln_final as
    the linear map it was in this run, onto W_U[:, correct] - W_U[:, wrong]; plus "ln_final.b" and "b_U". The
    values sum to the logit difference."""
    W_U, ln = model.W_U.detach(), model.ln_final
    direction = (W_U[:, correct] - W_U[:, wrong]).T  # [batch, d_model]
    scale = cache["ln_final.hook_scale"][:, pos]  # [batch, 1]
    out = {}
    for label, part in decompose_resid(model, cache, model.cfg.n_layers, pos).items():  # part: [batch, d_model]
        normed = (part - part.mean(-1, keepdim=True)) / scale * ln.w.detach()
        out[label] = (normed * direction).sum(-1)  # [batch]
    out["ln_final.b"] = direction @ ln.b.detach()  # [batch]: the LayerNorm's bias belongs to no component
    out["b_U"] = model.b_U.detach()[correct] - model.b_U.detach()[wrong]
    return out

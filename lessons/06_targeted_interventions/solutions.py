"""Reference solutions for lesson 06 (targeted interventions). The checks never import this file."""

import copy

import torch


def mean_ablated_logits(model, tokens: torch.Tensor, heads: list, reference_tokens: torch.Tensor) -> torch.Tensor:
    """-> [batch, pos, d_vocab]: logits with each listed head's z replaced, position by position, by its mean over
    reference_tokens (same number of positions as tokens)."""
    layers = sorted({layer for layer, _ in heads})
    names = [f"blocks.{layer}.attn.hook_z" for layer in layers]
    _, reference_cache = model.run_with_cache(reference_tokens, names=names)

    def ablate(z, hook):  # z: [batch, pos, head, d_head]
        layer = int(hook.name.split(".")[1])
        mean = reference_cache[hook.name].mean(0)  # [pos, head, d_head]: one mean per position
        z = z.clone()
        for head in [h for l, h in heads if l == layer]:
            z[:, :, head] = mean[:, head]
        return z

    with model.hooks([(name, ablate) for name in names]):
        return model(tokens)


def damage_table(model, behaviours: dict, heads: list) -> torch.Tensor:
    """-> [n_behaviours, 2]: each behaviour's metric before (column 0) and after (column 1) mean-ablating the heads,
    the means over the behaviour's reference prompts. behaviours: {name: (tokens [batch, pos], reference_tokens
    [n_ref, pos], metric)}."""
    rows = []
    for tokens, reference_tokens, metric in behaviours.values():
        before = metric(model(tokens))
        after = metric(mean_ablated_logits(model, tokens, heads, reference_tokens))
        rows.append(torch.stack([torch.as_tensor(before), torch.as_tensor(after)]).float())
    return torch.stack(rows)


def steering_vector(model, positive: list, negative: list, hook: str) -> torch.Tensor:
    """-> [*act_shape]: mean activation at `hook` at each positive prompt's last token, minus the same mean over the
    negative prompts. Prompts are strings (BOS prepended) of any lengths."""
    def mean_at_last(prompts):
        acts = []
        for prompt in prompts:  # one at a time: each prompt's own last token, no padding to think about
            _, cache = model.run_with_cache(model.to_tokens(prompt), names=[hook])
            acts.append(cache[hook][0, -1])  # [*act_shape]
        return torch.stack(acts).mean(0)

    return mean_at_last(positive) - mean_at_last(negative)


def steered_logits(model, tokens: torch.Tensor, hook: str, vector: torch.Tensor, coeff: float,
                   pos=None) -> torch.Tensor:
    """-> [batch, pos, d_vocab]: logits with coeff * vector added to the activation at `hook`, at position pos (an
    int, negative counting from the end) or at every position when pos is None."""
    where = slice(None) if pos is None else pos

    def add(act, hook):  # act: [batch, pos, *act_shape]; vector: [*act_shape]
        act = act.clone()
        act[:, where] = act[:, where] + coeff * vector
        return act

    with model.hooks([(hook, add)]):
        return model(tokens)


def steering_by_layer(model, positive: list, negative: list, prompts: list, target: int, baseline: int,
                      coeff: float = 1.0) -> torch.Tensor:
    """-> [n_layers]: for each layer l, the vector positive - negative at blocks.{l}.hook_resid_mid (06.3) added with
    coeff at each prompt's last token (06.4); the mean over prompts of logit(target) - logit(baseline) there."""
    out = []
    for layer in range(model.cfg.n_layers):
        hook = f"blocks.{layer}.hook_resid_mid"
        vector = steering_vector(model, positive, negative, hook)
        diffs = []
        for prompt in prompts:  # one at a time: position -1 is each prompt's own last token
            logits = steered_logits(model, model.to_tokens(prompt), hook, vector, coeff, pos=-1)[0, -1]
            diffs.append(logits[target] - logits[baseline])
        out.append(torch.stack(diffs).mean())
    return torch.stack(out)


def key_second_moment(model, layer: int, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """-> [d_mlp, d_mlp]: C = E[k k^T], the mean outer product of MLP `layer`'s keys (hook_post) over the positions
    where mask is True (uncentred, as ROME's)."""
    name = f"blocks.{layer}.mlp.hook_post"
    _, cache = model.run_with_cache(tokens, names=[name])
    keys = cache[name][mask]  # [n_keys, d_mlp]: boolean indexing keeps the masked positions
    return keys.T @ keys / len(keys)


def value_delta(model, tokens: torch.Tensor, subject_pos: int, layer: int, target: int, steps: int = 60,
                lr: float = 0.5, max_norm: float = 10.0) -> torch.Tensor:
    """-> [d_model]: delta added to blocks.{layer}.hook_mlp_out at subject_pos, trained by Adam on -log P(target) at
    the last position, |delta| kept at most max_norm (ROME's v* is the key's value plus delta)."""
    delta = torch.zeros(model.cfg.d_model, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=lr)  # only delta: the model's weights are not trained

    def add_delta(act, hook):  # act: [1, pos, d_model]
        act = act.clone()
        act[:, subject_pos] = act[:, subject_pos] + delta
        return act

    for _ in range(steps):
        with torch.enable_grad(), model.hooks([(f"blocks.{layer}.hook_mlp_out", add_delta)]):
            loss = -model(tokens)[0, -1].log_softmax(-1)[target]
            (grad,) = torch.autograd.grad(loss, [delta])  # the gradient for delta alone: the weights get no .grad
        delta.grad = grad
        optimiser.step()
        with torch.no_grad():
            norm = delta.norm()
            if norm > max_norm:
                delta.mul_(max_norm / norm)
    return delta.detach()


def rome_update(W: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """-> [d_mlp, d_model]: the rank-one Delta W with key @ (W + Delta W) = value, changing W as little as possible
    for keys distributed with second moment cov: C^-1 k (v* - k W)^T / (k^T C^-1 k). W is [d_mlp, d_model] (rows are
    values, as W_out), key [d_mlp], value [d_model], cov [d_mlp, d_mlp]."""
    c_inv_key = torch.linalg.solve(cov, key)  # [d_mlp]: C^-1 k without forming the inverse
    residual = value - key @ W  # [d_model]: v* - W k, what the key's value has to gain
    return torch.outer(c_inv_key, residual) / (key @ c_inv_key)


def edit_answer_probs(model, layer: int, update: torch.Tensor, prompts: list, answers: torch.Tensor) -> torch.Tensor:
    """-> [2, n]: P(answers[i]) after prompts[i], row 0 from the model, row 1 from a copy whose
    blocks[layer].mlp.W_out has `update` added. The model itself is never changed."""
    edited = copy.deepcopy(model)  # the edit goes into a copy: the original keeps its weights
    with torch.no_grad():
        edited.blocks[layer].mlp.W_out += update
    tokens = model.to_tokens(prompts)  # [n, pos], shorter prompts padded on the right
    last = torch.tensor([model.to_tokens(p).shape[1] - 1 for p in prompts])  # [n]: each prompt's own last token
    rows = torch.arange(len(prompts))
    out = []
    for m in (model, edited):
        probs = m(tokens)[rows, last].softmax(-1)  # [n, d_vocab]
        out.append(probs[rows, answers])
    return torch.stack(out)  # [2, n]

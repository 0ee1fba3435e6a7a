"""Reference solutions for lesson 03 (indirect object identification). The checks never import this file."""

import torch


def logit_diff(logits: torch.Tensor, io_tokens: torch.Tensor, s_tokens: torch.Tensor,
               end_pos: torch.Tensor) -> torch.Tensor:
    """logits [batch, pos, d_vocab]; io_tokens, s_tokens, end_pos [batch] -> [batch]: logit(IO) - logit(S) at END."""
    rows = torch.arange(logits.shape[0])
    at_end = logits[rows, end_pos]  # [batch, d_vocab]
    return at_end[rows, io_tokens] - at_end[rows, s_tokens]


def head_logit_attribution(model, cache, io_tokens: torch.Tensor, s_tokens: torch.Tensor) -> torch.Tensor:
    """-> [n_layers, n_heads]: each head's direct effect on logit(IO) - logit(S) at the last position, mean over
    prompts. ln_final is applied as the linear map it was in this run: centre, divide by the cached scale, times w."""
    direction = model.W_U[:, io_tokens] - model.W_U[:, s_tokens]  # [d_model, batch]
    scale = cache["ln_final.hook_scale"][:, -1]  # [batch, 1]
    w = model.ln_final.w  # [d_model]
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"][:, -1]  # [batch, head, d_head]
        result = torch.einsum("bhe,hem->bhm", z, model.blocks[layer].attn.W_O)  # [batch, head, d_model]
        centred = result - result.mean(-1, keepdim=True)
        normed = centred / scale[:, None] * w  # [batch, head, d_model]
        out[layer] = torch.einsum("bhm,mb->hb", normed, direction).mean(-1)
    return out


def patch_head_z(model, clean_tokens: torch.Tensor, corrupt_tokens: torch.Tensor, io_tokens: torch.Tensor,
                 s_tokens: torch.Tensor, layer: int, head: int, pos=None) -> float:
    """The corrupted run with one head's z taken from the clean run (at position pos, or everywhere when pos is
    None): its mean logit(IO) - logit(S) at the last position."""
    name = f"blocks.{layer}.attn.hook_z"
    _, clean_cache = model.run_with_cache(clean_tokens, names=[name])
    clean_z = clean_cache[name]  # [batch, pos, head, d_head]
    where = slice(None) if pos is None else pos

    def paste_clean(z, hook):  # z: [batch, pos, head, d_head] of the corrupted run
        z = z.clone()
        z[:, where, head] = clean_z[:, where, head]
        return z

    with model.hooks([(name, paste_clean)]):
        logits = model(corrupt_tokens)  # [batch, pos, d_vocab]
    rows = torch.arange(len(io_tokens))
    return (logits[rows, -1, io_tokens] - logits[rows, -1, s_tokens]).mean().item()


def resid_patching_sweep(model, clean_tokens: torch.Tensor, corrupt_tokens: torch.Tensor, io_tokens: torch.Tensor,
                         s_tokens: torch.Tensor) -> torch.Tensor:
    """-> [n_layers, pos]: clean resid_pre of block l at position p pasted into the corrupted run, scored
    (m - m_corrupt) / (m_clean - m_corrupt), where m is the mean logit difference at the last position."""
    rows = torch.arange(len(io_tokens))

    def metric(logits):  # [batch, pos, d_vocab] -> float
        return (logits[rows, -1, io_tokens] - logits[rows, -1, s_tokens]).mean().item()

    clean_logits, clean_cache = model.run_with_cache(clean_tokens, names=lambda n: n.endswith("hook_resid_pre"))
    m_clean, m_corrupt = metric(clean_logits), metric(model(corrupt_tokens))
    n_pos = clean_tokens.shape[1]
    out = torch.zeros(model.cfg.n_layers, n_pos)
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.hook_resid_pre"
        for p in range(n_pos):
            def paste(resid, hook, p=p):  # resid: [batch, pos, d_model]
                resid = resid.clone()
                resid[:, p] = clean_cache[name][:, p]
                return resid

            with model.hooks([(name, paste)]):
                out[layer, p] = metric(model(corrupt_tokens))
    return (out - m_corrupt) / (m_clean - m_corrupt)


def path_patch_to_logits(model, clean_tokens: torch.Tensor, corrupt_tokens: torch.Tensor, io_tokens: torch.Tensor,
                         s_tokens: torch.Tensor, sender: tuple, freeze_mlps: bool = False) -> float:
    """Path patching sender -> logits: a clean run where the sender's z is the corrupted run's and every other
    head's z is frozen at its clean value (and every MLP output too when freeze_mlps). Its mean logit difference."""
    layer, head = sender
    n_layers = model.cfg.n_layers
    z_names = [f"blocks.{l}.attn.hook_z" for l in range(n_layers)]
    mlp_names = [f"blocks.{l}.hook_mlp_out" for l in range(n_layers)]
    _, clean_cache = model.run_with_cache(clean_tokens, names=z_names + mlp_names)
    _, corrupt_cache = model.run_with_cache(corrupt_tokens, names=z_names)

    def freeze_heads(z, hook):  # z: [batch, pos, head, d_head]
        frozen = clean_cache[hook.name].clone()
        if hook.name == f"blocks.{layer}.attn.hook_z":
            frozen[:, :, head] = corrupt_cache[hook.name][:, :, head]
        return frozen

    def freeze_mlp(mlp_out, hook):  # [batch, pos, d_model]
        return clean_cache[hook.name]

    hooks = [(name, freeze_heads) for name in z_names]
    if freeze_mlps:
        hooks += [(name, freeze_mlp) for name in mlp_names]
    with model.hooks(hooks):
        logits = model(clean_tokens)  # [batch, pos, d_vocab]
    rows = torch.arange(len(io_tokens))
    return (logits[rows, -1, io_tokens] - logits[rows, -1, s_tokens]).mean().item()


def circuit_faithfulness_ratio(model, tokens: torch.Tensor, reference_tokens: torch.Tensor, io_tokens: torch.Tensor,
                               s_tokens: torch.Tensor, circuit: list) -> float:
    """Mean-ablate every head NOT in circuit (its z replaced, position by position, by its mean over the reference
    prompts) and return the circuit's mean logit difference over the full model's."""
    n_layers = model.cfg.n_layers
    z_names = [f"blocks.{l}.attn.hook_z" for l in range(n_layers)]
    _, reference_cache = model.run_with_cache(reference_tokens, names=z_names)
    rows = torch.arange(len(io_tokens))

    def metric(logits):
        return (logits[rows, -1, io_tokens] - logits[rows, -1, s_tokens]).mean().item()

    def ablate_outside(layer):
        keep = [h for l, h in circuit if l == layer]

        def hook(z, hook):  # z: [batch, pos, head, d_head]
            mean = reference_cache[hook.name].mean(0)  # [pos, head, d_head]: one mean per position
            ablated = mean.expand_as(z).clone()
            ablated[:, :, keep] = z[:, :, keep]
            return ablated
        return hook

    full = metric(model(tokens))
    with model.hooks([(z_names[l], ablate_outside(l)) for l in range(n_layers)]):
        kept = metric(model(tokens))
    return kept / full

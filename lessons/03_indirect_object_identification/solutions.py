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


def role_attention(model, tokens: torch.Tensor, query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
    """-> [n_layers, n_heads]: each head's attention from query_pos[b] to key_pos[b], averaged over prompts b."""
    _, cache = model.run_with_cache(tokens, names=lambda name: name.endswith("hook_pattern"))
    rows = torch.arange(tokens.shape[0])
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [batch, head, q_pos, k_pos]
        out[layer] = pattern[rows, :, query_pos, key_pos].mean(0)  # [batch, head] -> [head]
    return out


def s2_attention_control(model, tokens: torch.Tensor, s2_pos: torch.Tensor, end_pos: torch.Tensor,
                         replacement: torch.Tensor) -> torch.Tensor:
    """-> [n_layers, n_heads, 2]: attention END -> S2 on the prompts, and on the same prompts with S2 replaced by a
    name that occurs nowhere else (so that no name repeats)."""
    no_repeat = tokens.clone()  # never change the caller's tokens
    no_repeat[torch.arange(len(tokens)), s2_pos] = replacement
    return torch.stack([role_attention(model, tokens, end_pos, s2_pos),
                        role_attention(model, no_repeat, end_pos, s2_pos)], dim=-1)


def path_patch_to_queries(model, clean_tokens: torch.Tensor, corrupt_tokens: torch.Tensor, io_tokens: torch.Tensor,
                          s_tokens: torch.Tensor, sender: tuple, receivers: list, end_pos: torch.Tensor) -> float:
    """Path patching sender -> the receivers' queries at END. Run 1 (clean tokens): the sender's z corrupted, every
    other head's z frozen clean; record the receivers' hook_q. Run 2: a clean run with each receiver's query at
    end_pos replaced by run 1's. Its mean logit difference at the last position."""
    layer, head = sender
    z_names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
    _, clean_cache = model.run_with_cache(clean_tokens, names=z_names)
    _, corrupt_cache = model.run_with_cache(corrupt_tokens, names=z_names)

    def freeze_heads(z, hook):  # z: [batch, pos, head, d_head]
        frozen = clean_cache[hook.name].clone()
        if hook.name == f"blocks.{layer}.attn.hook_z":
            frozen[:, :, head] = corrupt_cache[hook.name][:, :, head]
        return frozen

    q_names = sorted({f"blocks.{l}.attn.hook_q" for l, _ in receivers})
    with model.hooks([(name, freeze_heads) for name in z_names]):
        _, recorded = model.run_with_cache(clean_tokens, names=q_names)  # the receivers' queries in run 1
    rows = torch.arange(len(clean_tokens))

    def paste_queries(q, hook):  # q: [batch, pos, head, d_head]
        q = q.clone()
        for l, h in receivers:
            if hook.name == f"blocks.{l}.attn.hook_q":
                q[rows, end_pos, h] = recorded[hook.name][rows, end_pos, h]
        return q

    with model.hooks([(name, paste_queries) for name in q_names]):
        logits = model(clean_tokens)
    return (logits[rows, -1, io_tokens] - logits[rows, -1, s_tokens]).mean().item()


def name_copying_ranks(model, cache, layer: int, head: int, io_pos: torch.Tensor, io_tokens: torch.Tensor,
                       name_tokens: torch.Tensor) -> torch.Tensor:
    """-> [batch]: for each prompt, how many of name_tokens get a larger logit than the IO when the head's OV
    circuit is applied to the stream it reads at the IO's position (ln1 of resid_pre there), read through W_U."""
    rows = torch.arange(len(io_pos))
    resid = cache[f"blocks.{layer}.hook_resid_pre"][rows, io_pos]  # [batch, d_model]
    attn = model.blocks[layer].attn
    value = model.blocks[layer].ln1(resid) @ attn.W_V[head] + attn.b_V[head]  # [batch, d_head]
    logits = value @ attn.W_O[head] @ model.W_U  # [batch, d_vocab]
    names = logits[:, name_tokens]  # [batch, n_names]
    io_logit = logits[rows, io_tokens]  # [batch]
    return (names > io_logit[:, None]).sum(-1)


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

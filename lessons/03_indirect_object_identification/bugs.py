"""Planted bugs for lesson 03: each is a classic mistake, and the checks must fail it with a message that names it."""

import torch

from minimech.grading import Bug


def _rows(n):
    return torch.arange(n)


def _ld_at_last(logits, io, s) -> float:
    rows = _rows(len(io))
    return (logits[rows, -1, io] - logits[rows, -1, s]).mean().item()


# ---- 03.1 logit_diff ------------------------------------------------------------------------------------------------

def ld_sign_flipped(logits, io_tokens, s_tokens, end_pos):
    rows = _rows(logits.shape[0])
    return logits[rows, end_pos, s_tokens] - logits[rows, end_pos, io_tokens]


def ld_last_position(logits, io_tokens, s_tokens, end_pos):
    rows = _rows(logits.shape[0])
    return logits[rows, -1, io_tokens] - logits[rows, -1, s_tokens]  # ignores end_pos: wrong for padded prompts


# ---- 03.2 head_logit_attribution ------------------------------------------------------------------------------------

def _dla(model, cache, io_tokens, s_tokens, scale=True, centre=True, w=True):
    direction = model.W_U[:, io_tokens] - model.W_U[:, s_tokens]  # [d_model, batch]
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        r = torch.einsum("bhe,hem->bhm", cache["z", layer][:, -1], model.blocks[layer].attn.W_O)
        if centre:
            r = r - r.mean(-1, keepdim=True)
        if scale:
            r = r / cache["ln_final.hook_scale"][:, -1][:, None]
        if w:
            r = r * model.ln_final.w
        out[layer] = torch.einsum("bhm,mb->hb", r, direction).mean(-1)
    return out


def dla_no_ln_scale(model, cache, io_tokens, s_tokens):
    return _dla(model, cache, io_tokens, s_tokens, scale=False)


def dla_no_ln_weight(model, cache, io_tokens, s_tokens):
    return _dla(model, cache, io_tokens, s_tokens, w=False)


# ---- 03.3 patch_head_z ----------------------------------------------------------------------------------------------

def _patch(model, source, target, io, s, layer, heads, where):
    name = f"blocks.{layer}.attn.hook_z"
    _, cache = model.run_with_cache(source, names=[name])

    def hook(z, hook):
        z = z.clone()
        z[:, where, heads] = cache[name][:, where, heads]
        return z

    with model.hooks([(name, hook)]):
        return _ld_at_last(model(target), io, s)


def head_corrupt_into_corrupt(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, layer, head, pos=None):
    where = slice(None) if pos is None else pos
    return _patch(model, corrupt_tokens, corrupt_tokens, io_tokens, s_tokens, layer, head, where)


def head_wrong_position(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, layer, head, pos=None):
    where = slice(None) if pos is None else pos - 1  # off by one
    return _patch(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, layer, head, where)


def head_whole_layer(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, layer, head, pos=None):
    where = slice(None) if pos is None else pos
    return _patch(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, layer, slice(None), where)


# ---- 03.4 resid_patching_sweep --------------------------------------------------------------------------------------

def _sweep(model, source, target, io, s, normalise=True, shift=0, hook_kind="resid_pre"):
    _, clean_cache = model.run_with_cache(source)
    m_source, m_target = _ld_at_last(model(source), io, s), _ld_at_last(model(target), io, s)
    n_pos = target.shape[1]
    out = torch.zeros(model.cfg.n_layers, n_pos)
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.hook_{hook_kind}"
        for p in range(n_pos):
            q = (p + shift) % n_pos

            def paste(resid, hook, q=q):
                resid = resid.clone()
                resid[:, q] = clean_cache[name][:, q]
                return resid

            with model.hooks([(name, paste)]):
                out[layer, p] = _ld_at_last(model(target), io, s)
    return (out - m_target) / (m_source - m_target) if normalise else out


def sweep_not_normalised(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens):
    return _sweep(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, normalise=False)


def sweep_corrupt_into_corrupt(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens):
    out = _sweep(model, corrupt_tokens, corrupt_tokens, io_tokens, s_tokens, normalise=False)
    m_clean, m_corrupt = _ld_at_last(model(clean_tokens), io_tokens, s_tokens), _ld_at_last(model(corrupt_tokens),
                                                                                         io_tokens, s_tokens)
    return (out - m_corrupt) / (m_clean - m_corrupt)


def sweep_position_off_by_one(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens):
    return _sweep(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, shift=1)


# ---- 03.5 path_patch_to_logits --------------------------------------------------------------------------------------

def _path(model, base, source, io, s, sender, freeze_heads=True, freeze_mlps=False, mlp_source=None):
    names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
    _, base_cache = model.run_with_cache(base)
    _, source_cache = model.run_with_cache(source)
    layer, head = sender

    def z_hook(z, hook):
        out = base_cache[hook.name].clone() if freeze_heads else z.clone()
        if hook.name == names[layer]:
            out[:, :, head] = source_cache[hook.name][:, :, head]
        return out

    hooks = [(n, z_hook) for n in names]
    if freeze_mlps:
        hooks += [(f"blocks.{l}.hook_mlp_out", lambda act, hook: base_cache[hook.name])
                  for l in range(model.cfg.n_layers)]
    with model.hooks(hooks):
        return _ld_at_last(model(base), io, s)


def path_no_freezing(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, sender, freeze_mlps=False):
    return _path(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, sender, freeze_heads=False,
                 freeze_mlps=freeze_mlps)


def path_ignores_freeze_mlps(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, sender, freeze_mlps=False):
    return _path(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, sender)


def path_wrong_direction(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, sender, freeze_mlps=False):
    return _path(model, corrupt_tokens, clean_tokens, io_tokens, s_tokens, sender, freeze_mlps=freeze_mlps)


# ---- 03.10 circuit_faithfulness_ratio --------------------------------------------------------------------------------

def _faith(model, tokens, reference_tokens, io, s, circuit, fill="mean", invert=False):
    names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(reference_tokens)

    def hook_for(layer):
        keep = [h for l, h in circuit if l == layer]
        ablate = [h for h in range(model.cfg.n_heads) if h not in keep]

        def hook(z, hook):
            out = z.clone()
            if invert:  # ablates the circuit, keeps the rest
                ablate_now = keep
            else:
                ablate_now = ablate
            replacement = torch.zeros_like(z) if fill == "zero" else cache[hook.name].mean(0).expand_as(z)
            out[:, :, ablate_now] = replacement[:, :, ablate_now]
            return out
        return hook

    full = _ld_at_last(model(tokens), io, s)
    with model.hooks([(n, hook_for(l)) for l, n in enumerate(names)]):
        return _ld_at_last(model(tokens), io, s) / full


def faith_zero_ablation(model, tokens, reference_tokens, io_tokens, s_tokens, circuit):
    return _faith(model, tokens, reference_tokens, io_tokens, s_tokens, circuit, fill="zero")


def faith_ablates_the_circuit(model, tokens, reference_tokens, io_tokens, s_tokens, circuit):
    return _faith(model, tokens, reference_tokens, io_tokens, s_tokens, circuit, invert=True)


def faith_means_of_clean_prompts(model, tokens, reference_tokens, io_tokens, s_tokens, circuit):
    return _faith(model, tokens, tokens, io_tokens, s_tokens, circuit)


# ---- 03.6 role_attention ---------------------------------------------------------------------------------------------

def _roles(model, tokens, query_pos, key_pos, swap=False, cross=False):
    _, cache = model.run_with_cache(tokens, names=lambda n: n.endswith("hook_pattern"))
    rows = _rows(len(tokens))
    out = []
    for l in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{l}.attn.hook_pattern"]
        q, k = (key_pos, query_pos) if swap else (query_pos, key_pos)
        out.append(pattern[:, :, q, k].mean((0, 2)) if cross else pattern[rows, :, q, k].mean(0))
    return torch.stack(out)


def roles_swapped(model, tokens, query_pos, key_pos):
    return _roles(model, tokens, query_pos, key_pos, swap=True)


def roles_every_pair(model, tokens, query_pos, key_pos):
    return _roles(model, tokens, query_pos, key_pos, cross=True)  # pattern[:, :, q, k]: all prompts x all positions


# ---- 03.7 s2_attention_control --------------------------------------------------------------------------------------

def _control(model, tokens, s2_pos, end_pos, replacement, in_place=False, at=None):
    rows = _rows(len(tokens))
    changed = tokens if in_place else tokens.clone()
    changed[rows, s2_pos if at is None else at] = replacement
    return torch.stack([_roles(model, tokens, end_pos, s2_pos), _roles(model, changed, end_pos, s2_pos)], dim=-1)


def control_in_place(model, tokens, s2_pos, end_pos, replacement):
    return _control(model, tokens, s2_pos, end_pos, replacement, in_place=True)  # tokens changed before measuring


def control_replaces_s1(model, tokens, s2_pos, end_pos, replacement):
    first = torch.stack([(row == row[p]).nonzero()[0, 0] for row, p in zip(tokens, s2_pos)])  # S1: first occurrence
    return _control(model, tokens, s2_pos, end_pos, replacement, at=first)


# ---- 03.8 path_patch_to_queries --------------------------------------------------------------------------------------

def _queries(model, clean, corrupt, io, s, sender, receivers, end_pos, freeze=True, where="end", kind="q"):
    z_names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
    _, clean_cache = model.run_with_cache(clean, names=z_names)
    _, corrupt_cache = model.run_with_cache(corrupt, names=z_names)
    layer, head = sender

    def z_hook(z, hook):
        out = clean_cache[hook.name].clone() if freeze else z.clone()
        if hook.name == z_names[layer]:
            out[:, :, head] = corrupt_cache[hook.name][:, :, head]
        return out
    names = sorted({f"blocks.{l}.attn.hook_{kind}" for l, _ in receivers})
    with model.hooks([(n, z_hook) for n in z_names]):
        _, recorded = model.run_with_cache(clean, names=names)
    rows = _rows(len(clean))

    def paste(act, hook):
        act = act.clone()
        for l, h in receivers:
            if hook.name == f"blocks.{l}.attn.hook_{kind}":
                if where == "end":
                    act[rows, end_pos, h] = recorded[hook.name][rows, end_pos, h]
                else:
                    act[:, :, h] = recorded[hook.name][:, :, h]
        return act
    with model.hooks([(n, paste) for n in names]):
        return _ld_at_last(model(clean), io, s)


def queries_every_position(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, sender, receivers, end_pos):
    return _queries(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, sender, receivers, end_pos,
                    where="all")


def queries_unfrozen(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, sender, receivers, end_pos):
    return _queries(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, sender, receivers, end_pos,
                    freeze=False)


def queries_patches_keys(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, sender, receivers, end_pos):
    return _queries(model, clean_tokens, corrupt_tokens, io_tokens, s_tokens, sender, receivers, end_pos, kind="k")


# ---- 03.9 name_copying_ranks -----------------------------------------------------------------------------------------

def _copy_ranks(model, cache, layer, head, io_pos, io_tokens, name_tokens, ln=True, embed=False, vocab=False):
    rows = _rows(len(io_pos))
    attn = model.blocks[layer].attn
    x = model.W_E[io_tokens] if embed else cache[f"blocks.{layer}.hook_resid_pre"][rows, io_pos]
    if ln:
        x = model.blocks[layer].ln1(x)
    logits = (x @ attn.W_V[head] + attn.b_V[head]) @ attn.W_O[head] @ model.W_U
    among = logits if vocab else logits[:, name_tokens]
    return (among > logits[rows, io_tokens][:, None]).sum(-1)


def copy_without_ln1(model, cache, layer, head, io_pos, io_tokens, name_tokens):
    return _copy_ranks(model, cache, layer, head, io_pos, io_tokens, name_tokens, ln=False)


def copy_reads_the_embedding(model, cache, layer, head, io_pos, io_tokens, name_tokens):
    return _copy_ranks(model, cache, layer, head, io_pos, io_tokens, name_tokens, embed=True)


def copy_ranks_the_vocabulary(model, cache, layer, head, io_pos, io_tokens, name_tokens):
    return _copy_ranks(model, cache, layer, head, io_pos, io_tokens, name_tokens, vocab=True)


BUGS = [
    Bug("03.1", ld_sign_flipped, "sign"),
    Bug("03.1", ld_last_position, "end_pos"),
    Bug("03.2", dla_no_ln_scale, "scale"),
    Bug("03.2", dla_no_ln_weight, "ln_final.w"),
    Bug("03.3", head_corrupt_into_corrupt, "corrupt into corrupt"),
    Bug("03.3", head_wrong_position, "position"),
    Bug("03.3", head_whole_layer, "every head"),
    Bug("03.4", sweep_not_normalised, "normalise"),
    Bug("03.4", sweep_corrupt_into_corrupt, "corrupt into corrupt"),
    Bug("03.4", sweep_position_off_by_one, "shifted by one"),
    Bug("03.5", path_no_freezing, "freeze every other head"),
    Bug("03.5", path_ignores_freeze_mlps, "freeze_mlps"),
    Bug("03.5", path_wrong_direction, "wrong direction"),
    Bug("03.6", roles_swapped, "swapped queries and keys"),
    Bug("03.6", roles_every_pair, "its own positions"),
    Bug("03.7", control_in_place, "in place"),
    Bug("03.7", control_replaces_s1, "replaced S1"),
    Bug("03.8", queries_every_position, "every position"),
    Bug("03.8", queries_unfrozen, "did not freeze"),
    Bug("03.8", queries_patches_keys, "keys"),
    Bug("03.9", copy_without_ln1, "ln1"),
    Bug("03.9", copy_reads_the_embedding, "raw token embedding"),
    Bug("03.9", copy_ranks_the_vocabulary, "whole vocabulary"),
    Bug("03.10", faith_zero_ablation, "zeros"),
    Bug("03.10", faith_ablates_the_circuit, "NOT in the circuit"),
    Bug("03.10", faith_means_of_clean_prompts, "reference_tokens"),
]

"""Weight transforms that change the weights but not what the model computes, as TransformerLens's `process_weights`.

    from minimech.transforms import process, fold_ln
    folded = process(model, fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)

Each transform returns a NEW model (a deep copy; the input's parameters are left bit-identical) unless inplace=True,
and records itself in `model.transforms` (a list) and in `model.source` ("random init + fold_ln"), which repr shows.
All are off by default: minimech's weights are GPT-2's own until you ask. Each is idempotent: a second call finds
nothing left to move (after fold_ln every LN has w=1, b=0 and reading weights are centred; centred weights stay
centred; b_V is already 0), so it changes nothing and is recorded once.

DESIGN: log-probs, logit differences and (with only fold_ln) every residual stream are unchanged. Raw logits change
only by a constant per position, and only with center_unembed. Other activations do change meaning on purpose:
after fold_ln, ln.hook_normalized is the bare normalized vector (w and b now live in the next weights); after
center_writing_weights every residual stream loses its mean over d_model; after fold_value_biases, hook_v and
hook_z lack b_V. Everything is computed in float32 or wider, then stored back in the parameter's dtype.
"""

from __future__ import annotations

import copy
import weakref

import torch

from .errors import MinimechError

ORDER = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")  # TransformerLens's order


def _copy(model, inplace: bool):
    if inplace:
        return model
    memo = {id(model.tokenizer): model.tokenizer} if model.tokenizer is not None else {}  # share the tokenizer
    new = copy.deepcopy(model, memo)
    for block in new.blocks:  # deepcopy keeps weak references as they are: point each MLP at its new owner
        if not new.cfg.attn_only:
            block.mlp.root = weakref.ref(new)
    return new


def _record(model, name: str) -> None:
    done = list(getattr(model, "transforms", []))
    if name not in done:
        model.transforms = done + [name]
        model.source = f"{model.source} + {name}"


def _wide(p: torch.Tensor) -> torch.Tensor:
    return p.detach().to(torch.promote_types(p.dtype, torch.float32))


def _fold_one_ln(ln, readers) -> None:
    """readers: (W, b, dim) for each weight that reads this LN's output; dim is W's d_model axis."""
    w, b = _wide(ln.w), _wide(ln.b)
    for W, bias, dim in readers:
        W_ = _wide(W)
        # (x_hat * w + b) @ W + bias = x_hat @ (diag(w) W) + (b @ W + bias): the shift b moves into the bias...
        bias.copy_(_wide(bias) + torch.tensordot(b, W_, dims=([0], [dim])))
        shape = [1] * W.ndim
        shape[dim] = -1
        W_ = W_ * w.view(shape)  # ... and the scale w into the rows of W.
        # x_hat = (x - mean) / scale has zero mean over d_model, so x_hat @ ones-direction = 0: the part of each
        # column of W along the all-ones vector (its mean over d_model) contributes nothing and can be removed.
        W.copy_(W_ - W_.mean(dim, keepdim=True))
    ln.w.fill_(1.0)
    ln.b.fill_(0.0)


@torch.no_grad()
def fold_ln(model, inplace: bool = False):
    """Fold every LayerNorm's w and b into the weights that read it; LNs are left with w=1, b=0 (normalize only).

    ln1 -> W_Q, W_K, W_V (b_Q, b_K, b_V gain b @ W); ln2 -> W_in, b_in; ln_final -> W_U, b_U. The reading weights
    are also centred over d_model (see _fold_one_ln for why that is allowed). A second call is harmless.
    """
    model = _copy(model, inplace)
    for block in model.blocks:
        a = block.attn
        _fold_one_ln(block.ln1, [(a.W_Q, a.b_Q, 1), (a.W_K, a.b_K, 1), (a.W_V, a.b_V, 1)])
        if not model.cfg.attn_only:
            _fold_one_ln(block.ln2, [(block.mlp.W_in, block.mlp.b_in, 0)])
    _fold_one_ln(model.ln_final, [(model.unembed.W_U, model.unembed.b_U, 0)])
    _record(model, "fold_ln")
    return model


def _writers(model) -> list[torch.Tensor]:
    """Every weight and bias that writes to the residual stream; d_model is the last axis of each."""
    out = [model.embed.W_E, model.pos_embed.W_pos]
    for block in model.blocks:
        out += [block.attn.W_O, block.attn.b_O]
        if not model.cfg.attn_only:
            out += [block.mlp.W_out, block.mlp.b_out]
    return out


@torch.no_grad()
def center_writing_weights(model, inplace: bool = False):
    """Subtract the mean over d_model from W_E, W_pos, W_O, b_O, W_out, b_out.

    Every reader of the residual stream (ln1, ln2, ln_final) first subtracts the mean over d_model, so the mean of
    anything written there is never read: removing it changes no output. Each residual stream becomes the old one
    minus its mean (a sum of centred writes is centred).
    """
    if model.cfg.normalization_type != "LN":  # minimech's GPT-2 always has LN; guard for any future variant
        raise MinimechError("center_writing_weights needs a LayerNorm (which centres) before every reader")
    model = _copy(model, inplace)
    for p in _writers(model):
        _subtract_last_mean(p)
    _record(model, "center_writing_weights")
    return model


def _subtract_last_mean(p: torch.Tensor) -> None:
    """p -= its mean over the last axis, in place (computed in at least float32)."""
    wide = _wide(p)
    p.copy_(wide - wide.mean(-1, keepdim=True))


@torch.no_grad()
def center_unembed(model, inplace: bool = False):
    """Subtract from W_U and b_U their mean over the vocab: every logit at a position shifts by the same amount.

    log_softmax(logits - c) = log_softmax(logits) for any constant c, so log-probs and logit differences are kept.
    """
    model = _copy(model, inplace)
    for p in (model.unembed.W_U, model.unembed.b_U):
        _subtract_last_mean(p)
    _record(model, "center_unembed")
    return model


@torch.no_grad()
def fold_value_biases(model, inplace: bool = False):
    """Move each head's value bias into b_O: b_O += sum_h b_V[h] @ W_O[h]; then b_V = 0.

    z = pattern @ (x W_V + b_V) = pattern @ (x W_V) + b_V, because each row of the pattern sums to 1 (every query
    sees at least itself). So b_V adds the constant b_V[h] @ W_O[h] to the output whatever the input: hook_attn_out
    is unchanged, while hook_v and hook_z no longer include b_V.
    """
    model = _copy(model, inplace)
    for block in model.blocks:
        a = block.attn
        a.b_O.copy_(_wide(a.b_O) + torch.einsum("he,hem->m", _wide(a.b_V), _wide(a.W_O)))
        a.b_V.zero_()
    _record(model, "fold_value_biases")
    return model


TRANSFORMS = {"fold_ln": fold_ln, "center_writing_weights": center_writing_weights,
              "center_unembed": center_unembed, "fold_value_biases": fold_value_biases}


def process(model, fold_ln: bool = False, center_writing_weights: bool = False, center_unembed: bool = False,
            fold_value_biases: bool = False, inplace: bool = False):
    """Apply the named transforms in TransformerLens's order (ORDER) to one copy of the model (or to it, inplace)."""
    chosen = {"fold_ln": fold_ln, "center_writing_weights": center_writing_weights,
              "center_unembed": center_unembed, "fold_value_biases": fold_value_biases}
    model = _copy(model, inplace)
    for name in ORDER:
        if chosen[name]:
            TRANSFORMS[name](model, inplace=True)
    return model

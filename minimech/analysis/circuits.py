"""Reading heads from their weights alone (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits").

- composition_scores(model, mode): how strongly each earlier head's output (OV) feeds a later head's query ("Q"),
  key ("K") or value ("V"), as TransformerLens's HookedTransformer.all_composition_scores computes it.
- full_ov_circuit / copying_score / top_copied_tokens: what a head writes to the logits when it attends to a token.
- positional_qk / token_qk: where a head attends, from the position or token embeddings alone.

Conventions. Weights act on row vectors, x @ W (W_Q is [d_model, d_head] per head): a head's OV circuit is
W_V @ W_O and its QK circuit W_Q @ W_K^T, both [d_model, d_model]. Composition scores use the weights as they are,
as TransformerLens does; TransformerLens loads models with fold_ln and center_writing_weights, so to compare
figures apply the same transforms first (minimech.transforms.process(model, fold_ln=True, ...)).
The token and position circuits (ln=True, the default) put the LayerNorms in as the linear maps they are up to
a positive scale: centre over d_model, multiply by w; ln1 of the head's layer on the reading side, ln_final on the
writing side. The division by the norm (hook_scale) depends on the input and is left out, as are the biases.
"""

from __future__ import annotations

import math
import re

import torch

from ..errors import MinimechError
from ..objects import FactoredMatrix, Head

MODES = ("Q", "K", "V")
FULL_VOCAB_LIMIT = 8192  # token_qk over every token pair needs d_vocab^2 numbers; above this, ask for a subset


class CircuitError(MinimechError, ValueError):
    """Bad input to a weight-based circuit analysis (an unknown head, mode or token)."""


def resolve_head(model, head) -> Head:
    """A Head from a Head, a label "L1H2" or a (layer, head) pair."""
    if isinstance(head, Head):
        return head
    if isinstance(head, str):
        match = re.fullmatch(r"L(\d+)H(\d+)", head.strip())
        if not match:
            raise CircuitError(f"head label {head!r} is not of the form 'L1H2'")
        head = (int(match[1]), int(match[2]))
    if not (isinstance(head, tuple) and len(head) == 2):
        raise CircuitError(f"a head is a Head, a label 'L1H2' or a (layer, head) pair, got {head!r}")
    layer, index = head
    if not (0 <= layer < model.cfg.n_layers and 0 <= index < model.cfg.n_heads):
        raise CircuitError(f"no head L{layer}H{index}: the model has {model.cfg.n_layers} layers of "
                           f"{model.cfg.n_heads} heads")
    return model.blocks[layer].attn.heads[index]


# ---- composition ------------------------------------------------------------------------------------------------
def _stacked(model, name: str) -> torch.Tensor:  # [n_layers * n_heads, ...]: every head's weight, in float64
    return getattr(model, name).detach().double().flatten(0, 1)


def _cores(A: torch.Tensor, B: torch.Tensor):
    """Small stand-ins for a stack of products A @ B, used on each side of ||L @ R||_F.

    With A = Q_A R_A and B^T = Q_B R_B (QR; the Q have orthonormal columns), A @ B = Q_A (R_A B) = (A R_B^T) Q_B^T.
    So ||L @ R||_F = ||(R_A B)_L @ (A R_B^T)_R||_F and ||L||_F = ||(R_A B)_L||_F: d_head-sized work, never
    a d_model x d_model product per pair. Returns (as_left [n, k, d_out], as_right [n, d_in, k]).
    """
    r_a = torch.linalg.qr(A, mode="r").R  # [n, k, d_inner]; mode "r" skips building Q
    r_b = torch.linalg.qr(B.transpose(-1, -2), mode="r").R  # [n, k, d_inner]
    return r_a @ B, A @ r_b.transpose(-1, -2)


def composition_scores(model, mode: str) -> torch.Tensor:
    """[n_layers, n_heads, n_layers, n_heads]: entry [l1, h1, l2, h2] scores sender L{l1}H{h1} into receiver L{l2}H{h2}.

    score = ||W_OV^send @ W^recv||_F / (||W_OV^send||_F ||W^recv||_F), with W^recv = W_QK (mode "Q": the sender's
    output forms the receiver's queries), W_QK^T ("K": its keys) or W_OV ("V": its values); W_OV = W_V W_O and
    W_QK = W_Q W_K^T, as TransformerLens's all_composition_scores. Entries where the sender is not in an earlier layer
    are 0 (as in TransformerLens), not NaN; a head whose weights are all zero gives NaN. Scores lie in [0, 1];
    random Gaussian heads score about 1/sqrt(d_model), so compare a pair with the rest of its row.
    """
    mode = mode.upper() if isinstance(mode, str) else mode
    if mode not in MODES:
        raise CircuitError(f"mode must be 'Q', 'K' or 'V', got {mode!r}")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    W_Q, W_K, W_V, W_O = (_stacked(model, n) for n in ("W_Q", "W_K", "W_V", "W_O"))  # [L*H, d_model|d_head, ...]
    send, _ = _cores(W_V, W_O)  # [L*H, k, d_model]: the OV circuit of every head, as a sender
    receiver_factors = {"Q": (W_Q, W_K.transpose(-1, -2)), "K": (W_K, W_Q.transpose(-1, -2)), "V": (W_V, W_O)}[mode]
    _, recv = _cores(*receiver_factors)  # [L*H, d_model, k]
    scores = torch.zeros(L, H, L, H, dtype=torch.float64)
    send_norms, recv_norms = send.flatten(1).norm(dim=1), recv.flatten(1).norm(dim=1)  # [L*H] each
    send, recv = send.float(), recv.float()  # the pairwise products dominate the cost; float32 halves it
    for l1 in range(L - 1):  # one sender layer at a time keeps memory at n_heads * L*H * k * k
        senders = slice(l1 * H, (l1 + 1) * H)
        receivers = slice((l1 + 1) * H, L * H)
        product = torch.einsum("sim,rmj->srij", send[senders], recv[receivers])  # [H, later heads, k, k]
        norms = product.flatten(2).norm(dim=2)  # [H, later heads]
        norms = norms / send_norms[senders, None] / recv_norms[None, receivers]
        scores[l1, :, l1 + 1:] = norms.reshape(H, L - 1 - l1, H)
    return scores.float()


# ---- the OV circuit read through the vocabulary -------------------------------------------------------------------
def _read(model, layer: int, x: torch.Tensor, ln: bool) -> torch.Tensor:  # x [n, d_model] -> [n, d_model]
    """What the head's layer reads from residual vectors x, through ln1's linear part (see the module docstring)."""
    if not ln:
        return x
    return (x - x.mean(-1, keepdim=True)) * model.blocks[layer].ln1.w.detach()


def full_ov_circuit(model, head, ln: bool = True, center_vocab: bool = True) -> FactoredMatrix:
    """[d_vocab, d_vocab] as a FactoredMatrix: row t = the logits the head writes when it attends to token t.

    W_E @ W_V @ W_O @ W_U with the LayerNorms as in the module docstring. center_vocab subtracts each row's mean
    over the vocabulary (W_U centred over d_vocab): a shift of every logit by one constant changes no probability,
    and without it a large shared component can swamp the eigenvalues.
    """
    head = resolve_head(model, head)
    W_E, W_U = model.W_E.detach(), model.W_U.detach()  # [d_vocab, d_model], [d_model, d_vocab]
    if center_vocab:
        W_U = W_U - W_U.mean(1, keepdim=True)
    reads = _read(model, head.layer, W_E, ln) @ head.W_V  # [d_vocab, d_head]
    W_O = head.W_O  # [d_head, d_model]
    if ln:  # ln_final's linear part acts on the head's write like on any component of the final stream
        W_O = (W_O - W_O.mean(-1, keepdim=True)) * model.ln_final.w.detach()
    return FactoredMatrix(reads, W_O @ W_U)  # [d_vocab, d_head] @ [d_head, d_vocab]


def copying_score(model, head, ln: bool = True, center_vocab: bool = True) -> float:
    """sum(eigenvalues) / sum(|eigenvalues|) of the full OV circuit, in [-1, 1] (Elhage et al. 2021).

    Near 1: the head raises the logits of the tokens it attends to (copying), near -1: it lowers them. Eigenvalues
    are complex in general; their sum (the trace) is real. They come from the d_head x d_head matrix B @ A.
    """
    eigenvalues = full_ov_circuit(model, head, ln, center_vocab).eigenvalues()  # [d_head] complex
    return (eigenvalues.real.sum() / eigenvalues.abs().sum()).item()


def copying_scores(model, ln: bool = True, center_vocab: bool = True) -> torch.Tensor:
    """[n_layers, n_heads]: copying_score of every head."""
    return torch.tensor([[copying_score(model, (l, h), ln, center_vocab) for h in range(model.cfg.n_heads)]
                         for l in range(model.cfg.n_layers)])


def copied_logits(model, head, ln: bool = True, center_vocab: bool = True) -> torch.Tensor:
    """[d_vocab]: the diagonal of the full OV circuit, how much attending to token t raises t's own logit."""
    circuit = full_ov_circuit(model, head, ln, center_vocab)
    return (circuit.A * circuit.B.T).sum(-1)  # row t of A dotted with column t of B


def top_copied_tokens(model, head, k: int = 10, bottom: bool = False, ln: bool = True,
                      center_vocab: bool = True) -> list[tuple[str, float]]:
    """The k tokens whose own logit the head raises most when it attends to them (bottom=True: lowers most)."""
    diagonal = copied_logits(model, head, ln, center_vocab)  # [d_vocab]
    values, ids = diagonal.topk(min(k, len(diagonal)), largest=not bottom)
    tok = model.tokenizer
    names = [tok.id_to_str(i) if tok is not None else str(i) for i in ids.tolist()]
    return list(zip(names, values.tolist()))


# ---- the QK circuit read through positions and tokens -------------------------------------------------------------
def positional_qk(model, head, ln: bool = True) -> torch.Tensor:
    """[n_ctx, n_ctx] attention scores from the position embeddings alone: W_pos W_Q W_K^T W_pos^T / sqrt(d_head).

    Row = query position, column = key position; keys after the query are -inf (as in hook_attn_scores). A
    previous-token head peaks at column q - 1 in row q. ln: see the module docstring; biases are left out.
    """
    head = resolve_head(model, head)
    W_pos = _read(model, head.layer, model.W_pos.detach(), ln)  # [n_ctx, d_model]
    scores = (W_pos @ head.W_Q) @ (W_pos @ head.W_K).T / math.sqrt(model.cfg.d_head)  # [n_ctx, n_ctx]
    future = torch.triu(torch.ones_like(scores, dtype=torch.bool), 1)
    return scores.masked_fill(future, float("-inf"))


def _token_ids(model, tokens) -> torch.Tensor:  # [n]
    if tokens is None:
        if model.cfg.d_vocab > FULL_VOCAB_LIMIT:
            raise CircuitError(f"d_vocab={model.cfg.d_vocab} is too large for every token pair: pass "
                               "query_tokens and key_tokens (ids or single-token strings)")
        return torch.arange(model.cfg.d_vocab)
    items = [tokens] if isinstance(tokens, (str, int)) else tokens
    if not isinstance(items, torch.Tensor):
        items = [model.to_single_token(t) if isinstance(t, str) else int(t) for t in items]
    ids = torch.as_tensor(items).long().reshape(-1)
    if len(ids) == 0 or int(ids.min()) < 0 or int(ids.max()) >= model.cfg.d_vocab:
        raise CircuitError(f"token ids must be a non-empty list in [0, {model.cfg.d_vocab}), got {ids.tolist()}")
    return ids


def token_qk(model, head, query_tokens=None, key_tokens=None, ln: bool = True) -> torch.Tensor:
    """[n_query, n_key] attention scores from token embeddings alone: W_E[q] W_Q W_K^T W_E[k]^T / sqrt(d_head).

    query_tokens, key_tokens: ids or single-token strings (default: the whole vocabulary, for small vocabularies).
    Positions and biases are left out; ln as in the module docstring.
    """
    head = resolve_head(model, head)
    W_E = model.W_E.detach()  # [d_vocab, d_model]
    queries = _read(model, head.layer, W_E[_token_ids(model, query_tokens)], ln) @ head.W_Q  # [n_query, d_head]
    keys = _read(model, head.layer, W_E[_token_ids(model, key_tokens)], ln) @ head.W_K  # [n_key, d_head]
    return queries @ keys.T / math.sqrt(model.cfg.d_head)

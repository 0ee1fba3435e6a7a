"""Memories: what makes one MLP neuron fire, and what it writes when it does.

Geva et al. 2021 read an MLP neuron as a key-value memory: its key (a column of W_in) matches patterns in the
residual stream, its value (a row of W_out) is what it adds, scaled by its activation (hook_post[..., i]).
`top_activating` finds the key's patterns as the contexts where the neuron fires most; `memory_logits` reads the
value through the unembedding as the next tokens it promotes. `search_corpus` runs top_activating over the text the
shipped models were trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..errors import MinimechError
from .ablation import memory_address


class TopActivation(NamedTuple):
    """One place a neuron fired: prompt index, position, the token there, the activation, the text up to it."""
    prompt: int
    position: int
    token: str
    activation: float
    context: str


def _as_memory(model, memory):
    """The objects.Memory view of a Memory or a (layer, index) pair."""
    layer, index = memory_address(model, memory)
    return model.blocks[layer].mlp.memories[index]


def prompt_batch(model, prompts, truncate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n, pos], mask [n, pos] True on real tokens) from strings (BOS prepended, right-padded) or ids."""
    if isinstance(prompts, torch.Tensor):
        tokens = model.check_tokens(prompts)  # [n, pos]
        return tokens, torch.ones_like(tokens, dtype=torch.bool)
    if isinstance(prompts, str) or not prompts:
        raise MinimechError("prompts must be a non-empty list of strings or a token tensor [batch, pos]; wrap one "
                            "prompt in a list")
    tok, n_ctx = model._tok(), model.cfg.n_ctx
    rows = [[tok.bos_id] + tok.encode(p) for p in prompts]
    if not truncate and max(map(len, rows)) > n_ctx:
        longest = max(range(len(rows)), key=lambda i: len(rows[i]))
        raise MinimechError(f"prompt {longest} is {len(rows[longest])} tokens, more than the model's n_ctx={n_ctx}: "
                            "shorten it or pass truncate=True (keeps its first n_ctx tokens)")
    rows = [r[:n_ctx] for r in rows]
    width = max(map(len, rows))
    tokens = torch.full((len(rows), width), tok.eot_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, row in enumerate(rows):
        tokens[b, :len(row)] = torch.tensor(row)
        mask[b, :len(row)] = True
    device = model.W_E.device
    return tokens.to(device), mask.to(device)


def _token_str(model, token: int) -> str:
    return model.tokenizer.id_to_str(token) if model.tokenizer is not None else str(token)


def _context(model, tokens: torch.Tensor) -> str:  # tokens: [pos], the prompt up to and including the position
    if model.tokenizer is None:
        return str(tokens.tolist())
    start = int(tokens[0] == model.tokenizer.bos_id)  # the BOS decodes to "<|endoftext|>": leave it out
    return model.to_string(tokens[start:])


@torch.no_grad()
def memory_activations(model, memory, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                       batch_size: int = 64) -> torch.Tensor:
    """[n, pos]: the neuron's activation hook_post[..., index] on tokens [n, pos] (0 where mask [n, pos] is False).

    Rows run in batches of similar length, each cut to its longest real row (a causal model's activations do not
    depend on the padding after them); the forward stops after the memory's layer and caches only its hook_post."""
    layer, index = memory_address(model, memory)
    name = f"blocks.{layer}.mlp.hook_post"
    lengths = mask.sum(1) if mask is not None else torch.full((len(tokens),), tokens.shape[1], device=tokens.device)
    order = lengths.argsort()  # lengths: [n]
    out = torch.zeros(tokens.shape, dtype=model.W_E.dtype, device=tokens.device)  # [n, pos]
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = int(lengths[rows].max())
        _, cache = model.run_with_cache(tokens[rows, :width], names=[name], stop_at_layer=layer + 1)
        out[rows, :width] = cache[name][..., index]  # [chunk, width]
    return out if mask is None else out * mask


def top_activating(memory, model, prompts, k: int = 10, batch_size: int = 64, skip_bos: bool = True,
                   truncate: bool = False) -> list[TopActivation]:
    """The k (prompt, position, token, activation, context) where the memory's activation is highest, best first.

    memory: a Memory or (layer, index). prompts: a list of strings (BOS prepended; padding never counts) or token
    ids [batch, pos]. skip_bos: ignore position 0 when it holds the BOS token (its activation is the same in every
    prompt, so it would fill the list with copies). truncate: keep the first n_ctx tokens of longer prompts.
    """
    layer, index = memory_address(model, memory)
    tokens, real = prompt_batch(model, prompts, truncate)  # [n, pos] each; real: not padding
    scored = real.clone()  # [n, pos]: the positions that may be listed
    if skip_bos and model.tokenizer is not None:
        scored[:, 0] &= tokens[:, 0] != model.tokenizer.bos_id
    acts = memory_activations(model, (layer, index), tokens, real, batch_size)  # [n, pos]
    acts = acts.masked_fill(~scored, float("-inf")).flatten()
    n_real = int(scored.sum())
    if n_real == 0:
        raise MinimechError("the prompts have no positions to score (only BOS or padding)")
    values, flat = acts.topk(min(k, n_real))
    out = []
    for value, i in zip(values.tolist(), flat.tolist()):
        b, p = divmod(i, tokens.shape[1])
        out.append(TopActivation(b, p, _token_str(model, int(tokens[b, p])), value, _context(model, tokens[b, :p + 1])))
    return out


def search_corpus(memory, model, n_documents: int = 300, seed: int = 0, k: int = 10,
                  include_facts: bool = True) -> tuple[list[TopActivation], list[str]]:
    """top_activating over the model's own training text (corpus_for(model)).generate(n_documents, seed) documents
    (each cut to n_ctx tokens) plus, with include_facts, every fact_eval("all") prompt followed by its answer.
    Returns (top activations, the prompts they index)."""
    from ..training.corpora import corpus_for

    corpus = corpus_for(model)
    prompts = corpus.training_documents(n_documents, seed)
    if include_facts:
        prompts += [f.prompt + f.answer + "." for f in corpus.fact_eval("all")]
    return top_activating(memory, model, prompts, k=k, truncate=True), prompts


@dataclass
class MemoryLogits:
    """A memory's value read through the unembedding: logits [d_vocab] and the tokens it promotes / suppresses."""
    name: str
    logits: torch.Tensor  # [d_vocab]
    top: list[tuple[str, float]]
    bottom: list[tuple[str, float]]

    def __repr__(self) -> str:
        fmt = lambda rows: ", ".join(f"{t!r} {v:+.2f}" for t, v in rows)
        return f"MemoryLogits {self.name}: promotes {fmt(self.top)}; suppresses {fmt(self.bottom)}"


def memory_logits(memory, model=None, k: int = 10) -> MemoryLogits:
    """value @ W_U for a Memory (or (layer, index) with model): the direct effect on the logits of the neuron
    firing with activation 1 (before ln_final's scale, as in Geva et al.), with its top and bottom k tokens."""
    if model is None:
        if isinstance(memory, (tuple, list)):
            raise MinimechError("memory_logits((layer, index)) needs the model: memory_logits((layer, index), model)")
        model = memory.mlp.root()
    mem = _as_memory(model, memory)
    return MemoryLogits(mem.name, mem.value_logits(), mem.top_tokens(k), mem.top_tokens(k, bottom=True))

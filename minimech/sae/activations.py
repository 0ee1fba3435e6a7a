"""Activations to train and measure an SAE on: one hook's values at every real token of minimech's corpus.

`ActivationStream` generates corpus documents chunk by chunk (the model's own corpus: training/stories.py for
story-4l, training/corpus.py for the template-trained models; kinds mixed as the model's recipe mixed them), packs
them into rows of n_ctx tokens as the model was trained, runs the model only up to the hook, and hands out shuffled
batches from a buffer of fixed size, so memory stays bounded however many tokens a run reads.

Positions holding <|endoftext|> (the BOS, the separators between packed documents, and the padding) are left out,
as SAELens leaves out special tokens (`exclude_special_tokens=True`): the BOS's activation is the same huge outlier in
every row, and padding is not text.
"""

from __future__ import annotations

import re
from functools import lru_cache

import torch

from .autoencoder import SAEError

TRAIN_SEED, EVAL_SEED = 5_000_000, 6_000_000  # corpus seeds: training chunks TRAIN_SEED + 1000 * seed + i
CHUNK_DOCUMENTS = 1000  # documents per generated chunk at most (~37,000 tokens on the shipped corpus)


def hook_layer(model, hook: str) -> int | None:
    """stop_at_layer for a forward that reaches `hook`: blocks.L.* needs blocks 0..L; embeddings need none; the
    final LayerNorm needs every block (None)."""
    match = re.match(r"blocks\.(\d+)\.", hook)
    if match:
        return int(match.group(1)) + 1
    return 0 if hook in ("hook_embed", "hook_pos_embed") else None


def check_hook(model, hook: str) -> str:
    """The hook's name, or one clear error: unknown names (with suggestions) and attention patterns (one value per
    pair of positions, not a vector per token)."""
    if not isinstance(hook, str):
        raise SAEError(f"hook must be a hook point's name such as 'blocks.2.mlp.hook_post', got {type(hook).__name__}")
    (name,) = model.resolve_hook_names(hook)  # unknown names raise UnknownHookError with close matches
    if name.endswith(("hook_attn_scores", "hook_pattern", "hook_scale")):
        raise SAEError(f"{name} is not a vector per token (attention patterns are [batch, head, q_pos, k_pos]; "
                       "LayerNorm scales are one number): train SAEs on hook_resid_pre, hook_mlp_out, "
                       "mlp.hook_post, hook_attn_out or attn.hook_z")
    return name


def per_token(activation: torch.Tensor) -> torch.Tensor:
    """A hook's value as [batch, pos, d]: per-head hooks ([batch, pos, head, d_head]) have their heads concatenated,
    as SAELens flattens hook_z."""
    return activation.flatten(2) if activation.ndim == 4 else activation


def hook_width(model, hook: str) -> int:
    """d_in of an SAE on `hook`: the size of its per-token vector in this model."""
    hook = check_hook(model, hook)
    probe = torch.zeros(1, 2, dtype=torch.long, device=model.W_E.device)
    _, cache = model.run_with_cache(probe, names=[hook], stop_at_layer=hook_layer(model, hook))
    return per_token(cache[hook]).shape[-1]


def special_mask(model, tokens: torch.Tensor) -> torch.Tensor:
    """[batch, pos], True at <|endoftext|> (BOS, separators, padding); all False for a model without a tokenizer."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
    return (tokens == tokenizer.bos_id) | (tokens == tokenizer.eot_id)


def _recipe_mix(model):
    return ((getattr(model, "card", None) or {}).get("recipe") or {}).get("mix") or None


def corpus_kind(model) -> str:
    """Which of minimech's corpora the model was trained on: "stories" (story-4l: training/stories.py) or
    "templates" (mini-4l, attn-only-2l, and any model without a card: training/corpus.py)."""
    return "stories" if ((getattr(model, "card", None) or {}).get("corpus") or {}).get("kind") == "stories" \
        else "templates"


@lru_cache(maxsize=4)
def _corpus(kind: str, seed: int = 0):
    # Building a corpus checks its word lists against the GPT-2 tokenizer: once per process is enough.
    from ..training.corpora import corpus_for

    return corpus_for(card={"corpus": {"kind": kind, "seed": seed}})


def model_corpus(model):
    """The corpus of the model's card (training.corpora.corpus_for, cached), so that an SAE reads the kind of text
    the model was trained on: StoryCorpus for story-4l, Corpus (the templates) otherwise."""
    seed = ((getattr(model, "card", None) or {}).get("corpus") or {}).get("seed", 0)
    return _corpus(corpus_kind(model), seed)


def corpus_documents(model, n_documents: int, seed: int) -> list[str]:
    """Documents of model_corpus(model), kinds mixed as the model's recipe mixed them (the corpus default
    otherwise)."""
    return model_corpus(model).training_documents(n_documents, seed=seed, mix=_recipe_mix(model))


def corpus_rows(model, n_documents: int, seed: int, skip: set | None = None) -> torch.Tensor:
    """Token rows [rows, n_ctx] of corpus_documents(model, n_documents, seed), packed as the shipped models were
    trained; documents in `skip` (texts) are left out."""
    from ..training.corpus import pack_documents

    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "encode"):
        raise SAEError("this model has no tokenizer to encode the corpus with: pass token rows [rows, pos] "
                       "(tokens=...) instead")
    documents = corpus_documents(model, n_documents, seed)
    if skip:
        documents = [d for d in documents if d not in skip]
    return pack_documents([tokenizer.encode(d) for d in documents], model.cfg.n_ctx, tokenizer.eot_id)


EVAL_DOCUMENTS = 1000  # ~37,000 tokens on the shipped corpus: a feature firing once in 10,000 tokens shows


def eval_rows(model) -> torch.Tensor:
    """The held-out rows SAE metrics are measured on: EVAL_DOCUMENTS documents of corpus seed EVAL_SEED (training
    streams skip every one of them)."""
    return corpus_rows(model, EVAL_DOCUMENTS, EVAL_SEED)


@torch.no_grad()
def collect_activations(model, hook: str, tokens: torch.Tensor, batch_size: int = 64,
                        exclude_special: bool = True) -> torch.Tensor:
    """[n, d_in]: the hook's vector at every position of tokens [rows, pos] (special tokens left out)."""
    hook = check_hook(model, hook)
    tokens = model.check_tokens(tokens)
    stop, out = hook_layer(model, hook), []
    for rows in tokens.split(batch_size):
        _, cache = model.run_with_cache(rows, names=[hook], stop_at_layer=stop)
        acts = per_token(cache[hook])  # [rows, pos, d_in]
        keep = ~special_mask(model, rows) if exclude_special else torch.ones_like(rows, dtype=torch.bool)
        out.append(acts[keep.to(acts.device)])
    return torch.cat(out)


class ActivationStream:
    """An endless iterator of shuffled activation batches [batch_size, d_in] from one hook.

    Source: corpus documents generated min(CHUNK_DOCUMENTS, buffer_size / 64) at a time from corpus seed TRAIN_SEED
    + 1000 * seed + i (the held-out eval documents skipped), or, with tokens=, those token rows, reshuffled on every
    pass. A buffer of buffer_size activations is filled, shuffled, and its first half handed out before the next
    refill (as SAELens's mixing buffer), so a batch mixes tokens from many documents and memory stays at about
    (buffer_size + one chunk) x d_in floats.
    """

    def __init__(self, model, hook: str, batch_size: int = 4096, buffer_size: int = 65536, seed: int = 0,
                 tokens: torch.Tensor | None = None, model_batch: int = 64):
        if batch_size < 1 or buffer_size < 2 * batch_size:
            raise SAEError(f"need batch_size >= 1 and buffer_size >= 2 x batch_size, got {batch_size} and "
                           f"{buffer_size}")
        self.model, self.hook = model, check_hook(model, hook)
        self.batch_size, self.buffer_size, self.model_batch = batch_size, buffer_size, model_batch
        self.seed, self.tokens = seed, None if tokens is None else model.check_tokens(tokens)
        self.gen = torch.Generator().manual_seed(seed)
        self.chunk, self.tokens_read = 0, 0
        self.chunk_documents = min(CHUNK_DOCUMENTS, max(16, buffer_size // 64))  # a chunk: ~half a buffer of tokens
        self.skip = None if tokens is not None else set(corpus_documents(model, EVAL_DOCUMENTS, EVAL_SEED))
        self.buffer = torch.empty(0, hook_width(model, self.hook), device=model.W_E.device)
        self.cursor = 0

    def _next_rows(self) -> torch.Tensor:
        if self.tokens is None:
            rows = corpus_rows(self.model, self.chunk_documents, TRAIN_SEED + 1000 * self.seed + self.chunk, self.skip)
        else:
            rows = self.tokens[torch.randperm(len(self.tokens), generator=self.gen)]
        self.chunk += 1
        return rows.to(self.model.W_E.device)

    def _refill(self) -> None:
        parts = [self.buffer[self.cursor:]]
        have = len(parts[0])
        while have < self.buffer_size:
            acts = collect_activations(self.model, self.hook, self._next_rows(), self.model_batch)
            if len(acts) == 0:
                raise SAEError("the token rows hold no position to train on (only <|endoftext|>)")
            parts.append(acts)
            have += len(acts)
            self.tokens_read += len(acts)
        buffer = torch.cat(parts)
        self.buffer = buffer[torch.randperm(len(buffer), generator=self.gen).to(buffer.device)]
        self.cursor = 0

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if len(self.buffer) - self.cursor < self.buffer_size // 2 + self.batch_size:
            self._refill()  # keeps the unused half, so each batch mixes old and new chunks
        batch = self.buffer[self.cursor:self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return batch

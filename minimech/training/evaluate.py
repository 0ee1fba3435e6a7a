"""The phenomenon metrics of the shipped models, computed on held-out data: IOI, factual recall, induction.

Each takes a model and returns plain floats, so the trainer can log them over training and the tests can assert the
thresholds in the model cards on the shipped files.
"""

from __future__ import annotations

import torch

from ..analysis.heads import detector_scores, in_context_losses, repeated_random_tokens


@torch.no_grad()
def last_logits(model, prompts: list[str], prepend_bos: bool = True) -> torch.Tensor:
    """Logits [n_prompts, d_vocab] at each prompt's last token (prompts of different lengths are right-padded)."""
    tokens, mask = model.tokenizer.to_tokens(prompts, prepend_bos=prepend_bos, return_mask=True,
                                             max_len=model.cfg.n_ctx)
    logits = model(tokens)  # [batch, pos, d_vocab]
    last = mask.long().sum(1) - 1  # index of each prompt's last real token
    return logits[torch.arange(len(prompts)), last]


def logit_diffs(model, prompts: list[str], correct: list[str], wrong: list[str]) -> torch.Tensor:
    """logit(correct) - logit(wrong) at the end of each prompt; correct/wrong are single tokens such as " Mary"."""
    logits = last_logits(model, prompts)
    c = torch.tensor([model.to_single_token(t) for t in correct])
    w = torch.tensor([model.to_single_token(t) for t in wrong])
    rows = torch.arange(len(prompts))
    return logits[rows, c] - logits[rows, w]


def ioi_metrics(model, examples) -> dict[str, float]:
    """examples: objects with .prompt, .io and .s. Mean IO-minus-S logit difference, how often IO beats S, and how
    often IO is the top-1 token."""
    prompts = [e.prompt for e in examples]
    diffs = logit_diffs(model, prompts, [e.io for e in examples], [e.s for e in examples])
    top = last_logits(model, prompts).argmax(-1)
    io = torch.tensor([model.to_single_token(e.io) for e in examples])
    return {"ioi_logit_diff": diffs.mean().item(), "ioi_accuracy": (diffs > 0).float().mean().item(),
            "ioi_top1": (top == io).float().mean().item()}


def fact_metrics(model, examples) -> dict[str, float]:
    """examples: objects with .prompt and .answer. Top-1 accuracy on the answer's first token."""
    top = last_logits(model, [e.prompt for e in examples]).argmax(-1)
    first = torch.tensor([model.tokenizer.encode(e.answer)[0] for e in examples])
    return {"facts_top1": (top == first).float().mean().item()}


def induction_metrics(model, token_pool: torch.Tensor | None = None, seq_len: int | None = None) -> dict[str, float]:
    """Best induction score (any layer > 0), best layer-0 previous-token score, and the in-context loss ratio."""
    seq_len = seq_len or min(20, (model.cfg.n_ctx - 1) // 2)
    tokens = repeated_random_tokens(model, seq_len, batch=16, seed=1234, token_pool=token_pool)
    scores = detector_scores(model, tokens)
    first, repeated = in_context_losses(model, seq_len, batch=16, seed=1234)
    return {"induction_best": scores["induction"][1:].max().item(),
            "prev_token_best_L0": scores["previous_token"][0].max().item(),
            "icl_loss_ratio": repeated / first}


@torch.no_grad()
def copy_accuracy(model, filler: torch.Tensor, distance: int, chunk_len: int = 8, start: int = 4, seed: int = 0,
                  token_pool: torch.Tensor | None = None) -> float:
    """Top-1 accuracy of copying a chunk of chunk_len random tokens `distance` tokens after its first occurrence:
    rows are BOS + running text (`filler`, [batch, >= start + distance + chunk_len] model ids, no BOS) with the
    chunk written at `start` and again at start + distance; scored on the copy's tokens 2..chunk_len (its first
    token follows arbitrary text and cannot be predicted)."""
    end = start + distance + chunk_len
    if end > model.cfg.n_ctx:
        raise ValueError(f"start + distance + chunk_len = {end} exceeds n_ctx = {model.cfg.n_ctx}")
    if filler.shape[1] < end - 1:
        raise ValueError(f"filler rows hold {filler.shape[1]} tokens; this probe needs {end - 1}")
    gen = torch.Generator().manual_seed(seed)
    if token_pool is None:
        token_pool = torch.arange(model.cfg.d_vocab - 1)
    batch = len(filler)
    chunk = token_pool[torch.randint(len(token_pool), (batch, chunk_len), generator=gen)]
    tokens = torch.cat([torch.full((batch, 1), model.tokenizer.bos_id), filler[:, : end - 1]], dim=1).clone()
    tokens[:, start: start + chunk_len] = chunk
    tokens[:, start + distance: end] = chunk
    predicted = model(tokens)[:, start + distance: end - 1].argmax(-1)  # predictions of copy tokens 2..chunk_len
    return (predicted == chunk[:, 1:]).float().mean().item()

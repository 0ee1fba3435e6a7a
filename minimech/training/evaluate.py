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

"""Metrics: functions of the logits that analysis sweeps measure.

`logit_diff(correct, wrong)` builds the metric of the IOI paper: at one position, the logit of the right answer
minus the logit of the wrong one, averaged over the batch. It is an ordinary callable (`metric(logits)`), and it
also says which logits it reads, so a sweep that knows this (patching.py's fast path) can compute those few
unembedding columns at that one position instead of the whole [batch, pos, d_vocab] logits.
"""

from __future__ import annotations

import torch

from ..errors import MinimechError, check_positions


def _as_ids(tokens, name: str) -> torch.Tensor:
    if isinstance(tokens, str) or (isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], str)):
        raise MinimechError(f"{name}={tokens!r}: logit_diff takes token ids (it is built before any model is "
                            "known), e.g. logit_diff(model.to_single_token(' Mary'), model.to_single_token(' John'))")
    ids = torch.as_tensor(tokens)
    if ids.dtype not in (torch.int64, torch.int32) or ids.ndim > 1:
        raise MinimechError(f"{name} must be one token id per prompt (an int or a 1-d integer tensor/list), got "
                            f"{'dtype ' + str(ids.dtype) if ids.dtype.is_floating_point else 'shape ' + str(tuple(ids.shape))}")
    return ids.long().reshape(-1)


class LogitDiff:
    """metric(logits) = mean over prompts b of logits[b, pos, correct[b]] - logits[b, pos, wrong[b]].

    correct, wrong: one token id per prompt (or one id for all prompts). pos: the position read (default the last).
    """

    def __init__(self, correct, wrong, pos: int = -1):
        self.correct, self.wrong = _as_ids(correct, "correct"), _as_ids(wrong, "wrong")  # [batch] or [1]
        if len(self.correct) != len(self.wrong) and 1 not in (len(self.correct), len(self.wrong)):
            raise MinimechError(f"correct has {len(self.correct)} ids but wrong has {len(self.wrong)}: give one "
                                "pair per prompt")
        self.pos = pos

    def ids(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(correct, wrong) broadcast to [batch] each, with a clear error when the batch does not match."""
        n = max(len(self.correct), len(self.wrong))
        if n not in (1, batch):
            raise MinimechError(f"the metric has {n} answer pairs but the logits have {batch} prompts: give one "
                                "pair per prompt (or a single pair for all)")
        return self.correct.expand(batch), self.wrong.expand(batch)

    def from_logits_at(self, logits_at: torch.Tensor) -> torch.Tensor:
        """The metric from the logits at self.pos only: logits_at [batch, d_vocab] -> scalar."""
        correct, wrong = self.ids(logits_at.shape[0])
        rows = torch.arange(logits_at.shape[0])
        return (logits_at[rows, correct] - logits_at[rows, wrong]).mean()

    def direction(self, W_U: torch.Tensor, b_U: torch.Tensor, batch: int):
        """(directions [batch, d_model], offsets [batch]): the metric per prompt is normed_resid @ direction + offset."""
        correct, wrong = self.ids(batch)
        return (W_U[:, correct] - W_U[:, wrong]).T, b_U[correct] - b_U[wrong]

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:  # logits: [batch, pos, d_vocab]
        if logits.ndim != 3:
            raise MinimechError(f"logit_diff expects logits [batch, pos, d_vocab], got shape {tuple(logits.shape)}")
        check_positions(self.pos, logits.shape[1], "logit_diff's pos")
        return self.from_logits_at(logits[:, self.pos])

    def __repr__(self) -> str:
        return f"logit_diff(correct={self.correct.tolist()}, wrong={self.wrong.tolist()}, pos={self.pos})"


def logit_diff(correct, wrong, pos: int = -1) -> LogitDiff:
    """The metric logits[:, pos, correct] - logits[:, pos, wrong], averaged over prompts (see LogitDiff)."""
    return LogitDiff(correct, wrong, pos)

"""Where a shipped model's behaviours live, for its card: detectors, mean ablation, patching and causal tracing.

Everything runs on held-out data (held-out frames and paraphrases; IOI on training names by default, see
ioi_report) and returns plain JSON-able numbers, so the card says which heads and MLPs carry induction, IOI and
facts, and the lessons can ask learners to find them.
"""

from __future__ import annotations

from collections import Counter

import torch

from ..analysis import causal_trace, detector_scores, mean_ablate_heads, mean_ablate_mlps, patch_heads
from ..analysis.heads import repeated_random_tokens
from .corpus import Corpus


def _rounded(t: torch.Tensor, digits: int = 3):
    return [[round(v, digits) for v in row] for row in t.tolist()] if t.ndim == 2 else [round(v, digits) for v in
                                                                                         t.tolist()]


def _top(effects: torch.Tensor, k: int = 5) -> list[str]:
    """The k heads whose ablation lowers the metric most, as "L1H2 -3.41"."""
    flat = effects.flatten()
    order = flat.argsort()[:k]
    n_heads = effects.shape[1]
    return [f"L{int(i) // n_heads}H{int(i) % n_heads} {flat[i]:+.2f}" for i in order]


@torch.no_grad()
def induction_report(model, token_pool: torch.Tensor) -> dict:
    seq_len = min(20, (model.cfg.n_ctx - 1) // 2)
    tokens = repeated_random_tokens(model, seq_len, batch=16, seed=4321, token_pool=token_pool)
    scores = detector_scores(model, tokens)

    def repeated_half_loss(logits):  # loss on the second copy: what induction heads lower
        return -model.loss(logits, tokens, per_token=True)[:, seq_len:].mean()

    ablation = mean_ablate_heads(model, tokens, repeated_half_loss)
    heads = lambda kind, layers: [f"L{l}H{h} {scores[kind][l, h]:.2f}" for l in layers
                                  for h in range(model.cfg.n_heads) if scores[kind][l, h] > 0.5]
    return {"scores": {k: _rounded(v) for k, v in scores.items()},
            "induction_heads": heads("induction", range(1, model.cfg.n_layers)),
            "previous_token_heads": heads("previous_token", range(model.cfg.n_layers)),
            "mean_ablation_minus_repeated_loss": _rounded(ablation),
            "heads_that_matter_most": _top(ablation),
            "method": "detectors on repeated random tokens (BOS + 2 x seq_len); mean ablation of each head's z, "
                      "effect on minus the loss of the repeated half (negative: the head helped)"}


def _same_length_ioi(model, corpus: Corpus, names: str, n: int = 300):
    """The largest group of IOI prompts (held-out frames) with one token length (patching needs equal shapes)."""
    examples = corpus.ioi_eval(n, seed=77, names=names, frames="heldout")
    groups: dict[int, list] = {}
    for e in examples:
        groups.setdefault(len(model.tokenizer.encode(e.prompt)), []).append(e)
    return max(groups.values(), key=len)


@torch.no_grad()
def ioi_report(model, corpus: Corpus, names: str = "train") -> dict:
    """names: "train" analyses the circuit on training names in held-out frames (where a small model does the task);
    "heldout" on held-out names too."""
    group = _same_length_ioi(model, corpus, names)
    tok = model.tokenizer
    tokens = model.to_tokens([e.prompt for e in group])  # [batch, pos]
    io = torch.tensor([tok.to_single_token(e.io) for e in group])
    s = torch.tensor([tok.to_single_token(e.s) for e in group])
    rows = torch.arange(len(group))

    def logit_diff(logits):  # logit(IO) - logit(S) at the end, averaged
        return (logits[rows, -1, io] - logits[rows, -1, s]).mean()

    # The corrupted prompt says the other name at S2 ("..., Mary gave a drink to"): the answer flips to S.
    corrupt = tokens.clone()
    s2 = torch.stack([(tokens[i] == s[i]).nonzero()[-1, 0] for i in range(len(group))])
    corrupt[rows, s2] = io
    heads = mean_ablate_heads(model, tokens, logit_diff)
    patched = patch_heads(model, tokens, corrupt, logit_diff, normalise=True)
    out = {"names": names, "frames": "heldout", "prompts": len(group),
           "logit_diff": round(logit_diff(model(tokens)).item(), 3), "mean_ablation_heads": _rounded(heads), "heads_that_matter_most": _top(heads),
           "patching_heads_s2_swap": _rounded(patched),
           "method": "held-out frames, one token length; mean ablation of each head's z and of each MLP "
                     "(effect on the IO-S logit difference); patching each head's z from the clean run into a run "
                     "whose S2 name is replaced by IO (1 = restores the clean logit difference)"}
    if not model.cfg.attn_only:
        out["mean_ablation_mlps"] = _rounded(mean_ablate_mlps(model, tokens, logit_diff))
    return out


@torch.no_grad()
def facts_report(model, corpus: Corpus, n_facts: int = 24) -> dict:
    facts = corpus.fact_eval("heldout")[:: max(1, len(corpus.fact_eval("heldout")) // n_facts)][:n_facts]
    peaks, at_subject, mlp_by_layer_subject, mlp_by_layer_last = Counter(), 0, 0, 0
    for f in facts:
        first = model.tokenizer.encode(f.answer)[0]  # facts are scored on the answer's first token
        trace = causal_trace(model, f.prompt, first, f.subject, samples=5, kinds=("mlp",))
        layer, pos = trace.peak("mlp")
        last_subject = max(trace.subject_positions)
        where = "subject's last token" if pos == last_subject else ("last token" if pos == len(trace.str_tokens) - 1
                                                                    else "other")
        peaks[f"{where}, layer {layer}"] += 1
        at_subject += where == "subject's last token"
        effect = trace.scores["mlp"] - trace.corrupt_prob  # [layer, pos]
        mlp_by_layer_subject = mlp_by_layer_subject + effect[:, last_subject]
        mlp_by_layer_last = mlp_by_layer_last + effect[:, -1]
    return {"facts_traced": len(facts), "mlp_peak_at_subject_last_token": round(at_subject / len(facts), 3),
            "mlp_peaks": dict(peaks.most_common()),
            "mlp_effect_by_layer_at_subject_last_token": _rounded(mlp_by_layer_subject / len(facts)),
            "mlp_effect_by_layer_at_last_token": _rounded(mlp_by_layer_last / len(facts)),
            "method": "ROME causal tracing on held-out paraphrases: subject embeddings noised (3 x std of W_E), "
                      "each layer's MLP output restored at one position, 5 noise samples; effect = P(answer) "
                      "restored - P(answer) corrupted"}


def mechanism_report(model, corpus: Corpus, token_pool: torch.Tensor, metrics: tuple) -> dict:
    out = {}
    if "induction" in metrics:
        out["induction"] = induction_report(model, token_pool)
    if "ioi" in metrics:
        out["ioi"] = ioi_report(model, corpus)
    if "facts" in metrics and not model.cfg.attn_only:
        out["facts"] = facts_report(model, corpus)
    return out

"""Causal tracing, as in ROME (Meng et al. 2022, "Locating and Editing Factual Associations in GPT").

1. Clean run: P(answer) at the last position, every activation cached.
2. Corrupted runs: Gaussian noise added to the subject tokens' embeddings (hook_embed at the subject positions),
   `samples` draws at once; P(answer) drops.
3. For each kind, layer and position: the corrupted runs again, with that one clean activation restored. Where
   restoring brings P(answer) back, the state there carries what the model knows about the subject.

Kinds and the hooks restored: resid = blocks.{l}.hook_resid_post (ROME's hidden state, the output of layer l),
mlp = blocks.{l}.hook_mlp_out, attn = blocks.{l}.hook_attn_out. ROME restores a window of 10 layers around l for
mlp and attn in its figures (layers max(0, l - w // 2) up to l + ceil(w / 2), exclusive); window=1 (the default)
restores layer l alone. The residual stream is never windowed: its state after layer l already holds every earlier
layer's output, so ROME restores it one layer at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import MinimechError

KIND_HOOKS = {"resid": "hook_resid_post", "mlp": "hook_mlp_out", "attn": "hook_attn_out"}


class TracingError(MinimechError, ValueError):
    """A subject, answer or kind that causal tracing cannot use."""


@dataclass
class TraceResult:
    clean_prob: float  # P(answer) on the clean prompt
    corrupt_prob: float  # mean P(answer) over the noised runs
    scores: dict[str, torch.Tensor]  # kind -> [n_layers, pos]: mean P(answer) with that state restored
    str_tokens: list[str]
    subject_positions: list[int]
    answer: int = -1  # the answer's token id
    noise: float = field(default=0.0)

    def peak(self, kind: str) -> tuple[int, int]:
        """(layer, pos) where restoring `kind` recovers the most probability."""
        scores = self.scores[kind]  # [n_layers, pos]
        flat = int(scores.argmax())
        return flat // scores.shape[1], flat % scores.shape[1]

    def indirect_effect(self, kind: str) -> torch.Tensor:  # [n_layers, pos]: ROME's "indirect effect"
        return self.scores[kind] - self.corrupt_prob

    def __repr__(self) -> str:
        peaks = ", ".join(f"{k} {self.peak(k)}" for k in self.scores)
        subject = [self.str_tokens[p] for p in self.subject_positions]
        return (f"TraceResult: P(answer) clean {self.clean_prob:.4f}, corrupt {self.corrupt_prob:.4f}; subject "
                f"{subject} at {self.subject_positions}; peak (layer, pos): {peaks}")


def _str_tokens(model, tokens: torch.Tensor) -> list[str]:  # tokens: [pos]
    if model.tokenizer is None:
        return [str(t) for t in tokens.tolist()]
    return model.to_str_tokens(tokens)


def find_subject_positions(model, tokens, subject) -> list[int]:
    """Positions of the subject's tokens in tokens [pos] or [1, pos]: the last occurrence, tried both with and
    without a leading space (" Paris" and "Paris" tokenize differently). subject: a string, or its token ids."""
    tokens = model.check_tokens(tokens)[0]  # [pos]
    if isinstance(subject, str):
        tok = model._tok()
        variants = [tok.encode(subject.strip()), tok.encode(" " + subject.strip())]
        # A compact vocabulary encodes unknown pieces as its unk token, which would match any other unknown token
        variants = [v for v in variants if tok.unk_id is None or tok.unk_id not in v]
    else:
        variants = [[int(t) for t in subject]]
    ids, best = tokens.tolist(), None
    for variant in variants:
        n = len(variant)
        starts = [s for s in range(len(ids) - n + 1) if n and ids[s:s + n] == variant]
        if starts and (best is None or starts[-1] + n > best[-1] + 1):
            best = list(range(starts[-1], starts[-1] + n))
    if best is None:
        shown = [[model.tokenizer.id_to_str(t) for t in v] if model.tokenizer else v for v in variants]
        looked = f"looked for the token sequences {shown}" if variants else "it has tokens outside the vocabulary"
        raise TracingError(f"subject {subject!r} not found in the prompt's tokens {_str_tokens(model, tokens)}; "
                           + looked)
    return best


def _answer_id(model, answer) -> int:
    if isinstance(answer, str):
        return model.to_single_token(answer)
    answer = int(answer)
    if not 0 <= answer < model.cfg.d_vocab:
        raise TracingError(f"answer id {answer} is outside the vocabulary [0, {model.cfg.d_vocab})")
    return answer


def _noise_hook(subject_positions, noise: torch.Tensor):
    """hook_embed hook adding noise [samples, n_subject, d_model] at the subject positions of every group of
    `samples` rows (the batch is [group * samples, pos, d_model])."""
    def hook(embed, hook):
        embed = embed.clone()
        rows = embed.view(-1, noise.shape[0], *embed.shape[1:])  # [group, samples, pos, d_model]
        rows[:, :, subject_positions] += noise
        return embed
    return hook


def _restore_hook(clean_act: torch.Tensor, samples: int):
    """Restores clean_act [1, pos, d_model] at position g in group g of a [pos * samples, pos, d_model] batch:
    one forward restores every position, each in its own group of samples."""
    def hook(act, hook):
        act = act.clone()
        groups = act.view(-1, samples, *act.shape[1:])  # [pos, samples, pos, d_model]
        g = torch.arange(groups.shape[0], device=act.device)
        groups[g, :, g] = clean_act[0, g][:, None]  # [pos, samples, d_model] <- [pos, 1, d_model]
        return act
    return hook


def _answer_prob(logits: torch.Tensor, answer: int, samples: int) -> torch.Tensor:
    """Mean P(answer) at the last position per group of samples: logits [group * samples, pos, d_vocab] -> [group]."""
    probs = logits[:, -1].softmax(-1)[:, answer]  # [group * samples]
    return probs.view(-1, samples).mean(1)


@torch.no_grad()
def causal_trace(model, prompt, answer, subject, noise: float | None = None, samples: int = 10, seed: int = 0,
                 kinds=("resid", "mlp", "attn"), window: int = 1) -> TraceResult:
    """ROME's causal trace of P(answer) after prompt, with the subject's embeddings noised.

    noise: std of the Gaussian noise; default 3 x the std of all of W_E's entries (ROME uses 3 x the embeddings' std).
    A batch of pos * samples rows per (kind, layer) restores every position in one forward, starting at the first
    restored layer from the noised runs' stream there, and unembedding only the last position.
    """
    if not isinstance(window, int) or window < 1 or not isinstance(samples, int) or samples < 1:
        raise TracingError(f"window={window!r}, samples={samples!r}: both must be whole numbers >= 1 (window 1 "
                           "restores one layer; ROME used 10 on GPT-2 XL)")
    tokens = model.check_tokens(prompt)  # [1, pos]
    if tokens.shape[0] != 1:
        raise TracingError(f"causal_trace takes one prompt, got a batch of {tokens.shape[0]}")
    unknown = [k for k in kinds if k not in KIND_HOOKS]
    if unknown or (model.cfg.attn_only and "mlp" in kinds):
        raise TracingError(f"kinds {list(kinds)}: choose from {list(KIND_HOOKS)}"
                           + (" (this attention-only model has no mlp)" if model.cfg.attn_only else ""))
    answer_id, positions = _answer_id(model, answer), find_subject_positions(model, tokens, subject)
    std = 3 * model.W_E.detach().std().item() if noise is None else float(noise)
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randn(samples, len(positions), model.cfg.d_model, generator=gen).to(model.W_E.device) * std
    names = [f"blocks.{l}.{KIND_HOOKS[k]}" for k in kinds for l in range(model.cfg.n_layers)]
    clean_logits, cache = model.run_with_cache(tokens, names=names)
    clean_prob = clean_logits[0, -1].softmax(-1)[answer_id].item()
    # The noised runs, keeping each block's input: a restored run changes nothing before its first restored layer,
    # so it starts there from these (start_at_layer) instead of running the blocks below again (half the work)
    n_pos, n_layers = tokens.shape[1], model.cfg.n_layers
    with model.hooks([("hook_embed", _noise_hook(positions, draws))]):
        corrupt_logits, noised = model.run_with_cache(tokens.expand(samples, -1),
                                                      names=[f"blocks.{l}.hook_resid_pre" for l in range(n_layers)])
    corrupt_prob = _answer_prob(corrupt_logits, answer_id, samples).item()
    scores = {}
    for kind in kinds:
        scores[kind] = torch.zeros(n_layers, n_pos)
        for layer in range(n_layers):
            width = 1 if kind == "resid" else window  # ROME windows MLPs and attention, never the stream
            lo, hi = max(0, layer - width // 2), min(n_layers, layer - (-width // 2))
            restores = [(f"blocks.{l}.{KIND_HOOKS[kind]}", _restore_hook(cache[f"blocks.{l}.{KIND_HOOKS[kind]}"],
                                                                           samples)) for l in range(lo, hi)]
            start = noised[f"blocks.{lo}.hook_resid_pre"].repeat(n_pos, 1, 1)  # [pos * samples, pos, d_model]
            with model.hooks(restores):  # group g of `samples` rows restores position g
                resid = model(start, start_at_layer=lo, stop_at_layer=n_layers)  # [pos * samples, pos, d_model]
            last = model.unembed(model.ln_final(resid[:, -1:]))  # [pos * samples, 1, d_vocab]: only -1 is read
            scores[kind][layer] = _answer_prob(last, answer_id, samples).cpu()
    return TraceResult(clean_prob, corrupt_prob, scores, _str_tokens(model, tokens[0]), positions, answer_id, std)

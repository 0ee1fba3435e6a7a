"""Direct logit attribution: how much each component's direct write moves the logit (or a logit difference).

The final residual stream at a position is a sum of components (cache.decompose_resid: embed, pos_embed, every
head, every layer's attention bias b_O, every MLP). ln_final is not linear, but in one run it divided by a known
number, the cached ln_final.hook_scale, so it acts as the linear map x -> centre(x) / scale * w, plus its bias b.
Through that map and the unembedding, each component gives one number:

    value[c] = (centre(component_c) / scale * ln_final.w) . (W_U[:, correct] - W_U[:, wrong])

and ln_final.b and b_U add one number each. These sum to the model's real logit difference (exactly, up to float
rounding; tests hold it to 1e-4). "Direct" means only the write itself: a head's effect through later layers
(e.g. by moving what a later head attends to) is not counted here; ablation and patching measure that.

    logits, cache = model.run_with_cache(tokens)            # or names=attribution_hooks(model) to cache less
    attr = direct_logit_attribution(model, cache, " Mary", " John")
    attr.by_head()      # [n_layers, n_heads]
    attr.top(5)         # the five components with the largest |value|
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import MinimechError

LN_BIAS, UNEMBED_BIAS = "ln_final.b", "b_U"  # the two labels that belong to no component of the stream


class AttributionError(MinimechError, ValueError):
    """Bad input to direct logit attribution: missing activations, answers that do not fit the batch, ..."""


def attribution_hooks(model) -> list[str]:
    """The hook names direct_logit_attribution reads: run_with_cache(tokens, names=attribution_hooks(model))."""
    names = ["hook_embed", "hook_pos_embed", "ln_final.hook_scale", "ln_final.hook_normalized"]
    for l in range(model.cfg.n_layers):
        names.append(f"blocks.{l}.attn.hook_z")
        if not model.cfg.attn_only:
            names.append(f"blocks.{l}.hook_mlp_out")
    return names


@dataclass
class Attribution:
    """Direct logit attribution of one answer (or answer pair) at one position, per component.

    labels: as cache.decompose_resid names them, then "ln_final.b" and "b_U".
    per_prompt: [component, batch]; values: [component], the mean over prompts.
    total: [batch], the model's own logit (difference); per_prompt.sum(0) equals it up to float rounding.
    """

    labels: list[str]
    per_prompt: torch.Tensor  # [component, batch]
    total: torch.Tensor  # [batch]
    correct: torch.Tensor  # [batch] token ids
    wrong: torch.Tensor | None  # [batch] token ids, or None: attribution of the correct logit itself
    n_layers: int
    n_heads: int
    tokenizer: object | None = field(default=None, repr=False)

    @property
    def values(self) -> torch.Tensor:  # [component]
        return self.per_prompt.mean(1)

    @property
    def total_mean(self) -> float:
        return self.total.mean().item()

    def __getitem__(self, label: str) -> torch.Tensor:  # [] the mean over prompts
        if label not in self.labels:
            raise AttributionError(f"no component {label!r}; labels are embed, pos_embed, L0H0, ..., L0attn_bias, "
                                   f"L0MLP, ..., {LN_BIAS}, {UNEMBED_BIAS} (see .labels)")
        return self.values[self.labels.index(label)]

    def by_head(self, per_prompt: bool = False) -> torch.Tensor:
        """[n_layers, n_heads] (or [n_layers, n_heads, batch] with per_prompt=True): each head's direct effect."""
        rows = [self.labels.index(f"L{l}H{h}") for l in range(self.n_layers) for h in range(self.n_heads)]
        chosen = self.per_prompt[rows] if per_prompt else self.values[rows]
        return chosen.reshape(self.n_layers, self.n_heads, *chosen.shape[1:])

    def by_mlp(self, per_prompt: bool = False) -> torch.Tensor:
        """[n_layers] (or [n_layers, batch]): each MLP's direct effect (its output includes b_out)."""
        if "L0MLP" not in self.labels:
            raise AttributionError("this model is attention-only: it has no MLPs to attribute to")
        rows = [self.labels.index(f"L{l}MLP") for l in range(self.n_layers)]
        return self.per_prompt[rows] if per_prompt else self.values[rows]

    def top(self, k: int = 10, by_abs: bool = True) -> list[tuple[str, float]]:
        """The k components with the largest |value| (by_abs=False: largest value), as (label, value)."""
        key = self.values.abs() if by_abs else self.values
        order = key.argsort(descending=True)[:k]
        return [(self.labels[i], self.values[i].item()) for i in order.tolist()]

    def _answer(self) -> str:
        answers = [self.correct] + ([] if self.wrong is None else [self.wrong])
        if any(bool((ids != ids[0]).any()) for ids in answers):
            return "of each prompt's own answer" + ("" if self.wrong is None else " pair")
        tok = self.tokenizer
        texts = [repr(tok.id_to_str(int(ids[0]))) if tok is not None else str(int(ids[0])) for ids in answers]
        return " - ".join(texts)

    def __repr__(self) -> str:
        kind = "logit" if self.wrong is None else "logit difference"
        lines = [f"Attribution of the {kind} {self._answer()} over {self.per_prompt.shape[1]} prompt(s): "
                 f"total {self.total_mean:.4f}, components sum to {self.values.sum().item():.4f}",
                 "  largest direct effects:"]
        lines += [f"    {label:<12} {value:+.4f}" for label, value in self.top(8)]
        return "\n".join(lines)


def _answer_ids(model, answer, name: str, batch: int) -> torch.Tensor:
    """[batch] token ids from an int, a single-token string, or a list/tensor of them (one per prompt or one)."""
    items = answer if isinstance(answer, (list, tuple)) else [answer]
    if any(isinstance(a, str) for a in items):
        ids = torch.tensor([_single_token(model, a) if isinstance(a, str) else int(a) for a in items])
    else:
        ids = torch.as_tensor(answer)
        if ids.dtype not in (torch.int64, torch.int32) or ids.ndim > 1:
            raise AttributionError(f"{name} must be token ids (an int, or one per prompt) or single-token strings, "
                                   f"got {ids.dtype} of shape {tuple(ids.shape)}")
    ids = ids.long().reshape(-1)
    if len(ids) not in (1, batch):
        raise AttributionError(f"{name} has {len(ids)} answers but the cache has {batch} prompts: give one per "
                               "prompt, or one for all")
    if int(ids.min()) < 0 or int(ids.max()) >= model.cfg.d_vocab:
        raise AttributionError(f"{name} ids must lie in [0, {model.cfg.d_vocab}), got {ids.tolist()}")
    return ids.expand(batch)


def _single_token(model, text: str) -> int:
    token = model.to_single_token(text)
    unk = getattr(model.tokenizer, "unk_id", None)
    if unk is not None and token == unk:  # a compact vocabulary maps words it lacks to one unknown slot
        raise AttributionError(f"{text!r} is not in this model's vocabulary (it maps to the unknown token)")
    return token


def _positions(pos, batch: int, n_pos: int) -> torch.Tensor:
    """[batch] the position read in each prompt (an int for all, or one per prompt for prompts of varied lengths)."""
    given = torch.as_tensor(pos)
    if given.is_floating_point() or given.is_complex() or given.ndim > 1 or given.numel() not in (1, batch):
        raise AttributionError(f"pos must be an int or one int per prompt ({batch}), got {pos!r}")
    positions = given.long().reshape(-1).expand(batch)
    if not ((-n_pos <= positions) & (positions < n_pos)).all():
        raise AttributionError(f"pos {positions.tolist()} lies outside the prompts' {n_pos} positions")
    return positions % n_pos


def _check_cache(model, cache) -> None:
    missing = [n for n in attribution_hooks(model) if n not in cache]
    if missing:
        raise AttributionError(f"the cache lacks {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}: "
                               "run model.run_with_cache(tokens) (everything) or "
                               "model.run_with_cache(tokens, names=attribution_hooks(model))")


@torch.no_grad()
def direct_logit_attribution(model, cache, correct, wrong=None, pos=-1, logits=None) -> Attribution:
    """Each component's direct contribution to logit[correct] - logit[wrong] at `pos` (see the module docstring).

    cache: from model.run_with_cache(tokens) on these prompts (attribution_hooks(model) lists what it needs).
    correct, wrong: token ids or single-token strings, one per prompt or one for all; wrong=None attributes the
    logit of correct itself. pos: an int, or one position per prompt. logits: the run's logits, to take the total
    from (default: recomputed from the cached ln_final output, which is exactly what the model unembedded).
    """
    _check_cache(model, cache)
    batch, n_pos = cache["hook_embed"].shape[:2]
    positions = _positions(pos, batch, n_pos)  # [batch]
    rows = torch.arange(batch)
    correct_ids = _answer_ids(model, correct, "correct", batch)  # [batch]
    wrong_ids = None if wrong is None else _answer_ids(model, wrong, "wrong", batch)
    W_U, b_U = model.W_U.detach().double(), model.b_U.detach().double()  # [d_model, d_vocab], [d_vocab]
    direction = W_U[:, correct_ids]  # [d_model, batch]
    offset = b_U[correct_ids]  # [batch]
    if wrong_ids is not None:
        direction, offset = direction - W_U[:, wrong_ids], offset - b_U[wrong_ids]

    if bool((positions == positions[0]).all()):  # one position for all prompts: decompose only that one
        parts = cache.decompose_resid(layer=None, pos=int(positions[0]))  # tensor [component, batch, d_model]
        stream = parts.tensor.double()  # [component, batch, d_model]
    else:
        parts = cache.decompose_resid(layer=None, pos=None)  # tensor [component, batch, pos, d_model]
        stream = parts.tensor[:, rows, positions].double()  # [component, batch, d_model]
    scale = cache["ln_final.hook_scale"][rows, positions].double()  # [batch, 1]
    ln = model.ln_final
    # ln_final as the linear map it was in this run: centre, divide by the cached scale, multiply by w
    normed = (stream - stream.mean(-1, keepdim=True)) / scale * ln.w.detach().double()  # [component, batch, d_model]
    per_prompt = torch.einsum("cbm,mb->cb", normed, direction)  # [component, batch]
    ln_bias = ln.b.detach().double() @ direction  # [batch]
    per_prompt = torch.cat([per_prompt, ln_bias[None], offset[None]])  # [component + 2, batch]

    if logits is None:  # what the model unembedded: the cached output of ln_final, through W_U and b_U
        logits_at = cache["ln_final.hook_normalized"][rows, positions].double() @ W_U + b_U  # [batch, d_vocab]
    else:
        logits_at = logits[rows, positions].double()  # [batch, d_vocab]
    total = logits_at[rows, correct_ids] - (0 if wrong_ids is None else logits_at[rows, wrong_ids])  # [batch]
    dtype = cache["hook_embed"].dtype
    return Attribution(parts.labels + [LN_BIAS, UNEMBED_BIAS], per_prompt.to(dtype), total.to(dtype), correct_ids,
                       wrong_ids, model.cfg.n_layers, model.cfg.n_heads, model.tokenizer)


@torch.no_grad()
def logit_attribution(model, tokens, correct, wrong=None, pos=-1) -> Attribution:
    """Run the model on tokens (caching only what is needed) and return direct_logit_attribution of the run."""
    tokens = model.check_tokens(tokens)  # [batch, pos]
    logits, cache = model.run_with_cache(tokens, names=attribution_hooks(model))
    return direct_logit_attribution(model, cache, correct, wrong, pos, logits=logits)

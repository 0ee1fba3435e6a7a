"""Interventions: steer a model with an activation vector, knock out a circuit and measure the damage elsewhere, and
rewrite one fact with a rank-one edit (ROME).

Steering (Turner et al. 2023, ActAdd; mean-difference steering vectors): the difference of the mean activations on
two sets of prompts, added back during a forward, moves the model along that difference.
Circuit ablation: a circuit found for one behaviour (IOI heads) is ablated, and every behaviour is measured, to see
whether the components are specific to it or generally useful.
ROME (Meng et al. 2022): an MLP's W_out maps keys (hook_post) to values (hook_mlp_out); a rank-one update makes the
subject's key map to a new value chosen so that the model predicts a new target. The edit goes into a copy.
"""

from __future__ import annotations

import copy
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import MinimechError, check_positions
from .ablation import Metric, _reference_mean, metric_value, require_mlps
from .memories import prompt_batch
from .path_patching import parse_heads
from .tracing import causal_trace, find_subject_positions


class InterventionError(MinimechError, ValueError):
    """Input that a steering vector, a circuit ablation or an edit cannot use."""


# ---- steering vectors ----------------------------------------------------------------------------------------------
def _one_hook(model, hook) -> str:
    """The single hook name that `hook` (a name or a (short, layer) tuple) resolves to."""
    names = model.resolve_hook_names(hook)
    if len(names) != 1 or callable(hook):
        raise InterventionError(f"hook {hook!r} names {len(names)} hook points; name exactly one, e.g. "
                                "'blocks.2.hook_resid_pre' or ('resid_pre', 2)")
    if names[0].endswith(("hook_pattern", "hook_attn_scores")):
        raise InterventionError(f"{names[0]} is indexed [batch, head, q_pos, k_pos], not by position first: steer "
                                "a residual stream, attn_out, mlp_out, hook_z or hook_post instead")
    return names[0]


@torch.no_grad()
def mean_activation(model, prompts, hook, pos: int | None = -1) -> torch.Tensor:
    """[*act_shape]: mean over prompts of the activation at `hook` at position pos of each prompt (negative counts
    from each prompt's own last token, so prompts of different lengths line up at their ends); pos=None takes each
    prompt's mean over its positions after the BOS."""
    name = _one_hook(model, hook)
    tokens, mask = prompt_batch(model, prompts)  # [n, pos] each
    _, cache = model.run_with_cache(tokens, names=[name])
    act = cache[name]  # [n, pos, *act_shape]
    if pos is None:  # each prompt's mean over its real tokens after the BOS, so every prompt weighs the same
        weights = mask.clone().float()
        weights[:, 0] = 0
        weights = weights / weights.sum(1, keepdim=True)  # [n, pos]
        return torch.einsum("np,np...->...", weights, act) / len(tokens)
    lengths = mask.sum(1)  # [n]
    index = lengths + pos if pos < 0 else torch.full_like(lengths, pos)
    if (index < 0).any() or (index >= lengths).any():
        raise InterventionError(f"pos={pos} is outside a prompt of {int(lengths.min())} tokens (BOS included)")
    return act[torch.arange(len(tokens), device=index.device), index].mean(0)


def steering_vector(model, positive_prompts, negative_prompts, hook=None, pos: int | None = -1) -> torch.Tensor:
    """mean activation on positive_prompts - mean on negative_prompts at `hook` (default: resid_pre of the middle
    layer), read at position pos (see mean_activation). [d_model] for residual hooks."""
    hook = f"blocks.{model.cfg.n_layers // 2}.hook_resid_pre" if hook is None else hook
    return mean_activation(model, positive_prompts, hook, pos) - mean_activation(model, negative_prompts, hook, pos)


@contextmanager
def steer(model, hook, vector: torch.Tensor, coeff: float = 1.0, positions=None):
    """Inside the block, every forward adds coeff * vector to the activation at `hook`, at every position
    (positions=None) or at the given position(s). Parameters are untouched; the hook is removed on exit, also when
    the block raises. vector has the activation's shape after [batch, pos], e.g. [d_model]."""
    name = _one_hook(model, hook)
    index = slice(None) if positions is None else positions
    vector = vector.detach()

    def add(act, hook):  # act: [batch, pos, *act_shape]
        if act.shape[2:] != vector.shape:
            raise InterventionError(f"steering vector has shape {tuple(vector.shape)} but {name} is "
                                    f"{tuple(act.shape)} [batch, pos, ...]: give a vector of shape "
                                    f"{tuple(act.shape[2:])}")
        check_positions(positions, act.shape[1], "positions")
        act = act.clone()
        act[:, index] += coeff * vector.to(act.dtype)
        return act

    with model.hooks([(name, add)]):
        yield model


# ---- circuit ablation and the damage elsewhere --------------------------------------------------------------------
@dataclass
class DamageTable:
    """metric before and after ablating a set of components, per behaviour."""
    components: list[str]
    how: str
    before: dict[str, float]
    after: dict[str, float]

    def change(self, name: str) -> float:
        return self.after[name] - self.before[name]

    def __repr__(self) -> str:
        lines = [f"DamageTable: {self.how}-ablating {', '.join(self.components)}",
                 f"  {'behaviour':<12}{'before':>10}{'after':>10}{'change':>10}"]
        for name in self.before:
            lines.append(f"  {name:<12}{self.before[name]:>10.3f}{self.after[name]:>10.3f}{self.change(name):>+10.3f}")
        return "\n".join(lines)


def _ablation_hooks(model, heads, mlps, means, how):
    """Hooks that set the listed heads' hook_z slices and MLPs' hook_mlp_out to zero or their mean, all at once."""
    def replace(act, hook):  # z: [batch, pos, head, d_head]; mlp_out: [batch, pos, d_model]
        act = act.clone()
        if hook.name.endswith("hook_z"):
            layer = int(hook.name.split(".")[1])
            for head in [h for l, h in heads if l == layer]:  # means: [pos, head, d_head] or [head, d_head]
                act[:, :, head] = 0.0 if how == "zero" else means[hook.name][..., head, :]
        else:
            act[...] = 0.0 if how == "zero" else means[hook.name]
        return act
    names = {f"blocks.{l}.attn.hook_z" for l, _ in heads} | {f"blocks.{l}.hook_mlp_out" for l in mlps}
    return [(name, replace) for name in sorted(names)]


@torch.no_grad()
def ablation_damage(model, behaviours: dict, heads=(), mlps=(), how: str = "mean", reference=None) -> DamageTable:
    """Ablate heads and MLP layers together and measure every behaviour before and after.

    behaviours: {name: (tokens [batch, pos], metric)}. heads: (layer, head) pairs, 'L1H2' strings or Heads; mlps:
    layer indices. how: "mean" (each behaviour's own tokens, or `reference` - tokens or {name: tokens} - give the
    means, per position when the lengths match, as in mean_ablate_heads) or "zero".
    """
    if how not in ("mean", "zero"):
        raise InterventionError(f"how={how!r}: choose 'mean' or 'zero'")
    heads = parse_heads(model, heads) if heads else []  # one head on its own, e.g. (1, 2), works too
    mlps = [int(l) for l in mlps]
    if mlps:
        require_mlps(model, "ablation_damage")
    if not heads and not mlps:
        raise InterventionError("nothing to ablate: give heads=[(layer, head), ...] and/or mlps=[layer, ...]")
    if any(not 0 <= l < model.cfg.n_layers for l in mlps):
        raise InterventionError(f"mlps {mlps}: layers are 0..{model.cfg.n_layers - 1}")
    labels = [f"L{l}H{h}" for l, h in heads] + [f"MLP{l}" for l in mlps]
    before, after = {}, {}
    for name, (tokens, metric) in behaviours.items():
        tokens = model.check_tokens(tokens)  # [batch, pos]
        means = {}
        if how == "mean":
            ref = reference.get(name) if isinstance(reference, dict) else reference
            for layers, name_of in [(sorted({l for l, _ in heads}), lambda l: f"blocks.{l}.attn.hook_z"),
                                    (sorted(set(mlps)), lambda l: f"blocks.{l}.hook_mlp_out")]:
                means.update(_reference_mean(model, tokens, ref, name_of, layers) if layers else {})
        before[name] = metric_value(metric, model(tokens))
        with model.hooks(_ablation_hooks(model, heads, mlps, means, how)):
            after[name] = metric_value(metric, model(tokens))
    return DamageTable(labels, how, before, after)


def _last_token_metric(lengths: torch.Tensor, answers: torch.Tensor) -> Metric:
    """Mean log P(answer) at each prompt's last real token (right-padded batch): logits [batch, pos, d_vocab]."""
    rows, answers = torch.arange(len(lengths), device=lengths.device), answers.to(lengths.device)
    return lambda logits: logits[rows, lengths - 1].log_softmax(-1)[rows, answers].mean()


def spread_facts(facts: list, n: int) -> list:
    """About n of the facts (all when n >= len(facts)), as many of each relation, spread evenly over each
    relation's subjects, in their original order: a smaller set that still has every kind of fact (the corpus lists
    each subject's relations in turn, so plain every-k-th facts can all be capitals)."""
    by_relation: dict[str, list[int]] = {}
    for i, f in enumerate(facts):
        by_relation.setdefault(f.relation, []).append(i)
    if n >= len(facts) or not by_relation:
        return list(facts)
    quota = max(1, -(-n // len(by_relation)))
    keep = sorted(i for rows in by_relation.values() for i in rows[::max(1, len(rows) // quota)][:quota])
    return [facts[i] for i in keep]


def shipped_behaviours(model, n_ioi: int = 40, n_text: int = 40, n_facts: int | None = None,
                       n_induction: int = 16) -> dict:
    """{name: (tokens, metric)} for a shipped model, all on held-out data: "ioi" (IO - S logit difference, training
    names, held-out frames, the most common token length), "facts" (mean log P(answer) on held-out paraphrases: all
    of the model's corpus's (mini-4l 360, story-4l 446), or n_facts of them: spread_facts, e.g. for a GPT-2-sized
    model whose logits on all 360 take 0.9 GB), "induction" (minus the loss on the repeated half of n_induction rows
    of repeated random tokens), "text" (minus the loss on corpus documents generated with a seed training never used)."""
    from ..training.corpora import corpus_for
    from .heads import repeated_random_tokens
    from .metrics import logit_diff

    corpus, tok = corpus_for(model), model._tok()
    ioi = corpus.ioi_eval(4 * n_ioi, seed=7, names="train", frames="heldout")
    lengths = [len(tok.encode(e.prompt)) for e in ioi]
    common = max(set(lengths), key=lengths.count)
    ioi = [e for e, n in zip(ioi, lengths) if n == common][:n_ioi]
    ioi_metric = logit_diff([tok.to_single_token(e.io) for e in ioi], [tok.to_single_token(e.s) for e in ioi])
    facts = corpus.fact_eval("heldout")
    if n_facts is not None:
        facts = spread_facts(facts, n_facts)
    fact_tokens, fact_mask = prompt_batch(model, [f.prompt for f in facts])
    answers = torch.tensor([tok.encode(f.answer)[0] for f in facts])
    seq_len = min(20, (model.cfg.n_ctx - 1) // 2)
    device = model.W_E.device
    rep = repeated_random_tokens(model, seq_len, batch=n_induction, seed=1234).to(device)
    text_tokens, text_mask = prompt_batch(model, corpus.training_documents(n_text, seed=99_999), truncate=True)

    def text_metric(logits):  # minus the mean loss over real (unpadded) next tokens
        nll = model.loss(logits, text_tokens, per_token=True)  # [batch, pos - 1]
        return -(nll * text_mask[:, 1:]).sum() / text_mask[:, 1:].sum()

    return {"ioi": (tok.to_tokens([e.prompt for e in ioi]).to(device), ioi_metric),
            "facts": (fact_tokens, _last_token_metric(fact_mask.sum(1), answers)),
            "induction": (rep, lambda logits: -model.loss(logits, rep, per_token=True)[:, seq_len:].mean()),
            "text": (text_tokens, text_metric)}


# ---- ROME: a rank-one edit of one fact ----------------------------------------------------------------------------
def fact_layer(model, prompt=None, subject=None, samples: int = 10) -> int:
    """The MLP layer whose output at the subject's last token matters most for facts: from the card
    (mechanisms.facts.mlp_effect_by_layer_at_subject_last_token) when there is one, else from a causal trace of
    the prompt's own top prediction with `samples` noise samples (fewer: faster on a big model, noisier)."""
    effects = model.card.get("mechanisms", {}).get("facts", {}).get("mlp_effect_by_layer_at_subject_last_token")
    if effects:
        return int(torch.tensor(effects).argmax())
    if prompt is None:
        raise InterventionError("this model's card has no fact tracing: pass layer=, or a prompt and subject to trace")
    answer = int(model(prompt)[0, -1].argmax())
    trace = causal_trace(model, prompt, answer, subject, samples=samples, kinds=("mlp",))
    return int(trace.scores["mlp"][:, trace.subject_positions[-1]].argmax())


@torch.no_grad()
def key_covariance(model, layer: int, n_documents: int = 300, seed: int = 1, ridge: float = 1e-3) -> torch.Tensor:
    """[d_mlp, d_mlp]: C = E[k k^T], the uncentred second moment of blocks.{layer}.mlp.hook_post over every real token
    (BOS and padding left out) of n_documents corpus documents, plus ridge * mean(diag C) * I so it inverts."""
    from ..training.corpora import corpus_for

    name = f"blocks.{layer}.mlp.hook_post"
    tokens, mask = prompt_batch(model, corpus_for(model).training_documents(n_documents, seed), truncate=True)
    mask[:, 0] = False
    keys = []
    for start in range(0, len(tokens), 128):
        _, cache = model.run_with_cache(tokens[start:start + 128], names=[name], stop_at_layer=layer + 1)
        keys.append(cache[name][mask[start:start + 128]])  # [n_real, d_mlp]
    keys = torch.cat(keys)
    cov = keys.T @ keys / len(keys)  # [d_mlp, d_mlp]
    return cov + ridge * cov.diagonal().mean() * torch.eye(len(cov), device=cov.device)


def rank_one_update(key: torch.Tensor, delta: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """[d_mlp, d_model]: ROME's Delta W = C^-1 k delta^T / (k^T C^-1 k) for W_out [d_mlp, d_model] (rows are values).

    key @ (W_out + Delta W) = key @ W_out + delta exactly; another key k2 gets delta scaled by
    k2^T C^-1 k / k^T C^-1 k, which is small for keys that the covariance C says are unlike k."""
    # solved in float32 at least: torch has no half-precision solve on CPU, and C is badly conditioned anyway
    work = torch.promote_types(key.dtype, torch.float32)
    try:
        c_inv_key = torch.linalg.solve(cov.to(work), key.to(work))  # [d_mlp]
    except RuntimeError as exc:  # torch.linalg.LinAlgError is a RuntimeError
        raise InterventionError(f"the key covariance C cannot be inverted ({exc}): estimate it from more text, or "
                                "add a small multiple of the identity to it") from None
    return (torch.outer(c_inv_key, delta.to(work)) / (c_inv_key @ key.to(work))).to(key.dtype)


@dataclass
class EditResult:
    """A ROME edit: the edited copy and what it did. Probabilities are (before, after) pairs."""
    model: object  # the edited copy; the original model is unchanged
    layer: int
    prompt: str
    subject: str
    old_target: str  # the original model's top-1 after the prompt
    new_target: str
    prompt_old: tuple[float, float]  # P(old_target) on the prompt
    prompt_new: tuple[float, float]  # P(new_target) on the prompt
    paraphrases: list[str] = field(default_factory=list)  # held-out phrasings of the same fact
    paraphrase_new: tuple[float, float] = (float("nan"), float("nan"))  # mean P(new_target) over paraphrases
    paraphrase_top1: tuple[float, float] = (float("nan"), float("nan"))  # share with new_target top-1
    specificity: tuple[float, float] = (float("nan"), float("nan"))  # top-1 accuracy on the other facts
    same_subject: tuple[float, float] = (float("nan"), float("nan"))  # ... on other relations of this subject
    n_other_facts: int = 0
    delta_ratio: float = 0.0  # |v* - v| / |v| at the subject's last token
    steps: int = 0
    covariance: str = "corpus"

    def __repr__(self) -> str:
        pair = lambda p, f="{:.3f}": f"{f.format(p[0])} -> {f.format(p[1])}"
        return (f"EditResult: {self.prompt!r} {self.old_target!r} -> {self.new_target!r} (MLP{self.layer}, subject "
                f"{self.subject!r}, C = {self.covariance}, {self.steps} steps, |delta|/|v| {self.delta_ratio:.2f})\n"
                f"  P(old) on the prompt        {pair(self.prompt_old)}\n"
                f"  P(new) on the prompt        {pair(self.prompt_new)}\n"
                f"  P(new) on {len(self.paraphrases)} paraphrases    {pair(self.paraphrase_new)}  (top-1: "
                f"{pair(self.paraphrase_top1, '{:.0%}')})\n"
                f"  accuracy, {self.n_other_facts} other facts  {pair(self.specificity, '{:.1%}')}  (same subject: "
                f"{pair(self.same_subject, '{:.1%}')})")


def _subject_case(model, text: str, subject) -> tuple[torch.Tensor, int]:
    """(tokens [1, pos], the subject's last position) for one phrasing."""
    tokens = model.to_tokens(text)  # [1, pos]
    return tokens, find_subject_positions(model, tokens, subject)[-1]


def _add_at(name: str, pos: int, delta: torch.Tensor):
    """Hook adding delta [d_model] at one position of hook `name` (batch of one)."""
    def hook(act, hook):
        act = act.clone()
        act[:, pos] = act[:, pos] + delta
        return act
    return (name, hook)


def _optimise_value(model, layer, cases, kl_case, target: int, v_norm: float, steps: int, lr: float,
                    kl_weight: float, weight_decay: float, clamp: float, stop_prob: float) -> tuple[torch.Tensor, int]:
    """ROME's v* as delta = v* - v [d_model] added to hook_mlp_out at the subject's last token: Adam on
    -log P(target) (mean over cases) + kl_weight * KL(original || edited) of the next token after "<subject> is"
    + weight_decay * |delta| / |v|^2, with |delta| clamped to clamp * |v|. Stops once P(target) >= stop_prob in
    every case."""
    name = f"blocks.{layer}.hook_mlp_out"
    delta = torch.zeros(model.cfg.d_model, device=model.W_E.device, requires_grad=True)
    # Adam written out: torch.optim's first use imports torch._dynamo, which takes seconds
    moment1, moment2 = torch.zeros_like(delta), torch.zeros_like(delta)  # [d_model] each
    with torch.no_grad():
        kl_tokens, kl_pos = kl_case
        kl_base = model(kl_tokens)[0, -1].log_softmax(-1)  # [d_vocab]
    for step in range(steps):
        with torch.enable_grad():
            log_probs = []
            for tokens, pos in cases:
                with model.hooks([_add_at(name, pos, delta)]):
                    log_probs.append(model(tokens)[0, -1].log_softmax(-1)[target])
            log_probs = torch.stack(log_probs)  # [n_cases]
            if log_probs.exp().min() >= stop_prob:
                return delta.detach(), step
            with model.hooks([_add_at(name, kl_pos, delta)]):
                kl_new = model(kl_tokens)[0, -1].log_softmax(-1)
            kl = F.kl_div(kl_new, kl_base, log_target=True, reduction="sum")
            loss = -log_probs.mean() + kl_weight * kl + weight_decay * delta.norm() / v_norm ** 2
            (grad,) = torch.autograd.grad(loss, [delta])  # not backward: the parameters get no .grad
        with torch.no_grad():
            moment1.mul_(0.9).add_(0.1 * grad)
            moment2.mul_(0.999).add_(0.001 * grad ** 2)
            delta -= lr * (moment1 / (1 - 0.9 ** (step + 1))) / ((moment2 / (1 - 0.999 ** (step + 1))).sqrt() + 1e-8)
            delta.mul_(min(1.0, clamp * v_norm / (delta.norm().item() + 1e-12)))
    return delta.detach(), steps


@torch.no_grad()
def _fact_table(model, prompts: list[str], answers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities [n, d_vocab] at each prompt's last token, top-1 correct [n] bool)."""
    tokens, mask = prompt_batch(model, prompts)
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)  # [n, pos, d_model]
    # unembed the last real token only: logits at every position would be most of the cost
    last = resid[torch.arange(len(prompts), device=mask.device), mask.sum(1) - 1][:, None]  # [n, 1, d_model]
    probs = model.unembed(model.ln_final(last))[:, 0].softmax(-1).cpu()  # [n, d_vocab]
    return probs, probs.argmax(-1) == answers


def _edit_facts(model, prompt: str, subject: str, facts):
    """(held-out paraphrases of the edited fact, other facts, same-subject facts) from the corpus facts (or `facts`:
    objects with .prompt .answer .subject .relation). The relation is the one of the fact whose prompt is `prompt`."""
    if facts is None:
        from ..training.corpora import corpus_for
        facts = corpus_for(model).fact_eval("all")
        heldout = {f.prompt for f in corpus_for(model).fact_eval("heldout")}
    else:
        heldout = {f.prompt for f in facts}
    relation = next((f.relation for f in facts if f.prompt == prompt and f.subject == subject), None)
    same_fact = lambda f: f.subject == subject and f.relation == relation if relation else f.prompt == prompt
    paraphrases = [f for f in facts if same_fact(f) and f.prompt in heldout and f.prompt != prompt]
    others = [f for f in facts if not same_fact(f)]
    return paraphrases, others, [f for f in others if f.subject == subject]


def _evaluate(model, edited, prompt: str, old: int, new: int, paraphrases, others, same_subject) -> dict:
    """The figures of EditResult, each a (before, after) pair, from one batch per model."""
    tok, nan = model._tok(), float("nan")
    prompts = [prompt] + [f.prompt for f in paraphrases + others]
    answers = torch.tensor([new] * (1 + len(paraphrases)) + [tok.encode(f.answer)[0] for f in others])
    is_same = torch.tensor([f.subject == same_subject[0].subject if same_subject else False for f in others])
    para = slice(1, 1 + len(paraphrases))
    out = {}
    for key, m in (("before", model), ("after", edited)):
        probs, correct = _fact_table(m, prompts, answers)  # [n, d_vocab], [n]
        other_correct = correct[1 + len(paraphrases):].float()  # [n_others]
        mean = lambda x: x.mean().item() if len(x) else nan
        out[key] = {"old": probs[0, old].item(), "new": probs[0, new].item(), "para_new": mean(probs[para, new]),
                    "para_top1": mean(correct[para].float()), "others": mean(other_correct),
                    "same": mean(other_correct[is_same])}
    return {k: (out["before"][k], out["after"][k]) for k in out["before"]}


def _covariance(model, layer: int, covariance) -> tuple[torch.Tensor, str]:
    """(C [d_mlp, d_mlp], what it is) for rome_edit's covariance argument."""
    d_mlp = model.cfg.d_mlp
    if isinstance(covariance, torch.Tensor):
        if covariance.shape != (d_mlp, d_mlp):
            raise InterventionError(f"covariance has shape {tuple(covariance.shape)}; it must be [d_mlp, d_mlp] = "
                                    f"[{d_mlp}, {d_mlp}] (e.g. key_covariance(model, layer))")
        return covariance, "given"
    if covariance == "corpus":
        return key_covariance(model, layer), "corpus"
    if covariance == "identity":
        return torch.eye(d_mlp, device=model.W_E.device), "identity"
    raise InterventionError(f"covariance={covariance!r}: choose 'corpus', 'identity' or a [d_mlp, d_mlp] tensor")


def _edited_copy(model, layer: int, update: torch.Tensor):
    """A deep copy of model with W_out of `layer` += update [d_mlp, d_model]."""
    edited = copy.deepcopy(model, memo={id(model.tokenizer): model.tokenizer})  # share the (read-only) tokenizer
    for block in edited.blocks:  # deepcopy keeps weak references as they are: point the copy's memories at it
        block.mlp.root = weakref.ref(edited)
    with torch.no_grad():
        edited.blocks[layer].mlp.W_out += update
    return edited


def rome_edit(model, prompt: str, subject: str, new_target: str, layer: int | None = None, prefixes=("",),
              covariance="corpus", steps: int = 60, lr: float = 0.5, kl_weight: float = 0.0625,
              weight_decay: float = 0.5, clamp: float = 1.5, stop_prob: float = 0.9, facts=None) -> EditResult:
    """Rewrite the fact "prompt -> old top-1" to "prompt -> new_target" in a copy of the model (ROME).

    1. key k [d_mlp]: hook_post of MLP `layer` at the subject's last token, mean over "<prefix> <prompt>" texts.
    2. delta = v* - v [d_model]: see _optimise_value (gradient descent on the MLP output at that position).
    3. W_out += rank_one_update(k, delta, C), so that k @ W_out' = k @ W_out + delta exactly, while keys unlike k
       under C change little. covariance: "corpus" (key_covariance: corpus text, ridge 1e-3), "identity", or a
       [d_mlp, d_mlp] tensor.
    layer: default fact_layer(model). clamp bounds |delta| / |v| (ROME: 4 in GPT-2 XL; 1.5 keeps this small
    model's other facts intact, see the README's figures). facts: what the paraphrase / specificity figures use
    (default: the shipped corpus's facts).
    """
    require_mlps(model, "rome_edit")
    tok = model._tok()
    for name, value in (("prompt", prompt), ("subject", subject), ("new_target", new_target)):
        if not isinstance(value, str):
            raise InterventionError(f"rome_edit edits one fact: {name} must be a string, got {type(value).__name__}")
    layer = fact_layer(model, prompt, subject) if layer is None else int(layer)
    if not 0 <= layer < model.cfg.n_layers:
        raise InterventionError(f"layer={layer}: this model has layers 0..{model.cfg.n_layers - 1}")
    new = tok.to_single_token(new_target)
    prompt_tokens, subject_pos = _subject_case(model, prompt, subject)
    cases = [_subject_case(model, f"{p} {prompt}" if p else prompt, subject) for p in prefixes]
    cov, kind = _covariance(model, layer, covariance)
    with torch.no_grad():
        name = f"blocks.{layer}.mlp.hook_post"
        keys = [model.run_with_cache(t, names=[name], stop_at_layer=layer + 1)[1][name][0, p] for t, p in cases]
        key = torch.stack(keys).mean(0)  # [d_mlp]
        mlp = model.blocks[layer].mlp
        v_norm = (key @ mlp.W_out + mlp.b_out).norm().item()
        old = int(model(prompt_tokens)[0, -1].argmax())
    # ROME's KL prompt "<subject> is": keeps what the model says about the subject in general
    is_tokens = torch.tensor([tok.encode(" is")], device=prompt_tokens.device)
    kl_case = (torch.cat([prompt_tokens[:, :subject_pos + 1], is_tokens], 1), subject_pos)
    delta, used = _optimise_value(model, layer, cases, kl_case, new, v_norm, steps, lr, kl_weight, weight_decay,
                                  clamp, stop_prob)
    edited = _edited_copy(model, layer, rank_one_update(key, delta, cov))
    paraphrases, others, same_subject = _edit_facts(model, prompt, subject, facts)
    fig = _evaluate(model, edited, prompt, old, new, paraphrases, others, same_subject)
    return EditResult(edited, layer, prompt, subject, tok.id_to_str(old), new_target, fig["old"], fig["new"],
                      [f.prompt for f in paraphrases], fig["para_new"], fig["para_top1"], fig["others"], fig["same"],
                      len(others), delta.norm().item() / v_norm, used, kind)

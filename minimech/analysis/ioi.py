"""Indirect object identification (Wang et al. 2022): the dataset, its p_ABC corruption, and circuit faithfulness.

"When Mary and John went to the store, John gave a drink to" -> " Mary". The indirect object (IO, Mary) is the name
that is not repeated; the subject (S, John) appears twice: S1 in the opening, S2 in the ending. ABBA prompts name
the IO first ("Mary and John ... John"), BABA prompts the subject first ("John and Mary ... John").

Every dataset has one token length, so that runs line up position by position (patching, per-position means):

* source="templates" (GPT-2 style): the default templates below all tokenize to 15 GPT-2 tokens (+ BOS) with any
  single-token name, place and object, so every template is used; templates you pass must share one length too.
* source="corpus" (the shipped models): prompts from the model's own training corpus (Corpus.ioi_eval, frames it
  never saw in training), which vary in length; the largest group of one length is kept (about 1 prompt in 8).

Circuit faithfulness (the paper's F(C) / F(M)): every head outside the circuit has its hook_z replaced by its mean
over the p_ABC dataset (the same prompts with IO, S1 and S2 replaced by three other names), and the logit difference
of that "circuit" is divided by the full model's.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field, replace

import torch

from ..errors import MinimechError
from ..training import wordlists as W
from .ablation import metric_value
from .metrics import LogitDiff, logit_diff
from .path_patching import parse_heads

# In the style of Wang et al. 2022; {A} and {B} are the two names in order, {S} the repeated one (the subject).
GPT2_TEMPLATES = [
    "When {A} and {B} went to the {place} today, {S} gave a {object} to",
    "When {A} and {B} got a {object} at the {place}, {S} gave it to",
    "Then, {A} and {B} went to the {place}. {S} gave a {object} to",
    "Then, {A} and {B} had a long argument, and afterwards {S} said to",
    "Then, {A} and {B} had a long argument. Afterwards, {S} said to",
    "While {A} and {B} were working at the {place}, {S} gave a {object} to",
    "While {A} and {B} were commuting to the {place}, {S} gave a {object} to",
    "Friends {A} and {B} found a {object} at the {place}. {S} gave it to",
    "The {place} {A} and {B} went to had a {object}. {S} gave it to",
    "Afterwards {A} and {B} went to the {place}. {S} gave a {object} to",
    "Soon after {A} and {B} went to the {place}, {S} gave a {object} to",
    "When {A} and {B} finally arrived at the {place}, {S} handed a {object} to",
    "After {A} and {B} left the {place} that day, {S} threw a {object} to",
    "Then {A} and {B} were working at the {place}. {S} gave a {object} to",
    "After lunch {A} and {B} went to the {place}. {S} gave a {object} to",
]
PLACES = W.PLACES
OBJECTS = [o for o in W.OBJECTS if o[0] not in "aeiou"]  # the templates say "a {object}"
KINDS = ("ABBA", "BABA")


class IOIError(MinimechError, ValueError):
    """A dataset or circuit that IOI analysis cannot use as given."""


@dataclass(eq=False)  # tensors have no single truth value, so compare fields yourself
class IOIDataset:
    """n IOI prompts of one token length. Positions index `tokens` (BOS included when prepend_bos)."""

    prompts: list[str]
    tokens: torch.Tensor  # [n, pos]
    io_tokens: torch.Tensor  # [n] model ids
    s_tokens: torch.Tensor  # [n]
    io_pos: torch.Tensor  # [n]
    s1_pos: torch.Tensor  # [n]
    s2_pos: torch.Tensor  # [n]
    end_pos: torch.Tensor  # [n], always pos - 1
    templates: list[str]  # the template (source="templates") or corpus frame id ("open0+end1") of each prompt
    kinds: list[str]  # "ABBA" or "BABA"
    name_pool: torch.Tensor = field(repr=False)  # [n_names] ids the p_ABC names are drawn from
    tokenizer: object = field(repr=False)
    prepend_bos: bool = True
    seed: int = 0
    corruption: str = "none"  # "ABC" for a p_ABC dataset

    def __len__(self) -> int:
        return len(self.prompts)

    def __repr__(self) -> str:
        return (f"IOIDataset({len(self)} prompts x {self.tokens.shape[1]} tokens, {len(set(self.templates))} "
                f"templates, {dict(Counter(self.kinds))}, corruption={self.corruption!r})")

    def logit_diff(self) -> LogitDiff:
        """The metric: logit(IO) - logit(S) at END, averaged over prompts."""
        return logit_diff(self.io_tokens, self.s_tokens, pos=-1)

    @torch.no_grad()
    def metric_values(self, model) -> torch.Tensor:
        """[n]: each prompt's logit(IO) - logit(S) at END."""
        end = model(self.tokens)[:, -1]  # [n, d_vocab]
        rows = torch.arange(len(self))
        return end[rows, self.io_tokens] - end[rows, self.s_tokens]

    def accuracy(self, model) -> float:
        """Fraction of prompts where the IO's logit beats the subject's."""
        return (self.metric_values(model) > 0).float().mean().item()

    def group_keys(self) -> list[tuple]:
        """(template, kind, IO, S1, S2 positions) per prompt: prompts with one key share their structure token by
        token, so a per-position mean over them averages like with like (circuit_faithfulness uses it)."""
        return [(t, k, int(i), int(a), int(b)) for t, k, i, a, b in
                zip(self.templates, self.kinds, self.io_pos, self.s1_pos, self.s2_pos)]

    def abc(self, seed: int | None = None) -> "IOIDataset":
        """p_ABC: the same prompts with IO, S1 and S2 replaced by three distinct names, none of them the prompt's
        IO or S. io_tokens / s_tokens become the names at the IO and S1 positions. Same shape as self.tokens."""
        gen = random.Random(f"minimech-ioi-abc/{self.seed if seed is None else seed}")
        pool = self.name_pool.tolist()
        picks = []
        for io, s in zip(self.io_tokens.tolist(), self.s_tokens.tolist()):
            fresh = [t for t in pool if t not in (io, s)]
            if len(fresh) < 3:
                raise IOIError(f"p_ABC needs 3 names other than the prompt's IO and S, but the name pool has "
                               f"{len(pool)}: give ioi_dataset at least 5 names")
            picks.append(gen.sample(fresh, 3))
        new_io, new_s1, new_s2 = torch.tensor(picks).T  # [n] each
        return _renamed(self, new_io, new_s1, new_s2, corruption="ABC")


def _renamed(ds: IOIDataset, io, s1, s2, corruption: str) -> IOIDataset:
    """ds with the tokens at the IO, S1 and S2 positions replaced by io, s1, s2 ([n] ids each)."""
    tokens = ds.tokens.clone()  # [n, pos]
    rows = torch.arange(len(ds))
    tokens[rows, ds.io_pos], tokens[rows, ds.s1_pos], tokens[rows, ds.s2_pos] = io, s1, s2
    return replace(ds, tokens=tokens, prompts=_decode(ds.tokenizer, tokens, ds.prepend_bos), io_tokens=io.clone(),
                   s_tokens=s1.clone(), corruption=corruption)


def _decode(tokenizer, tokens: torch.Tensor, prepend_bos: bool) -> list[str]:
    return [tokenizer.decode(row[int(prepend_bos):]) for row in tokens]


# ------------------------------------------------------------------------------------------------ building
def _name_ids(model, names) -> list[int]:
    """Model ids of single-token names (" Mary" or "Mary"); a clear error for names that are not one known token."""
    tok = model.tokenizer
    ids, bad = [], []
    for name in names:
        spaced = " " + name.strip()
        gpt2 = tok.encoding.encode_ordinary(spaced)
        if len(gpt2) != 1 or tok.from_gpt2(gpt2)[0] == tok.unk_id:
            bad.append(name)
        else:
            ids.append(tok.from_gpt2(gpt2)[0])
    if bad:
        raise IOIError(f"names must each be one token (with a leading space) in the model's vocabulary; these are "
                       f"not: {bad[:8]}{' ...' if len(bad) > 8 else ''}")
    if len(set(ids)) < 2:
        raise IOIError(f"IOI needs at least 2 distinct names, got {len(set(ids))}")
    return list(dict.fromkeys(ids))


def _default_names(model) -> list[str]:
    """The corpus word lists' names (single GPT-2 tokens) that the model's vocabulary holds."""
    tok = model.tokenizer
    known = lambda n: tok.from_gpt2(tok.encoding.encode_ordinary(" " + n))[0] != tok.unk_id
    return [n for n in W.FEMALE_NAMES + W.MALE_NAMES if known(n)]


def _positions(tokens: torch.Tensor, io: torch.Tensor, s: torch.Tensor, prompts: list[str]):
    """(io_pos, s1_pos, s2_pos) [n] each: IO must occur once and S twice in every prompt."""
    out = []
    for row, i, s_id, prompt in zip(tokens, io.tolist(), s.tolist(), prompts):
        io_at, s_at = (row == i).nonzero()[:, 0], (row == s_id).nonzero()[:, 0]
        if len(io_at) != 1 or len(s_at) != 2:
            raise IOIError(f"the prompt {prompt!r} names the IO {len(io_at)} time(s) and the subject "
                           f"{len(s_at)} time(s); a template must name the IO once and the subject twice")
        out.append((int(io_at[0]), int(s_at[0]), int(s_at[1])))
    return torch.tensor(out).T.unbind(0) if out else (torch.zeros(0, dtype=torch.long),) * 3


def _build(model, items, name_pool: list[int], prepend_bos: bool, seed: int) -> IOIDataset:
    """items: (prompt, io name, s name, template, kind) tuples of one token length."""
    tok = model.tokenizer
    prompts = [p for p, *_ in items]
    tokens, mask = tok.to_tokens(prompts, prepend_bos=prepend_bos, max_len=model.cfg.n_ctx, return_mask=True)
    lengths = mask.sum(1)  # [n]
    if (lengths != lengths[0]).any():
        by_template = {}
        for (_, _, _, template, _), n in zip(items, lengths.tolist()):
            by_template.setdefault(n, template)
        raise IOIError(f"the templates tokenize to different lengths ({by_template}): give templates of one token "
                       "length, or build one dataset per template")
    if tok.unk_id is not None and (tokens == tok.unk_id).any():
        unknown = sorted({w for p in prompts for w in re.findall(r"\w+", p)
                          if tok.unk_id in tok.encode(" " + w) and tok.unk_id in tok.encode(w)})
        raise IOIError(f"the prompts use words outside this model's vocabulary ({unknown[:8]}): use "
                       "source='corpus' for a shipped model, or templates made of words it knows")
    io = torch.tensor([tok.to_single_token(i) for _, i, *_ in items])  # [n]
    s = torch.tensor([tok.to_single_token(x) for _, _, x, *_ in items])  # [n]
    io_pos, s1_pos, s2_pos = _positions(tokens, io, s, prompts)
    return IOIDataset(prompts=prompts, tokens=tokens, io_tokens=io, s_tokens=s, io_pos=io_pos, s1_pos=s1_pos,
                      s2_pos=s2_pos, end_pos=torch.full((len(items),), tokens.shape[1] - 1),
                      templates=[t for *_, t, _ in items], kinds=[k for *_, k in items],
                      name_pool=torch.tensor(name_pool), tokenizer=tok, prepend_bos=prepend_bos, seed=seed)


def _template_items(model, n, seed, names, templates, kinds):
    rng = random.Random(f"minimech-ioi/{seed}")
    items = []
    for i in range(n):
        kind, template = kinds[i % len(kinds)], rng.choice(templates)
        io, s = rng.sample(names, 2)
        a, b = (io, s) if kind == "ABBA" else (s, io)
        try:
            prompt = template.format(A=a, B=b, S=s, place=rng.choice(PLACES), object=rng.choice(OBJECTS))
        except (KeyError, IndexError) as e:
            raise IOIError(f"template {template!r} uses an unknown slot {e}; the slots are {{A}}, {{B}} (the two "
                           "names in order), {S} (the repeated name), {place} and {object}") from None
        items.append((prompt, " " + io, " " + s, template, kind))
    return items


def _corpus_items(model, n, seed, names, frames, kinds):
    """(items, name pool): n prompts from the largest one-length group of the model's corpus IOI prompts."""
    from ..training.corpora import corpus_for

    card_corpus = model.card.get("corpus") or {}
    corpus = corpus_for(model)
    if "names_heldout" in card_corpus and corpus.names_heldout != card_corpus["names_heldout"]:
        raise IOIError("this model's card lists other held-out names than Corpus(seed) gives: its corpus recipe "
                       "changed since training; use source='templates'")
    if frames not in ("heldout", "train"):
        raise IOIError(f"with source='corpus', templates names the frames to use: 'heldout' or 'train', not "
                       f"{frames!r}")
    for factor in (8, 32, 128):
        examples = [e for e in corpus.ioi_eval(factor * n, seed=seed, names=names, frames=frames) if e.order in kinds]
        groups: dict[int, list] = {}
        for e in examples:
            groups.setdefault(len(model.tokenizer.encode(e.prompt)), []).append(e)
        best = max(groups.values(), key=len)
        if len(best) >= n:
            pool = corpus.names_train if names == "train" else corpus.names_heldout
            return [(e.prompt, e.io, e.s, e.frame, e.order) for e in best[:n]], pool
    raise IOIError(f"could not find {n} corpus prompts of one token length; ask for fewer")


def ioi_dataset(model, n: int = 64, seed: int = 0, names=None, templates=None, kinds=("BABA", "ABBA"),
                source: str | None = None, prepend_bos: bool = True) -> IOIDataset:
    """n IOI prompts of one token length for `model` (which needs a tokenizer), kinds alternating.

    source: "templates" (GPT2_TEMPLATES or `templates`, with `names`, default the corpus word lists' names the model
    knows) or "corpus" (the model's training corpus, held-out frames; `names` is "train" (default) or "heldout",
    `templates` is "heldout" (default) or "train"). Default: "corpus" for a model whose card has a corpus (the
    shipped models), else "templates".
    """
    if model.tokenizer is None:
        raise IOIError("ioi_dataset needs a model with a tokenizer (minimech.load() models have one)")
    if n < 1:
        raise IOIError(f"n must be at least 1, got {n}")
    kinds = tuple(kinds)
    if not kinds or set(kinds) - set(KINDS):
        raise IOIError(f"kinds must be a non-empty selection of {KINDS}, got {kinds}")
    own_words = isinstance(templates, (list, tuple)) or isinstance(names, (list, tuple))
    source = source or ("corpus" if model.card.get("corpus") and not own_words else "templates")
    if source == "corpus":
        pool_key = names or "train"
        if pool_key not in ("train", "heldout"):
            raise IOIError(f"with source='corpus', names is 'train' or 'heldout' (the corpus's name split), not "
                           f"{pool_key!r}; pass source='templates' to use your own names")
        items, pool = _corpus_items(model, n, seed, pool_key, templates or "heldout", kinds)
        return _build(model, items, _name_ids(model, pool), prepend_bos, seed)
    if source != "templates":
        raise IOIError(f"source must be 'templates' or 'corpus', not {source!r}")
    names = list(dict.fromkeys(x.strip() for x in names)) if names is not None else _default_names(model)
    pool = _name_ids(model, names)
    templates = list(templates) if templates is not None else GPT2_TEMPLATES
    if not templates or not all(isinstance(t, str) for t in templates):
        raise IOIError("templates must be a non-empty list of strings with {A}, {B} and {S} slots")
    items = _template_items(model, n, seed, names, templates, kinds)
    return _build(model, items, pool, prepend_bos, seed)


# ------------------------------------------------------------------------------------------- faithfulness
@dataclass(frozen=True)
class Faithfulness:
    """F(circuit) / F(model): the metric with every head outside `heads` mean-ablated, over the full model's."""

    circuit: float
    full: float
    ratio: float
    heads: tuple[str, ...]
    n_ablated: int

    def __repr__(self) -> str:
        return (f"Faithfulness({self.ratio:.1%}: circuit {self.circuit:.3f} / full {self.full:.3f}; "
                f"{len(self.heads)} heads kept, {self.n_ablated} mean-ablated)")


def _mean_weights(ds: IOIDataset, reference, mean_over: str) -> torch.Tensor:
    """[n, n_ref]: the per-position mean for prompt i is sum_j weights[i, j] * activation of reference prompt j."""
    n_ref = reference.tokens.shape[0] if isinstance(reference, IOIDataset) else reference.shape[0]
    if mean_over == "position":
        return torch.full((len(ds), n_ref), 1.0 / n_ref)
    if mean_over != "template":
        raise IOIError(f"mean_over must be 'template' or 'position', not {mean_over!r}")
    if not isinstance(reference, IOIDataset):
        raise IOIError("mean_over='template' needs an IOIDataset reference (e.g. ds.abc()); pass "
                       "mean_over='position' to average token tensors over all prompts")
    ref_keys = reference.group_keys()
    match = torch.tensor([[float(k == r) for r in ref_keys] for k in ds.group_keys()])  # [n, n_ref]
    missing = [ds.templates[i] for i in (match.sum(1) == 0).nonzero()[:, 0].tolist()]
    if missing:
        raise IOIError(f"the reference has no prompt with the structure of {missing[0]!r} ({len(missing)} prompts "
                       "unmatched): use reference=ds.abc(), or mean_over='position'")
    return match / match.sum(1, keepdim=True)


@torch.no_grad()
def circuit_faithfulness(model, ds: IOIDataset, heads, reference=None, metric=None,
                         mean_over: str = "template") -> Faithfulness:
    """Mean-ablate hook_z of every head NOT in `heads` and compare the metric with the full model's.

    heads: (layer, head) pairs or "L1H2" strings. reference: the activations' source (default ds.abc(), p_ABC).
    mean_over="template" (the paper's choice): each prompt gets the mean over reference prompts of its template,
    kind and name positions, per position; "position": the mean over all reference prompts, per position.
    metric: default ds.logit_diff().
    """
    keep = set(parse_heads(model, heads))
    if not keep:
        raise IOIError("the circuit has no heads: give at least one (layer, head), e.g. ['L0H1']")
    reference = ds.abc() if reference is None else reference
    ref_tokens = model.check_tokens(reference.tokens if isinstance(reference, IOIDataset) else reference)
    if ref_tokens.shape[1] != ds.tokens.shape[1]:
        raise IOIError(f"the reference has {ref_tokens.shape[1]} positions but the dataset {ds.tokens.shape[1]}: "
                       "per-position means need the same length (use ds.abc())")
    metric = metric or ds.logit_diff()
    cfg = model.cfg
    ablate = {l: [h for h in range(cfg.n_heads) if (l, h) not in keep] for l in range(cfg.n_layers)}
    ablate = {l: hs for l, hs in ablate.items() if hs}
    weights = _mean_weights(ds, reference, mean_over)  # [n, n_ref]
    _, cache = model.run_with_cache(ref_tokens, names=[f"blocks.{l}.attn.hook_z" for l in ablate])

    def hook_for(layer):
        means = torch.einsum("ij,jphe->iphe", weights, cache["z", layer])  # [n, pos, head, d_head]

        def hook(z, hook):  # z: [n, pos, head, d_head]
            z = z.clone()
            z[:, :, ablate[layer]] = means[:, :, ablate[layer]]
            return z
        return hook

    full = metric_value(metric, model(ds.tokens))
    with model.hooks([(f"blocks.{l}.attn.hook_z", hook_for(l)) for l in ablate]):
        circuit = metric_value(metric, model(ds.tokens))
    labels = tuple(f"L{l}H{h}" for l, h in sorted(keep))
    return Faithfulness(circuit, full, circuit / full if full != 0 else float("nan"), labels,
                        sum(len(hs) for hs in ablate.values()))


def card_heads(model, mechanism: str = "ioi") -> list[tuple[int, int]]:
    """The heads a shipped model's card names for a mechanism (its "heads_that_matter_most"), as (layer, head)."""
    entry = (model.card.get("mechanisms") or {}).get(mechanism)
    if not entry or not entry.get("heads_that_matter_most"):
        raise IOIError(f"this model's card records no heads for {mechanism!r} (card['mechanisms'] has "
                       f"{sorted((model.card.get('mechanisms') or {}))}); name the heads yourself")
    return [tuple(map(int, re.match(r"L(\d+)H(\d+)", s).groups())) for s in entry["heads_that_matter_most"]]

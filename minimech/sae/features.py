"""Features as first-class objects, like Head and Memory: `sae.features[i]`.

    feature = sae.features[123]
    feature.encoder, feature.decoder          # [d_in] each: where it reads, what it writes (unit norm)
    feature.activation(cache)                 # [batch, pos] from a cache holding the SAE's hook
    feature.top_contexts(k=10)                # where it fires most in held-out corpus text, the token marked [[ ]]
    feature.top_tokens(10)                    # its decoder direction read through the unembedding
    feature.density                           # fraction of tokens it fires on (after evaluate_sae / when shipped)
    feature.dashboard("f123.png")             # histogram, top contexts, logit effects in one PNG
    context_diversity(feature), context_diversity(model.blocks[2].mlp.memories[7])   # how many kinds of context

A Memory (one MLP neuron) of the SAE's layer is the natural thing to compare a feature with: context_diversity
counts the kinds of context among the top activations of either.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import torch

from .activations import EVAL_SEED, check_hook, hook_layer, per_token
from .autoencoder import SAEError, SparseAutoencoder

CONTEXT_DOCUMENTS = 300  # held-out corpus documents searched for top contexts (~12,000 tokens)


@dataclass
class Context:
    """One place a unit fired: document index, position, the token, the activation, and the text around it."""
    document: int
    position: int
    token: str
    activation: float
    before: str
    after: str

    def marked(self, width: int = 60) -> str:
        """The text with the token in [[ ]]: '...gave a drink to [[ Mary]]. Then'"""
        before = self.before if len(self.before) <= width else "..." + self.before[-width:]
        return f"{before}[[{self.token}]]{self.after[:20]}"

    def __repr__(self) -> str:
        return f"{self.activation:7.3f}  {self.marked()!r}"


class Feature:
    """Feature `index` of an SAE: an encoder direction it reads, a unit decoder direction it writes."""

    def __init__(self, sae: SparseAutoencoder, index: int):
        self.sae, self.index = sae, index

    @property
    def name(self) -> str:
        return f"F{self.index}"

    encoder = property(lambda self: self.sae.W_enc[:, self.index].detach())  # [d_in]
    encoder_bias = property(lambda self: self.sae.b_enc[self.index].detach())  # []
    decoder = property(lambda self: self.sae.W_dec[self.index].detach())  # [d_in], unit norm

    @property
    def density(self) -> float | None:
        """Fraction of eval tokens it fires on (from evaluate_sae, saved with the SAE); None if never measured."""
        value = float(self.sae.feature_density[self.index])
        return None if math.isnan(value) else value

    def activation(self, cache) -> torch.Tensor:  # [batch, pos]
        """Its activation at every position of a cache that holds the SAE's hook (run_with_cache names=[sae.hook])."""
        if self.sae.hook not in cache:
            raise SAEError(f"the cache has no {self.sae.hook!r}: run model.run_with_cache(tokens, "
                           f"names=[{self.sae.hook!r}]) (or cache everything)")
        return self.sae.encode(per_token(cache[self.sae.hook]))[..., self.index]

    def _model(self, model=None):
        model = model if model is not None else self.sae.model
        if model is None:
            raise SAEError("this SAE is bound to no model: pass model=..., or SparseAutoencoder.load(path, model) / "
                           "sae.bind(model)")
        return model

    def residual_direction(self, model=None) -> torch.Tensor:  # [d_model]
        """What the feature writes into the residual stream per unit of activation: its decoder direction through
        the weights between the hook and the stream (W_out for mlp.hook_post, W_O per head for attn.hook_z)."""
        return residual_direction(self._model(model), self.sae.hook, self.decoder)

    def logits(self, model=None) -> torch.Tensor:  # [d_vocab]
        """residual_direction @ W_U: its direct effect on the logits (before ln_final's scale, as
        Memory.value_logits)."""
        model = self._model(model)
        return self.residual_direction(model) @ model.W_U.detach()

    def top_tokens(self, k: int = 10, bottom: bool = False, model=None) -> list[tuple[str, float]]:
        """The k tokens it promotes most (bottom=True: suppresses most), with those logits."""
        model = self._model(model)
        logits = self.logits(model)
        values, ids = logits.topk(min(k, logits.numel()), largest=not bottom)
        names = [_token(model, int(i)) for i in ids]
        return list(zip(names, values.tolist()))

    def top_contexts(self, k: int = 10, n_documents: int = CONTEXT_DOCUMENTS, model=None) -> list[Context]:
        """The k positions of held-out corpus documents where it fires most, best first (BOS never listed)."""
        model = self._model(model)
        tokens, acts = unit_activations(model, self, n_documents)
        return top_contexts(model, tokens, acts, k)

    def dashboard(self, path, model=None, n_documents: int = CONTEXT_DOCUMENTS):
        """A PNG: activation histogram, top contexts (token marked), top promoted / suppressed tokens."""
        from .dashboard import draw_feature

        model = self._model(model)
        tokens, acts = unit_activations(model, self, n_documents)
        return draw_feature(path, title=self.describe(model), activations=acts[acts > 0],
                            contexts=top_contexts(model, tokens, acts, 12),
                            promoted=self.top_tokens(10, model=model), suppressed=self.top_tokens(10, True, model))

    def describe(self, model=None) -> str:
        kind = f"TopK {self.sae.cfg.k}" if self.sae.cfg.activation == "topk" else "ReLU"
        density = "density not measured" if self.density is None else f"density {self.density:.2%}"
        return (f"Feature {self.name} of the SAE on {self.sae.hook} ({self.sae.cfg.d_sae} features, {kind}): "
                f"{density}")

    def __repr__(self) -> str:
        text = self.describe()
        model = self.sae.model
        if model is not None:
            try:
                text += "; largest logit effects " + ", ".join(f"{t!r} {v:+.2f}" for t, v in self.top_tokens(4))
            except SAEError:
                pass
        return text


class Features:
    """A read-only sequence of an SAE's features: len, iteration, integer indices and slices."""

    def __init__(self, sae: SparseAutoencoder):
        self.sae = sae

    def __len__(self) -> int:
        return self.sae.cfg.d_sae

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [Feature(self.sae, j) for j in range(*i.indices(len(self)))]
        if isinstance(i, torch.Tensor) and i.numel() == 1 and not i.is_floating_point():
            i = int(i)
        if not isinstance(i, int) or isinstance(i, bool):
            raise TypeError(f"feature indices are integers or slices, not {type(i).__name__}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"feature index {i} out of range: this SAE has {len(self)} features")
        return Feature(self.sae, i % len(self))

    def __iter__(self):
        return (Feature(self.sae, j) for j in range(len(self)))

    def __repr__(self) -> str:
        return f"{len(self)} features of the SAE on {self.sae.hook}"


def residual_direction(model, hook: str, vector: torch.Tensor) -> torch.Tensor:
    """vector [d_in] at `hook` as a write to the residual stream [d_model]; one clear error where there is no
    linear map (e.g. mlp.hook_pre, before the GELU)."""
    if hook.endswith("mlp.hook_post"):
        layer = int(hook.split(".")[1])
        return vector @ model.blocks[layer].mlp.W_out.detach()
    if hook.endswith("attn.hook_z"):
        layer = int(hook.split(".")[1])
        W_O = model.blocks[layer].attn.W_O.detach()  # [head, d_head, d_model]
        return torch.einsum("he,hem->m", vector.reshape(W_O.shape[0], W_O.shape[1]), W_O)
    if hook.endswith(("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                      "hook_embed", "hook_pos_embed")):
        return vector
    raise SAEError(f"a direction at {hook} has no linear path into the residual stream to read through the "
                   "unembedding; logit effects exist for SAEs on mlp.hook_post, attn.hook_z and the residual "
                   "stream hooks")


# ---- activations over held-out text --------------------------------------------------------------------------------

def document_tokens(model, n_documents: int = CONTEXT_DOCUMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n, pos], real [n, pos]): n held-out corpus documents, one per row (BOS first, cut to n_ctx, padded
    with <|endoftext|>); real is False on the padding."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "encode"):
        raise SAEError("finding contexts needs a model with a tokenizer (the corpus is text)")
    from .activations import _recipe_mix, model_corpus

    mix = _recipe_mix(model) or {}
    return _document_tokens(tokenizer, model.cfg.n_ctx, model_corpus(model), tuple(sorted(mix.items())), n_documents)


@lru_cache(maxsize=4)
def _document_tokens(tokenizer, n_ctx: int, corpus, mix: tuple, n_documents: int):
    documents = corpus.training_documents(n_documents, seed=EVAL_SEED, mix=dict(mix) or None)
    rows = [([tokenizer.bos_id] + tokenizer.encode(d))[:n_ctx] for d in documents]
    width = max(map(len, rows))
    tokens = torch.full((len(rows), width), tokenizer.eot_id, dtype=torch.long)
    real = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        tokens[i, :len(row)] = torch.tensor(row)
        real[i, :len(row)] = True
    return tokens, real


@torch.no_grad()
def unit_activations(model, unit, n_documents: int = CONTEXT_DOCUMENTS, batch_size: int = 64):
    """(tokens [n, pos], activations [n, pos]) of a Feature or a Memory over n held-out corpus documents (one per
    row, BOS first, padded), 0 at the BOS and on padding."""
    tokens, real = document_tokens(model, n_documents)
    if isinstance(unit, Feature):
        hook = check_hook(model, unit.sae.hook)

        def read(x):
            return unit.sae.encode(per_token(x))[..., unit.index]
    else:  # a Memory: one neuron of hook_post
        hook = f"blocks.{unit.layer}.mlp.hook_post"

        def read(x):
            return x[..., unit.index]
    out = torch.zeros(tokens.shape)
    device = model.W_E.device
    for start in range(0, len(tokens), batch_size):
        rows = slice(start, start + batch_size)
        _, cache = model.run_with_cache(tokens[rows].to(device), names=[hook], stop_at_layer=hook_layer(model, hook))
        out[rows] = read(cache[hook]).float().cpu()
    keep = real.clone()
    keep[:, 0] = False  # the BOS: the same activation in every row
    return tokens, out * keep


def top_contexts(model, tokens: torch.Tensor, acts: torch.Tensor, k: int) -> list[Context]:
    values, flat = acts.flatten().topk(min(k, acts.numel()))
    out = []
    for value, i in zip(values.tolist(), flat.tolist()):
        if value <= 0:
            break
        row, pos = divmod(i, tokens.shape[1])
        text = tokens[row]
        end = int((text != model.tokenizer.eot_id).nonzero().max()) + 1  # the padding after the document
        out.append(Context(row, pos, _token(model, int(text[pos])), value, model.to_string(text[1:pos]),
                           model.to_string(text[pos + 1:max(end, pos + 1)])))
    return out


def _token(model, token: int) -> str:
    return model.tokenizer.id_to_str(token) if model.tokenizer is not None else str(token)


# ---- kinds of context --------------------------------------------------------------------------------------------

@dataclass
class ContextDiversity:
    """How many kinds of context make a unit fire, among its `top` strongest activations on held-out text.

    A context's kind is the class of the token where it fires: a word class of the corpus the model was trained on
    (name, country, capital, language, continent, place, object, food, animal, role, relative, colour/size, time,
    adjective, pronoun) when the token is such a word, else the token itself (' to', '.', ' gave'). distinct counts
    the kinds; effective is exp(entropy) of their shares: 1 for a unit that fires on one kind only, n for n kinds in
    equal shares.
    """
    name: str
    kinds: Counter
    distinct: int
    effective: float

    def __repr__(self) -> str:
        shown = ", ".join(f"{k} {n}" for k, n in self.kinds.most_common(6))
        return f"{self.name}: {self.distinct} kinds, effective {self.effective:.2f} ({shown})"


@lru_cache(maxsize=2)
def _word_classes(kind: str = "templates") -> dict[str, str]:
    """token -> word class, from the word lists of the corpus the model was trained on (training/lexicon.py for the
    story corpus, training/wordlists.py for the templates): the same classes for both."""
    if kind == "stories":
        from ..training import lexicon as W
        from ..training.stories import PRONOUNS

        adjectives, times = W.ADJECTIVES, W.TIMES + W.DAYS + W.MONTHS
    else:
        from ..training import wordlists as W
        from ..training.corpus import PRONOUNS

        adjectives, times = W.DAY_ADJECTIVES + W.PLACE_ADJECTIVES, W.TIMES
    lists = [("name", W.FEMALE_NAMES + W.MALE_NAMES), ("country", [c[0].removeprefix("the ") for c in W.COUNTRIES]),
             ("capital", [c[1] for c in W.COUNTRIES]), ("language", [c[2] for c in W.COUNTRIES]),
             ("continent", [c[3] for c in W.COUNTRIES]), ("place", W.PLACES), ("object", W.OBJECTS),
             ("food", W.FOODS), ("animal", W.ANIMALS), ("role", W.ROLES), ("relative", W.RELATIVES),
             ("colour/size", W.COLORS), ("time", times), ("adjective", adjectives),
             ("pronoun", [w for p in PRONOUNS.values() for w in p.values()])]
    classes: dict[str, str] = {}
    for kind_name, words in lists:
        for word in words:
            for form in (" " + word, word, " " + word.capitalize(), word.capitalize()):
                classes.setdefault(form, kind_name)
    return classes


def context_kind(token: str, corpus: str = "templates") -> str:
    """The kind of a context, from the token where the unit fires (see ContextDiversity); `corpus` names the word
    lists: "templates" (mini-4l) or "stories" (story-4l), as minimech.sae.activations.corpus_kind(model) says."""
    if corpus not in ("templates", "stories"):
        raise SAEError(f"corpus must be 'templates' or 'stories' (corpus_kind(model) gives a model's), got {corpus!r}")
    return _word_classes(corpus).get(token, repr(token))


def context_diversity(unit, model=None, top: int = 20, n_documents: int = CONTEXT_DOCUMENTS) -> ContextDiversity:
    """ContextDiversity of a Feature, a Memory, or a (layer, neuron) pair (with model), over its top activations."""
    if isinstance(unit, Feature):
        model, name = unit._model(model), f"feature {unit.name} ({unit.sae.hook})"
    else:
        from ..analysis.memories import _as_memory

        if model is None:
            model = unit.mlp.root() if hasattr(unit, "mlp") else None
        if model is None:
            raise SAEError("context_diversity((layer, neuron)) needs the model: context_diversity(pair, model)")
        unit = _as_memory(model, unit)
        name = f"neuron {unit.name}"
    if top < 1:
        raise SAEError(f"top must be at least 1, got {top}")
    tokens, acts = unit_activations(model, unit, n_documents)
    from .activations import corpus_kind

    kinds = Counter(context_kind(c.token, corpus_kind(model)) for c in top_contexts(model, tokens, acts, top))
    total = sum(kinds.values())
    entropy = -sum(n / total * math.log(n / total) for n in kinds.values()) if total else 0.0
    return ContextDiversity(name, kinds, len(kinds), math.exp(entropy))

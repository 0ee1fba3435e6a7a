"""Which generated corpus a shipped model was trained on, read from its card, so analysis code asks the model's own
corpus for held-out prompts (mini-4l and attn-only-2l: corpus.Corpus; story-4l: stories.StoryCorpus)."""

from __future__ import annotations


def corpus_for(model=None, card: dict | None = None):
    """The corpus object (same methods: ioi_eval, fact_eval, training_documents, names_train, names_heldout) of a
    shipped model's card; corpus.Corpus(seed=0) for a model without one (e.g. GPT-2)."""
    from .corpus import Corpus
    from .stories import StoryCorpus

    card = card if card is not None else (getattr(model, "card", None) or {})
    info = card.get("corpus") or {}
    seed = info.get("seed", 0)
    return StoryCorpus(seed=seed) if info.get("kind") == "stories" else Corpus(seed=seed)

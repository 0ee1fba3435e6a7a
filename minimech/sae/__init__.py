"""Sparse autoencoders: train one on any hook of a minimech model, measure it, and use its features.

    from minimech.sae import sae_for, train_sae, evaluate_sae, splice
    sae = sae_for(model)                                   # the SAE shipped beside a shipped model (its middle MLP)
    sae = train_sae(model, "blocks.2.mlp.hook_post")       # or train one (tqdm bar; a few minutes on 2 cores)
    evaluate_sae(model, sae)                               # L0, variance explained, CE loss recovered, dead/dense
    feature = sae.features[123]                            # a Feature: directions, activations, contexts, logits
    with splice(model, sae, ablate=[123]): model(tokens)   # interventions with the error term added back
"""

from .activations import ActivationStream, collect_activations, corpus_rows, eval_rows, hook_width
from .autoencoder import SAEConfig, SAEError, SparseAutoencoder
from .features import ContextDiversity, Feature, context_diversity
from .interventions import splice, steer_feature
from .metrics import SAEMetrics, evaluate_sae
from .shipped import default_hook, sae_for
from .training import SAETrainSettings, train_sae

__all__ = ["ActivationStream", "collect_activations", "corpus_rows", "eval_rows", "hook_width", "SAEConfig",
           "SAEError", "SparseAutoencoder", "ContextDiversity", "Feature", "context_diversity", "splice",
           "steer_feature", "SAEMetrics", "evaluate_sae", "default_hook", "sae_for", "SAETrainSettings", "train_sae"]

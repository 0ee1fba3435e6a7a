"""Sparse autoencoders: train one on any hook of a minimech model, measure it, and use its features.

    from minimech.sae import train_sae, evaluate_sae, sae_for
    sae = sae_for(model)                                   # the SAE shipped beside a shipped model
    sae = train_sae(model, "blocks.2.mlp.hook_post")       # or train one (tqdm bar; a few minutes on 2 cores)
    evaluate_sae(model, sae)                               # L0, variance explained, CE loss recovered, dead/dense
    feature = sae.features[123]                            # a Feature: directions, activations, contexts, logits
    with splice(model, sae, ablate=[123]): model(tokens)   # interventions with the error term added back
"""

from .activations import ActivationStream, collect_activations, corpus_rows, eval_rows, hook_width
from .autoencoder import SAEConfig, SAEError, SparseAutoencoder
from .metrics import SAEMetrics, evaluate_sae
from .training import SAETrainSettings, train_sae

__all__ = ["ActivationStream", "collect_activations", "corpus_rows", "eval_rows", "hook_width", "SAEConfig",
           "SAEError", "SparseAutoencoder", "SAEMetrics", "evaluate_sae", "SAETrainSettings", "train_sae"]

"""Analysis toolkit: functions over a model and its cache that return tensors and labels (plot.py draws them)."""

from .heads import detector_scores, head_scores, in_context_losses, repeated_random_tokens, target_mask

__all__ = ["detector_scores", "head_scores", "in_context_losses", "repeated_random_tokens", "target_mask"]

from .ablation import mean_ablate_heads, mean_ablate_mlps
from .lens import LensResult, logit_lens
from .patching import PatchingError, patch_attn, patch_heads, patch_mlps, patch_resid
from .tracing import TraceResult, TracingError, causal_trace, find_subject_positions

__all__ += ["mean_ablate_heads", "mean_ablate_mlps", "LensResult", "logit_lens", "PatchingError", "patch_attn",
            "patch_heads", "patch_mlps", "patch_resid", "TraceResult", "TracingError", "causal_trace",
            "find_subject_positions"]

from .metrics import LogitDiff, logit_diff

__all__ += ["LogitDiff", "logit_diff"]

from .attribution import Attribution, AttributionError, attribution_hooks, direct_logit_attribution, logit_attribution
from .circuits import (CircuitError, composition_scores, copied_logits, copying_score, copying_scores,
                       full_ov_circuit, positional_qk, resolve_head, token_qk, top_copied_tokens)

__all__ += ["Attribution", "AttributionError", "attribution_hooks", "direct_logit_attribution", "logit_attribution",
            "CircuitError", "composition_scores", "copied_logits", "copying_score", "copying_scores",
            "full_ov_circuit", "positional_qk", "resolve_head", "token_qk", "top_copied_tokens"]

from .path_patching import PathPatchingError, parse_heads, path_patch, path_patch_heads
from .ioi import GPT2_TEMPLATES, Faithfulness, IOIDataset, IOIError, card_heads, circuit_faithfulness, ioi_dataset

__all__ += ["PathPatchingError", "parse_heads", "path_patch", "path_patch_heads", "GPT2_TEMPLATES", "Faithfulness",
            "IOIDataset", "IOIError", "card_heads", "circuit_faithfulness", "ioi_dataset"]

from .lens import lens_kl
from .tuned_lens import TunedLens, TunedLensError, lens_data, model_sha256, train_tuned_lens, tuned_lens_for

__all__ += ["lens_kl", "TunedLens", "TunedLensError", "lens_data", "model_sha256", "train_tuned_lens",
            "tuned_lens_for"]

from .ablation import ablate_memories, resample_ablate_heads, resample_ablate_mlps, resample_indices
from .memories import MemoryLogits, TopActivation, memory_activations, memory_logits, search_corpus, top_activating
from .interventions import (DamageTable, EditResult, InterventionError, ablation_damage, fact_layer, key_covariance,
                            mean_activation, rank_one_update, rome_edit, shipped_behaviours, steer, steering_vector)

__all__ += ["ablate_memories", "resample_ablate_heads", "resample_ablate_mlps", "resample_indices", "MemoryLogits",
            "TopActivation", "memory_activations", "memory_logits", "search_corpus", "top_activating", "DamageTable",
            "EditResult", "InterventionError", "ablation_damage", "fact_layer", "key_covariance", "mean_activation",
            "rank_one_update", "rome_edit", "shipped_behaviours", "steer", "steering_vector"]

from .attribution_patching import agreement, attribution_patch_heads, attribution_patch_resid

__all__ += ["agreement", "attribution_patch_heads", "attribution_patch_resid"]

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

"""Analysis toolkit: functions over a model and its cache that return tensors and labels (plot.py draws them)."""

from .heads import detector_scores, head_scores, in_context_losses, repeated_random_tokens, target_mask

__all__ = ["detector_scores", "head_scores", "in_context_losses", "repeated_random_tokens", "target_mask"]

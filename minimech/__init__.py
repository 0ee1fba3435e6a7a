"""minimech: a from-scratch, readable GPT-2 for mechanistic interpretability."""

from .config import PRESETS, GPTConfig, from_hf_config
from .errors import MinimechError
from .hooks import HookPoint, act_name
from .loading import fetch, load, save
from .memory import keep_freed_memory
from .model import GPT, HOOK_SHAPES
from .objects import FactoredMatrix, Head, Memory

__version__ = "0.1.0"
__all__ = ["load", "save", "fetch", "GPT", "GPTConfig", "PRESETS", "from_hf_config", "MinimechError", "HookPoint", "act_name",
           "HOOK_SHAPES", "FactoredMatrix", "Head", "Memory", "keep_freed_memory"]

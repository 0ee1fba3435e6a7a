"""What a lesson's checks.py and bugs.py are written with: Case, CaseContext, Exercise and Bug.

The contract (lessons/README.md): `cases(ctx)` builds the inputs of several calls of the
learner's function, deterministically from ctx.seed. The grader calls it once, in the trusted grading process, and
sends the arguments to the process that runs the learner's code pickled (so they must pickle: tensors, numbers,
strings, models, lists and dicts of these). `reference` and `compare` run only in the grading process.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import MinimechError

EXERCISE_ID = re.compile(r"^\d\d\.\d+$")  # "02.3": lesson 02, exercise 3


class GradingError(MinimechError):
    """A lesson, a submission folder or a grading option is not as the grader needs it."""


@dataclass
class Case:
    """The keyword arguments of one call of the learner's function; weight counts toward partial credit."""

    args: dict
    weight: float = 1.0
    label: str = ""

    def __post_init__(self):
        if not isinstance(self.args, dict):
            raise GradingError(f"Case(args=...) takes a dict of keyword arguments, got {type(self.args).__name__}")
        if not self.weight > 0:
            raise GradingError(f"a Case's weight must be positive, got {self.weight}")

    def describe(self) -> str:
        """A short description for messages: the label, else each argument's shape or value."""
        if self.label:
            return self.label
        return ", ".join(f"{k}={_short(v)}" for k, v in self.args.items())


def _short(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor{list(value.shape)}"
    if isinstance(value, torch.nn.Module):
        return getattr(getattr(value, "cfg", None), "model_name", type(value).__name__)
    text = repr(value)
    return text if len(text) <= 30 else text[:27] + "..."


@dataclass
class Exercise:
    """One exercise of a lesson: which learner function, how to make its inputs, the truth, and how to compare.

    compare(got, want, case) returns None when `got` is right, else a message that shows the learner's values and
    the property that broke (never `want`'s values). Without one, `close(got, want)` is used.
    """

    id: str
    function: str
    title: str
    cases: Callable[["CaseContext"], list[Case]]
    reference: Callable[..., Any]
    compare: Callable[[Any, Any, Case], "str | None"] | None = None
    # Dotted names of library functions that already do what the exercise asks (e.g. "minimech.analysis.
    # logit_diff"): a learner's code that calls one of them directly fails the exercise, as an import would.
    library: tuple = ()
    # Ids of earlier exercises whose learner functions this one calls (e.g. ("00.3",)): when one of them fails in
    # the same run, this exercise's failure message names it first ("your 00.3 (mlp) fails; 00.4 calls it").
    uses: tuple = ()

    def __post_init__(self):
        if not EXERCISE_ID.match(self.id):
            raise GradingError(f"exercise id {self.id!r} is not of the form NN.k (e.g. '02.3')")
        if isinstance(self.uses, str):
            self.uses = (self.uses,)
        bad = [u for u in self.uses if not (isinstance(u, str) and EXERCISE_ID.match(u)) or u == self.id]
        if bad:
            raise GradingError(f"exercise {self.id}: uses={bad!r} must name other exercises, as 'NN.k' ids")
        if not self.function.isidentifier():
            raise GradingError(f"exercise {self.id}: function={self.function!r} is not a Python name")

    @property
    def number(self) -> int:
        return int(self.id.split(".")[1])

    def check(self, got, want, case: Case) -> "str | None":
        if self.compare is None:
            from .compare import close

            return close(got, want)
        return self.compare(got, want, case)


@dataclass
class Bug:
    """A planted mistake for exercise `exercise`: `function` has the exercise's signature and one classic error;
    the checks must fail on it with a message containing `fragment` (case-insensitive)."""

    exercise: str
    function: Callable
    fragment: str


# Models loaded by ctx.model(), once per process: {name: GPT}. A model a learner's call changed is dropped
# (forget_model) so the next exercise gets a fresh copy.
_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


def forget_model(model) -> None:
    with _MODELS_LOCK:
        for name in [n for n, m in _MODELS.items() if m is model]:
            del _MODELS[name]


def loaded_models() -> list:
    with _MODELS_LOCK:
        return list(_MODELS.values())


def read_only(model):
    """A check's model, its parameters not requiring gradients: cases only read it (a call that changes it is
    caught), and otherwise every forward pass with grad mode on builds an autograd graph. A function that writes
    forward results into a tensor in place then keeps every graph alive: 04.6's causal trace on GPT-2 small held
    10 GB that way. Gradients with respect to the inputs or a tensor of the learner's own (06.7's delta) still flow."""
    return model.requires_grad_(False)


@dataclass
class CaseContext:
    """What `cases(ctx)` gets: a seed, a generator seeded with it, and the lesson's models."""

    seed: int
    model_name: str = "mini-4l"  # the lesson's default model, or the --model the learner asked for
    # where ctx.model() keeps the models it loads: the grader gives each oracle a dict of its own, so no other
    # thread ever touches them; None: this process's shared cache
    models: dict | None = field(default=None, repr=False)
    gen: torch.Generator = field(init=False, repr=False)

    def __post_init__(self):
        self.gen = torch.Generator().manual_seed(self.seed)

    def model(self, name: str | None = None):
        """The lesson's model (or the named one), loaded once (per grading run) and shared by every case. Its
        parameters do not require gradients (see read_only)."""
        from ..loading import load

        name = name or self.model_name
        cache = _MODELS if self.models is None else self.models
        with _MODELS_LOCK:
            if name not in cache:
                cache[name] = read_only(load(name).eval())
            return cache[name]

    def random_model(self, seed: int | None = None, **cfg):
        """A random GPT with GPTConfig(**cfg), seeded: every parameter random, biases and LayerNorms too, so a
        forgotten bias or LayerNorm shows. Built afresh on each call (it is small)."""
        from ..config import GPTConfig
        from ..model import GPT

        seed = self.seed if seed is None else seed
        model = GPT(GPTConfig(**cfg), seed=seed % 2**31)
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                last = name.split(".")[-1]
                if last.startswith("W_") and p.ndim > 1:
                    p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-2] ** 0.5)
                elif last == "w":  # LayerNorm scale
                    p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        return read_only(model.eval())

"""The trusted side of a grading run: each exercise's inputs and right answers, shared by nothing mutable.

An Oracle builds every exercise's cases at once, on models of its own (never the process-wide ones), and pickles
their arguments for the learners' processes before any reference runs: a child gets its inputs as data and never
loads checks.py. The references are computed in one background thread while the children run. A thread that judges
gets its own copy of the cases (unpickled from the same bytes): a compare function that re-runs a model with hooks
touches no object another thread uses, and every judgement is made on pristine inputs.
"""

from __future__ import annotations

import builtins
import importlib
import io
import marshal
import pickle
import threading
import time
import types
import weakref
from pathlib import Path

import torch

from .api import Case, Exercise, GradingError
from .runner import build_cases


def _rebuild_function(code: bytes, namespace: dict, name: str, defaults, cells):
    """A function that travelled by value (a metric a case holds), rebuilt in the learner's process."""
    closure = None if cells is None else tuple(types.CellType(c) for c in cells)
    return types.FunctionType(marshal.loads(code), {"__builtins__": builtins, **namespace}, name, defaults, closure)


def _with_grad(rebuild, args, grad):
    tensor = rebuild(*args)
    tensor.grad = grad
    return tensor


def _code_names(code) -> set:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _by_value(function):
    """(rebuild, args) for a function pickle cannot name (defined in checks.py, which the learner's process never
    loads, or a lambda or a local function): its code, closure, defaults and the globals it uses travel."""
    namespace = {n: function.__globals__[n] for n in _code_names(function.__code__) & function.__globals__.keys()}
    cells = None if function.__closure__ is None else [c.cell_contents for c in function.__closure__]
    return _rebuild_function, (marshal.dumps(function.__code__), namespace, function.__name__, function.__defaults__,
                               cells)


class _Pickler(pickle.Pickler):
    """pickle, plus weak references (a model's MLPs point back to it weakly), modules (by name), and functions
    pickle cannot name (by value: see _by_value)."""

    def reducer_override(self, obj):
        if type(obj) is weakref.ReferenceType:
            target = obj()
            return (weakref.ref, (target,)) if target is not None else (type(None), ())
        if isinstance(obj, types.ModuleType):
            if obj.__name__.startswith("_minimech_checks_"):
                raise pickle.PicklingError("a case may not hold checks.py itself")
            return importlib.import_module, (obj.__name__,)
        if isinstance(obj, types.FunctionType) and (str(obj.__module__).startswith("_minimech_checks_")
                                                    or "<" in obj.__qualname__):
            return _by_value(obj)
        if isinstance(obj, torch.Tensor) and obj.grad is not None:  # pickle drops .grad: a case may plant one
            rebuild = obj.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
            if isinstance(rebuild, tuple) and len(rebuild) == 2:
                return _with_grad, (*rebuild, obj.grad)
        return NotImplemented


def dumps(value) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


def loads(data: bytes):
    """Unpickle bytes this module made (trusted: only ever the parent's own data)."""
    return pickle.loads(data)


def _status_mb(field: str) -> float | None:
    """A figure of /proc/self/status ("VmRSS", "VmHWM"), in MB; None where there is none (not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def _reset_peak() -> float | None:
    """This process's resident memory now (MB), after freed heap memory went back to the operating system and the
    kernel's peak (VmHWM) was reset to it; None where that cannot be done (not Linux, /proc read-only): then the
    references' memory is not measured. (minimech.memory keeps freed memory for reuse, which would hide a peak.)"""
    from ..memory import _glibc

    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set size (Linux 4.0+)
    except OSError:
        return None
    return _status_mb("VmRSS")


class PeakMemory:
    """How much memory a block of code added at its peak, in MB (this process's resident set; Linux): used around
    each exercise's references, so that a learner's process gets what the reference solution itself needed."""

    def __enter__(self):
        self.base = _reset_peak()
        self.mb = None
        return self

    def __exit__(self, *exc):
        peak = _status_mb("VmHWM") if self.base is not None else None
        self.mb = max(0.0, peak - self.base) if peak is not None else None
        return False


class Oracle:
    """Each exercise's cases (built once, on this oracle's own models), their pickled arguments for the children,
    and the reference answers. Never sees learner code."""

    def __init__(self, exercises: list[Exercise], seed: int, model_name: str):
        self.exercises = {e.id: e for e in exercises}
        self.seed, self.model_name = seed, model_name
        self._cases: dict[str, list[Case]] = {}
        self._errors: dict[str, GradingError] = {}
        self._answers: dict[str, list] = {}
        self._local = threading.local()
        self.reference_seconds: dict[str, float] = {}  # how long each exercise's references took here (wall clock)
        self.reference_cpu_seconds: dict[str, float] = {}  # their CPU time, every thread: roughly one thread's need
        self.reference_peak_mb: dict[str, float] = {}  # the memory they added at their peak (where measurable)
        self.models: dict = {}  # this oracle's models only (ctx.model() loads them here)
        self.cases_done: dict[str, int] = {}  # each exercise's reference cases computed so far (for progress)
        models = self.models
        for ex in exercises:
            try:
                self._cases[ex.id] = build_cases(ex, seed, model_name, models)
            except Exception as exc:  # a bug in the lesson's checks.py (or its model is missing), not the learner's
                self._errors[ex.id] = GradingError(f"grader error in checks.py ({ex.id}): building the inputs "
                                                   f"failed: {type(exc).__name__}: {exc}")
        try:  # before any reference runs: the children and the judges get the inputs exactly as built
            self.payload = dumps({ex_id: [c.args for c in cases] for ex_id, cases in self._cases.items()})
        except Exception as exc:
            message = f"grader error in checks.py: a case's arguments cannot be sent to the learner's process " \
                      f"({type(exc).__name__}: {exc}); cases may hold tensors, numbers, strings, models, " \
                      "lists and dicts of these"
            self._errors.update({ex_id: GradingError(message) for ex_id in self._cases})
            self._cases, self.payload = {}, dumps({})
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._compute_all, name="minimech-oracle", daemon=True)
        self._thread.start()

    def _compute_all(self) -> None:
        try:
            for ex_id, cases in self._cases.items():
                exercise = self.exercises[ex_id]
                try:
                    torch.manual_seed(self.seed)  # a reference that draws from the global generator draws the same
                    start, cpu = time.perf_counter(), time.process_time()
                    with PeakMemory() as peak:
                        answers = []
                        for case in cases:  # one at a time, counted: on a big model one case can take a minute
                            answers.append(exercise.reference(**case.args))
                            self.cases_done[ex_id] = len(answers)
                        self._answers[ex_id] = answers
                    self.reference_seconds[ex_id] = time.perf_counter() - start
                    self.reference_cpu_seconds[ex_id] = time.process_time() - cpu
                    if peak.mb is not None:
                        self.reference_peak_mb[ex_id] = peak.mb
                except Exception as exc:  # a bug in the lesson's checks.py, not the learner's
                    self._errors[ex_id] = GradingError(f"grader error in checks.py ({ex_id}): the reference failed: "
                                                       f"{type(exc).__name__}: {exc}")
        finally:
            self._ready.set()

    def wait(self, progress=None) -> None:
        """Until every reference is computed; progress(exercise id, cases done, cases) as each case's reference is
        done (for a progress bar: the exercise is done when the two counts are equal; an exercise whose cases could
        not be built or computed is reported done)."""
        told: dict[str, int] = {}

        def tell(ex_id, done, total):
            if progress is not None and told.get(ex_id) != done:
                told[ex_id] = done
                progress(ex_id, done, total)

        while not self._ready.wait(0.5):
            for ex_id, done in list(self.cases_done.items()):
                tell(ex_id, done, len(self._cases.get(ex_id, ())))
        for ex_id in self.exercises:
            n = len(self._cases.get(ex_id, ()))
            tell(ex_id, n, n)

    def needs(self, ex_ids=None) -> tuple[float, float]:
        """(seconds, MB) the reference solution needed for the exercises (all by default) at most: one exercise's
        time on one thread (its wall clock, or its CPU time over every thread when that is more), and the memory
        it added (0 where unmeasured). Call wait() first."""
        ids = list(self.exercises) if ex_ids is None else list(ex_ids)
        seconds = max((max(self.reference_seconds.get(i, 0.0), self.reference_cpu_seconds.get(i, 0.0))
                       for i in ids), default=0.0)
        return seconds, max((self.reference_peak_mb.get(i, 0.0) for i in ids), default=0.0)

    def parameters(self) -> int:
        """How many parameters the largest model this oracle loaded has (0: none was loaded)."""
        return max((sum(p.numel() for p in m.parameters()) for m in self.models.values()), default=0)

    def built(self, ex_id: str) -> bool:
        """Whether the exercise's inputs were built (else the child skips it and judging reports the error)."""
        return ex_id in self._cases

    def error(self, ex_id: str) -> GradingError | None:
        return self._errors.get(ex_id) if ex_id in self._errors and not self.built(ex_id) else None

    def expected(self, ex_id: str) -> tuple[list[Case], list]:
        """(this thread's own copy of the cases, its copy of the reference answers); raises GradingError if the
        lesson's own code failed."""
        self._ready.wait()
        if ex_id in self._errors:
            raise self._errors[ex_id]
        copies = getattr(self._local, "copies", None)
        if copies is None:  # one copy per thread, of every exercise at once (a model several share is copied once)
            args = loads(self.payload)
            answers = loads(dumps(self._answers))
            copies = {i: ([Case(a, c.weight, c.label) for a, c in zip(args[i], self._cases[i])], answers[i])
                      for i in self._cases}
            self._local.copies = copies
        return copies[ex_id]

    def drop_copy(self) -> None:
        """Forget this thread's copies (a compare function left a model changed: the next judgement gets fresh ones)."""
        self._local.copies = None

"""Calling the learner's function on each case: the part that runs where the learner's code runs.

run_exercise() calls the learner's function on each case's arguments and returns one record of facts per case: the
output (as wire data), or what was raised, or that a model changed, or that a forbidden module or library function
was reached. It decides no status and no mark: the grading process does (verdicts.py), from these facts, and no
fact can claim a pass. Around each call it fingerprints every model the call could reach (weights, buffers and
attached hooks), so a call that changes a model is caught.
"""

from __future__ import annotations

import errno
import inspect
import sys
import threading
import traceback
import zlib
from contextlib import contextmanager
from pathlib import Path

import torch

from .api import Case, CaseContext, Exercise, forget_model, loaded_models
from .wire import WireError, encode

FILE_LIMIT_MB = 256  # isolation.MAX_FILE_BYTES: the most a learner's process may print or write
MEMORY_MESSAGES = ("can't allocate memory", "cannot allocate memory", "not enough memory", "std::bad_alloc",
                   "defaultcpuallocator", "out of memory")


class ForbiddenImportError(ImportError):
    """A submission imported a module it may not (e.g. the lesson's solutions), or called a library function the
    exercise asks it to write."""


# ---- fingerprints -----------------------------------------------------------------------------------------------

def _tensor_digest(t: torch.Tensor) -> str:
    """crc32 of the tensor's bytes (zlib's is fast; a model's every parameter is read around every call)."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    crc = zlib.crc32(flat.view(torch.uint8).numpy()) if flat.numel() else 0
    return f"{crc:08x}:{t.dtype}:{list(t.shape)}"


def model_fingerprint(model: torch.nn.Module) -> dict[str, str]:
    """{what: digest} over every parameter and buffer, plus which hook points and modules carry hooks."""
    prints = {f"parameter {n}": _tensor_digest(p) for n, p in model.named_parameters()}
    prints.update({f"buffer {n}": _tensor_digest(b) for n, b in model.named_buffers()})
    for name, module in model.named_modules():
        attached = len(getattr(module, "fns", ())) + len(module._forward_hooks) + len(module._forward_pre_hooks)
        if attached:
            prints[f"hook on {name or 'the model'}"] = str(attached)
    return prints


def models_in(args: dict) -> list[torch.nn.Module]:
    found = {id(m): m for m in loaded_models()}
    for value in args.values():
        if isinstance(value, torch.nn.Module):
            found[id(value)] = value
    return list(found.values())


def _mutation(before: dict[int, dict], models: list) -> "str | None":
    """What changed in a model since `before` (which is updated to the models' state now), or None."""
    for model in models:
        after = model_fingerprint(model)
        old, before[id(model)] = before[id(model)], after
        changed = sorted(k for k in old.keys() | after.keys() if old.get(k) != after.get(k))
        if changed:
            return changed[0] if changed[0].startswith("hook") else f"{changed[0]} and {len(changed) - 1} more"
    return None


# ---- exceptions, as facts ---------------------------------------------------------------------------------------

def is_learner_code(filename: str, learner_file: str) -> bool:
    """Whether code compiled from `filename` is the learner's: their file, or a cell of their converted notebook."""
    return filename == learner_file or filename.startswith(f"{learner_file} cell ")


def learner_line(exc: BaseException, learner_file: str) -> str:
    """'line 12: `return x.softmax(0)`' for the deepest frame in the learner's file, or ''."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if is_learner_code(f.filename, learner_file) or Path(f.filename).resolve() == Path(learner_file)]
    if not frames:
        return ""
    frame = frames[-1]
    cell = frame.filename[len(learner_file) + 1:] if frame.filename.startswith(f"{learner_file} cell ") else ""
    return f"your {cell + ', ' if cell else ''}line {frame.lineno}: `{(frame.line or '').strip()[:120]}`"


def exception_facts(exc: BaseException, learner_file: str) -> dict:
    """What a learner's call raised, as plain data: its kind, type, text and the learner's line."""
    text = " ".join(str(exc).split())[:300]
    if isinstance(exc, NotImplementedError):
        kind = "not implemented"
    elif isinstance(exc, ForbiddenImportError):
        kind = "forbidden"
    elif isinstance(exc, MemoryError) or isinstance(exc, RuntimeError) and any(m in text.lower()
                                                                              for m in MEMORY_MESSAGES):
        kind = "memory"
    elif isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        kind = "file too big"
    elif isinstance(exc, AssertionError) and "daemonic processes" in text:
        kind = "processes"
    elif isinstance(exc, SystemExit):
        kind, text = "exit", repr(exc.code)[:100]
    elif isinstance(exc, RecursionError):
        kind = "recursion"
    elif isinstance(exc, WireError):
        kind = "unsendable"
    else:
        kind = "error"
    return {"kind": kind, "type": type(exc).__name__[:80], "text": text, "where": learner_line(exc, learner_file)}


# ---- library traps ----------------------------------------------------------------------------------------------

def _resolve(dotted: str):
    """The object a dotted name ("minimech.analysis.logit_diff") names, from modules already loaded, or None."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        obj = sys.modules.get(".".join(parts[:split]))
        if obj is not None:
            try:
                for attr in parts[split:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                return None
            return obj
    return None


def _library_dirs() -> tuple[str, ...]:
    import minimech

    return tuple(str(Path(m.__file__).resolve().parent) + "/" for m in (minimech, torch))


class LibraryTraps:
    """Calls of the library functions an exercise asks the learner to write, caught by the function's identity.

    install() replaces every module-level binding of each function (in every loaded module, so `import torch`,
    `from torch import softmax`, getattr by name, default arguments and closures made after it all get the trap)
    with a trap. While an exercise that lists a function is armed, its trap refuses a call whose caller `refuses`
    (in a child: any caller outside minimech's and torch's own files, so a thread, an exec'd string or functools
    cannot launder it), and a profiler catches the original function object called from such code, however the
    learner got hold of it. The library's own calls (a model's forward, an analysis helper) run as usual.
    """

    def __init__(self, names, refuses, attempts: list):
        self.refuses, self.attempts = refuses, attempts
        self.originals: dict[int, tuple[str, object]] = {}  # id -> (dotted name, function); classes are left alone
        for name in names:
            obj = _resolve(name)
            if callable(obj) and not isinstance(obj, type) and id(obj) not in self.originals:
                self.originals[id(obj)] = (name, obj)
        # a Python function is known by its innermost code (decorators such as torch.no_grad share their wrapper's
        # code among every function they wrap), and its caller is found above its wrappers' frames
        self.codes: dict[int, tuple[str, set]] = {}
        for name, function in self.originals.values():
            chain = [function]
            while hasattr(chain[-1], "__wrapped__") and len(chain) < 10:
                chain.append(chain[-1].__wrapped__)
            codes = [getattr(f, "__code__", None) for f in chain]
            if codes[-1] is not None:
                self.codes[id(codes[-1])] = (name, {id(c) for c in codes[:-1] if c is not None})
        self.traps = {i: self._trap(n, f) for i, (n, f) in self.originals.items()}
        self.armed: frozenset = frozenset()
        self.swapped: list[tuple[dict, str, object]] = []
        self.scanned: set[int] = set()

    def _refuse(self, name: str):
        self.attempts.append(("call", name))
        raise ForbiddenImportError(f"calls {name}, the library's own version of what this exercise asks you to write")

    def _trap(self, name: str, original):
        traps = self

        def trap(*args, **kwargs):
            if name in traps.armed and traps.refuses(sys._getframe(1)):
                traps._refuse(name)
            return original(*args, **kwargs)

        trap.__name__ = getattr(original, "__name__", "trap")
        trap.__doc__ = getattr(original, "__doc__", None)
        return trap

    def install(self) -> None:
        """Swap the bindings in every module not scanned yet (call again after new modules were imported)."""
        if not self.originals:
            return
        for module in list(sys.modules.values()):
            namespace = getattr(module, "__dict__", None)
            if id(module) in self.scanned or not isinstance(namespace, dict):
                continue
            self.scanned.add(id(module))
            for attr, value in list(namespace.items()):
                if id(value) in self.originals and value is self.originals[id(value)][1]:
                    namespace[attr] = self.traps[id(value)]
                    self.swapped.append((namespace, attr, value))

    def uninstall(self) -> None:
        for namespace, attr, value in self.swapped:
            if namespace.get(attr) is self.traps[id(value)]:
                namespace[attr] = value
        self.swapped, self.scanned = [], set()

    def _profile(self, frame, event, arg):
        if event == "c_call":
            entry = self.originals.get(id(arg))
            if entry and entry[1] is arg and entry[0] in self.armed and self.refuses(frame):
                self._refuse(entry[0])
        elif event == "call" and id(frame.f_code) in self.codes:
            name, wrappers = self.codes[id(frame.f_code)]
            caller = frame.f_back
            while caller is not None and id(caller.f_code) in wrappers:
                caller = caller.f_back
            if name in self.armed and caller is not None and self.refuses(caller):
                self._refuse(name)

    @contextmanager
    def arm(self, names):
        """While the block runs, the named functions refuse untrusted callers (in every thread)."""
        self.armed = frozenset(n for n in names if any(n == name for name, _ in self.originals.values()))
        profiling = bool(self.armed)
        if profiling:
            sys.setprofile(self._profile)
            threading.setprofile(self._profile)
        try:
            yield
        finally:
            if profiling:
                sys.setprofile(None)
                threading.setprofile(None)
            self.armed = frozenset()


def outside_library(frame) -> bool:
    """The child's rule: only minimech's and torch's own code may call an armed function."""
    return not frame.f_code.co_filename.startswith(_library_dirs())


# ---- the conditions of one call ---------------------------------------------------------------------------------

@contextmanager
def lesson_conditions():
    """The call runs with torch's default dtype float32, whatever the learner's file set at import, and leaves the
    default dtype and grad mode as it found them (a learner's global change must not reach the next call)."""
    dtype, grad = torch.get_default_dtype(), torch.is_grad_enabled()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)


def call_with(fn, args: dict):
    """fn(**args); when the learner renamed the parameters but kept their order, fn(*args.values())."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read (a builtin, a C function)
        return fn(**args)
    try:
        signature.bind(**args)
    except TypeError:
        try:
            signature.bind(*args.values())
        except TypeError:
            return fn(**args)  # neither fits: let Python's own error name the mismatch
        return fn(*args.values())
    return fn(**args)


# ---- one exercise -----------------------------------------------------------------------------------------------

def build_cases(exercise: Exercise, seed: int, model_name: str, models: dict | None = None) -> list[Case]:
    """The exercise's cases (global RNG reset too, for cases() that use it); models: where ctx.model() keeps its
    models (the oracle's own dict; None: this process's)."""
    torch.manual_seed(seed)
    cases = exercise.cases(CaseContext(seed, model_name, models))
    if not cases or not all(isinstance(c, Case) for c in cases):
        raise TypeError(f"cases() of exercise {exercise.id} must return a non-empty list of Case")
    return cases


def call_case(fn, args: dict, learner_file: str, attempts: list, prints: dict[int, dict], traps: LibraryTraps,
              library=()) -> tuple[dict, object]:
    """(facts, output) of one call: facts {"returned": True}, {"raised": ...}, {"forbidden": ...} or
    {"mutated": ...}. prints {id(model): fingerprint} carries each model's fingerprint from one call to the next."""
    models = models_in(args)
    for model in models:
        if id(model) not in prints:
            prints[id(model)] = model_fingerprint(model)
    before = len(attempts)
    facts, output = {"returned": True}, None
    try:
        with lesson_conditions(), traps.arm(library):
            output = call_with(fn, args)
    except BaseException as exc:  # noqa: B036 - SystemExit, KeyboardInterrupt: a learner's call must not end the run
        facts = {"raised": exception_facts(exc, learner_file)}
    if len(attempts) > before:
        kind, name = attempts[before]
        facts = {"forbidden": {"kind": kind, "name": name}}
    mutated = _mutation(prints, models)
    if mutated:
        for model in models:
            forget_model(model)  # the next exercise loads a fresh copy
        facts = {"mutated": mutated}
    return facts, output


def run_exercise(module, function: str, library, cases_args: list[dict], seed: int, learner_file: str,
                 attempts: list, traps: LibraryTraps) -> tuple[dict, dict]:
    """{"missing": bool, "cases": [facts per case]} and the outputs' tensors, for one exercise."""
    record = {"missing": False, "cases": []}
    tensors: dict = {}
    fn = getattr(module, function, None)
    if not callable(fn):
        record["missing"] = True
        return record, tensors
    prints: dict[int, dict] = {}
    traps.install()  # modules the learner's file imported since the last exercise
    for index, args in enumerate(cases_args):
        torch.manual_seed(seed + index)
        facts, output = call_case(fn, args, learner_file, attempts, prints, traps, library)
        if "returned" in facts:
            try:
                facts = {"output": encode(output, tensors, f"c{index}")}
            except WireError as exc:
                facts = {"raised": exception_facts(exc, learner_file)}
        record["cases"].append(facts)
        if "mutated" in facts or "forbidden" in facts or facts.get("raised", {}).get("kind") == "exit":
            break  # the exercise is lost; the remaining cases would run on a changed model or after an exit
    return record, tensors

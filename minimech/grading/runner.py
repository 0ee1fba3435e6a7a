"""Calling the learner's function on each case: the part that runs where the learner's code runs.

run_exercise() builds an exercise's cases, calls the learner's function on each, and returns a record (JSON-able)
plus the outputs' tensors. It never sees a reference answer. Around each call it fingerprints every model the call
could reach (its weights, buffers and attached hooks) so a call that changes a model is caught, and it sorts
exceptions into statuses: not attempted, error, memory, exited, forbidden import.
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import re
import sys
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
    """A submission imported a module it may not (e.g. the lesson's solutions)."""


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


def _models_in(args: dict) -> list[torch.nn.Module]:
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
        changed = [k for k in old.keys() | after.keys() if old.get(k) != after.get(k)]
        if changed:
            what = sorted(changed)[0]
            if what.startswith("hook"):
                return (f"your function left a hook attached ({what}): attach hooks with `with model.hooks([...]):` "
                        "so they are removed when the block ends")
            return (f"your function changed the model ({what} and {len(changed) - 1} more): work on a copy "
                    "(.clone()) instead of changing weights in place")
    return None


def _describe_input(value) -> str:
    if isinstance(value, torch.Tensor):
        return _tensor_digest(value)
    if isinstance(value, torch.nn.Module):  # cheap and exact: every shape, the 8 smallest tensors' bytes
        params = list(value.named_parameters())
        smallest = sorted(params, key=lambda item: (item[1].numel(), item[0]))[:8]
        return repr([(n, list(p.shape)) for n, p in params] + [_tensor_digest(p) for _, p in smallest])
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_describe_input(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k!r}:{_describe_input(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (int, float, str, bool, type(None))):
        return repr(value)
    return type(value).__name__


def input_digest(args: dict) -> str:
    """A digest of a case's inputs, compared between the two processes to catch non-deterministic cases()."""
    text = ";".join(f"{key}={_describe_input(args[key])}" for key in sorted(args))
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


# ---- exceptions -------------------------------------------------------------------------------------------------

def learner_line(exc: BaseException, learner_file: str) -> str:
    """'line 12: `return x.softmax(0)`' for the deepest frame in the learner's file, or ''."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if is_learner_code(f.filename, learner_file) or Path(f.filename).resolve() == Path(learner_file)]
    if not frames:
        return ""
    frame = frames[-1]
    cell = frame.filename[len(learner_file) + 1:] if frame.filename.startswith(f"{learner_file} cell ") else ""
    return f"your {cell + ', ' if cell else ''}line {frame.lineno}: `{(frame.line or '').strip()}`"


def classify(exc: BaseException, exercise_id: str, learner_file: str) -> tuple[str, str]:
    """(status, message) for an exception the learner's call raised."""
    where = learner_line(exc, learner_file)
    suffix = f" ({where})" if where else ""
    text = " ".join(str(exc).split())[:300]
    if isinstance(exc, NotImplementedError):
        other = re.search(r"EXERCISE (\d\d\.\d+)", text)
        if other and other.group(1) != exercise_id:
            return "error", f"this calls your exercise {other.group(1)}, which is not written yet{suffix}"
        return "not attempted", "not attempted yet (the function still raises NotImplementedError)"
    if isinstance(exc, ForbiddenImportError):
        return "forbidden import", f"{text}{suffix}"
    out_of_memory = isinstance(exc, RuntimeError) and any(m in text.lower() for m in MEMORY_MESSAGES)
    if isinstance(exc, MemoryError) or out_of_memory:
        return "memory", f"ran out of memory (over the lesson's memory_limit_mb): {type(exc).__name__} {text}{suffix}"
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return "error", (f"your code printed or wrote more than the grader keeps ({FILE_LIMIT_MB} MB): print less, "
                         f"e.g. shapes instead of whole tensors{suffix}")
    if isinstance(exc, AssertionError) and "daemonic processes" in text:
        return "error", f"your code starts processes (multiprocessing), which a graded function cannot: compute in " \
                        f"one process{suffix}"
    if isinstance(exc, SystemExit):
        return "exited", f"called sys.exit({exc.code!r}); return a value instead{suffix}"
    if isinstance(exc, WireError):
        return "error", f"your function {text}"
    return "error", f"{type(exc).__name__}: {text}{suffix}"


# ---- the conditions of one call ---------------------------------------------------------------------------------

def is_learner_code(filename: str, learner_file: str) -> bool:
    """Whether code compiled from `filename` is the learner's: their file, or a cell of their converted notebook."""
    return filename == learner_file or filename.startswith(f"{learner_file} cell ")


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


def library_bindings(names, learner_file: str) -> list[tuple[dict, str, object, str]]:
    """(namespace, attribute, function, dotted name) for every binding of the named library functions in minimech's
    modules, torch's and the learner's: found once per exercise (a scan of ~1,000 modules takes ~12 ms)."""
    originals = {}  # {id: (dotted name, function)}; classes are left alone (isinstance checks need them)
    for name in names:
        obj = _resolve(name)
        if callable(obj) and not isinstance(obj, type):
            originals[id(obj)] = (name, obj)
    if not originals:
        return []
    found = []
    for module in list(sys.modules.values()):
        module_name = getattr(module, "__name__", "") or ""
        if not (module_name.split(".")[0] in ("minimech", "torch", "learner_lesson")
                or getattr(module, "__file__", None) == learner_file):
            continue
        namespace = getattr(module, "__dict__", {})
        for attr, value in list(namespace.items()):
            if id(value) in originals and value is originals[id(value)][1]:
                found.append((namespace, attr, value, originals[id(value)][0]))
    return found


@contextmanager
def library_traps(bindings, learner_file: str, attempts: list):
    """While the block runs, calling one of the bound library functions (library_bindings) *from the learner's code*
    raises ForbiddenImportError; the library's own uses of them (model internals, other helpers) run as usual.
    Every binding is swapped, so `from minimech.analysis import x` is caught as well as `minimech.analysis.x`."""
    def make_trap(name, original):
        def trap(*args, **kwargs):
            if is_learner_code(sys._getframe(1).f_code.co_filename, learner_file):
                attempts.append(name)
                raise ForbiddenImportError(f"calls {name}, the library's own version of what this exercise "
                                           "asks you to write: write it yourself")
            return original(*args, **kwargs)
        return trap

    traps = {id(value): make_trap(name, value) for _, _, value, name in bindings}
    swapped = []
    try:
        for namespace, attr, value, _ in bindings:
            if namespace.get(attr) is value:  # still bound as found (the learner's code may have rebound it)
                namespace[attr] = traps[id(value)]
                swapped.append((namespace, attr, value))
        yield
    finally:
        for namespace, attr, value in swapped:
            namespace[attr] = value


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

def build_cases(exercise: Exercise, seed: int, model_name: str) -> list[Case]:
    """The exercise's cases, made the same way in both processes (global RNG reset too, for cases() that use it)."""
    torch.manual_seed(seed)
    cases = exercise.cases(CaseContext(seed, model_name))
    if not cases or not all(isinstance(c, Case) for c in cases):
        raise TypeError(f"cases() of exercise {exercise.id} must return a non-empty list of Case")
    return cases


def call_case(fn, case: Case, exercise_id: str, learner_file: str, forbidden_attempts: list,
              prints: dict[int, dict], library_bound=()) -> tuple[str, str, object]:
    """(status, message, output) of one call; status "ok" means it returned (right or wrong is decided elsewhere).
    prints {id(model): fingerprint} carries each model's fingerprint from one call to the next."""
    models = _models_in(case.args)
    for model in models:
        if id(model) not in prints:
            prints[id(model)] = model_fingerprint(model)
    attempts = len(forbidden_attempts)
    status, message, output = "ok", "", None
    try:
        with lesson_conditions(), library_traps(library_bound, learner_file, forbidden_attempts):
            output = call_with(fn, case.args)
    except BaseException as exc:  # noqa: B036 - SystemExit, KeyboardInterrupt: a learner's call must not end the run
        status, message = classify(exc, exercise_id, learner_file)
    if len(forbidden_attempts) > attempts and status != "forbidden import":
        status, message = "forbidden import", f"imported {forbidden_attempts[-1]!r}, which a submission may not"
    mutated = _mutation(prints, models)
    if mutated:
        for model in models:
            forget_model(model)  # the next exercise loads a fresh copy
        status, message = "model mutated", mutated
    return status, message, output


def run_exercise(module, exercise: Exercise, seed: int, model_name: str, learner_file: str,
                 forbidden_attempts: list, cases: list[Case] | None = None,
                 setup_error: str | None = None) -> tuple[dict, dict]:
    """The record of one exercise ({"exercise", "setup_error", "cases": [...]}) and its outputs' tensors.

    exercise needs only .id, .function and .library here. cases: built beforehand (the isolated child builds every
    exercise's cases before it imports the learner's file, then drops the answer key); None builds them now."""
    record = {"exercise": exercise.id, "setup_error": None, "cases": []}
    tensors: dict = {}
    fn = getattr(module, exercise.function, None)
    if not callable(fn):
        record["setup_error"] = (f"your file has no function {exercise.function}(): keep the exercise's function "
                                 "name as the lesson wrote it")
        return record, tensors
    if setup_error is not None:
        record["setup_error"] = setup_error
        return record, tensors
    if cases is None:
        try:
            cases = build_cases(exercise, seed, model_name)
        except Exception as exc:
            record["setup_error"] = f"grader error: building the inputs failed: {type(exc).__name__}: {exc}"
            return record, tensors
    prints: dict[int, dict] = {}
    bound = library_bindings(getattr(exercise, "library", ()), learner_file)
    for index, case in enumerate(cases):
        digest = input_digest(case.args)
        torch.manual_seed(seed + index)
        status, message, output = call_case(fn, case, exercise.id, learner_file, forbidden_attempts, prints, bound)
        structure = None
        if status == "ok":
            try:
                structure = encode(output, tensors, f"c{index}")
            except WireError as exc:
                status, message = "error", f"your function {exc}"
        record["cases"].append({"status": status, "message": message, "digest": digest, "output": structure,
                                "label": case.describe(), "weight": case.weight})
        if status in ("model mutated", "exited", "forbidden import"):
            break  # the exercise is lost; the remaining cases would run on a changed model or after an exit
    return record, tensors

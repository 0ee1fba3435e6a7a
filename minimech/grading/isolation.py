"""Running a learner's file in its own process, with a time limit and a memory limit.

This is process isolation, not a security sandbox: it keeps a crash, an endless loop, sys.exit, a memory bomb or a
changed model from costing more than the one exercise, and keeps stray files out of the instructor's folders. It
does not stop code that sets out to do harm (that reads files, opens sockets, or kills its parent): grade untrusted
code inside a container or VM, as Gradescope does.

The child is forked from a multiprocessing forkserver that has already imported torch and minimech, so a child
starts in milliseconds. In the child: a new session (so the whole process group can be killed), stdout and stderr
to a log file, RLIMIT_AS (memory) and RLIMIT_FSIZE (file size) set with resource.setrlimit, one torch thread, an
import guard for the lesson's forbidden modules, and a fresh temporary working directory. It sends small JSON
events up a pipe (ready, imported, start, done) and writes each exercise's record (JSON) and outputs (safetensors)
to files; the parent never unpickles anything the child sends.

The parent restarts the child after the exercise that killed or hung it, so the remaining exercises are still run.
"""

from __future__ import annotations

import builtins
import faulthandler
import gc
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import resource
import signal
import sys
import tempfile
import threading
import time
import types
from dataclasses import dataclass
from pathlib import Path

import torch

import minimech  # noqa: F401 - imported here so the forkserver has it before forking

from .api import Exercise
from .lessons import load_module
from .runner import FILE_LIMIT_MB, ForbiddenImportError, build_cases, classify, run_exercise
from .wire import tensors_from_bytes, tensors_to_bytes

STARTUP_LIMIT_S = 300  # importing torch in a cold forkserver on a busy machine; not the learner's time
MAX_FILE_BYTES = FILE_LIMIT_MB << 20  # the largest file the child may write (its log, its outputs)


# ---- in the child -----------------------------------------------------------------------------------------------

def _vm_size_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def install_import_guard(forbidden: list[str], attempts: list) -> None:
    """Make importing a forbidden module (or a submodule of one) raise ForbiddenImportError, and record it."""
    def is_forbidden(name: str) -> bool:
        return any(name == f or name.startswith(f + ".") for f in forbidden)

    def refuse(name: str):
        attempts.append(name)
        raise ForbiddenImportError(f"importing {name!r} is not allowed in a submission")

    class Guard:
        @staticmethod
        def find_spec(fullname, path=None, target=None):
            if is_forbidden(fullname):
                refuse(fullname)
            return None

    original = builtins.__import__

    def guarded(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0:
            if is_forbidden(name):
                refuse(name)
            for item in fromlist or ():
                if is_forbidden(f"{name}.{item}"):
                    refuse(f"{name}.{item}")
        return original(name, globals, locals, fromlist, level)

    sys.meta_path.insert(0, Guard())
    builtins.__import__ = guarded


def _lesson_files_loaded(lesson_dir: str) -> list[str]:
    """Modules loaded by path from the lesson's solutions.py, bugs.py or checks.py (a way round the import guard)."""
    # checks.py too: the grader's own copy has left sys.modules before the learner's file runs (_prepare)
    secret = {str(Path(lesson_dir, n).resolve()) for n in ("solutions.py", "bugs.py", "checks.py")}
    files = (str(getattr(m, "__file__", None) or "") for m in list(sys.modules.values()))
    return sorted({Path(f).name for f in files if f in secret})


def _child_setup(job: dict) -> None:
    os.setsid()  # its own process group: the parent kills the child and anything it started
    log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    faulthandler.enable(file=sys.stderr)  # a segfault leaves a traceback with the learner's line in the log
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises OSError instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    torch.set_num_threads(1)  # submissions run side by side, one core each
    sys.dont_write_bytecode = True
    os.chdir(job["workdir"])


def _send(conn, **event) -> None:
    conn.send_bytes(json.dumps(event).encode())


@dataclass(frozen=True)
class _Task:
    """What the child keeps of an exercise once the answer key is gone: no reference, no compare."""
    id: str
    function: str
    library: tuple


def _prepare(job: dict) -> dict[str, tuple]:
    """{exercise id: (task, cases, setup error)}, built before the learner's file is imported: so nothing the file
    does at import (torch.set_default_dtype, seeding) changes the inputs, and so the answer key (checks.py, with its
    reference functions) can leave the process before any learner code runs."""
    module_name = f"_minimech_checks_{job['lesson_id']}"
    checks = load_module(Path(job["checks"]), module_name)
    exercises: dict[str, Exercise] = {e.id: e for e in checks.EXERCISES}
    prepared, exercise = {}, None
    for ex_id in job["exercises"]:
        exercise = exercises[ex_id]
        task = _Task(exercise.id, exercise.function, tuple(exercise.library))
        try:
            prepared[ex_id] = (task, build_cases(exercise, job["seed"], job["model_name"]), None)
        except Exception as exc:
            prepared[ex_id] = (task, None, f"grader error: building the inputs failed: {type(exc).__name__}: {exc}")
    del checks, exercises, exercise
    sys.modules.pop(module_name, None)
    gc.collect()  # the reference functions are unreachable now; make them gone, not just unlisted
    return prepared


class _ForbiddenModule(types.ModuleType):
    """Stands in for an already-imported forbidden module on its parent package (`minimech.loading`), so reaching
    it as an attribute fails like importing it would."""

    def __init__(self, name: str, attempts: list):
        super().__init__(name)
        object.__setattr__(self, "_attempts", attempts)

    def __getattr__(self, attr):
        self._attempts.append(self.__name__)
        raise ForbiddenImportError(f"using {self.__name__}.{attr} is not allowed in a submission")


def _hide_forbidden_modules(forbidden: list[str], attempts: list) -> None:
    for name in forbidden:
        parent_name, _, child = name.rpartition(".")
        parent = sys.modules.get(parent_name) if parent_name else None
        if parent is not None and isinstance(getattr(parent, child, None), types.ModuleType):
            setattr(parent, child, _ForbiddenModule(name, attempts))  # sys.modules keeps it: library code uses it


# What a file needs only to dig the grader's objects out of the process (sys.modules alone is common and harmless).
GRADER_INTERNALS = re.compile(r"_minimech_checks|\bgc\.get_(objects|referrers|referents)\b")


def child_main(job: dict, conn) -> None:
    """The child's whole life: set up, import the learner's file, run the exercises, report each one."""
    _child_setup(job)
    prepared = _prepare(job)
    _send(conn, event="ready")
    limit = _vm_size_bytes() + job["memory_limit_mb"] * 2**20  # what is loaded already, plus the lesson's allowance
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    attempts: list[str] = []
    install_import_guard(job["forbidden"], attempts)
    _hide_forbidden_modules(job["forbidden"], attempts)
    learner_file = job["learner_file"]
    sys.path.insert(0, str(Path(learner_file).parent))
    reaching = GRADER_INTERNALS.search(Path(learner_file).read_text(errors="replace"))
    if reaching:
        _send(conn, event="import_failed", status="forbidden import",
              message=f"your file uses {reaching[0]}, which reaches into the grader's own objects; a submission "
                      "may not (remove it: the exercises need only their arguments)")
        return
    try:
        module = load_module(Path(learner_file), "learner_lesson")
        attempts += _lesson_files_loaded(job["lesson_dir"])
    except BaseException as exc:  # noqa: B036 - sys.exit at import time is the learner's, not ours
        status, message = classify(exc, "", learner_file)
        if attempts:
            status, message = "forbidden import", f"imports {attempts[0]!r}, which a submission may not"
        _send(conn, event="import_failed", status=status, message=f"your file failed to import: {message}")
        return
    if attempts:
        _send(conn, event="import_failed", status="forbidden import",
              message=f"your file imports {attempts[0]!r}, which a submission may not")
        return
    _send(conn, event="imported")
    for ex_id in job["exercises"]:
        try:  # each exercise starts with an empty log: one exercise's printing must not use up the next one's room
            sys.stdout.flush(), sys.stderr.flush()
            os.ftruncate(1, 0)
        except (OSError, ValueError):
            pass
        _send(conn, event="start", exercise=ex_id)
        loaded = set(_lesson_files_loaded(job["lesson_dir"]))
        task, cases, setup_error = prepared[ex_id]
        record, tensors = run_exercise(module, task, job["seed"], job["model_name"], learner_file, attempts,
                                       cases=cases, setup_error=setup_error)
        sneaked = set(_lesson_files_loaded(job["lesson_dir"])) - loaded
        for case in record["cases"] if sneaked else []:  # loaded solutions.py by path: as bad as importing it
            case.update(status="forbidden import", output=None, message=f"loaded {sorted(sneaked)[0]!r} by path, "
                        "from the lesson's own files, which a submission may not")
        base = Path(job["results"]) / ex_id
        try:
            data = tensors_to_bytes(tensors)
        except Exception as exc:  # too large, or a dtype safetensors cannot store
            record, data = {**record, "setup_error": f"your function's output cannot be sent back: {exc}"}, b""
        Path(f"{base}.safetensors").write_bytes(data)
        Path(f"{base}.json").write_text(json.dumps(record))
        _send(conn, event="done", exercise=ex_id)
        if any(case["status"] == "model mutated" for case in record["cases"]):
            # the later exercises' inputs share that model: a fresh child builds them again from the saved weights
            _send(conn, event="restart", after=ex_id)
            return
    _send(conn, event="finished")


# ---- in the parent ----------------------------------------------------------------------------------------------

_CONTEXT = None


def _context():
    """The forkserver context, preloading this module (torch, minimech) so that children fork ready."""
    global _CONTEXT
    if _CONTEXT is None:
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        _CONTEXT = multiprocessing.get_context(method)
        if method == "forkserver":
            _CONTEXT.set_forkserver_preload(["minimech.grading.isolation"])
    return _CONTEXT


_START_LOCK = threading.Lock()


def _start(proc) -> None:
    """proc.start(), hiding the caller's __main__: multiprocessing would otherwise re-run the caller's script (a
    notebook, a script without `if __name__ == "__main__":`) in the child before our code."""
    with _START_LOCK:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            proc.start()
        finally:
            sys.modules["__main__"] = main


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.kill()
    proc.join(10)


def _last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return lines[-1] if lines else "no log"


def _death(proc, log: Path, killed_for_time: bool, learner_file: str) -> tuple[str, str]:
    """(status, message) for a child that ended while running learner code."""
    if killed_for_time:
        return "timeout", "timeout"  # the caller words it, knowing the limit
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    code = proc.exitcode
    lines = re.findall(rf'File "{re.escape(learner_file)}(?: (cell \d+))?", line (\d+)', tail)
    where = f" (your {lines[0][0] + ', ' if lines[0][0] else ''}line {lines[0][1]})" if lines else ""
    if any(m in tail for m in ("MemoryError", "bad_alloc", "Cannot allocate memory")) or code == -signal.SIGKILL:
        return "memory", f"the process ran out of memory and died{where}"
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return "error", f"your code crashed the Python process ({name}){where}"
    return "exited", f"the process exited with status {code} while running your code (os._exit?){where}"


STOP = threading.Event()  # set by a grading run that was interrupted: every child still running is killed


class GradingStopped(Exception):
    """The run was interrupted (STOP) while this learner's file was being graded."""


def _next_event(proc, reader, deadline: float) -> tuple[dict | None, bool]:
    """(the child's next event, False), or (None, timed_out) once the child has died or run out of time."""
    while True:  # in slices, so that an interrupted run stops its children within a second
        left = deadline - time.monotonic()
        ready = multiprocessing.connection.wait([reader, proc.sentinel], timeout=max(0.0, min(left, 0.5)))
        if ready or left <= 0.5:
            break
        if STOP.is_set():
            raise GradingStopped("grading was interrupted")
    if not ready:
        return None, True
    if reader in ready or reader.poll(0):  # events sent just before a death are read first
        try:
            return json.loads(reader.recv_bytes()), False
        except (EOFError, OSError):
            pass
    return None, False


def _after_death(proc, job: dict, exercises: list[str], outcomes: dict, phase: str, current, timed_out: bool):
    """Record what the child's death costs; return the exercises still to run in a new child."""
    if timed_out:
        _kill(proc)
    proc.join(10)
    status, message = _death(proc, Path(job["log"]), timed_out, job["learner_file"])
    limit = job["time_limit_s"]
    if status == "timeout":
        message = {"startup": f"the grader could not start within {STARTUP_LIMIT_S} s",
                   "import": f"importing your file took over {limit} s (demo code outside `if MAIN:`?)",
                   }.get(phase, f"took over {limit} s (an endless loop?)")
    if phase == "exercises" and current:
        outcomes[current] = {"status": status, "message": message}
        return exercises[exercises.index(current) + 1:]
    if phase == "startup":
        status, message = "error", f"grader error: {message}; {_last_line(Path(job['log']))}"
    for ex_id in exercises:
        outcomes.setdefault(ex_id, {"status": status, "message": message})
    return []


def _run_child(job: dict, exercises: list[str], outcomes: dict) -> list[str]:
    """Run one child over `exercises`; fill `outcomes`; return the exercises still to run (after a death)."""
    ctx = _context()
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child_main, args=({**job, "exercises": exercises}, writer), daemon=True)
    _start(proc)
    writer.close()
    phase, current, deadline = "startup", None, time.monotonic() + STARTUP_LIMIT_S
    try:
        while True:
            event, timed_out = _next_event(proc, reader, deadline)
            if event is None:
                return _after_death(proc, job, exercises, outcomes, phase, current, timed_out)
            kind = event["event"]
            if kind == "ready":  # the learner's time starts: first importing their file
                phase, deadline = "import", time.monotonic() + job["time_limit_s"]
            elif kind == "imported":
                phase = "exercises"
            elif kind == "import_failed":
                for ex_id in exercises:
                    outcomes[ex_id] = {"status": event["status"], "message": event["message"]}
                return []
            elif kind == "start":
                current, deadline = event["exercise"], time.monotonic() + job["time_limit_s"]
            elif kind == "done":
                base = Path(job["results"]) / event["exercise"]
                outcomes[event["exercise"]] = {"record": json.loads(Path(f"{base}.json").read_text()),
                                               "tensors": tensors_from_bytes(Path(f"{base}.safetensors").read_bytes())}
                current = None
            elif kind == "restart":
                return exercises[exercises.index(event["after"]) + 1:]
            elif kind == "finished":
                return []
    finally:
        reader.close()
        if proc.is_alive():
            _kill(proc)
        proc.join(10)


def run_isolated(lesson, learner_file: Path, exercises: list[str], seed: int, model_name: str,
                 time_limit_s: float, memory_limit_mb: int) -> dict[str, dict]:
    """{exercise id: {"record", "tensors"} or {"status", "message"}} for a learner's file, run in child processes."""
    outcomes: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="minimech-grade-") as tmp:
        workdir, results = Path(tmp, "work"), Path(tmp, "results")
        workdir.mkdir()
        results.mkdir()
        job = {"lesson_id": lesson.id, "lesson_dir": str(lesson.path), "checks": str(lesson.file("checks.py")),
               "learner_file": str(Path(learner_file).resolve()), "seed": seed, "model_name": model_name,
               "forbidden": lesson.forbidden_imports, "time_limit_s": time_limit_s,
               "memory_limit_mb": memory_limit_mb, "workdir": str(workdir), "results": str(results),
               "log": str(Path(tmp, "child.log"))}
        remaining = list(exercises)
        while remaining:
            remaining = _run_child(job, remaining, outcomes)
    return outcomes

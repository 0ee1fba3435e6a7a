"""The learner's process (a child of the grader): everything here runs where untrusted code runs.

The child gets its job from the parent: the learner's source as text, each exercise's function name and library
list, the cases' arguments pickled by the oracle (trusted data: the child never loads checks.py, so the answer key
is never in its memory), the seed and the limits. It sets itself up (own session, log, file-size and core limits,
a clean environment, no new privileges, and in the user sandbox a uid of its own), says "ready", and only then
imports the learner's file and calls the functions. It sends events and facts up a pipe: JSON messages, and the
outputs' tensors as safetensors bytes. The parent trusts none of it beyond what a learner's own function could
return (verdicts.py), and never unpickles anything the child sends.

Run as `python -m minimech.grading.child FD JOB` for the bwrap sandbox (a fresh interpreter inside bwrap); forked
from the grader's forkserver otherwise.
"""

from __future__ import annotations

import builtins
import faulthandler
import json
import os
import resource
import signal
import sys
import types
from pathlib import Path

import torch

import minimech  # noqa: F401 - imported here so the forkserver has it before forking

from .lessons import load_module
from .oracle import loads
from .runner import FILE_LIMIT_MB, ForbiddenImportError, LibraryTraps, exception_facts, outside_library, run_exercise
from .sandbox import SANDBOX_MARKER, child_environment, drop_privileges, no_new_privileges
from .wire import tensors_to_bytes

MAX_FILE_BYTES = FILE_LIMIT_MB << 20  # the largest file the child may write (its log, its scratch files)
NPROC_LIMIT = 512  # processes and threads of one child's uid (user sandbox): no fork bomb


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
        attempts.append(("import", name))
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


class _ForbiddenModule(types.ModuleType):
    """Stands in for an already-imported forbidden module on its parent package (`minimech.loading`), so reaching
    it as an attribute fails like importing it would."""

    def __init__(self, name: str, attempts: list):
        super().__init__(name)
        object.__setattr__(self, "_attempts", attempts)

    def __getattr__(self, attr):
        self._attempts.append(("import", self.__name__))
        raise ForbiddenImportError(f"using {self.__name__}.{attr} is not allowed in a submission")


def _hide_forbidden_modules(forbidden: list[str], attempts: list) -> None:
    for name in forbidden:
        parent_name, _, child = name.rpartition(".")
        parent = sys.modules.get(parent_name) if parent_name else None
        if parent is not None and isinstance(getattr(parent, child, None), types.ModuleType):
            setattr(parent, child, _ForbiddenModule(name, attempts))  # sys.modules keeps it: library code uses it


def guard_files(secret: list[str], attempts: list) -> None:
    """An audit hook (it cannot be removed): opening a file under one of the `secret` paths (the lessons, the
    submissions) fails and is recorded. The sandbox keeps those files out of reach anyway where it can; this names
    the attempt in every mode."""
    roots = tuple(str(p).rstrip("/") for p in secret)

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes)):
            path = os.path.realpath(os.fsdecode(args[0]))
            if any(path == r or path.startswith(r + "/") for r in roots):
                name = Path(path).name.split(".")[0] + ".py" if "__pycache__" in path else Path(path).name
                attempts.append(("read", name))
                raise PermissionError(f"a submission may not open {name} (the lesson's or a classmate's)")

    sys.addaudithook(hook)


def prediction_values(module, names) -> dict:
    """The learner's module-level prediction_k values as text (repr, 300 characters at most), None if unset."""
    values = {}
    for name in names:
        value = vars(module).get(name)
        try:
            values[name] = None if value is None else repr(value)[:300]
        except Exception:  # a repr that fails is still a prediction recorded
            values[name] = f"<a {type(value).__name__}>"
    return values


def _import_prefix(dotted: str) -> None:
    """Import the longest importable module prefix of a dotted name ("minimech.analysis.lens.logit_lens")."""
    import importlib

    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            importlib.import_module(".".join(parts[:split]))
            return
        except ImportError:
            continue


def _send(conn, **event) -> None:
    conn.send_bytes(json.dumps(event).encode())


def _setup(job: dict) -> None:
    """Everything before the learner's code: its own session, limits, environment and (user sandbox) uid."""
    os.setsid()  # its own process group: the parent kills the child and anything it started
    if job.get("log"):  # forked: the log is opened here (bwrap: the parent made it stdout and stderr)
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
    faulthandler.enable(file=sys.stderr)  # a segfault leaves a traceback with the learner's line in the log
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises OSError instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    torch.set_num_threads(1)  # submissions run side by side, one core each
    sys.dont_write_bytecode = True
    os.environ.clear()
    os.environ.update(child_environment(job["workdir"]))
    no_new_privileges()
    if job.get("in_bwrap") and not os.path.exists(SANDBOX_MARKER):  # never run a submission outside its sandbox
        raise RuntimeError("the sandbox is not in place (bubblewrap's view is missing): not running the submission")
    if job.get("uid") is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (NPROC_LIMIT, NPROC_LIMIT))
        drop_privileges(job["uid"])
    os.chdir(job["workdir"])


def child_main(job: dict, conn) -> None:
    """The child's whole life: set up, import the learner's file, run the exercises, report the facts."""
    _setup(job)
    arguments = loads(job["payload"])
    learner_file = str(Path(job["workdir"], "lesson.py"))
    Path(learner_file).write_bytes(job["source"])
    library = {n for _, _, names in job["exercises"] for n in names}
    for name in library:  # the library's modules, loaded before the learner's file, so that their functions are trapped
        _import_prefix(name)
    _send(conn, event="ready")
    limit = _vm_size_bytes() + job["memory_limit_mb"] * 2**20  # what is loaded already, plus the lesson's allowance
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    attempts: list = []
    install_import_guard(job["forbidden"], attempts)
    _hide_forbidden_modules(job["forbidden"], attempts)
    traps = LibraryTraps(library, outside_library, attempts)
    traps.install()  # before the learner's file: whatever it binds at import is already the trap
    guard_files(job["secret"], attempts)
    try:
        module = load_module(Path(learner_file), "learner_lesson")
    except BaseException as exc:  # noqa: B036 - sys.exit at import time is the learner's, not ours
        facts = exception_facts(exc, learner_file)
        if attempts:
            _send(conn, event="import_failed", forbidden={"kind": attempts[0][0], "name": attempts[0][1]})
        else:
            _send(conn, event="import_failed", raised=facts)
        return
    if attempts:
        _send(conn, event="import_failed", forbidden={"kind": attempts[0][0], "name": attempts[0][1]})
        return
    _send(conn, event="imported", predictions=prediction_values(module, job.get("predictions", ())))
    for ex_id, function, library in job["exercises"]:
        try:  # each exercise starts with an empty log: one exercise's printing must not use up the next one's room
            sys.stdout.flush(), sys.stderr.flush()
            os.ftruncate(1, 0)
        except (OSError, ValueError):
            pass
        _send(conn, event="start", exercise=ex_id)
        record, tensors = run_exercise(module, function, library, arguments[ex_id], job["seed"], learner_file,
                                       attempts, traps)
        try:
            data = tensors_to_bytes(tensors)
        except Exception as exc:  # too large, or a dtype safetensors cannot store
            facts = {"raised": {"kind": "unsendable", "type": type(exc).__name__, "where": "",
                                "text": f"output cannot be sent back: {exc}"}}
            record, data = {"missing": False, "cases": [facts]}, b""
        _send(conn, event="done", exercise=ex_id, record=record, tensor_bytes=len(data))
        conn.send_bytes(data)
        if any("mutated" in facts for facts in record["cases"]):
            # the later exercises' inputs share that model: a fresh child unpickles them again
            _send(conn, event="restart", after=ex_id)
            return
    _send(conn, event="finished")


def _main(argv: list[str]) -> None:
    """bwrap's entry: `python -m minimech.grading.child FD JOB`: the job file is read and removed first."""
    from multiprocessing.connection import Connection

    fd, job_path = int(argv[0]), Path(argv[1])
    job = loads(job_path.read_bytes())
    job_path.unlink()  # (as root in the user sandbox: before the child drops to its uid in _setup)
    child_main(job, Connection(fd, readable=False))


if __name__ == "__main__":
    _main(sys.argv[1:])

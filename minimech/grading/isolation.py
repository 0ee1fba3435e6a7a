"""Running a learner's file in child processes, from the grading process's side.

The parent starts a child (child.py) per run of exercises, under the run's sandbox (sandbox.py, launchers.py). It reads the child's events with a
deadline per phase, and takes from them only data: the facts of each case and the outputs' tensors (safetensors,
size-limited). An event out of order ends the child and costs the learner the exercises left; the learner's time
starts once the child says "ready". The parent restarts the child after the exercise that killed it, hung or
changed a model, so the remaining exercises are still run; when a child ends, everything it started ends too.
"""

from __future__ import annotations

import ast
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import select
import signal
import struct
import tempfile
import threading
import time
from pathlib import Path

from .launchers import BwrapChild, ForkedChild, _kill_uid, _SandboxedServer
from .sandbox import UIDS, Sandbox
from .wire import MAX_OUTPUT_BYTES, tensors_from_bytes

PREDICTIONS = "predictions"  # the key, among the outcomes, of the learner's prediction values
STARTUP_LIMIT_S = 300  # importing torch in a cold interpreter on a busy machine; not the learner's time
MAX_EVENT_BYTES = 1 << 20  # one JSON event (a record of facts); tensors travel in their own message
REACHING = {"get_objects", "get_referrers", "get_referents"}  # gc's ways to dig the grader's objects out


# ---- the source check (in the parent, on the syntax tree: comments and docstrings do not count) ----------------

def reaches_grader(source: bytes) -> str | None:
    """'gc.get_objects' when the learner's code uses gc's object walks (attribute, import or getattr by string),
    which a submission may not; None otherwise (also for code that does not parse: importing it will say why)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        name = (node.attr if isinstance(node, ast.Attribute) else node.value
                if isinstance(node, ast.Constant) and isinstance(node.value, str) else None)
        if isinstance(node, ast.ImportFrom) and node.module == "gc":  # "*" counts only here, not as any string
            name = next((a.name for a in node.names if a.name in REACHING or a.name == "*"), None)
            if name:
                return f"gc.{name}"
        if name in REACHING:
            return f"gc.{name}"
    return None


# ---- talking to a child -----------------------------------------------------------------------------------------

STOP = threading.Event()  # set by a grading run that was interrupted: every child still running is killed


class GradingStopped(Exception):
    """The run was interrupted (STOP) while this learner's file was being graded."""


class Tampered(Exception):
    """The child sent something the protocol does not allow (learner code wrote into the grader's pipe)."""


def _wait(child, reader, deadline: float) -> tuple[bool, bool]:
    """(an event is there, timed out), waiting in slices so that an interrupted run stops within a second."""
    while True:
        left = deadline - time.monotonic()
        waitables = [reader] + ([child.sentinel] if child.sentinel is not None else [])
        ready = multiprocessing.connection.wait(waitables, timeout=max(0.0, min(left, 0.5)))
        if reader in ready or reader.poll(0):
            return True, False
        if ready or not child.alive():  # died: events sent just before the death were read above
            return False, False
        if left <= 0:
            return False, True
        if STOP.is_set():
            raise GradingStopped("grading was interrupted")


class ChannelClosed(Exception):
    """The child's end of the pipe is closed: it died (or closed it)."""


MESSAGE_LIMIT_S = 10  # a message must arrive whole within this time of its first byte (a real one takes ms)


def _read_exactly(fd: int, size: int, deadline: float) -> bytes:
    chunks = []
    while size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Tampered("a message that stalled halfway")
        if not select.select([fd], [], [], min(left, 0.5))[0]:
            continue
        data = os.read(fd, min(size, 1 << 20))
        if not data:
            raise ChannelClosed()
        chunks.append(data)
        size -= len(data)
    return b"".join(chunks)


def _receive(reader, limit: int) -> bytes:
    """One message in multiprocessing's framing (what the child's Connection.send_bytes writes), read with a
    deadline and a size limit: a child that sends half a message, or a huge one, cannot stall the grader."""
    deadline, fd = time.monotonic() + MESSAGE_LIMIT_S, reader.fileno()
    size = struct.unpack("!i", _read_exactly(fd, 4, deadline))[0]
    if size == -1:
        size = struct.unpack("!Q", _read_exactly(fd, 8, deadline))[0]
    if not 0 <= size <= limit:
        raise Tampered(f"a message of {size} bytes")
    return _read_exactly(fd, size, deadline)


def _event(reader) -> dict:
    try:
        event = json.loads(_receive(reader, MAX_EVENT_BYTES))
    except (ValueError, RecursionError):
        raise Tampered("a message that is not JSON") from None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        raise Tampered("a message without an event")
    return event


def _death(child, log: Path, learner_file_name: str = "lesson.py") -> tuple[str, str]:
    """(status, message) for a child that ended while running learner code."""
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    code = child.exitcode
    lines = re.findall(rf'File "[^"]*{re.escape(learner_file_name)}(?: (cell \d+))?", line (\d+)', tail)
    where = f" (your {lines[-1][0] + ', ' if lines[-1][0] else ''}line {lines[-1][1]})" if lines else ""
    if any(m in tail for m in ("MemoryError", "bad_alloc", "Cannot allocate memory")):
        return "memory", f"the process ran out of memory and died{where}"
    if code == -signal.SIGKILL:
        return "error", f"your code's process was killed (SIGKILL): it killed itself, or ran the machine out of " \
                        f"memory{where}"
    if "RecursionError" in tail or "Fatal Python error: Cannot recover from stack overflow" in tail:
        return "error", f"your code recursed too deeply and crashed the process{where}"
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return "error", f"your code crashed or stopped its own process ({name}){where}"
    return "exited", f"the process exited with status {code} while running your code (os._exit?){where}"


class _Run:
    """One child's run over some exercises: the events it may send, in order, and what each exercise got."""

    def __init__(self, job: dict, exercises: list[str], outcomes: dict, limit_s: float):
        self.job, self.exercises, self.outcomes, self.limit_s = job, exercises, outcomes, limit_s
        self.phase, self.current, self.next = "startup", None, 0
        self.deadline = time.monotonic() + STARTUP_LIMIT_S

    def lose_rest(self, status: str, message: str, from_current: bool = True) -> list[str]:
        start = self.exercises.index(self.current) if self.current and from_current else self.next
        for ex_id in self.exercises[start:]:
            self.outcomes.setdefault(ex_id, {"lost": (status, message)})
        return []

    def handle(self, event: dict, reader) -> list[str] | None:
        """The exercises still to run in a new child once this one is done, or None to keep reading."""
        kind = event["event"]
        if kind == "ready" and self.phase == "startup":  # the learner's time starts: first importing their file
            self.phase, self.deadline = "import", time.monotonic() + self.limit_s
        elif kind == "imported" and self.phase == "import":
            self.phase = "exercises"
            self.outcomes[PREDICTIONS] = event.get("predictions")  # checked by verdicts.predictions
        elif kind == "import_failed" and self.phase == "import":
            self.outcomes.update({ex_id: {"import_failed": event} for ex_id in self.exercises})
            return []
        elif kind == "start" and self.phase == "exercises" and self.current is None and \
                self.next < len(self.exercises) and event.get("exercise") == self.exercises[self.next]:
            self.current, self.next = self.exercises[self.next], self.next + 1
            self.deadline = time.monotonic() + self.limit_s
        elif kind == "done" and self.current is not None and event.get("exercise") == self.current:
            size = event.get("tensor_bytes")
            if not isinstance(size, int) or not 0 <= size <= MAX_OUTPUT_BYTES or not isinstance(event.get("record"),
                                                                                                  dict):
                raise Tampered("a malformed result")
            data = _receive(reader, MAX_OUTPUT_BYTES + 1)
            if len(data) != size:
                raise Tampered("a result of the wrong size")
            try:
                tensors = tensors_from_bytes(data)
            except Exception:
                raise Tampered("unreadable tensors") from None
            self.outcomes[self.current] = {"record": event["record"], "tensors": tensors}
            if self.job.get("progress"):
                self.job["progress"](self.current)
            self.current = None
        elif kind == "restart" and self.current is None and self.next > 0 and \
                event.get("after") == self.exercises[self.next - 1]:
            return self.exercises[self.next:]
        elif kind == "finished" and self.current is None and self.next == len(self.exercises):
            return []
        else:
            raise Tampered(f"an unexpected {kind!r} message")
        return None

    def after_death(self, child, log: Path, timed_out: bool) -> list[str]:
        if self.phase == "startup":  # nothing of the learner's has run yet: the grader failed
            why = f"could not start within {STARTUP_LIMIT_S} s" if timed_out else "died while starting"
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            return self.lose_rest("grader error", f"grader error: the learner's process {why}"
                                                  f"{'; ' + tail[0][:300] if tail else ''}")
        if timed_out:
            status = "timeout"
            message = (f"importing your file took over {self.limit_s:g} s (demo code outside `if MAIN:`?)"
                       if self.phase == "import" else f"took over {self.limit_s:g} s (an endless loop?)")
        else:
            status, message = _death(child, log)
        if self.phase == "exercises" and self.current:
            self.outcomes[self.current] = {"lost": (status, message)}
            return self.exercises[self.exercises.index(self.current) + 1:]
        return self.lose_rest(status, message, from_current=False)


def _run_child(job: dict, exercises: list[str], outcomes: dict, sandbox: Sandbox, hidden, log: Path) -> list[str]:
    """Run one child over `exercises`; fill `outcomes`; return the exercises still to run (after a death)."""
    reader, writer = multiprocessing.Pipe(duplex=False)
    progress = job.get("progress")  # the parent's callback: not for the child
    job = {**{k: v for k, v in job.items() if k != "progress"},
           "exercises": [e for e in job["exercises"] if e[0] in exercises]}
    log.write_bytes(b"")
    if sandbox.launcher == "bwrap":
        child = BwrapChild(job, writer, hidden, log)
    else:
        child = ForkedChild(job, writer, in_bwrap=sandbox.launcher == "bwrap-fork")
    writer.close()
    run = _Run({**job, "progress": progress}, exercises, outcomes, job["time_limit_s"])
    try:
        while True:
            has_event, timed_out = _wait(child, reader, run.deadline)
            if not has_event:
                child.kill()
                return run.after_death(child, log, timed_out)
            try:
                rest = run.handle(_event(reader), reader)
            except ChannelClosed:
                for _ in range(20):  # a dying child closes its end just before it is gone
                    if not child.alive():
                        break
                    time.sleep(0.1)
                if child.alive():
                    child.kill()
                    return run.lose_rest("error", "your code closed the grader's channel: the exercises from here on "
                                                  "are not graded")
                return run.after_death(child, log, False)
            except Tampered as exc:
                if run.phase == "startup":
                    raise
                return run.lose_rest("error", f"your code interfered with the grader ({exc} on its channel): the "
                                              "exercises from here on are not graded")
            if rest is not None:
                return rest
    finally:
        reader.close()
        child.kill()
        if job.get("uid") is not None:
            _kill_uid(job["uid"])


def run_isolated(lesson, source: bytes, exercises: list, oracle, time_limit_s: float, memory_limit_mb: int,
                 sandbox: Sandbox, secret=(), progress=None) -> dict[str, dict]:
    """{exercise id: outcome} for a learner's source, run in child processes under `sandbox`.

    exercises: [(id, function, library)] of exercises whose inputs the oracle built. secret: folders the child must
    not read (the lessons, the submissions), besides the lesson's own."""
    outcomes: dict[str, dict] = {}
    reaching = reaches_grader(source)
    if reaching:
        message = (f"your file uses {reaching}, which reaches into the grader's own objects; a submission may not "
                   "(remove it: the exercises need only their arguments)")
        return {ex_id: {"lost": ("forbidden import", message)} for ex_id, _, _ in exercises}
    from .lessons import lessons_root

    hidden = sorted({str(Path(p).resolve()) for p in (lesson.path, lessons_root(), *secret)})
    uid = UIDS.acquire() if sandbox.mode == "user" else None
    root = None
    if sandbox.launcher == "bwrap-fork":
        _SandboxedServer.get()
        root = _SandboxedServer.work_root  # the one folder the sandboxed forkserver's children can write into
    try:
        with tempfile.TemporaryDirectory(prefix="minimech-grade-", dir=root) as tmp:
            workdir = Path(tmp, "work")
            workdir.mkdir()
            if uid is not None:  # the child may pass through tmp and own its workdir; the log stays the parent's
                _kill_uid(uid)
                os.chmod(tmp, 0o711)
                os.chown(workdir, uid, uid)
            workdir.chmod(0o700)
            job = {"lesson_id": lesson.id, "source": source, "exercises": exercises, "payload": oracle.payload,
                   "seed": oracle.seed, "forbidden": lesson.forbidden_imports, "memory_limit_mb": memory_limit_mb,
                   "time_limit_s": time_limit_s, "workdir": str(workdir), "log": str(Path(tmp, "child.log")),
                   "uid": uid, "secret": hidden, "predictions": list(lesson.predictions), "progress": progress,
                   "in_bwrap": sandbox.launcher != "fork"}
            remaining = [ex_id for ex_id, _, _ in exercises]
            while remaining:
                remaining = _run_child(job, remaining, outcomes, sandbox, hidden, Path(tmp, "child.log"))
    finally:
        if uid is not None:
            UIDS.release(uid)
    return outcomes

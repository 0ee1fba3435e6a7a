"""Starting a learner's process (a child) the way the run's sandbox says, and ending it with all it started.

ForkedChild: forked from a forkserver that has torch and minimech loaded (starts in milliseconds): multiprocessing's
own (the none sandbox, and the user sandbox where bubblewrap does not work), or _SandboxedServer, a forkserver of
ours started inside bubblewrap (the user sandbox: children see only a read-only system and installation, have no
network, and each drops to its own uid). BwrapChild: a fresh interpreter in a bwrap sandbox of its own (the bwrap
sandbox, for a grader that is not root). _kill_uid ends whatever is left under a child's uid.
"""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.context
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import types
from multiprocessing import forkserver, popen_forkserver, resource_tracker, spawn
from pathlib import Path

from .oracle import dumps
from .sandbox import INSIDE_WORKDIR, Sandbox, bwrap_command, child_environment, processes_of

_CONTEXT = None
_START_LOCK = threading.Lock()


def _context():
    """The forkserver context, preloading the child's module (torch, minimech) so that children fork ready."""
    global _CONTEXT
    if _CONTEXT is None:
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        _CONTEXT = multiprocessing.get_context(method)
        if method == "forkserver":
            _CONTEXT.set_forkserver_preload(["minimech.grading.child"])
    return _CONTEXT


def _run_target(job, writer):
    from .child import child_main

    child_main(job, writer)


class _BwrapForkServer(forkserver.ForkServer):
    """multiprocessing's ForkServer, whose every (re)start runs Python inside bubblewrap (through `wrapper`).
    ForkServer restarts a dead server from connect_to_new_process: it must never come back outside the sandbox."""

    _exe_lock = threading.Lock()

    def __init__(self, wrapper: Path):
        super().__init__()
        self.wrapper = str(wrapper)

    def ensure_running(self):
        resource_tracker.ensure_running()  # outside the sandbox (ForkServer would start it with our executable)
        with self._exe_lock:
            original = spawn.get_executable()
            spawn.set_executable(self.wrapper)
            try:
                super().ensure_running()
            finally:
                spawn.set_executable(original)


class _SandboxedServer:
    """A forkserver of our own, started inside bubblewrap (the user sandbox, as root): the children it forks see
    only bwrap's view (read-only system and installation, no lessons, no network) and still start in milliseconds;
    each drops to its own uid and checks that it is inside the view. No PID namespace (the pids it reports must be
    the grader's own), and no --die-with-parent (tied to the thread that started it; the server ends by itself
    when the grader does)."""

    _server = None
    _lock = threading.Lock()
    work_root: Path | None = None

    @classmethod
    def get(cls):
        with cls._lock:
            if cls._server is None:
                cls.work_root = Path(tempfile.mkdtemp(prefix="minimech-sandbox-"))
                os.chmod(cls.work_root, 0o711)  # children pass through to their own folders; they list nothing
                wrapper = cls.work_root / "python-in-bwrap"
                command = bwrap_command(cls.work_root, _always_hidden(), [sys.executable], pid_namespace=False,
                                        work_inside=str(cls.work_root), die_with_parent=False)
                wrapper.write_text(f"#!/bin/sh\nexec {shlex.join(command)} \"$@\"\n")
                wrapper.chmod(0o700)
                cls._server = _BwrapForkServer(wrapper)
                cls._server.set_forkserver_preload(["minimech.grading.child"])
                cls._server.ensure_running()
            return cls._server


def warm_up(sandbox: Sandbox) -> None:
    """Start the forkserver the children will fork from, in the background (importing torch in it takes seconds;
    the oracle builds the inputs meanwhile)."""
    if sandbox.launcher == "bwrap":
        return
    start = _SandboxedServer.get if sandbox.launcher == "bwrap-fork" else _ensure_forkserver
    threading.Thread(target=start, name="minimech-forkserver", daemon=True).start()


def _ensure_forkserver() -> None:
    from multiprocessing import forkserver

    if _context().get_start_method() == "forkserver":
        forkserver.ensure_running()


def _always_hidden() -> list[str]:
    from .lessons import lessons_root

    return [str(lessons_root())]


class _SandboxedPopen(popen_forkserver.Popen):
    """multiprocessing's forkserver Popen, asking _SandboxedServer (not the global forkserver), without the
    parent's working folder or __main__ (neither is in the sandbox's view)."""

    def _launch(self, process_obj):
        from multiprocessing import context, reduction, util

        prep_data = {k: v for k, v in spawn.get_preparation_data(process_obj._name).items()
                     if k not in ("dir", "init_main_from_path", "init_main_from_name")}
        buf = io.BytesIO()
        context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            context.set_spawning_popen(None)
        self.sentinel, w = _SandboxedServer.get().connect_to_new_process(self._fds)
        _parent_w = os.dup(w)
        self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _SandboxedProcess(multiprocessing.context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj):
        return _SandboxedPopen(process_obj)


class ForkedChild:
    """A child forked from a forkserver (the user and none sandboxes): multiprocessing's, or _SandboxedServer."""

    def __init__(self, job: dict, writer, in_bwrap: bool = False):
        kind = _SandboxedProcess if in_bwrap else _context().Process
        self.proc = kind(target=_run_target, args=(job, writer), daemon=True)
        with _START_LOCK:  # hide the caller's __main__: multiprocessing would re-run a script or notebook first
            main = sys.modules.get("__main__")
            sys.modules["__main__"] = types.ModuleType("__main__")
            try:
                self.proc.start()
            finally:
                sys.modules["__main__"] = main
        self.pid, self.sentinel = self.proc.pid, self.proc.sentinel

    @property
    def exitcode(self):
        return self.proc.exitcode

    def alive(self) -> bool:
        return self.proc.is_alive()

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.kill()
        self.proc.join(10)


class BwrapChild:
    """A fresh interpreter inside bubblewrap: own namespaces, read-only system, nothing of the grader's in view."""

    def __init__(self, job: dict, writer, hidden, log: Path):
        workdir = Path(job["workdir"])
        # (user sandbox: the child drops to job["uid"] itself, once bwrap has built its view)
        (workdir / "job.pickle").write_bytes(dumps({**job, "log": None, "workdir": INSIDE_WORKDIR}))
        package_parent = str(Path(__file__).resolve().parents[2])  # -I ignores PYTHONPATH (Gradescope sets it)
        start = f"import sys; sys.path.insert(0, {package_parent!r}); from minimech.grading.child import _main; " \
                "_main(sys.argv[1:])"
        argv = [sys.executable, "-I", "-c", start, str(writer.fileno()), f"{INSIDE_WORKDIR}/job.pickle"]
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(bwrap_command(workdir, hidden, argv), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=out, pass_fds=[writer.fileno()],
                                         env=child_environment(INSIDE_WORKDIR), start_new_session=True)
        self.pid = self.proc.pid
        self.sentinel = os.pidfd_open(self.pid) if hasattr(os, "pidfd_open") else None

    @property
    def exitcode(self):
        code = self.proc.poll()
        return -(code - 128) if code is not None and code > 128 else code  # bwrap reports a signal as 128 + n

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)  # bwrap dies, and with it its PID namespace: everything inside
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(10)
        if self.sentinel is not None:
            os.close(self.sentinel)
            self.sentinel = None


def _kill_uid(uid: int) -> None:
    """Kill every process left under a child's uid (a double-forked survivor too): a tiny helper that runs as that
    uid sends SIGKILL to every process it may signal (kill(-1): all of that uid's, never anyone else's)."""
    for _ in range(5):
        if not processes_of(uid):
            return
        subprocess.run(["/bin/sh", "-c", "kill -9 -1"], user=uid, group=uid, extra_groups=[], cwd="/",
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30)

"""Where a learner's code runs: with the least privilege the platform allows, chosen once per grading run.

One trust boundary: the grading process (the parent) is trusted; every learner's process (a child) is not. The
parent builds the inputs and the right answers, and decides every mark from plain data a child sends back. A child
never holds the answer key: it gets its inputs pickled from the parent and its learner's source as text.

Modes (MINIMECH_SANDBOX=auto|user|bwrap|none picks one; auto takes the first that works, in this order):
  user   the grader runs as root (Gradescope, Docker, CI): each child drops to a uid of its own, one per running
         child (61000 + slot by default; MINIMECH_SANDBOX_UID sets the base; no account needed), with no groups
         and no new privileges, before it imports the learner's file. The answer keys (checks.py, solutions.py,
         bugs.py) are made readable by their owner only, the submissions folder is closed to others while the class
         is graded, and every process left under a child's uid is killed when the child ends.
  bwrap  not root, and bubblewrap (`apt-get install bubblewrap`) can make user namespaces: each child runs in a
         sandbox of its own with a read-only view of the system and the Python installation, no view of the
         lessons, the submissions or the outputs, its own PID namespace (it cannot see or signal the grader or
         other children; nothing it starts outlives it) and no network.
  none   neither: children are plain processes of the grader's user. They still get their inputs as data and
         cannot forge a mark, but they can read what the grader's user can read and write what it can write.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from .api import GradingError

MODES = ("user", "bwrap", "none")
SECRET_FILES = ("checks.py", "solutions.py", "bugs.py")  # a lesson's answer key and what would give it away
UID_SPAN = 1024  # uids the user mode may use: base .. base + UID_SPAN - 1


@dataclass(frozen=True)
class Sandbox:
    mode: str
    off: tuple = ()  # the protections this mode lacks, in words (empty: all on)
    # how children start: "fork" (from multiprocessing's forkserver), "bwrap-fork" (from a forkserver inside
    # bubblewrap: the user mode where bwrap works), "bwrap" (a fresh interpreter in a bwrap sandbox of its own)
    launcher: str = "fork"

    def describe(self) -> str:
        how = " (in bubblewrap's view: read-only system, no network)" if self.launcher == "bwrap-fork" else ""
        if not self.off:
            return f"sandbox: {self.mode} mode{how}"
        return f"sandbox: {self.mode} mode{how}; OFF: " + "; ".join(self.off)


NONE_OFF = ("submissions run as your own user: they can read your files (the answer key, other submissions) and "
            "write what you can write (the installation, the outputs)",
            "they can signal the grader and each other, and a process that leaves its process group can outlive "
            "grading", "run as root (each submission then gets a uid of its own) or install bubblewrap")


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@functools.lru_cache(maxsize=1)
def bwrap_works() -> bool:
    """Whether bubblewrap is installed and can make the namespaces a child needs (a container may forbid them)."""
    exe = shutil.which("bwrap")
    if not exe:
        return False
    try:
        run = subprocess.run([exe, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
                             capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return run.returncode == 0


def choose(requested: str | None = None) -> Sandbox:
    """The sandbox for this run: `requested` (or $MINIMECH_SANDBOX), else the strongest that works here."""
    requested = (requested or os.environ.get("MINIMECH_SANDBOX") or "auto").lower()
    if requested not in ("auto", *MODES):
        raise GradingError(f"MINIMECH_SANDBOX={requested!r}: use auto, user, bwrap or none")
    if requested in ("auto", "user", "bwrap") and is_root():  # as root, bwrap alone would run submissions as root
        if bwrap_works():
            return Sandbox("user", (), launcher="bwrap-fork")
        hidden = unreadable_installation()
        if not hidden:
            return Sandbox("user", ("the network is not isolated (the container's own policy applies)",))
        if requested == "user":
            raise GradingError(f"the user sandbox needs a Python installation other users can read ({hidden} is "
                               "not): install Python elsewhere (e.g. /usr/local), or install bubblewrap")
        return Sandbox("none", (f"the Python installation ({hidden}) is not readable by other users, so "
                                "submissions cannot run under a uid of their own",) + NONE_OFF)
    if requested == "user":
        raise GradingError("the user sandbox needs root (it gives each submission a uid of its own); "
                           "use MINIMECH_SANDBOX=bwrap or none")
    if requested in ("auto", "bwrap") and sys.platform.startswith("linux") and bwrap_works():
        return Sandbox("bwrap", launcher="bwrap")
    if requested == "bwrap":
        raise GradingError("bubblewrap is missing or cannot make user namespaces here (apt-get install bubblewrap; "
                           "a container may forbid namespaces): use MINIMECH_SANDBOX=none to grade without it")
    return Sandbox("none", NONE_OFF)


def unreadable_installation() -> str | None:
    """The first folder of the Python installation (or minimech, or the weights) that other users cannot read or
    pass through, or None: a child under a uid of its own must import from there."""
    for folder in _python_dirs():
        path = Path(folder)
        for step in [*reversed(path.parents), path]:
            try:
                mode = step.stat().st_mode
            except OSError:
                return str(step)
            if not mode & 0o001 or (step == path and not mode & 0o004):
                return str(step)
    return None


# ---- user mode: a uid per running child -------------------------------------------------------------------------

def _uid_base() -> int:
    text = os.environ.get("MINIMECH_SANDBOX_UID", "61000")
    if not text.isdigit() or not 1000 <= int(text) <= 2**31 - UID_SPAN:
        raise GradingError(f"MINIMECH_SANDBOX_UID={text!r}: give a uid from 1000 to {2**31 - UID_SPAN}")
    return int(text)


class UidSlots:
    """The uids children run under: one per running child, never a uid with an account (so never a person's), and
    never one another grading process on this machine holds (a lock file per uid, released when its holder dies)."""

    def __init__(self):
        self._held: dict[int, int] = {}  # uid -> the open lock file
        self._free: list[int] = []
        self._lock = threading.Lock()

    def _lock_dir(self) -> Path:
        import tempfile

        folder = Path(tempfile.gettempdir()) / f"minimech-sandbox-uids-{os.geteuid()}"
        folder.mkdir(mode=0o700, exist_ok=True)
        return folder

    def acquire(self) -> int:
        import fcntl

        with self._lock:
            if self._free:
                return self._free.pop()
            base = _uid_base()
            for uid in range(base, base + UID_SPAN):
                if uid in self._held:
                    continue
                try:
                    pwd.getpwuid(uid)
                    continue  # an account: a person's or a service's
                except KeyError:
                    pass
                fd = os.open(self._lock_dir() / f"{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    continue  # another grading process holds it
                self._held[uid] = fd
                return uid
            raise GradingError(f"no free uid in {base}..{base + UID_SPAN - 1} for a submission")

    def release(self, uid: int) -> None:
        with self._lock:
            self._free.append(uid)


UIDS = UidSlots()


def processes_of(uid: int) -> list[int]:
    """Pids whose real uid is `uid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            line = next((line for line in status.splitlines() if line.startswith("Uid:")), "")
            if line.split()[1:2] == [str(uid)]:
                found.append(int(entry.name))
    return found


def drop_privileges(uid: int) -> None:
    """Become `uid` (and gid `uid`) with no supplementary groups, for good; refuse to go on if root remains."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise RuntimeError("could not drop root")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise RuntimeError("root could be regained after dropping it")


def no_new_privileges() -> None:
    """PR_SET_NO_NEW_PRIVS: setuid programs (su, sudo) cannot raise this process's privileges (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    except (OSError, AttributeError):
        pass


def protect_answer_keys(lesson_dirs) -> list[Path]:
    """As root: make each lesson's answer-key files readable by their owner only; returns the files changed."""
    changed = []
    for folder in lesson_dirs:
        for name in SECRET_FILES:
            path = Path(folder) / name
            try:
                mode = path.stat().st_mode & 0o777
            except OSError:
                continue
            if mode & 0o077:
                os.chmod(path, mode & 0o700)
                changed.append(path)
    return changed


class ClosedFolder:
    """Closes a folder to other users while a class is graded (mode 0700), and reopens it as it was."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.mode = None

    def __enter__(self):
        mode = self.folder.stat().st_mode & 0o7777
        if mode & 0o077:
            self.mode = mode
            os.chmod(self.folder, mode & 0o7700)
        return self

    def __exit__(self, *exc):
        if self.mode is not None:
            os.chmod(self.folder, self.mode)


# ---- bwrap mode -------------------------------------------------------------------------------------------------

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc")
INSIDE_WORKDIR = "/sandbox"  # where a bwrap child sees its work folder


def _python_dirs() -> list[str]:
    """What a child's Python needs to see: the interpreter, its libraries, minimech and the shipped weights."""
    import site
    import sysconfig

    import minimech

    from ..loading import weights_dir

    paths = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
             str(Path(sys.executable).resolve().parent), str(Path(minimech.__file__).resolve().parent),
             str(Path(weights_dir()).resolve()), *site.getsitepackages(), *sysconfig.get_paths().values()}
    # not sys.path: it may hold a source checkout (its .git has the answer key's history) or the tests
    return sorted({str(Path(p).resolve()) for p in paths if p and Path(p).exists()})


SANDBOX_MARKER = "/.minimech-sandbox"  # exists only inside bwrap_command's view: a child checks it is there


def bwrap_command(workdir: Path, hidden, argv: list[str], pid_namespace: bool = True,
                  work_inside: str = None, die_with_parent: bool = True) -> list[str]:
    """bwrap's command line: the system and Python read-only, `hidden` folders replaced by empty ones (the
    lessons, the submissions), a private /tmp, `workdir` writable as /sandbox, new namespaces, gone with its
    parent."""
    # as root (the user sandbox) no user namespace: the child drops to its own uid itself, once bwrap has built its
    # view (so it can reach a Python under /root); otherwise every namespace, and no capabilities
    namespaces = (["--unshare-ipc", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
                  if is_root() else ["--unshare-all", "--cap-drop", "ALL"])
    if is_root() and pid_namespace:
        namespaces.append("--unshare-pid")
    command = [shutil.which("bwrap") or "bwrap", *namespaces, *(["--die-with-parent"] if die_with_parent else []),
               "--new-session", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
               "--ro-bind", "/dev/null", SANDBOX_MARKER]
    bound = []
    for path in list(SYSTEM_DIRS) + _python_dirs():
        if Path(path).exists() and not any(path == b or path.startswith(b.rstrip("/") + "/") for b in bound):
            bound.append(path)
    # the folders leading to a bound one, made passable (bwrap run as root makes them 0700: a Python under /root)
    parents = sorted({str(p) for b in bound for p in Path(b).parents if str(p) != "/"}, key=len)
    for parent in parents:
        command += ["--perms", "0755", "--dir", parent]
    for path in bound:
        command += ["--ro-bind", path, path]
    for path in sorted({str(Path(h).resolve()) for h in hidden}):
        inside = any(path == b or path.startswith(b.rstrip("/") + "/") for b in bound)
        if inside and Path(path).is_dir():
            command += ["--tmpfs", path]
        elif inside and Path(path).exists():
            command += ["--ro-bind", "/dev/null", path]
    inside = work_inside or INSIDE_WORKDIR
    command += ["--bind", str(workdir), inside, "--chdir", inside, "--", *argv]
    return command


def child_environment(workdir) -> dict[str, str]:
    """The only environment a child gets (the grader's may hold tokens or paths a submission has no business with)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir),
           "MPLCONFIGDIR": str(workdir), "MPLBACKEND": "Agg", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "USER": "student", "LOGNAME": "student"}
    if os.environ.get("MINIMECH_WEIGHTS"):
        env["MINIMECH_WEIGHTS"] = os.environ["MINIMECH_WEIGHTS"]
    return env

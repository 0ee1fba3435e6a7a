"""A class of honest and hostile submissions (tests/fixtures/hostile), graded as a class is, once per sandbox mode:
no hostile submission gains a mark it did not honestly earn, every honest student gets full marks, the outputs are
valid and complete, no grader file changes, and nothing is left running. The user mode (the grader as root: CI runs
as root) is tested for real: a submission cannot read checks.py or write the weights. Library traps are checked
route by route in this process (fast), and the Gradescope zip against a forged results.json."""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from minimech.grading import fill_solutions, get_lesson
from minimech.grading.classroom import grade_submissions, write_outputs
from minimech.grading.sandbox import bwrap_works, is_root, processes_of, unreadable_installation

ROOT = Path(__file__).resolve().parent / "fixtures" / "lessons"
HOSTILE = Path(__file__).resolve().parent / "fixtures" / "hostile"
REPO = Path(__file__).resolve().parent.parent
FULL = 6.0
# what each hostile submission honestly earns (its 99.2, written plainly beside its attack); everything else is 0
HONEST_MARKS = {"survivor": 1.0, "trap_default_arg": 1.0, "trap_thread": 1.0, "trap_exec_string": 1.0}
# (student, exercise): (status, a fragment of its message)
STATUSES = {
    ("blame", "99.1"): ("error", "recursed too deeply"),
    ("blame", "99.2"): ("error", "SIGKILL"),
    ("blame", "99.3"): ("timeout", "took over"),
    ("forge_pipe", "99.1"): ("error", "the grader's channel"),
    ("trap_default_arg", "99.1"): ("forbidden import", "write it yourself"),
    ("trap_thread", "99.1"): ("forbidden import", "write it yourself"),
    ("trap_exec_string", "99.1"): ("forbidden import", "write it yourself"),
    ("reader", "99.1"): ("forbidden import", "checks.py"),
}
# the user sandbox needs root, and either bubblewrap or a Python installation other users can read
USER_MODE = is_root() and (bwrap_works() or unreadable_installation() is None)
IN_EVERY_MODE = ["forge_pipe", "patch_runner", "reader", "writer", "signaller", "survivor", "blame"]
FORGERIES = ["forge_pipe", "patch_runner"]  # the same in every mode (the parent decides): run in two modes, not three
PROBES = [name for name in IN_EVERY_MODE if name not in FORGERIES]
TRAPS = ["trap_default_arg", "trap_thread", "trap_exec_string"]


def tree_digest(*folders) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for folder in folders
            for p in sorted(Path(folder).rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def survivors() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "mm-survivor":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def write_class(lesson, folder: Path, out_dir: Path, hostile: list[str]) -> None:
    """Two honest students and the hostile ones, their placeholders filled with this run's real paths."""
    right = fill_solutions(lesson)
    for name in ("ann", "bob"):
        (folder / name).mkdir(parents=True)
        (folder / name / "lesson.py").write_text(right)
    import minimech
    import site

    paths = {"__CHECKS__": lesson.path / "checks.py", "__SOLUTIONS__": lesson.path / "solutions.py",
             "__CLASSMATE__": folder / "ann" / "lesson.py", "__OUT_DIR__": out_dir,
             "__WEIGHTS__": REPO / "weights" / "mini-4l" / "model.safetensors",
             "__GRADER_FILE__": Path(minimech.__file__).parent / "grading" / "verdicts.py",
             "__SITE__": site.getsitepackages()[0],
             "__OUTPUTS__": f"{out_dir / 'grades.csv'}|{out_dir / 'results.json'}"}
    for name in hostile:
        text = (HOSTILE / f"{name}.py").read_text()
        for key, value in paths.items():
            text = text.replace(key, str(value))
        (folder / name).mkdir()
        (folder / name / "lesson.py").write_text(text)


def check_class(rows: dict[str, dict], results: dict, hostile: list[str]) -> None:
    """rows: the CSV's {student: row}; results: the Gradescope JSON {student: results.json}."""
    assert sorted(rows) == sorted(["ann", "bob", *hostile]) == sorted(results)
    for name in ("ann", "bob"):
        assert float(rows[name]["total"]) == FULL, (name, rows[name])
    for name in hostile:
        assert float(rows[name]["total"]) == HONEST_MARKS.get(name, 0.0), (name, rows[name])
        assert results[name]["score"] == pytest.approx(HONEST_MARKS.get(name, 0.0))
        assert "grader error" not in rows[name]["notes"], (name, rows[name]["notes"])
    for (name, ex_id), (status, fragment) in STATUSES.items():
        if name in hostile:
            test = next(t for t in results[name]["tests"] if t["number"] == ex_id)
            assert test["output"].startswith(status + ":") and fragment in test["output"], (name, test["output"])


@pytest.fixture(scope="module")
def lesson():
    return get_lesson("99", ROOT)


@pytest.mark.skipif(not USER_MODE, reason="the user sandbox needs root (CI runs as root) and bwrap or a readable Python")
def test_a_hostile_class_in_the_user_sandbox(lesson, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMECH_SANDBOX", "user")
    folder, out = tmp_path / "subs", tmp_path / "out"
    out.mkdir()
    write_class(lesson, folder, out, IN_EVERY_MODE + TRAPS)
    before = tree_digest(REPO / "minimech", REPO / "weights", lesson.path)
    grades = grade_submissions(lesson, folder, jobs=2, seed=3, time_limit_s=4,
                               outputs=(out / "grades.csv", out / "results.json"))
    write_outputs(grades, out / "grades.csv", out / "results.json")
    assert grades.sandbox.mode == "user"
    time.sleep(1)  # a survivor that outlived its child would have rewritten the outputs by now
    rows = {r["student"]: r for r in csv.DictReader((out / "grades.csv").open())}
    check_class(rows, json.loads((out / "results.json").read_text()), IN_EVERY_MODE + TRAPS)
    assert tree_digest(REPO / "minimech", REPO / "weights", lesson.path) == before
    assert (lesson.path / "checks.py").stat().st_mode & 0o077 == 0  # the answer key: its owner's only
    assert not survivors()
    base = int(os.environ.get("MINIMECH_SANDBOX_UID", "61000"))
    assert not [uid for uid in range(base, base + 8) if processes_of(uid)]


@pytest.mark.skipif(not bwrap_works(), reason="bubblewrap is missing or cannot make namespaces here")
def test_a_hostile_class_in_the_bwrap_sandbox(lesson, tmp_path, monkeypatch, capsys):
    """The bwrap mode, as an unprivileged grader runs it (as root here: the grader is told it is not, so bwrap makes
    a user namespace with no capabilities, as it does for a user). The probes meet the sandbox's view: read-only
    system and installation, no lessons, no submissions, no outputs, its own PID namespace."""
    from minimech.cli import main
    from minimech.grading import sandbox

    monkeypatch.setattr(sandbox, "is_root", lambda: False)
    monkeypatch.setenv("MINIMECH_SANDBOX", "bwrap")
    monkeypatch.setenv("MINIMECH_LESSONS", str(ROOT))
    folder, out = tmp_path / "subs", tmp_path / "out"
    out.mkdir()
    write_class(lesson, folder, out, PROBES)
    before = tree_digest(REPO / "minimech", REPO / "weights", lesson.path)
    assert main(["grade", "99", str(folder), "--jobs", "2", "--seed", "3", "--time-limit", "4", "--csv",
                 str(out / "grades.csv"), "--gradescope", str(out / "results.json")]) == 0
    err = capsys.readouterr().err
    assert "sandbox: bwrap mode" in err and "OFF" not in err
    time.sleep(1)
    rows = {r["student"]: r for r in csv.DictReader((out / "grades.csv").open())}
    check_class(rows, json.loads((out / "results.json").read_text()), PROBES)
    assert tree_digest(REPO / "minimech", REPO / "weights", lesson.path) == before
    assert not survivors()


def test_the_none_sandbox_says_what_is_off_and_still_decides_every_mark(lesson, tmp_path, monkeypatch, capsys):
    """Without a sandbox, forgeries still gain nothing: the parent decides every mark (destructive probes are left
    out: in this mode they would succeed, as the warning says)."""
    from minimech.cli import main

    monkeypatch.setenv("MINIMECH_SANDBOX", "none")
    monkeypatch.setenv("MINIMECH_LESSONS", str(ROOT))
    folder, out = tmp_path / "subs", tmp_path / "out"
    out.mkdir()
    write_class(lesson, folder, out, ["forge_pipe", "patch_runner"])
    assert main(["grade", "99", str(folder), "--jobs", "2", "--seed", "3", "--csv", str(out / "g.csv"),
                 "--gradescope", str(out / "r.json")]) == 0
    err = capsys.readouterr().err
    assert "sandbox: none mode; OFF:" in err and "can read your files" in err
    rows = {r["student"]: r for r in csv.DictReader((out / "g.csv").open())}
    check_class(rows, json.loads((out / "r.json").read_text()), ["forge_pipe", "patch_runner"])


# ---- library traps, route by route (in this process) --------------------------------------------------------

LEARNER_ROUTES = '''
import functools, threading, torch
import torch.nn.functional as F

def default_arg(x, f=torch.softmax):
    return f(x, -1)

def closure():
    g = F.softmax
    return lambda x: g(x, -1)

def thread(x):
    out = []
    t = threading.Thread(target=lambda: out.append(torch.softmax(x, -1)))
    t.start(); t.join()
    return out[0]

def exec_string(x):
    scope = {"torch": torch, "x": x}
    exec("y = torch.softmax(x, -1)", scope)
    return scope["y"]

def by_name(x):
    return getattr(torch, "soft" + "max")(x, -1)

def partial(x):
    return functools.partial(torch.softmax, dim=-1)(x)

def mapped(x):
    return list(map(torch.softmax, [x], [-1]))[0]

def dug_out(x):
    cells = [c.cell_contents for c in torch.softmax.__closure__ or ()]
    original = next(c for c in cells if callable(c) and getattr(c, "__name__", "") == "softmax")
    return original(x, -1)

def through_c_module(x):
    return torch._C._VariableFunctions.softmax(x, -1)

def through_the_library(model, tokens):  # a model's forward uses softmax inside: allowed
    return model(tokens)
'''


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the refused thread's own error
def test_library_traps_catch_every_route_to_the_function_and_let_the_library_use_it(odd_model):
    from minimech.grading.runner import ForbiddenImportError, LibraryTraps, outside_library

    names = ("torch.softmax", "torch.nn.functional.softmax")
    captured_before = torch.softmax  # an original bound before the traps (e.g. by a module imported earlier)
    attempts: list = []
    traps = LibraryTraps(names, outside_library, attempts)
    traps.install()
    try:
        scope: dict = {}
        exec(compile(LEARNER_ROUTES, "/tmp/learner/lesson.py", "exec"), scope)  # after install, as in a child
        x = torch.randn(3, 4)
        routes = {"default_arg": lambda: scope["default_arg"](x), "closure": lambda: scope["closure"]()(x),
                  "thread": lambda: scope["thread"](x), "exec_string": lambda: scope["exec_string"](x),
                  "by_name": lambda: scope["by_name"](x), "partial": lambda: scope["partial"](x),
                  "mapped": lambda: scope["mapped"](x), "dug_out": lambda: scope["dug_out"](x),
                  "through_c_module": lambda: scope["through_c_module"](x),
                  "captured_before": lambda: eval("f(x, -1)", {"f": captured_before, "x": x})}
        for route, call in routes.items():
            before = len(attempts)
            with traps.arm(names):
                try:
                    call()
                except (ForbiddenImportError, IndexError):  # the thread's refusal leaves it no result
                    pass
            assert len(attempts) > before, f"{route}: the trap missed it"
        tokens = torch.randint(0, 17, (2, 5))
        with traps.arm(names):
            out = scope["through_the_library"](odd_model, tokens)
        assert torch.equal(out, odd_model(tokens)) and len(attempts) == len(routes)
        assert torch.equal(scope["default_arg"](x), torch.softmax(x, -1))  # disarmed: a call is a call
    finally:
        traps.uninstall()
    assert torch.softmax is captured_before


# ---- Gradescope -------------------------------------------------------------------------------------------------

FORGER = '''
import ctypes, os, signal
libc = ctypes.CDLL(None)
root = os.environ.get("MINIMECH_AUTOGRADER_ROOT", "/autograder")
forged = b'{"score": 100.0, "tests": []}'
for path in ("__RESULTS__", os.path.join(root, "results", "results.json")):
    fd = libc.open(path.encode(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)  # open(2): past Python's hooks
    if fd >= 0:
        libc.write(fd, forged, len(forged))
        libc.close(fd)
try:
    os.kill(os.getppid(), signal.SIGKILL)  # then kill the grader, so that the forgery would stand
except OSError:
    pass
'''


@pytest.mark.skipif(not USER_MODE, reason="Gradescope runs the autograder as root, in the user sandbox")
def test_gradescope_results_come_only_from_the_graders_verdicts(lesson, tmp_path, monkeypatch):
    from minimech.cli import main

    monkeypatch.setenv("MINIMECH_LESSONS", str(ROOT))
    assert main(["autograder", "99", "--out", str(tmp_path / "autograder.zip")]) == 0
    root = tmp_path / "autograder"
    with zipfile.ZipFile(tmp_path / "autograder.zip") as archive:
        archive.extractall(root / "source")
        setup = archive.read("setup.sh").decode()
    assert "pip install --extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in setup
    assert "chmod 600 /autograder/source/minimech/lessons/*/checks.py" in setup
    shutil.copy(root / "source" / "run_autograder", root / "run_autograder")
    (root / "submission").mkdir(parents=True)
    results = root / "results" / "results.json"
    text = FORGER.replace("__RESULTS__", str(results)) + swap_mask(fill_solutions(lesson))
    (root / "submission" / "lesson.py").write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("MINIMECH_LESSONS", "PYTHONPATH")}
    env.update(MINIMECH_AUTOGRADER_ROOT=str(root), MINIMECH_PYTHON=sys.executable)
    run = subprocess.run(["bash", str(root / "run_autograder")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(results.read_text())
    assert [(t["number"], t["status"], t["score"]) for t in result["tests"]] == [
        ("99.1", "passed", 2.0), ("99.2", "failed", 0.0), ("99.3", "passed", 3.0)], [t["output"] for t in result["tests"]]
    assert result["score"] == 5.0
    for test in result["tests"]:  # clean names; a passed test's output is its score line and case count, nothing
        assert test["name"].startswith(test["number"] + " ") and not test["name"].endswith(" ")
        if test["status"] == "passed":
            assert test["output"].splitlines()[0] == f"pass: {test['score']:g}/{test['max_score']:g}"
            assert not test["output"].rstrip().endswith(":")


def swap_mask(text: str) -> str:
    from conftest import swap

    return swap(text, "causal_mask", "return torch.zeros(n, n).bool()")


def test_a_half_sent_or_oversized_message_cannot_stall_the_grader(monkeypatch):
    """A child that writes half a message and waits, or announces a huge one, is cut off (as tampering) within
    the message deadline, instead of blocking the grader's read forever."""
    import struct
    from multiprocessing import Pipe

    from minimech.grading import isolation

    monkeypatch.setattr(isolation, "MESSAGE_LIMIT_S", 0.5)
    reader, writer = Pipe(duplex=False)
    os.write(writer.fileno(), struct.pack("!i", 100) + b"only part of it")
    start = time.monotonic()
    with pytest.raises(isolation.Tampered, match="stalled"):
        isolation._receive(reader, 1000)
    assert time.monotonic() - start < 2
    os.write(writer.fileno(), struct.pack("!i", 10**6))
    with pytest.raises(isolation.Tampered, match="1000000 bytes"):
        isolation._receive(reader, 1000)
    writer.send_bytes(b"whole")  # what a child's Connection sends reads back as it was
    assert isolation._receive(reader, 1000) == b"whole"

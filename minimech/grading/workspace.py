"""The learner's workspace and the instructor's handout.

A workspace is a folder of the learner's own (never inside the installed package): `minimech start 02` copies
lesson 02's lesson.py, README.md and hints.md into WORKSPACE/02_induction_heads/ (`--notebook`: lesson.ipynb
instead of lesson.py), and keeps progress (checks,
hints shown, solutions seen) in WORKSPACE/minimech-progress.json. Commands find the workspace from the current
folder upward (the folder holding minimech-progress.json), else use ./minimech-lessons.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from .api import GradingError
from .lessons import Lesson
from .report import Report
from .source import stubs

PROGRESS_FILE = "minimech-progress.json"
DEFAULT_WORKSPACE = "minimech-lessons"
LEARNER_FILES = ("lesson.py", "README.md", "hints.md")


def find_workspace(start: Path | None = None) -> Path | None:
    """The nearest folder, from `start` (default: the current one) upward, that holds minimech-progress.json."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PROGRESS_FILE).is_file():
            return folder
    if (here / DEFAULT_WORKSPACE / PROGRESS_FILE).is_file():
        return here / DEFAULT_WORKSPACE
    return None


def workspace_for(explicit) -> Path:
    """--dir if given, else the workspace found from here, else ./minimech-lessons (which may not exist yet)."""
    if explicit:
        return Path(explicit).resolve()
    return find_workspace() or (Path.cwd() / DEFAULT_WORKSPACE).resolve()


def _refuse_package(target: Path) -> None:
    import minimech

    package = Path(minimech.__file__).resolve().parent
    from .lessons import lessons_root

    for protected in (package, lessons_root()):
        if target == protected or protected in target.parents:
            raise GradingError(f"{target} is inside minimech's own files; choose a folder of your own with --dir")


def start(lesson: Lesson, workspace: Path, force: bool = False, notebook: bool = False) -> Path:
    """Copy the lesson's files into workspace/<lesson.name>/; returns the learner's file: lesson.py, or with
    notebook=True lesson.ipynb (the same cells, written by jupytext). An existing file is kept unless force, and
    then saved as lesson.py.bak (lesson.ipynb.bak) first."""
    workspace = Path(workspace).resolve()
    _refuse_package(workspace)
    folder = workspace / lesson.name
    target = folder / ("lesson.ipynb" if notebook else "lesson.py")
    if target.exists() and not force:
        raise GradingError(f"{target} exists (your work): check it with `minimech check {lesson.id}`, or pass "
                           f"--force to start over (your file is kept as {target.name}.bak)")
    text = to_notebook(lesson.file("lesson.py")) if notebook else None  # before any file is written
    folder.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.copy2(target, folder / f"{target.name}.bak")
    for name in LEARNER_FILES:
        if (lesson.path / name).is_file() and not (notebook and name == "lesson.py"):
            shutil.copyfile(lesson.path / name, folder / name)
    if notebook:
        target.write_text(text, encoding="utf-8")
    progress = read_progress(workspace)
    progress["lessons"].setdefault(lesson.id, {}).setdefault("started", _now())
    write_progress(workspace, progress)
    return target


def to_notebook(lesson_py: Path) -> str:
    """A lesson.py (jupytext's percent format) as the text of a Jupyter notebook, with jupytext."""
    try:
        import jupytext
    except ImportError:
        raise GradingError("writing a notebook needs jupytext: pip install 'minimech[notebook]' (jupytext, "
                           "ipykernel, ipywidgets), or work in lesson.py, which opens as a notebook in Jupyter "
                           "with jupytext") from None
    notebook = jupytext.read(lesson_py, fmt="py:percent")
    notebook.metadata.setdefault("kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"})
    notebook.metadata.get("jupytext", {}).pop("formats", None)  # a plain notebook, not paired with a .py file
    return jupytext.writes(notebook, fmt="ipynb")


def learner_file(lesson: Lesson, workspace: Path) -> Path:
    """The learner's file in the workspace: lesson.py or lesson.ipynb; when both are there, the one saved last."""
    folder = Path(workspace) / lesson.name
    found = [p for p in (folder / "lesson.py", folder / "lesson.ipynb") if p.is_file()]
    if not found:
        raise GradingError(f"lesson {lesson.id} is not started in {workspace}: run `minimech start {lesson.id}` "
                           "(or give the file with --file, or the workspace with --dir)")
    return max(found, key=lambda p: p.stat().st_mtime_ns)


# ---- progress ---------------------------------------------------------------------------------------------------

def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def read_progress(workspace: Path) -> dict:
    path = Path(workspace) / PROGRESS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data.setdefault("lessons", {})
    return data


def write_progress(workspace: Path, progress: dict) -> None:
    path = Path(workspace) / PROGRESS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{PROGRESS_FILE}.tmp")
    tmp.write_text(json.dumps(progress, indent=1, sort_keys=True))
    os.replace(tmp, path)


def record_check(workspace: Path, report: Report) -> None:
    """Keep each exercise's latest status and score (and its best score) in the workspace."""
    progress = read_progress(workspace)
    entry = progress["lessons"].setdefault(report.lesson, {}).setdefault("exercises", {})
    for e in report.exercises:
        old = entry.get(e.id, {})
        entry[e.id] = {"status": e.status, "score": e.score, "max_score": e.max_score, "checked": _now(),
                       "best": max(e.score, old.get("best", 0.0))}
    write_progress(workspace, progress)


def next_hint_number(workspace: Path | None, ex_id: str, lesson_id: str) -> int:
    """How many hints of ex_id were shown already (0 without a workspace)."""
    if workspace is None:
        return 0
    return read_progress(workspace)["lessons"].get(lesson_id, {}).get("hints", {}).get(ex_id, 0)


def record_hint(workspace: Path, lesson_id: str, ex_id: str, shown: int) -> None:
    progress = read_progress(workspace)
    progress["lessons"].setdefault(lesson_id, {}).setdefault("hints", {})[ex_id] = shown
    write_progress(workspace, progress)


def record_solution(workspace: Path, lesson_id: str, ex_id: str) -> None:
    progress = read_progress(workspace)
    seen = progress["lessons"].setdefault(lesson_id, {}).setdefault("solutions_seen", [])
    if ex_id not in seen:
        seen.append(ex_id)
    write_progress(workspace, progress)


def lesson_progress(progress: dict, lesson: Lesson) -> str:
    """'not started', 'started', or '2/5 passed' for `minimech lessons`."""
    entry = progress["lessons"].get(lesson.id)
    if not entry:
        return "not started"
    exercises = entry.get("exercises", {})
    if not exercises:
        return "started"
    passed = sum(exercises.get(i, {}).get("status") == "pass" for i in lesson.points)
    return f"{passed}/{len(lesson.points)} passed"


# ---- handout ------------------------------------------------------------------------------------------------------

def handout(lesson: Lesson, out: Path, function_names: list[str], force: bool = False) -> Path:
    """The student version of a lesson in out/<lesson.name>/: lesson.py, README.md and hints.md, no solutions.
    Refuses if an exercise function in lesson.py is not a stub (the handout would carry its solution)."""
    lesson_py = lesson.file("lesson.py")
    still_stubs = set(stubs(lesson_py))
    solved = [f for f in function_names if f not in still_stubs]
    if solved:
        raise GradingError(f"{lesson_py}: {', '.join(solved)} is not a `raise NotImplementedError` stub; the "
                           "handout would carry its solution")
    target = Path(out).resolve() / lesson.name
    _refuse_package(target)
    if target.exists() and any(target.iterdir()) and not force:
        raise GradingError(f"{target} exists and is not empty; pass --force to overwrite")
    target.mkdir(parents=True, exist_ok=True)
    for name in LEARNER_FILES:
        if (lesson.path / name).is_file():
            shutil.copyfile(lesson.path / name, target / name)
    return target

"""Grading a class: many submissions in parallel, a CSV of scores, Gradescope's results.json, and the Gradescope
autograder zip. Whatever goes wrong with one submission (or with the grader) is written into that submission's
row; the outputs are always written, and each test's max_score comes from lesson.json, so they sum to its total."""

from __future__ import annotations

import contextlib
import csv
import io
import tempfile
import json
import os
import secrets
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from .api import GradingError
from . import isolation, launchers, sandbox
from .checking import Oracle, check_options, run_checks
from .lessons import Lesson, get_lesson, lessons_root, load_checks
from .report import ExerciseResult, Report, lost_exercise

IGNORED = ("__MACOSX", "__pycache__", ".ipynb_checkpoints")


@dataclass
class ClassGrades:
    lesson: Lesson
    seed: int
    model: str
    reports: dict[str, Report]  # student -> report, in the order of the students' folder names
    seconds: float
    complete: bool = True  # False: the run was interrupted, and only the students in `reports` were graded
    sandbox: object = None  # the sandbox.Sandbox the learners' code ran in


def find_submission_file(folder: Path) -> Path:
    """The learner's lesson file in a submission folder: lesson.py (the shallowest), else its only .py file, else
    lesson.ipynb or its only notebook (graded through source.notebook_to_script)."""
    def visible(pattern):
        return [p for p in Path(folder).rglob(pattern) if not any(part in IGNORED or part.startswith(".")
                                                                  for part in p.relative_to(folder).parts)]

    candidates = []  # one per kind: the shallowest lesson.py / lesson.ipynb, else a kind's only file
    for files, name in ((visible("*.py"), "lesson.py"), (visible("*.ipynb"), "lesson.ipynb")):
        named = sorted((p for p in files if p.name == name), key=lambda p: (len(p.parts), str(p)))
        if named:
            candidates.append(named[0])
        elif len(files) == 1:
            candidates.append(files[0])
    if candidates:
        # An untouched lesson.py next to the notebook the work was done in: grade the one with fewer stubs left
        # (ties keep the .py).
        return min(candidates, key=lambda p: (_stub_count(p), candidates.index(p)))
    found = ", ".join(sorted(p.name for p in visible("*.py") + visible("*.ipynb"))[:5]) or "no .py or .ipynb file"
    raise GradingError(f"no lesson.py in {folder} (found {found}); hand in the lesson.py `minimech start` made "
                       "(or the notebook you made from it)")


def _stub_count(path: Path) -> int:
    """How many exercise functions in a .py or .ipynb file are still stubs (a file that cannot be read: many)."""
    import tempfile

    from .source import notebook_to_script, stubs

    try:
        if path.suffix != ".ipynb":
            return len(stubs(path))
        with tempfile.TemporaryDirectory(prefix="minimech-stubs-") as tmp:
            script = Path(tmp) / "lesson.py"
            script.write_text(notebook_to_script(path), encoding="utf-8")
            return len(stubs(script))
    except Exception:  # unreadable or unparsable: grading it will say why, if nothing better is there
        return 10**6


def _lost_report(lesson: Lesson, exercises, seed: int, model: str, source: str, message: str,
                 status: str = "error") -> Report:
    """Every exercise at zero with one message (no file, a grader error); exercises from checks.py or lesson.json."""
    rows = [(e.id, e.title, e.function) for e in exercises] if exercises else [(i, "", "") for i in lesson.points]
    results = [lost_exercise(i, t, f, float(lesson.points.get(i, 0)), status, message) for i, t, f in rows]
    return Report(lesson.id, source, seed, model, results)


def grade_one(lesson: Lesson, folder: Path, oracle: Oracle | None, time_limit_s=None, memory_limit_mb=None,
              sandbox=None, secret=()) -> Report:
    """One student's report; never raises (a problem becomes that student's errors). A grader error that is not
    the lesson's own (its checks.py failing for everyone) is given a second chance: the student is graded again."""
    exercises = list(oracle.exercises.values()) if oracle else None
    seed, model = (oracle.seed, oracle.model_name) if oracle else (0, lesson.settings["default_model"])
    report = None
    for _ in range(2):
        try:
            if oracle is None:
                raise GradingError("checks.py failed to load")
            learner_file = find_submission_file(folder)
            report = run_checks(lesson, learner_file, oracle=oracle, time_limit_s=time_limit_s,
                                memory_limit_mb=memory_limit_mb, sandbox=sandbox, secret=secret)
        except GradingError as exc:
            return _lost_report(lesson, exercises, seed, model, str(folder), str(exc))
        except isolation.GradingStopped:
            raise
        except Exception as exc:  # a bug in the grader must not cost the other students their grades
            report = _lost_report(lesson, exercises, seed, model, str(folder),
                                  f"grader error: {type(exc).__name__}: {exc}", status="grader error")
        if not any(e.status == "grader error" and oracle is not None and oracle.error(e.id) is None
                   and oracle.built(e.id) for e in report.exercises) or isolation.STOP.is_set():
            return report
    return report


def grade_submissions(lesson, submissions_dir, jobs: int | None = None, seed: int | None = None,
                      model: str | None = None, root=None, time_limit_s=None, memory_limit_mb=None,
                      on_done=None, outputs=()) -> ClassGrades:
    """Grade every student folder in submissions_dir, `jobs` at a time (default: all cores). on_done(student,
    report) is called as each finishes. outputs: the files the results will be written to (kept from the
    learners' processes). Refuses to start if the lesson's files or weights differ from the manifest."""
    lesson = get_lesson(lesson, root)
    check_options(model, seed, time_limit_s, memory_limit_mb)  # a bad option stops here, not as N grader errors
    folders = sorted(p for p in Path(submissions_dir).iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    model = model or lesson.settings["default_model"]
    from .manifest import verify

    verify(lesson, model)
    box = sandbox.choose()
    launchers.warm_up(box)
    start = time.perf_counter()
    secret = [Path(submissions_dir).resolve(), *(Path(o).resolve() for o in outputs if o)]
    if box.mode == "user":
        sandbox.protect_answer_keys([lesson.path, *(p for p in lessons_root().iterdir() if p.is_dir())])
    try:
        oracle = Oracle(load_checks(lesson), seed, model)
    except Exception as exc:  # every student gets the error; the outputs are still written
        oracle = None
        load_error = f"grader error: {lesson.name}/checks.py failed to load: {type(exc).__name__}: {exc}"

    def grade(folder: Path) -> Report:
        if oracle is None:
            report = _lost_report(lesson, None, seed, model, str(folder), load_error, status="grader error")
        else:
            report = grade_one(lesson, folder, oracle, time_limit_s, memory_limit_mb, box, secret)
        if isolation.STOP.is_set():  # interrupted while this one ran: its report is not a grade
            return None
        if on_done:
            on_done(folder.name, report)
        return report

    closed = sandbox.ClosedFolder(submissions_dir) if box.mode == "user" else contextlib.nullcontext()
    pool = ThreadPoolExecutor(max_workers=max(1, jobs or os.cpu_count() or 1))
    # Ctrl-C is only noted here and acted on by the loop below: a KeyboardInterrupt raised at an arbitrary point of
    # the main thread can land inside concurrent.futures' wait() while it holds a future's lock, and the worker that
    # then finishes that future blocks on it forever (seen once: the grader hung after Ctrl-C instead of stopping).
    interrupted: list[int] = []
    previous = None
    if threading.current_thread() is threading.main_thread():  # (signal handlers can only be set there)
        previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    futures = [(folder.name, pool.submit(grade, folder)) for folder in folders]
    try:
        with closed:
            pending = {future for _, future in futures}
            while pending and not interrupted:  # in slices, so that a Ctrl-C is seen within 0.2 s
                _, pending = wait(pending, timeout=0.2)
        if interrupted:
            raise KeyboardInterrupt
        reports = {name: future.result() for name, future in futures}
        complete = True
    except KeyboardInterrupt:  # Ctrl-C: keep the students already graded, stop the rest within a second
        isolation.STOP.set()
        pool.shutdown(wait=True, cancel_futures=True)
        reports = {name: future.result() for name, future in futures
                   if future.done() and not future.cancelled() and future.exception() is None
                   and future.result() is not None}
        complete = False
    finally:
        pool.shutdown(wait=True)
        isolation.STOP.clear()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return ClassGrades(lesson, seed, model, reports, round(time.perf_counter() - start, 3), complete, box)


# ---- outputs ----------------------------------------------------------------------------------------------------

def _write_atomic(path: Path, text: str) -> None:
    """Write by renaming a fresh file (unpredictable name, opened exclusively) over `path`: a reader sees the old
    file or the new one, and nobody can have prepared the temporary file or a link in its place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _problems(report: Report) -> str:
    return "; ".join(f"{e.id} {e.status}" for e in report.exercises if e.status != "pass")


def csv_text(grades: ClassGrades) -> str:
    """One row per student, one column per exercise (its score), then the total and the non-passing statuses."""
    ids, names = list(grades.lesson.points), list(grades.lesson.predictions)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["student", *ids, *names, "total", "notes"])
    for student, report in grades.reports.items():
        by_id = {e.id: e.score for e in report.exercises}
        recorded = {p.name: p for p in report.predictions}
        marks = [(f"{recorded[n].score:g}" if recorded[n].max_score else "recorded") if n in recorded and
                 recorded[n].recorded else ("0" if grades.lesson.prediction_points(n) else "") for n in names]
        writer.writerow([student, *(f"{by_id.get(i, 0.0):g}" for i in ids), *marks, f"{report.score:g}",
                         _problems(report)])
    return out.getvalue()


def _test_output(e: ExerciseResult) -> str:
    lines = [f"{e.status}: {e.score:g}/{e.max_score:g}"]
    if e.message:
        lines.append(e.message)
    if e.cases:
        lines.append(f"cases passed: {e.summary()}")
    return "\n".join(lines)


def gradescope_results(report: Report, lesson: Lesson) -> dict:
    """Gradescope's autograder results.json: one test per exercise of lesson.json (max_score = its points)."""
    by_id = {e.id: e for e in report.exercises}
    tests = []
    for ex_id, points in lesson.points.items():
        e = by_id.get(ex_id) or lost_exercise(ex_id, ex_id, "", float(points), "error", "grader error: not graded")
        tests.append({"name": f"{ex_id} {e.title}".strip(), "number": ex_id, "score": e.score, "max_score": float(points),
                      "status": "passed" if e.status == "pass" else "failed", "output": _test_output(e)})
    for p in report.predictions:  # recorded or not, never right or wrong
        tests.append({"name": f"{p.name}: {p.question}"[:200], "number": p.name, "score": p.score,
                      "max_score": p.max_score, "status": "passed" if p.recorded else "failed",
                      "output": f"recorded: {p.value}" if p.recorded else
                      f"not recorded: set {p.name} (at the top level of your file) before the cell that measures it"})
    return {
        "score": round(sum(t["score"] for t in tests), 4),
        "execution_time": round(report.seconds, 3),
        "output": (f"minimech {__version__}, lesson {lesson.id} ({lesson.title}); model {report.model}, "
                   f"seed {report.seed}. Your file: {Path(report.learner_file).name}."),
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": tests,
    }


def write_outputs(grades: ClassGrades, csv_path=None, gradescope_path=None) -> None:
    """grades.csv, and a JSON object {student: Gradescope results.json object}."""
    if csv_path:
        _write_atomic(Path(csv_path), csv_text(grades))
    if gradescope_path:
        results = {s: gradescope_results(r, grades.lesson) for s, r in grades.reports.items()}
        _write_atomic(Path(gradescope_path), json.dumps(results, indent=1))


# ---- Gradescope ---------------------------------------------------------------------------------------------------

def autograde(lesson, root_dir: Path, root=None) -> dict:
    """What run_autograder does: grade root_dir/submission, write root_dir/results/results.json (from this
    process's own verdicts only); never raises."""
    root_dir = Path(root_dir)
    results_path = root_dir / "results" / "results.json"
    try:
        lesson = get_lesson(lesson, root)
    except Exception as exc:
        results = {"score": 0.0, "output": f"grader error: {exc}", "tests": []}
        _write_atomic(results_path, json.dumps(results, indent=1))
        return results
    seed = secrets.randbelow(2**31)
    model = lesson.settings["default_model"]
    try:
        from .manifest import verify

        verify(lesson, model)
        box = sandbox.choose()
        launchers.warm_up(box)
        if box.mode == "user":
            sandbox.protect_answer_keys([lesson.path])
        oracle = Oracle(load_checks(lesson), seed, model)
        report = grade_one(lesson, root_dir / "submission", oracle, sandbox=box, secret=[results_path.parent])
    except Exception as exc:
        report = _lost_report(lesson, None, seed, model, "submission", f"grader error: {exc}", status="grader error")
    results = gradescope_results(report, lesson)
    _write_atomic(results_path, json.dumps(results, indent=1))
    return results

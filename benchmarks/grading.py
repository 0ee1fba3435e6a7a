"""How long grading takes: a class of 25 students on one lesson with --jobs 2, and one Gradescope submission, with
this checkout's grader and (side by side, interleaved, so machine load hits both alike) an older revision's.

    python benchmarks/grading.py --baseline 7860fa6 [--candidate HEAD] [--lesson 03] [--students 25] [--reps 2]

The class: honest students (the solutions filled in) and wrong ones (one planted bug from bugs.py each), about
two thirds honest. Each revision runs from `git archive REV` in a temporary folder (its own minimech on
PYTHONPATH; lessons and weights as installed here, so both grade the same lessons). Prints each run's seconds,
the medians, and new/old ratios; a run that did not grade every student stops the benchmark.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _with_bug(text: str, function: str, bug) -> str:
    """The learner's file with `function`'s body replaced by the bug's body."""
    source = textwrap.dedent(inspect.getsource(bug))
    node = ast.parse(source).body[0]
    body = "\n".join(source.splitlines()[node.body[0].lineno - 1:])
    target = next(n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == function)
    lines = text.splitlines()
    head = lines[target.lineno - 1:target.body[0].lineno - 1]
    return "\n".join(lines[:target.lineno - 1] + head + [textwrap.indent(textwrap.dedent(body), "    ")]
                     + lines[target.end_lineno:]) + "\n"


def _bug_helpers(lesson) -> str:
    """bugs.py's imports and private helpers, so that a bug's body runs in the learner's file."""
    source = lesson.file("bugs.py").read_text()
    lines = source.splitlines()
    keep = [n for n in ast.parse(source).body
            if isinstance(n, (ast.Import, ast.ImportFrom)) and "grading" not in ast.unparse(n)
            and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")
            or isinstance(n, ast.FunctionDef) and n.name.startswith("_")]
    return "\n".join("\n".join(lines[n.lineno - 1:n.end_lineno]) for n in keep) + "\n"


def make_class(lesson_id: str, folder: Path, students: int) -> None:
    from minimech.grading import fill_solutions, get_lesson, load_bugs, load_checks

    lesson = get_lesson(lesson_id)
    right = fill_solutions(lesson)
    functions = {e.id: e.function for e in load_checks(lesson)}
    bugs, helpers = load_bugs(lesson), _bug_helpers(lesson)
    for i in range(students):
        text = right
        if i % 3 == 2:
            bug = bugs[(i // 3) % len(bugs)]
            text = _with_bug(right, functions[bug.exercise], bug.function) + "\n\n" + helpers
        (folder / f"student{i:02d}").mkdir(parents=True)
        (folder / f"student{i:02d}" / "lesson.py").write_text(text)


def _env(code_dir: Path | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if code_dir is not None:
        env["PYTHONPATH"] = str(code_dir)
    return env


def time_class(code_dir: Path | None, lesson: str, folder: Path, out: Path) -> float:
    command = [sys.executable, "-m", "minimech.cli", "grade", lesson, str(folder), "--jobs", "2", "--seed", "0",
               "--csv", str(out)]
    start = time.perf_counter()
    run = subprocess.run(command, env=_env(code_dir), capture_output=True, text=True, cwd=tempfile.gettempdir())
    seconds = time.perf_counter() - start
    rows = out.read_text().splitlines()[1:] if out.exists() else []
    if run.returncode != 0 or len(rows) != len(list(folder.iterdir())):
        raise SystemExit(f"grade did not grade every student (exit {run.returncode}):\n{run.stderr[-3000:]}")
    return seconds


def time_gradescope(code_dir: Path | None, lesson: str, submission: Path, work: Path) -> float:
    """Build the autograder zip with that code, unpack it as Gradescope does, time run_autograder on one file."""
    zip_path = work / "autograder.zip"
    subprocess.run([sys.executable, "-m", "minimech.cli", "autograder", lesson, "--out", str(zip_path)],
                   env=_env(code_dir), check=True, capture_output=True, cwd=tempfile.gettempdir())
    root = work / "autograder"
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(root / "source")
    (root / "submission").mkdir(parents=True)
    (root / "submission" / "lesson.py").write_text(submission.read_text())
    env = {k: v for k, v in _env(None).items() if k != "PYTHONPATH"}
    env.update(MINIMECH_AUTOGRADER_ROOT=str(root), MINIMECH_PYTHON=sys.executable)
    start = time.perf_counter()
    subprocess.run(["bash", str(root / "source" / "run_autograder")], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="the older revision to compare with (a git commit)")
    parser.add_argument("--candidate", default="HEAD", help="the newer revision (default HEAD)")
    parser.add_argument("--lesson", default="03")
    parser.add_argument("--students", type=int, default=25)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="minimech-bench-") as tmp:
        tmp = Path(tmp)
        old, new = tmp / "old", tmp / "new"
        for folder, revision in ((old, args.baseline), (new, args.candidate)):
            folder.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", revision], check=True, capture_output=True)
            subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
        make_class(args.lesson, tmp / "class", args.students)
        times: dict[str, list] = {"old class": [], "new class": [], "old gradescope": [], "new gradescope": []}
        for rep in range(args.reps):
            for name, code in (("old", old), ("new", new)):
                seconds = time_class(code, args.lesson, tmp / "class", tmp / f"{name}{rep}.csv")
                times[f"{name} class"].append(seconds)
                print(f"rep {rep}: {name} grader, {args.students} students, --jobs 2: {seconds:.1f} s", flush=True)
            for name, code in (("old", old), ("new", new)):
                work = tmp / f"gs-{name}-{rep}"
                work.mkdir()
                seconds = time_gradescope(code, args.lesson, tmp / "class" / "student00" / "lesson.py", work)
                times[f"{name} gradescope"].append(seconds)
                print(f"rep {rep}: {name} grader, one Gradescope submission: {seconds:.1f} s", flush=True)
        medians = {k: statistics.median(v) for k, v in times.items()}
        print("\nmedians: " + ", ".join(f"{k} {v:.1f} s" for k, v in medians.items()))
        print(f"class ratio new/old: {medians['new class'] / medians['old class']:.2f}; "
              f"Gradescope ratio new/old: {medians['new gradescope'] / medians['old gradescope']:.2f}")


if __name__ == "__main__":
    main()

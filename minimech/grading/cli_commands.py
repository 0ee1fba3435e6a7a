"""The lesson commands of `minimech` (registered by cli.py; like cli.py, this module prints).

    minimech lessons                      the lessons, with your progress in each
    minimech start 02 [--notebook]        copy lesson 02 into your workspace (./minimech-lessons by default)
    minimech check 02 [3 ...]             check your lesson.py: a table, the first failure's message
    minimech hint 02.3                    the next hint for exercise 02.3, one at a time
    minimech solution 02.3 [--yes]        the reference solution (asks first)
    minimech handout 02 --out DIR         instructors: the student version, without solutions
    minimech grade 02 SUBMISSIONS_DIR     instructors: grade a class (--csv, --gradescope, --jobs)
    minimech autograder 02 --out FILE     instructors: Gradescope's autograder zip
"""

from __future__ import annotations

import shlex
import sys
import threading
from pathlib import Path

from .api import GradingError
from .lessons import find_lessons, get_lesson, lessons_root, load_checks, read_hints
from . import workspace as ws

ISOLATION_NOTE = ("Each submission runs in its own process, with time and memory limits, in the strongest sandbox "
                  "that works here: as root, a uid of its own; otherwise bubblewrap; otherwise none (the start of "
                  "the run says which protections are off). MINIMECH_SANDBOX=user|bwrap|none picks one.")
STARS = {1: "*", 2: "**", 3: "***"}


def _exercise(text: str):
    """'02.3' -> (lesson, '02.3')."""
    lesson_part = text.split(".")[0] if "." in text else ""
    if not lesson_part:
        raise GradingError(f"name the exercise as LESSON.K, e.g. 02.3 (got {text!r})")
    lesson = get_lesson(lesson_part)
    return lesson, lesson.exercise_id(text)


def _print_report(report, print_table) -> None:
    rows = [[e.id, e.title, e.status, f"{e.score:g}/{e.max_score:g}", e.summary()] for e in report.exercises]
    print_table(["exercise", "title", "status", "score", "cases"], rows, "<<<>>")
    for p in report.predictions:  # recorded or not: a prediction is never marked right or wrong
        state = f"recorded: {p.value}" if p.recorded else "not recorded yet"
        print(f"{p.name}: {state}" + (f"   ({p.score:g}/{p.max_score:g})" if p.max_score else ""))
    print(f"\ntotal {report.score:g}/{report.max_score:g}   (seed {report.seed}, model {report.model}, "
          f"{report.seconds:.1f} s)")
    failure = report.first_failure()
    if failure:
        print(f"\nfirst problem, {failure.id} {failure.title} ({failure.status}):\n  {failure.message}")
        print(f"  stuck? `minimech hint {failure.id}`")
    elif all(e.status == "pass" for e in report.exercises):
        print("\nall passed.")


def _reference_done(bar, ex_id: str, done: int, cases: int) -> None:
    """The reference-answers bar: one step per exercise, and which case it is on (on GPT-2 one can take a minute,
    so the bar moves between exercises too, once it shows)."""
    if done >= cases:
        bar.set_postfix_str("", refresh=False)
        bar.update(1)
    elif bar.format_dict["elapsed"] >= bar.delay:  # a postfix redraws at once, before the bar's own delay
        bar.set_postfix_str(f"{ex_id}: {done}/{cases} cases")


class _Ticking:
    """Redraw a bar every few seconds while one step runs, so its elapsed time moves (a learner's exercise on GPT-2
    can take a minute between two updates; a still bar looks like a hang). Only once the bar shows (its delay)."""

    def __init__(self, bar, every_s: float = 5.0):
        self.bar, self.every_s, self.stop = bar, every_s, threading.Event()
        self.thread = threading.Thread(target=self._tick, daemon=True)

    def _tick(self) -> None:
        while not self.stop.wait(self.every_s):
            if self.bar.format_dict["elapsed"] >= self.bar.delay:
                self.bar.refresh()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def register(command, arg, print_table) -> None:
    """Add the lesson commands to cli.py's registry."""
    dir_arg = arg("--dir", default=None, metavar="DIR",
                  help=f"your workspace (default: the one found from here, else ./{ws.DEFAULT_WORKSPACE})")

    @command("lessons", "list the lessons, with your progress in each", dir_arg)
    def cmd_lessons(args) -> int:
        lessons = find_lessons()
        if not lessons:
            print(f"no lessons found in {lessons_root()}")
            return 0
        workspace = ws.workspace_for(args.dir)
        progress = ws.read_progress(workspace)
        rows = [[l.id, l.title, f"{l.settings['minutes']} min", STARS.get(l.settings["difficulty"], "?"),
                 len(l.points), ws.lesson_progress(progress, l)] for l in lessons]
        print_table(["id", "title", "time", "level", "exercises", "progress"], rows, "<<>><<")
        print(f"\nworkspace: {workspace}\nstart one with `minimech start ID`")
        return 0

    @command("start", "copy a lesson (lesson.py, README.md, hints.md) into your workspace",
             arg("lesson", help="the lesson's id, e.g. 02"), dir_arg,
             arg("--notebook", action="store_true",
                 help="write lesson.ipynb, a Jupyter notebook, instead of lesson.py (needs jupytext: pip install "
                      "'minimech[notebook]')"),
             arg("--force", action="store_true", help="start over (your file is kept as lesson.py.bak or "
                                                      "lesson.ipynb.bak)"))
    def cmd_start(args) -> int:
        lesson = get_lesson(args.lesson)
        path = ws.start(lesson, ws.workspace_for(args.dir), force=args.force, notebook=args.notebook)
        check = f"minimech check {lesson.id}" + (f" --dir {shlex.quote(args.dir)}" if args.dir else "")
        print(f"lesson {lesson.id}: {lesson.title}\n  {path}")
        if args.notebook:
            print(f"open it:  jupyter lab {path}  (figures show inline)\ncheck it: {check}")
        else:
            print(f"run it:   python {path}  (figures go to ./minimech-out/)\nnotebook: minimech start {lesson.id} "
                  f"--notebook writes lesson.ipynb instead\ncheck it: {check}")
        return 0

    @command("check", "check your lesson.py: which exercises pass, and the first failure's message (exit status "
                      "0 only when every checked exercise passes)",
             arg("lesson", help="the lesson's id, e.g. 02"),
             arg("exercises", nargs="*", help="only these exercises (e.g. 3 or 02.3); default: all"),
             dir_arg, arg("--file", default=None, help="check this file instead of the workspace's lesson.py"),
             arg("--seed", type=int, default=None, help="the inputs' seed (default: random, shown)"),
             arg("--model", default=None, help="the model the checks use (default: the lesson's)"),
             arg("--time-limit", type=float, default=None, metavar="S",
                 help="seconds per exercise (default: lesson.json's; for a bigger --model, grown with it and "
                      "at least 3x what the reference solution takes)"),
             arg("--memory-limit", type=int, default=None, metavar="MB",
                 help="MB beyond what is loaded (default: lesson.json's; for a bigger --model, grown with it and "
                      "at least twice what the reference solution needs, plus 512)"))
    def cmd_check(args) -> int:
        from tqdm import tqdm

        from .checking import run_checks

        lesson = get_lesson(args.lesson)
        workspace = ws.workspace_for(args.dir)
        path = Path(args.file) if args.file else ws.learner_file(lesson, workspace)
        print(f"checking {path} (lesson {lesson.id}: {lesson.title})\n")
        total = len(args.exercises) if args.exercises else len(lesson.points)
        # with a model bigger than the lesson's, the reference answers come first (they set the limits)
        with tqdm(total=len(lesson.points), desc="reference answers (they set the limits for this model)", unit="",
                  delay=10, file=sys.stderr, leave=False) as references, \
                tqdm(total=total, desc="exercises checked", unit="", delay=10, file=sys.stderr, leave=False) as bar, \
                _Ticking(bar):
            report = run_checks(lesson, path, exercises=args.exercises or None, seed=args.seed, model=args.model,
                                time_limit_s=args.time_limit, memory_limit_mb=args.memory_limit,
                                progress=lambda ex_id: bar.update(1),
                                reference_progress=lambda ex_id, done, cases: _reference_done(references, ex_id,
                                                                                              done, cases))
        _print_report(report, print_table)
        if not args.file or Path(args.file).resolve() in {(workspace / lesson.name / name).resolve()
                                                          for name in ("lesson.py", "lesson.ipynb")}:
            if (workspace / ws.PROGRESS_FILE).is_file():
                ws.record_check(workspace, report)
        return 0 if all(e.status == "pass" for e in report.exercises) else 1  # usable in a learner's CI

    @command("hint", "the next hint for an exercise, one at a time",
             arg("exercise", help="the exercise, e.g. 02.3"), dir_arg,
             arg("--again", action="store_true", help="show the hints you have seen, without a new one"))
    def cmd_hint(args) -> int:
        lesson, ex_id = _exercise(args.exercise)
        hints = read_hints(lesson).get(ex_id, [])
        if not hints:
            raise GradingError(f"lesson {lesson.id} has no hints for {ex_id}")
        workspace = ws.find_workspace() if not args.dir else Path(args.dir).resolve()
        shown = ws.next_hint_number(workspace, ex_id, lesson.id)
        upto = max(1, shown) if args.again else min(shown + 1, len(hints))
        for number in range(1 if args.again else upto, upto + 1):
            print(f"hint {number} of {len(hints)} for {ex_id}:\n  {hints[number - 1]}\n")
        if workspace is not None:
            ws.record_hint(workspace, lesson.id, ex_id, max(shown, upto))
        else:
            print("(no workspace found, so hints are not counted: run `minimech start` first, or pass --dir)")
        if upto == len(hints) and not args.again:
            print(f"that was the last hint; `minimech solution {ex_id}` shows the solution")
        return 0

    @command("solution", "show an exercise's reference solution (asks first)",
             arg("exercise", help="the exercise, e.g. 02.3"), dir_arg,
             arg("--yes", "-y", action="store_true", help="do not ask"))
    def cmd_solution(args) -> int:
        from .source import solution_source

        lesson, ex_id = _exercise(args.exercise)
        function = next(e.function for e in load_checks(lesson) if e.id == ex_id)
        if not args.yes:
            if not sys.stdin.isatty():
                raise GradingError("pass --yes to see the solution without being asked")
            answer = input(f"Show the solution to {ex_id}? Trying the hints first teaches more. [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("not shown.")
                return 0
        print(solution_source(lesson, function))
        workspace = Path(args.dir).resolve() if args.dir else ws.find_workspace()
        if workspace is not None:
            ws.record_solution(workspace, lesson.id, ex_id)
        return 0

    _register_instructor_commands(command, arg, print_table)


def _check_output_path(option: str, path) -> None:
    if not path:
        return
    target = Path(path)
    if target.is_dir():
        raise GradingError(f"{option} {path} is a folder: give a file name")
    blocking = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise GradingError(f"{option} {path}: {blocking} is a file, where a folder is needed")


def _register_instructor_commands(command, arg, print_table) -> None:
    @command("handout", "instructors: write the student version of a lesson (no solutions) to a folder",
             arg("lesson", help="the lesson's id, e.g. 02"),
             arg("--out", required=True, metavar="DIR", help="where to write it (DIR/NN_name/)"),
             arg("--force", action="store_true", help="overwrite an existing handout"))
    def cmd_handout(args) -> int:
        lesson = get_lesson(args.lesson)
        functions = [e.function for e in load_checks(lesson)]
        target = ws.handout(lesson, Path(args.out), functions, force=args.force)
        print(f"handout of lesson {lesson.id} in {target}: {', '.join(sorted(p.name for p in target.iterdir()))}")
        return 0

    @command("grade", "instructors: grade a folder of submissions (one folder per student) in parallel",
             arg("lesson", help="the lesson's id, e.g. 02"),
             arg("submissions", metavar="SUBMISSIONS_DIR", help="one folder per student, each with its lesson.py"),
             arg("--csv", default=None, metavar="FILE", help="write one row per student, a column per exercise"),
             arg("--gradescope", default=None, metavar="FILE",
                 help="write {student: Gradescope results.json object} as JSON"),
             arg("--jobs", "-j", type=int, default=None, help="submissions graded at once (default: all cores)"),
             arg("--seed", type=int, default=None, help="the inputs' seed (default: random, recorded)"),
             arg("--model", default=None, help="the model the checks use (default: the lesson's)"),
             arg("--time-limit", type=float, default=None, metavar="S", help="per exercise (default: lesson.json)"),
             arg("--memory-limit", type=int, default=None, metavar="MB", help="per process (default: lesson.json)"),
             description="Grade a folder of submissions (one folder per student, each with its lesson.py), in "
                         "parallel; write a CSV and Gradescope results. " + ISOLATION_NOTE)
    def cmd_grade(args) -> int:
        from .classroom import grade_submissions, write_outputs

        if args.jobs is not None and args.jobs < 1:
            raise GradingError(f"--jobs must be at least 1, got {args.jobs}")
        if not Path(args.submissions).is_dir():
            raise GradingError(f"{args.submissions} is not a folder of submissions")
        lesson = get_lesson(args.lesson)
        for option, path in (("--csv", args.csv), ("--gradescope", args.gradescope)):
            _check_output_path(option, path)  # before the grading, which can take a while, not after it
        from .sandbox import choose

        print(choose().describe(), file=sys.stderr, flush=True)
        lock = threading.Lock()

        def done(student, report):
            with lock:
                print(f"  {student}: {report.score:g}/{report.max_score:g}", flush=True)

        grades = grade_submissions(lesson, args.submissions, jobs=args.jobs, seed=args.seed, model=args.model,
                                   time_limit_s=args.time_limit, memory_limit_mb=args.memory_limit, on_done=done,
                                   outputs=(args.csv, args.gradescope))
        write_outputs(grades, args.csv, args.gradescope)
        if not grades.complete:
            print(f"interrupted: the outputs hold the {len(grades.reports)} submissions graded before Ctrl-C, not the "
                  "others; run `grade` again for a full set", file=sys.stderr)
            return 130
        print(f"graded {len(grades.reports)} submissions of lesson {lesson.id} in {grades.seconds:.1f} s "
              f"(seed {grades.seed}, model {grades.model})")
        for path in (args.csv, args.gradescope):
            if path:
                print(f"  wrote {path}")
        lost = sorted({student for student, report in grades.reports.items()
                       for e in report.exercises if e.status == "grader error"})
        if lost:  # the grader's fault, not the students': say so, and fail the command
            print(f"grader errors in {len(lost)} submission(s) ({', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''})"
                  ", each graded twice: their scores are not the students' fault; see the notes column",
                  file=sys.stderr)
            return 1
        return 0

    @command("autograder", "instructors: build the Gradescope autograder zip for a lesson",
             arg("lesson", help="the lesson's id, e.g. 02"),
             arg("--out", default="autograder.zip", metavar="FILE", help="the zip to write (default autograder.zip)"),
             description="Build Gradescope's autograder zip (setup.sh, run_autograder, minimech and the lesson). "
                         + ISOLATION_NOTE)
    def cmd_autograder(args) -> int:
        from .autograder import build_autograder

        path = build_autograder(get_lesson(args.lesson), Path(args.out))
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): upload it as the assignment's autograder")
        return 0

    @command("autograder-run", "what the autograder zip's run_autograder calls: grade ROOT/submission",
             arg("lesson", help="the lesson's id"),
             arg("--root", default=None, metavar="DIR", help="default $MINIMECH_AUTOGRADER_ROOT or /autograder"))
    def cmd_autograder_run(args) -> int:
        import os

        from .classroom import autograde

        root = Path(args.root or os.environ.get("MINIMECH_AUTOGRADER_ROOT") or "/autograder")
        results = autograde(args.lesson, root)
        print(f"score {results['score']:g}; wrote {root / 'results' / 'results.json'}")
        return 0

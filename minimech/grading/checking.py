"""Checking one learner's file: run it (in a child process, or in this one for tests), then judge its outputs
against reference answers computed here, in the trusted grading process, from the same cases."""

from __future__ import annotations

import dataclasses
import itertools
import secrets
import threading
import tempfile
import time
from pathlib import Path

from ..errors import MinimechError
from .api import Case, Exercise, GradingError
from .lessons import Lesson, get_lesson, load_checks, load_module
from .report import CaseResult, ExerciseResult, Report, blame_upstream, lost_exercise, score_exercise
from .runner import build_cases, classify, input_digest, run_exercise
from .wire import decode, tensors_from_bytes, tensors_to_bytes


class Oracle:
    """The trusted side of a run: each exercise's cases and reference answers, computed once and shared by every
    submission graded with this seed. Never sees learner code."""

    def __init__(self, exercises: list[Exercise], seed: int, model_name: str):
        self.exercises = {e.id: e for e in exercises}
        self.seed, self.model_name = seed, model_name
        self._answers: dict[str, tuple] = {}
        self._lock = threading.Lock()

    def expected(self, ex_id: str) -> tuple[list[Case], list, list[str]]:
        """(cases, reference answers, input digests); raises GradingError if the lesson's own code fails."""
        with self._lock:
            if ex_id not in self._answers:
                self._answers[ex_id] = self._compute(self.exercises[ex_id])
        answer = self._answers[ex_id]
        if isinstance(answer, GradingError):
            raise answer
        return answer

    def prefetch(self, ex_ids: list[str]) -> threading.Thread:
        """Compute these answers in a background thread, while the learner's process runs."""
        def compute():
            for ex_id in ex_ids:
                try:
                    self.expected(ex_id)
                except GradingError:
                    pass  # kept, and raised again to judge()

        thread = threading.Thread(target=compute, name="minimech-oracle", daemon=True)
        thread.start()
        return thread

    def _compute(self, ex: Exercise):
        try:
            cases = build_cases(ex, self.seed, self.model_name)
            digests = [input_digest(c.args) for c in cases]  # before the reference runs, as the child does
            return cases, [ex.reference(**c.args) for c in cases], digests
        except Exception as exc:  # a bug in the lesson's checks.py, not the learner's
            return GradingError(f"grader error in checks.py ({ex.id}): {type(exc).__name__}: {exc}")


def _judge_case(ex: Exercise, case: Case, want, raw: dict, tensors: dict) -> CaseResult:
    label = case.describe()
    if raw["status"] != "ok":
        return CaseResult(label, case.weight, raw["status"], raw["message"])
    try:
        got = decode(raw["output"], tensors)
        message = ex.check(got, want, case)
    except Exception as exc:  # compare() choked on an output of an unexpected kind
        message = f"your output could not be checked ({type(exc).__name__}: {exc}); is it the right type?"
    return CaseResult(label, case.weight, "fail" if message else "pass", message or "")


def judge(ex: Exercise, points: float, outcome: dict | None, oracle: Oracle) -> ExerciseResult:
    """An exercise's result from what the learner's process sent back and the oracle's answers."""
    lost = lambda status, message: lost_exercise(ex.id, ex.title, ex.function, points, status, message)  # noqa: E731
    if outcome is None:
        return lost("error", "grader error: no result came back for this exercise")
    if "status" in outcome:
        return lost(outcome["status"], outcome["message"])
    record, tensors = outcome["record"], outcome["tensors"]
    if record["setup_error"]:
        return lost("error", record["setup_error"])
    if not any(r["status"] == "ok" for r in record["cases"]):  # nothing to compare: no reference needed
        results = [CaseResult(r["label"], r["weight"], r["status"], r["message"]) for r in record["cases"]]
        return score_exercise(ex.id, ex.title, ex.function, points, results)
    try:
        cases, wants, digests = oracle.expected(ex.id)
    except GradingError as exc:
        return lost("error", str(exc))
    if len(record["cases"]) > len(cases) or any(r["digest"] != d for r, d in zip(record["cases"], digests)):
        return lost("error", f"grader error: checks.py's cases() for {ex.id} made different inputs in the two "
                             "processes (is it deterministic given ctx.seed?)")
    results = [_judge_case(ex, c, w, r, tensors) for c, w, r in zip(cases, wants, record["cases"])]
    return score_exercise(ex.id, ex.title, ex.function, points, results)


def select(lesson: Lesson, exercises: list[Exercise], wanted) -> list[Exercise]:
    if wanted is None:
        return exercises
    ids = [lesson.exercise_id(w) for w in ([wanted] if isinstance(wanted, (str, int)) else wanted)]
    by_id = {e.id: e for e in exercises}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise GradingError(f"{lesson.name}/checks.py has no exercise {', '.join(missing)}")
    return [by_id[i] for i in ids]


_IN_PROCESS_COUNT = itertools.count()


def run_in_process(learner_file: Path, exercises: list[Exercise], seed: int, model_name: str,
                   overrides: dict | None = None) -> dict[str, dict]:
    """What run_isolated returns, computed in this process: fast, for tests of trusted files; no limits."""
    name = f"_minimech_learner_{next(_IN_PROCESS_COUNT)}"
    path = str(Path(learner_file).resolve())
    try:
        module = load_module(Path(learner_file), name, register=False)
    except BaseException as exc:  # noqa: B036
        status, message = classify(exc, "", path)
        return {e.id: {"status": status, "message": f"your file failed to import: {message}"} for e in exercises}
    for function, replacement in (overrides or {}).items():
        setattr(module, function, replacement)  # also what later exercises call
    outcomes = {}
    for ex in exercises:
        record, tensors = run_exercise(module, ex, seed, model_name, path, [])
        outcomes[ex.id] = {"record": record, "tensors": tensors_from_bytes(tensors_to_bytes(tensors))}
    return outcomes


def check_options(model: str | None, seed, time_limit_s, memory_limit_mb) -> None:
    """One clear error, before any learner's code runs, for options that would otherwise turn into a grader error
    on every exercise of every student."""
    if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**63):
        raise GradingError(f"seed {seed}: use a whole number from 0 to 2**63 - 1")
    for option, value in (("time limit", time_limit_s), ("memory limit", memory_limit_mb)):
        if value is not None and not value > 0:
            raise GradingError(f"the {option} must be positive, got {value} (leave it out for the lesson's default)")
    if model is not None:  # the lesson's default model ships with minimech; another one may be missing here
        from ..loading import load

        try:
            load(model)
        except MinimechError as exc:
            raise GradingError(f"the checks cannot use model {model!r}: {exc}") from None


def run_checks(lesson, learner_file, exercises=None, seed: int | None = None, isolate: bool = True,
               model: str | None = None, root=None, overrides: dict | None = None,
               time_limit_s: float | None = None, memory_limit_mb: int | None = None,
               oracle: Oracle | None = None) -> Report:
    """Check a learner's lesson file: every exercise (or those named: "3", "02.3", or a list) on fresh random
    inputs (seed: random unless given, recorded in the report). isolate=False runs the file in this process,
    without time or memory limits (for tests); overrides {function name: function} then replaces functions."""
    lesson = get_lesson(lesson, root)
    learner_file = Path(learner_file)
    if not learner_file.is_file():
        raise GradingError(f"no such file: {learner_file}")
    if learner_file.suffix == ".ipynb":  # a notebook: grade its code, written out as a script in a folder of its own
        from .source import notebook_to_script

        with tempfile.TemporaryDirectory(prefix="minimech-notebook-") as tmp:
            script = Path(tmp) / "lesson.py"
            script.write_text(notebook_to_script(learner_file), encoding="utf-8")
            report = run_checks(lesson, script, exercises, seed, isolate, model, root, overrides, time_limit_s,
                                memory_limit_mb, oracle)
        return dataclasses.replace(report, learner_file=str(learner_file))
    if overrides and isolate:
        raise GradingError("overrides work only with isolate=False")
    if oracle is None:  # a class's grading checked its options once, before any student
        check_options(model, seed, time_limit_s, memory_limit_mb)
    all_exercises = load_checks(lesson)
    chosen = select(lesson, all_exercises, exercises)
    if oracle is not None:  # grading a class: one seed, one set of answers for everyone
        seed, model_name = oracle.seed, oracle.model_name
    else:
        seed = secrets.randbelow(2**31) if seed is None else int(seed)
        model_name = model or lesson.settings["default_model"]
        oracle = Oracle(all_exercises, seed, model_name)
    start = time.perf_counter()
    ids = [e.id for e in chosen]
    if isolate:
        from .isolation import run_isolated

        outcomes = run_isolated(lesson, learner_file, ids, seed, model_name,
                                time_limit_s or lesson.settings["time_limit_s"],
                                memory_limit_mb or lesson.settings["memory_limit_mb"])
    else:
        outcomes = run_in_process(learner_file, chosen, seed, model_name, overrides)
    points = lesson.points
    results = [judge(e, float(points.get(e.id, 0)), outcomes.get(e.id), oracle) for e in chosen]
    results = blame_upstream(results, {e.id: tuple(getattr(e, "uses", ())) for e in chosen})
    return Report(lesson.id, str(learner_file), seed, model_name, results, round(time.perf_counter() - start, 3))

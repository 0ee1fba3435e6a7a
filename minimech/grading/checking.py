"""Checking one learner's file: run it (in a sandboxed child process, or in this one for tests of trusted files),
then judge what came back against the oracle's answers, here, in the trusted grading process (verdicts.py)."""

from __future__ import annotations

import dataclasses
import itertools
import secrets
import tempfile
import time
from pathlib import Path

from ..errors import MinimechError
from .api import Exercise, GradingError
from .child import prediction_values
from .lessons import Lesson, get_lesson, load_checks, load_module
from .oracle import Oracle, loads
from .report import Report, blame_upstream, lost_exercise
from .runner import LibraryTraps, exception_facts, is_learner_code, run_exercise
from .verdicts import GraderError, judge, predictions
from .wire import tensors_from_bytes, tensors_to_bytes

__all__ = ["Oracle", "run_checks", "check_options", "select", "judge_all"]


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


def run_in_process(learner_file: Path, exercises: list[Exercise], oracle: Oracle,
                   overrides: dict | None = None, names=()) -> dict[str, dict]:
    """What run_isolated returns, computed in this process: fast, for tests of trusted files; no limits. Library
    traps refuse calls from the learner's file only (a bug or a helper from another file may use the library)."""
    name = f"_minimech_learner_{next(_IN_PROCESS_COUNT)}"
    path = str(Path(learner_file).resolve())
    try:
        module = load_module(Path(learner_file), name, register=False)
    except BaseException as exc:  # noqa: B036
        return {e.id: {"import_failed": {"raised": exception_facts(exc, path)}} for e in exercises}
    for function, replacement in (overrides or {}).items():
        setattr(module, function, replacement)  # also what later exercises call
    arguments = loads(oracle.payload)
    outcomes = {"predictions": prediction_values(module, names)}
    for ex in exercises:
        if not oracle.built(ex.id):
            continue
        attempts: list = []
        traps = LibraryTraps(ex.library, lambda frame: is_learner_code(frame.f_code.co_filename, path), attempts)
        try:
            record, tensors = run_exercise(module, ex.function, ex.library, arguments[ex.id], oracle.seed, path,
                                           attempts, traps)
        finally:
            traps.uninstall()
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


MAX_SCALE = 50  # a bigger model's limits grow with it, up to this factor
TIME_HEADROOM = 3  # a learner's process may take this many times what the reference solution took on one thread
MEMORY_HEADROOM, MEMORY_SLACK_MB = 2, 512  # ... and twice the memory it added, plus this (allocator, imports)


def _default_parameters(lesson: Lesson, params: int) -> int:
    from ..loading import load

    try:
        return sum(p.numel() for p in load(lesson.settings["default_model"]).parameters())
    except Exception:  # the default model is missing here: no scale to go by
        return params


def scaled_limits(lesson: Lesson, oracle: Oracle, time_limit_s=None, memory_limit_mb=None,
                  progress=None) -> tuple[float, int]:
    """(seconds per exercise, MB beyond what is loaded): the ones given, else lesson.json's, grown for a model
    bigger than the lesson's default: time by sqrt(parameters / default's parameters) (at most MAX_SCALE times),
    memory by four copies of the model's weights (a clone, gradients, an optimizer's moments); and at least what
    the reference solution itself needs on that model (TIME_HEADROOM times its time on one thread, MEMORY_HEADROOM
    times the memory it added plus MEMORY_SLACK_MB), measured by waiting for the references before any learner's
    code runs (progress(exercise id, cases done, cases) as each case is done). On the lesson's own model nothing
    waits."""
    time_s, memory_mb = lesson.settings["time_limit_s"], lesson.settings["memory_limit_mb"]
    params, default = oracle.parameters(), lesson.settings["default_model"]
    if params and oracle.model_name != default and default != "none":
        base = _default_parameters(lesson, params)
        time_s *= min(MAX_SCALE, max(1.0, (params / base) ** 0.5))
        memory_mb += 4 * params * 4 // 2**20
        if params > base and (time_limit_s is None or memory_limit_mb is None):
            oracle.wait(progress)
            need_s, need_mb = oracle.needs()
            time_s = max(time_s, TIME_HEADROOM * need_s)
            memory_mb = max(memory_mb, MEMORY_HEADROOM * need_mb + MEMORY_SLACK_MB)
    return float(time_limit_s or time_s), int(memory_limit_mb or memory_mb)


def _ran_out_of_memory(result) -> bool:
    return result.status == "memory" or (result.status == "error" and "(SIGKILL)" in result.message)


def _blame_tight_limits(results: list, oracle: Oracle, limit_s: float, memory_mb: int) -> list:
    """A timeout where the reference solution itself takes half the limit or more, or running out of memory where
    it needs half the memory limit or more, is the limit's fault (a model bigger than the lesson's, or a limit
    given too tight), not the learner's: say so, and how to raise it."""
    for e in results:
        spent, need_mb = oracle.needs([e.id])
        if e.status == "timeout" and spent >= limit_s / 2:
            e.message = (f"{e.message}; but the reference solution itself takes {spent:.0f} s (on one thread) here with model "
                         f"{oracle.model_name}: the time limit ({limit_s:g} s) is too tight for this model, not your "
                         "code's fault: raise --time-limit")
        elif _ran_out_of_memory(e) and need_mb >= memory_mb / 2:
            e.message = (f"{e.message}; but the reference solution itself needs {need_mb:,.0f} MB here with model "
                         f"{oracle.model_name}: the memory limit ({memory_mb:,} MB) is too tight for this model, not "
                         f"your code's fault: raise --memory-limit (to {MEMORY_HEADROOM * need_mb + MEMORY_SLACK_MB:,.0f}"
                         " or more)")
    return results


def judge_all(lesson: Lesson, chosen: list[Exercise], outcomes: dict, oracle: Oracle) -> list:
    """Every chosen exercise's result; a grader-side failure becomes that exercise's "grader error"."""
    points = lesson.points
    results = []
    for ex in chosen:
        try:
            results.append(judge(ex, float(points.get(ex.id, 0)), outcomes.get(ex.id), oracle))
        except GraderError as exc:
            message = str(exc) if str(exc).startswith("grader error") else f"grader error: {exc}"
            results.append(lost_exercise(ex.id, ex.title, ex.function, float(points.get(ex.id, 0)), "grader error",
                                         message))
    return results


def run_checks(lesson, learner_file, exercises=None, seed: int | None = None, isolate: bool = True,
               model: str | None = None, root=None, overrides: dict | None = None,
               time_limit_s: float | None = None, memory_limit_mb: int | None = None,
               oracle: Oracle | None = None, sandbox=None, secret=(), progress=None,
               reference_progress=None) -> Report:
    """Check a learner's lesson file: every exercise (or those named: "3", "02.3", or a list) on fresh random
    inputs (seed: random unless given, recorded in the report). isolate=False runs the file in this process,
    without time or memory limits (for tests); overrides {function name: function} then replaces functions.
    sandbox: a sandbox.Sandbox (default: the strongest that works here); secret: more folders the learner's
    process may not read (a class's submissions). Limits: the ones given, else lesson.json's, grown for a model
    bigger than the lesson's (scaled_limits). progress(exercise id) is called as each exercise is done;
    reference_progress(exercise id, cases done, cases) as each case's reference answer is, where the limits wait
    for them (a bigger model)."""
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
                                memory_limit_mb, oracle, sandbox, secret, progress, reference_progress)
        return dataclasses.replace(report, learner_file=str(learner_file))
    if overrides and isolate:
        raise GradingError("overrides work only with isolate=False")
    if oracle is None:  # a class's grading checked its options once, before any student
        check_options(model, seed, time_limit_s, memory_limit_mb)
        seed = secrets.randbelow(2**31) if seed is None else int(seed)
        oracle = Oracle(load_checks(lesson), seed, model or lesson.settings["default_model"])
    chosen = select(lesson, list(oracle.exercises.values()), exercises)
    start = time.perf_counter()
    if isolate:
        from .isolation import run_isolated
        from .sandbox import choose

        source = learner_file.read_bytes()  # bytes: the child reads them as Python would (BOM, coding line)
        tasks = [(e.id, e.function, tuple(e.library)) for e in chosen if oracle.built(e.id)]
        limit_s, memory_mb = scaled_limits(lesson, oracle, time_limit_s, memory_limit_mb, reference_progress)
        outcomes = run_isolated(lesson, source, tasks, oracle, limit_s, memory_mb, sandbox or choose(), secret,
                                progress)
        results = _blame_tight_limits(judge_all(lesson, chosen, outcomes, oracle), oracle, limit_s, memory_mb)
    else:
        outcomes = run_in_process(learner_file, chosen, oracle, overrides, list(lesson.predictions))
        results = judge_all(lesson, chosen, outcomes, oracle)
    results = blame_upstream(results, {e.id: tuple(getattr(e, "uses", ())) for e in chosen})
    return Report(lesson.id, str(learner_file), oracle.seed, oracle.model_name, results,
                  round(time.perf_counter() - start, 3), predictions(lesson, outcomes.get("predictions")))

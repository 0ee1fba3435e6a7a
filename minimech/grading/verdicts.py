"""Every mark, decided in the grading process from the plain data a learner's process sent back.

A child sends, per exercise, one record of facts per case (runner.run_exercise): an output, or what was raised, or
that a model changed, or that something forbidden was reached. Here each record is checked for shape and size,
statuses and messages are made from the facts, and outputs are compared with the oracle's answers. A fact can only
lose marks: the one way to "pass" is an output that the lesson's compare() accepts against the reference. Labels
and weights come from the oracle's own cases, never from the child.
"""

from __future__ import annotations

import re

from .oracle import Oracle
from .report import CaseResult, ExerciseResult, PredictionResult, lost_exercise, score_exercise
from .runner import FILE_LIMIT_MB
from .wire import WireError, decode

RAISED_KINDS = ("not implemented", "forbidden", "memory", "file too big", "processes", "exit", "recursion",
                "unsendable", "error")


class GraderError(Exception):
    """The grader itself failed (not the learner): the student is graded again before this is reported."""


def _text(value, limit: int = 300) -> str:
    return " ".join(str(value).split())[:limit] if isinstance(value, (str, int, float)) else ""


def _where(facts: dict) -> str:
    where = _text(facts.get("where"), 200)
    return f" ({where})" if where.startswith("your ") else ""


def classify_raised(facts: dict, exercise_id: str) -> tuple[str, str]:
    """(status, message) for what a learner's call raised (facts from runner.exception_facts)."""
    kind = facts.get("kind") if facts.get("kind") in RAISED_KINDS else "error"
    kind_type, text, where = _text(facts.get("type"), 80), _text(facts.get("text")), _where(facts)
    if kind == "not implemented":
        other = re.search(r"EXERCISE (\d\d\.\d+)", text)
        if other and other.group(1) != exercise_id:
            return "error", f"this calls your exercise {other.group(1)}, which is not written yet{where}"
        return "not attempted", "not attempted yet (the function still raises NotImplementedError)"
    if kind == "forbidden":
        return "forbidden import", f"{text}{where}"
    if kind == "memory":
        return "memory", f"ran out of memory (over the lesson's memory_limit_mb): {kind_type} {text}{where}"
    if kind == "file too big":
        return "error", (f"your code printed or wrote more than the grader keeps ({FILE_LIMIT_MB} MB): print less, "
                         f"e.g. shapes instead of whole tensors{where}")
    if kind == "processes":
        return "error", f"your code starts processes (multiprocessing), which a graded function cannot: compute in " \
                        f"one process{where}"
    if kind == "exit":
        return "exited", f"called sys.exit({text}); return a value instead{where}"
    if kind == "recursion":
        return "error", f"RecursionError: your code recursed too deeply (maximum recursion depth){where}"
    if kind == "unsendable":
        return "error", f"your function {text}"
    return "error", f"{kind_type}: {text}{where}"


def forbidden_message(facts: dict) -> str:
    kind, name = facts.get("kind"), _text(facts.get("name"), 120)
    if kind == "call":
        return f"calls {name}, the library's own version of what this exercise asks you to write: write it yourself"
    if kind == "read":
        return f"opens {name}, which a submission may not (the lesson's own files, classmates' files and the " \
               "grader's outputs are off limits)"
    return f"imports {name!r}, which a submission may not"


def case_verdict(facts, exercise_id: str) -> tuple[str, str, object]:
    """(status, message, wire structure or None) of one case's facts; "ok" means an output to compare."""
    if not isinstance(facts, dict) or len(facts) != 1:
        return "error", "your code sent the grader a malformed result (tampering with the grader's channel?)", None
    (kind, body), = facts.items()
    if kind == "output":
        return "ok", "", body
    if kind == "raised" and isinstance(body, dict):
        return (*classify_raised(body, exercise_id), None)
    if kind == "forbidden" and isinstance(body, dict):
        return "forbidden import", forbidden_message(body), None
    if kind == "mutated":
        what = _text(body, 200)
        if what.startswith("hook"):
            return "model mutated", (f"your function left a hook attached ({what}): attach hooks with "
                                     "`with model.hooks([...]):` so they are removed when the block ends"), None
        return "model mutated", (f"your function changed the model ({what}): work on a copy (.clone()) instead of "
                                 "changing weights in place"), None
    return "error", "your code sent the grader a malformed result (tampering with the grader's channel?)", None


def _judge_case(ex, case, want, status: str, message: str, structure, tensors: dict) -> CaseResult:
    label = case.describe()
    if status != "ok":
        return CaseResult(label, case.weight, status, message)
    try:
        got = decode(structure, tensors)
    except (WireError, KeyError, TypeError, ValueError, RecursionError):
        return CaseResult(label, case.weight, "error", "your output came back malformed (tampering with the "
                                                       "grader's channel?)")
    try:
        problem = ex.check(got, want, case)
    except Exception as exc:  # compare() choked on an output of an unexpected kind
        problem = f"your output could not be checked ({type(exc).__name__}: {exc}); is it the right type?"
    if problem is not None and not isinstance(problem, str):
        raise GraderError(f"grader error in checks.py ({ex.id}): compare() returned {type(problem).__name__}, not a "
                          "message or None")
    return CaseResult(label, case.weight, "fail" if problem else "pass", problem or "")


def _hooks_left(case) -> bool:
    """Whether a model in the case carries a hook (cheap: no weights are read)."""
    import torch

    models = [v for v in case.args.values() if isinstance(v, torch.nn.Module)]
    return any(getattr(m, "fns", None) or m._forward_hooks or m._forward_pre_hooks
               for model in models for m in model.modules())


def judge(ex, points: float, outcome: dict | None, oracle: Oracle) -> ExerciseResult:
    """An exercise's result from what the learner's process sent back (outcome) and the oracle's answers.

    outcome: {"lost": (status, message)} when the child died or was stopped on this exercise, or {"record": ...,
    "tensors": ...}. Raises GraderError when the grader (checks.py, the oracle) failed."""
    lost = lambda status, message: lost_exercise(ex.id, ex.title, ex.function, points, status, message)  # noqa: E731
    error = oracle.error(ex.id)
    if error is not None:
        raise GraderError(str(error))
    if outcome is None:
        raise GraderError("grader error: no result came back for this exercise")
    if "lost" in outcome:
        status, message = outcome["lost"]
        if status == "grader error":
            raise GraderError(message)
        return lost(status, message)
    if "import_failed" in outcome:
        event = outcome["import_failed"]
        if isinstance(event.get("forbidden"), dict):
            return lost("forbidden import", f"your file {forbidden_message(event['forbidden'])}")
        status, message = classify_raised(event.get("raised") if isinstance(event.get("raised"), dict) else {}, "")
        return lost(status, f"your file failed to import: {message}")
    record, tensors = outcome["record"], outcome["tensors"]
    if record.get("missing") is True:
        return lost("error", f"your file has no function {ex.function}(): keep the exercise's function name as the "
                             "lesson wrote it")
    raw = record.get("cases")
    try:
        cases, wants = oracle.expected(ex.id)
    except Exception as exc:  # GradingError from the lesson's own code
        raise GraderError(str(exc)) from None
    if not isinstance(raw, list) or not raw or len(raw) > len(cases):
        return lost("error", "your code sent the grader a malformed result (tampering with the grader's channel?)")
    verdicts = [case_verdict(facts, ex.id) for facts in raw]
    results = [_judge_case(ex, c, w, *v, tensors) for c, w, v in zip(cases, wants, verdicts)]
    # cases the child stopped before (after an exit, a forbidden call or a changed model): errors, never skipped
    results += [CaseResult(c.describe(), c.weight, "error", "not run: your code stopped before this case")
                for c in cases[len(results):]]
    if any(_hooks_left(c) for c in cases[:len(results)]):
        oracle.drop_copy()  # a compare() that left a hook: the next judgement gets fresh copies
    return score_exercise(ex.id, ex.title, ex.function, points, results)


def predictions(lesson, raw) -> list[PredictionResult]:
    """The lesson's predictions, each recorded (its value as text) or not, from what the child sent."""
    raw = raw if isinstance(raw, dict) else {}
    results = []
    for name, question in lesson.predictions.items():
        value = raw.get(name)
        value = value[:300] if isinstance(value, str) else None
        points = lesson.prediction_points(name)
        results.append(PredictionResult(name, str(question), value, points if value is not None else 0.0, points))
    return results

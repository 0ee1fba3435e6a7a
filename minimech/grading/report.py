"""What a check or a grade produces: per-case and per-exercise results, scored, with one message each."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

STATUSES = ("pass", "fail", "not attempted", "error", "timeout", "memory", "exited", "forbidden import",
            "model mutated")
# An exercise with one of these gets no credit at all (a case that merely errs or fails still leaves partial credit).
LOSES_EXERCISE = ("timeout", "memory", "exited", "forbidden import", "model mutated")
# An upstream exercise with one of these is not blamed for a later exercise's failure (blame_upstream): "not
# attempted" already surfaces downstream as "this calls your exercise 00.3, which is not written yet".
UPSTREAM_OK = ("pass", "not attempted")


@dataclass
class CaseResult:
    label: str
    weight: float
    status: str  # pass, fail, not attempted, error, memory, exited, forbidden import, model mutated
    message: str = ""


@dataclass
class ExerciseResult:
    id: str
    title: str
    function: str
    status: str
    score: float
    max_score: float
    message: str = ""  # the first problem, with the case it happened in; "" when passed
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def summary(self) -> str:
        passed = sum(c.status == "pass" for c in self.cases)
        return f"{passed}/{len(self.cases)}" if self.cases else "-"


@dataclass
class Report:
    lesson: str
    learner_file: str
    seed: int
    model: str
    exercises: list[ExerciseResult]
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return round(sum(e.score for e in self.exercises), 4)

    @property
    def max_score(self) -> float:
        return round(sum(e.max_score for e in self.exercises), 4)

    def result(self, exercise_id: str) -> ExerciseResult:
        return next(e for e in self.exercises if e.id == exercise_id)

    def first_failure(self) -> ExerciseResult | None:
        """The first exercise that was tried and did not pass (not-attempted ones are not failures)."""
        return next((e for e in self.exercises if e.status not in ("pass", "not attempted")), None)

    def to_dict(self) -> dict:
        return {**asdict(self), "score": self.score, "max_score": self.max_score}


def score_exercise(ex_id: str, title: str, function: str, points: float, cases: list[CaseResult]) -> ExerciseResult:
    """One exercise's status and score from its cases: partial credit = passed weight / total weight."""
    if not cases:
        return lost_exercise(ex_id, title, function, points, "error", "grader error: no case was run")
    statuses = [c.status for c in cases]
    passed = sum(c.weight for c in cases if c.status == "pass") / sum(c.weight for c in cases)
    hard = next((s for s in statuses if s in LOSES_EXERCISE), None)
    if hard:
        status, fraction = hard, 0.0
    elif all(s == "not attempted" for s in statuses):
        status, fraction = "not attempted", 0.0
    elif all(s == "pass" for s in statuses):
        status, fraction = "pass", 1.0
    else:
        status, fraction = ("error" if "error" in statuses else "fail"), passed
    # the message of the case that decided the status (else the first that did not pass)
    first = next((c for c in cases if c.status == status), None) or next((c for c in cases if c.status != "pass"), None)
    message = ""
    if first is not None:
        message = first.message
        if len(cases) > 1 and status != "not attempted":
            message = f"case {cases.index(first) + 1} ({first.label}): {message}"
    return ExerciseResult(ex_id, title, function, status, round(points * fraction, 4), points, message, cases)


def lost_exercise(ex_id: str, title: str, function: str, points: float, status: str, message: str) -> ExerciseResult:
    """An exercise that produced no per-case results (a hang, a crash, an import that failed, a grader error)."""
    return ExerciseResult(ex_id, title, function, status, 0.0, points, message, [])


def blame_upstream(results: list[ExerciseResult], uses: dict[str, tuple]) -> list[ExerciseResult]:
    """Each failed result whose exercise calls (uses), directly or through another exercise, an exercise that also
    failed in this run, with a message that names the first such failure: it is the likely cause. uses: {exercise
    id: (ids of the exercises it calls)}."""
    by_id = {r.id: r for r in results}
    failed = {r.id for r in results if r.status not in UPSTREAM_OK}

    def roots(ex_id: str, seen: set) -> list[str]:  # failed exercises upstream of ex_id, through failed ones only
        found = []
        for up in uses.get(ex_id, ()):
            if up in seen or up not in failed:  # a passing (or unchecked) exercise passes no blame on
                continue
            seen.add(up)
            found += roots(up, seen) or [up]
        return found

    out = []
    for r in results:
        causes = sorted(set(roots(r.id, set()))) if r.status not in ("pass", "not attempted") else []
        if causes:
            names = ", ".join(f"{by_id[c].id} ({by_id[c].function})" for c in causes)
            one = len(causes) == 1
            r = replace(r, message=f"your {names} {'fails' if one else 'fail'}; {r.id} calls {'it' if one else 'them'}"
                                   f": fix {causes[0]} first. ({r.message})")
        out.append(r)
    return out

"""How long each lesson takes a learner's machine: the filled-in lesson run as a script (the full run, not the test
suite's MINIMECH_QUICK smoke run) and `minimech check` on it, isolated as a learner runs it.

    python benchmarks/lesson_times.py            # every lesson
    python benchmarks/lesson_times.py 00 05      # some
    python benchmarks/lesson_times.py --keep DIR # also keep each run's output (DIR/NN.script.txt, DIR/NN.check.txt)
    python benchmarks/lesson_times.py --no-check # the scripts only

Prints wall-clock and CPU seconds per lesson, counting every process a command starts (the grader's learner
processes come from a forkserver that outlives `check`: this script makes itself their subreaper and waits for
them). Issue 13's budget: a script under a minute and a check under 30 s on two cores. On a shared machine the
wall clock grows with the load; the CPU time does not.
"""

from __future__ import annotations

import ctypes
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minimech.grading import fill_solutions, find_lessons


PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def become_subreaper() -> None:
    """Orphaned descendants (the grader's forkserver and the learner processes it forked, which outlive `check`'s
    own wait) are re-parented to this process instead of init, so their CPU time can still be counted."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_orphans() -> None:
    """Wait for every descendant re-parented here: their CPU time joins RUSAGE_CHILDREN only once waited for."""
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return


def timed(command: list[str], cwd: Path, env: dict, keep: Path | None = None) -> tuple[float, float, int]:
    """(wall s, CPU s of the command and every process it started, exit status); its output written to `keep`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    reap_orphans()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if keep is not None:
        keep.write_text(run.stdout + ("\n--- stderr\n" + run.stderr if run.stderr else ""))
    if run.returncode:
        print(run.stderr[-2000:], file=sys.stderr)
    return wall, cpu, run.returncode


def main(argv: list[str]) -> None:
    keep = Path(argv[argv.index("--keep") + 1]) if "--keep" in argv else None
    checks = "--no-check" not in argv
    wanted = [a for a in argv if a[:2].isdigit()]
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    become_subreaper()
    env = {k: v for k, v in os.environ.items() if k != "MINIMECH_QUICK"}
    print(f"{'lesson':28s} {'script wall':>12s} {'script cpu':>11s} {'check wall':>11s} {'check cpu':>10s}")
    for lesson in find_lessons():
        if wanted and lesson.id not in wanted:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "lesson.py"
            path.write_text(fill_solutions(lesson))
            kept = lambda what: keep / f"{lesson.id}.{what}.txt" if keep else None  # noqa: E731
            script = timed([sys.executable, str(path)], Path(tmp), env, kept("script"))
            check = (timed([sys.executable, "-m", "minimech.cli", "check", lesson.id, "--file", str(path)], Path(tmp),
                           env, kept("check")) if checks else (float("nan"), float("nan"), 0))
        flag = "" if script[2] == check[2] == 0 else "  (failed)"
        print(f"{lesson.name:28s} {script[0]:11.1f}s {script[1]:10.1f}s {check[0]:10.1f}s {check[1]:9.1f}s{flag}")
    print(f"load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main(sys.argv[1:])

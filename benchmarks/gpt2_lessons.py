"""Every lesson on GPT-2-small-sized weights: each lesson's script (`python lesson.py --model gpt2`, the solutions
filled in) and its `check` (the solutions, isolated as a learner's file is, under the lesson's limits), with wall
time and peak memory for each.

    python benchmarks/gpt2_lessons.py                      # every lesson, script and check
    python benchmarks/gpt2_lessons.py 03 04 --only check   # some lessons, only their checks
    python benchmarks/gpt2_lessons.py --as-gpt2-small      # the checkpoint recognised as GPT-2 small (see below)

The checkpoint is GPT-2 small's shape with random weights (transformers' GPT2Config() and GPT2LMHeadModel, seed 0,
save_pretrained), built once into --checkpoint (default: $TMPDIR/minimech-gpt2-shaped/gpt2) and loaded as "gpt2"
through $MINIMECH_WEIGHTS, as a user's own copy of GPT-2 would be. Nothing is downloaded.

--as-gpt2-small: each run is a child process that first adds the checkpoint (its size and sha256) to the list of
published files minimech checks downloads against (minimech.published.published_files, patched in that process
only), so that loading it goes through the real identification (sha256 at load, identify_gpt2) and the lessons'
GPT-2-small paper cases run. On random weights those cases must FAIL, with clear messages; nothing else may.

Figures: wall seconds; CPU seconds (user + system, the whole process tree: on a machine shared with other work
the wall clock grows with the load, the CPU time much less); peak RSS of the largest single process (the script;
for a check the grader or a learner's process, from wait4); the peak of the whole process tree's RSS summed
(sampled every 0.2 s); and the longest silent stretch (no output on stdout or stderr, a progress bar's redraw
counting; the children run unbuffered, as on a terminal), which the project wants under ~10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# The child: optionally stand the checkpoint in for GPT-2 small's published file, then run a lesson script (as
# __main__, with its own argv) or a lesson's check (printing the report as one JSON line).
CHILD = textwrap.dedent("""
    import json, runpy, sys, time
    spec = json.loads(sys.argv[1])
    if spec["published"]:  # (checkpoint, file name, size, sha256): GPT-2 small's published file, in this process
        from minimech import published
        listed = published.published_files
        published.published_files = lambda: listed() + [tuple(spec["published"])]
    if spec["kind"] == "script":
        sys.argv = [spec["path"], "--model", "gpt2"]
        runpy.run_path(spec["path"], run_name="__main__")
    else:
        from minimech.grading import get_lesson, load_checks, run_checks
        from minimech.grading.checking import Oracle, scaled_limits
        start = time.perf_counter()
        step = lambda what: lambda ex_id, *cases: print(
            f"[{time.perf_counter() - start:6.0f} s] {what} {ex_id}" + (" {}/{} cases".format(*cases) if cases else ""),
            file=sys.stderr, flush=True)
        lesson = get_lesson(spec["lesson"])
        oracle = Oracle(load_checks(lesson), 1, "gpt2")
        limits = scaled_limits(lesson, oracle, progress=step("reference answers of"))  # what run_checks will use
        report = run_checks(lesson, spec["path"], seed=1, model="gpt2", oracle=oracle, progress=step("checked"))
        print("REPORT " + json.dumps({"score": report.score, "max_score": report.max_score, "limits": limits,
                                      "needs": oracle.needs(), "exercises": [
            {"id": e.id, "status": e.status, "score": e.score, "max_score": e.max_score, "message": e.message,
             "cases": [{"label": c.label, "status": c.status, "message": c.message} for c in e.cases]}
            for e in report.exercises]}))
""")


def build_checkpoint(folder: Path) -> Path:
    """config.json + model.safetensors of a random GPT-2-small-shaped model (seed 0), built once."""
    if not (folder / "model.safetensors").is_file():
        import torch
        import transformers

        torch.manual_seed(0)
        transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(folder)
    return folder


def published_entry(folder: Path) -> list:
    """(checkpoint, file, size, sha256) for the checkpoint's weights, as weights/gpt2-manifest.json lists GPT-2's."""
    from minimech.loading import sha256_file

    weights = folder / "model.safetensors"
    return ["gpt2", weights.name, weights.stat().st_size, sha256_file(weights)]


@dataclass
class Run:
    wall_s: float
    cpu_s: float  # user + system seconds of the process tree, at least (what a busy machine's wall clock hides)
    max_rss_mib: float  # the largest single process
    tree_peak_mib: float  # the process tree's summed RSS at its peak (0: not sampled)
    returncode: int
    stdout: str
    stderr: str
    report: dict | None = field(default=None)
    silent_s: float = 0.0  # the longest stretch with no output at all (stdout or stderr, a progress bar's redraw
    #                        counts), from the start to the end, measured at 0.1 s resolution

    @property
    def traceback(self) -> bool:
        return self.returncode != 0 or "Traceback (most recent call last)" in self.stderr


def _tree(pid: int) -> dict[int, tuple[float, float]]:
    """{pid: (RSS MiB, CPU seconds so far)} for pid and its descendants, from /proc (Linux; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    try:
        entries = [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return {}
    for entry in entries:
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        stats[entry] = fields
        children.setdefault(int(fields[1]), []).append(entry)
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    found, todo = {}, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        if p in stats:  # fields from state on: [11], [12] are utime, stime; [21] is rss (pages)
            fields = stats[p]
            found[p] = (int(fields[21]) * page / 2**20, (int(fields[11]) + int(fields[12])) / tick)
    return found


def run_child(spec: dict, env: dict, cwd: Path, timeout_s: float, echo: bool = False) -> Run:
    """One child (CHILD with spec), timed, its memory measured; stderr echoed as it comes when echo."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(spec)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak, cpu, done = [0.0], {}, threading.Event()

    def sample():  # the tree's summed RSS at its peak; each process's CPU time as last seen (learners' processes
        while not done.wait(0.2):  # are the sandbox's children, which wait4's figures need not include)
            tree = _tree(proc.pid)
            peak[0] = max(peak[0], sum(rss for rss, _ in tree.values()))
            cpu.update({p: max(c, cpu.get(p, 0.0)) for p, (_, c) in tree.items()})

    chunks: dict[str, list[str]] = {"out": [], "err": []}
    last, silent = [start], [0.0]  # the last output's time; the longest silence so far
    lock = threading.Lock()

    def read(stream, name):  # raw chunks, not lines: a progress bar redraws with \r and no newline
        for chunk in iter(lambda: os.read(stream.fileno(), 65536), b""):
            now = time.perf_counter()
            with lock:
                silent[0], last[0] = max(silent[0], now - last[0]), now
            text = chunk.decode(errors="replace")
            chunks[name].append(text)
            if echo and name == "err":
                sys.stderr.write(text.replace("\n", "\n      | "))

    threads = [threading.Thread(target=sample, daemon=True),
               threading.Thread(target=read, args=(proc.stdout, "out"), daemon=True),
               threading.Thread(target=read, args=(proc.stderr, "err"), daemon=True)]
    for t in threads:
        t.start()
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    _, status, usage = os.wait4(proc.pid, 0)
    timer.cancel()
    done.set()
    for t in threads[1:]:
        t.join(10)
    silent[0] = max(silent[0], time.perf_counter() - last[0])
    out = "".join(chunks["out"])
    proc.returncode = os.waitstatus_to_exitcode(status)
    report = next((json.loads(line[7:]) for line in out.splitlines() if line.startswith("REPORT ")), None)
    # CPU: wait4's (the child and the children it waited for) or the samples' sum (every process of the tree, up
    # to its last sample), whichever is more
    total_cpu = max(usage.ru_utime + usage.ru_stime, sum(cpu.values()))
    return Run(round(time.perf_counter() - start, 1), round(total_cpu, 1),
               usage.ru_maxrss / 1024, peak[0], proc.returncode, out,
               "".join(chunks["err"]), report, round(silent[0], 1))


def lesson_file(lesson, folder: Path) -> Path:
    from minimech.grading import fill_solutions

    path = folder / "lesson.py"
    path.write_text(fill_solutions(lesson))
    return path


def environment(checkpoint: Path, threads: int | None = None) -> dict:
    """The children's environment: "gpt2" found through $MINIMECH_WEIGHTS; threads: torch's default number of
    threads (OMP_NUM_THREADS), e.g. 1 on a machine other work keeps busy, where two threads mostly wait for each
    other (measured here: a GPT-2 forward of 4 x 15 tokens took 2.4 s on 2 threads, 0.96 s on 1)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MINIMECH_QUICK", "MINIMECH_NO_VERIFY")}
    env["MINIMECH_WEIGHTS"] = str(checkpoint.parent)  # load("gpt2") finds <folder>/gpt2
    env["PYTHONUNBUFFERED"] = "1"  # output as it comes, as on a terminal, so that silent stretches can be timed
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_script(lesson, checkpoint: Path, published=None, timeout_s: float = 1800, echo: bool = False,
               threads: int | None = None) -> Run:
    with tempfile.TemporaryDirectory(prefix="minimech-gpt2-script-") as tmp:
        path = lesson_file(lesson, Path(tmp))
        return run_child({"kind": "script", "path": str(path), "published": published},
                         environment(checkpoint, threads), Path(tmp), timeout_s, echo)


def run_check(lesson, checkpoint: Path, published=None, timeout_s: float = 1800, echo: bool = False,
              threads: int | None = None) -> Run:
    with tempfile.TemporaryDirectory(prefix="minimech-gpt2-check-") as tmp:
        path = lesson_file(lesson, Path(tmp))
        return run_child({"kind": "check", "lesson": lesson.id, "path": str(path), "published": published},
                         environment(checkpoint, threads), Path(tmp), timeout_s, echo)


def failures(report: dict) -> list[str]:
    """'03.1 fail: <case>: <message>' for every case that did not pass."""
    return [f"{e['id']} {c['status']}: {c['label']}: {c['message']}" for e in report["exercises"]
            for c in e["cases"] if c["status"] != "pass"] + \
           [f"{e['id']} {e['status']}: {e['message']}" for e in report["exercises"] if not e["cases"]]


def row(lesson, kind: str, run: Run, result: str) -> str:
    return (f"{lesson.name:30s} {kind:6s} {run.wall_s:7.1f} {run.cpu_s:7.1f} {run.max_rss_mib:12.0f} "
            f"{run.tree_peak_mib:9.0f} {run.silent_s:9.1f}  {result}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lessons", nargs="*", help="lesson ids (default: all)")
    parser.add_argument("--only", choices=("script", "check"), default=None)
    parser.add_argument("--as-gpt2-small", action="store_true", help="the checkpoint recognised as GPT-2 small")
    parser.add_argument("--checkpoint", type=Path,
                        default=Path(tempfile.gettempdir()) / "minimech-gpt2-shaped" / "gpt2")
    parser.add_argument("--echo", action="store_true", help="show each run's stderr (progress) as it comes")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch's threads in the runs (OMP_NUM_THREADS; default: torch's own, one per core)")
    args = parser.parse_args(argv)
    from minimech.grading import find_lessons

    checkpoint = build_checkpoint(args.checkpoint)
    published = published_entry(checkpoint) if args.as_gpt2_small else None
    print(f"checkpoint {checkpoint} (GPT-2 small's shape, random weights); "
          f"{'recognised as GPT-2 small' if published else 'not GPT-2 small (no paper cases)'}; "
          f"{args.threads or 'default'} threads; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'lesson':30s} {'run':6s} {'wall s':>7s} {'CPU s':>7s} {'max RSS MiB':>12s} {'tree MiB':>9s} {'silent s':>9s}  result")
    for lesson in find_lessons():
        if args.lessons and lesson.id not in args.lessons:
            continue
        if args.only in (None, "script"):
            run = run_script(lesson, checkpoint, published, echo=args.echo, threads=args.threads)
            result = "traceback: " + run.stderr.strip().splitlines()[-1][:100] if run.traceback else "ok"
            not_found = [line.strip() for line in run.stdout.splitlines() if "NOT FOUND" in line]
            print(row(lesson, "script", run, result) + "".join(f"\n{'':32s}{line[:150]}" for line in not_found),
                  flush=True)
        if args.only in (None, "check"):
            run = run_check(lesson, checkpoint, published, echo=args.echo, threads=args.threads)
            report = run.report
            result = (f"{report['score']:g}/{report['max_score']:g}; limits {report['limits'][0]:.0f} s, "
                      f"{report['limits'][1]:,} MB (the reference needed {report['needs'][0]:.0f} s, "
                      f"{report['needs'][1]:,.0f} MB)" if report else
                      "no report: " + (run.stderr.strip().splitlines() or ["?"])[-1][:100])
            print(row(lesson, "check", run, result)
                  + "".join(f"\n{'':32s}{line[:300]}" for line in failures(report or {"exercises": []})), flush=True)
    print(f"load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()

"""The Gradescope autograder zip for one lesson.

Gradescope unpacks the zip into /autograder/source/, runs setup.sh once (as root) to build its image, then for each
submission copies the student's files into /autograder/submission/ and runs run_autograder (as root), which must
write /autograder/results/results.json. The zip carries minimech itself (with the shipped models and this one
lesson, without its solutions.py and bugs.py), so the grader is the instructor's exact version, and a manifest of
exactly those files (checked before grading). setup.sh makes the answer key (checks.py) readable by root only; the
student's code runs under a uid of its own (sandbox.py, user mode), so it can read neither the key nor write the
results. run_autograder keeps results.json only when the grader exited cleanly, else writes the fallback.
MINIMECH_AUTOGRADER_ROOT replaces /autograder (to try the zip locally); MINIMECH_PYTHON picks the interpreter.
"""

from __future__ import annotations

import json
import zipfile
from importlib import metadata
from pathlib import Path

import minimech

from ..loading import weights_dir
from .lessons import Lesson, get_lesson

SKIP_PARTS = ("__pycache__", ".ipynb_checkpoints")
SECRET_FILES = ("solutions.py", "bugs.py")  # the grader never needs them; students never see the zip anyway

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image.
set -euo pipefail
apt-get update
apt-get install -y python3 python3-pip python3-venv
python3 -m venv /autograder/venv
/autograder/venv/bin/pip install --upgrade pip
# torch first, pinned as in minimech's README (the CPU wheel: an unpinned torch may pull a multi-GB CUDA build)
/autograder/venv/bin/pip install --extra-index-url https://download.pytorch.org/whl/cpu {torch_pin}
/autograder/venv/bin/pip install -r /autograder/source/requirements.txt
# the answer key: readable by root (the grader) only; the student's code runs under another uid
chown -R root:root /autograder/source
chmod -R go-w /autograder/source
chmod 600 /autograder/source/minimech/lessons/*/checks.py
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for each submission: the student's files are in $ROOT/submission/; the results go to
# $ROOT/results/results.json. MINIMECH_AUTOGRADER_ROOT replaces /autograder, to try the zip locally.
ROOT="${{MINIMECH_AUTOGRADER_ROOT:-/autograder}}"
PY="${{MINIMECH_PYTHON:-}}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/venv/bin/python" ]; then PY="$ROOT/venv/bin/python"; else PY=python3; fi
fi
mkdir -p "$ROOT/results"
rm -f "$ROOT/results/results.json"
cd "$ROOT/source"
PYTHONPATH="$ROOT/source${{PYTHONPATH:+:$PYTHONPATH}}" "$PY" -m minimech.cli autograder-run {lesson_id} --root "$ROOT"
status=$?
if [ "$status" -ne 0 ] || [ ! -s "$ROOT/results/results.json" ]; then
  # the grader did not finish (it could not start, or was killed): whatever results.json holds is not its
  # verdict; give Gradescope a valid file with every test at zero
  cp "$ROOT/source/fallback_results.json" "$ROOT/results/results.json"
fi
exit 0
"""


def requirements() -> list[str]:
    """minimech's own runtime dependencies, as installed (no extras)."""
    try:
        found = [r for r in metadata.requires("minimech") or [] if "extra ==" not in r]
    except metadata.PackageNotFoundError:
        found = []
    return found or ["numpy", "torch>=2.1", "tiktoken>=0.5", "matplotlib", "safetensors", "tqdm"]


TORCH_PIN = "torch==2.13.0"  # as the README installs it


def fallback_results(lesson: Lesson) -> dict:
    message = "The grader could not run on this submission; please tell your instructor."
    return {"score": 0.0, "output": message, "tests": [
        {"name": ex_id, "number": ex_id, "score": 0.0, "max_score": float(points), "status": "failed",
         "output": message} for ex_id, points in lesson.points.items()]}


def _zip_manifest(lesson: Lesson) -> dict:
    """The manifest of what the zip holds: the grader, the weights, and this lesson without its secret files."""
    from . import manifest

    entries = {k: v for k, v in manifest.compute().items() if not k.startswith("lessons/")}
    entries.update({f"lessons/{lesson.name}/{p.name}": manifest.sha256(p) for p in sorted(lesson.path.iterdir())
                    if p.is_file() and p.suffix in manifest.LESSON_SUFFIXES and p.name not in SECRET_FILES})
    return {"regenerate with": manifest.UPDATE_COMMAND, "sha256": dict(sorted(entries.items()))}


def _add_tree(archive: zipfile.ZipFile, source: Path, target: str, skip_dirs=(), skip_files=()) -> None:
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if not path.is_file() or any(p in SKIP_PARTS for p in rel.parts) or path.suffix == ".pyc":
            continue
        if rel.parts[0] in skip_dirs or path.name in skip_files:
            continue
        archive.write(path, f"{target}/{rel.as_posix()}")


def _add_text(archive: zipfile.ZipFile, name: str, text: str, executable: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    info.external_attr = (0o755 if executable else 0o644) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, text)


def build_autograder(lesson, out: Path, root=None) -> Path:
    """Write the Gradescope autograder zip for `lesson` to `out`; returns its path."""
    lesson = get_lesson(lesson, root)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    package = Path(minimech.__file__).resolve().parent
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        _add_text(archive, "setup.sh", SETUP_SH.format(torch_pin=TORCH_PIN), executable=True)
        _add_text(archive, "run_autograder", RUN_AUTOGRADER.format(lesson_id=lesson.id), executable=True)
        _add_text(archive, "requirements.txt", "\n".join(requirements()) + "\n")
        _add_text(archive, "fallback_results.json", json.dumps(fallback_results(lesson), indent=1))
        _add_tree(archive, package, "minimech", skip_dirs=("lessons", "weights"), skip_files=("manifest.json",))
        _add_tree(archive, weights_dir(), "minimech/weights")
        _add_text(archive, "minimech/lessons/__init__.py", '"""The lesson this autograder grades."""\n')
        _add_tree(archive, lesson.path, f"minimech/lessons/{lesson.name}", skip_files=SECRET_FILES)
        _add_text(archive, "minimech/grading/manifest.json", json.dumps(_zip_manifest(lesson), indent=1) + "\n")
    return out

"""The sha256 of every file grading depends on: the lessons' .py and .json files (answer keys included), the shipped
weights and their cards, and the grader's own modules. `grade` and the Gradescope autograder check the files they
use against it before grading and refuse on a mismatch, naming the file: a submission graded earlier (or anyone)
that changed them cannot change later students' marks unnoticed.

Whoever changes a lesson, ships new weights or edits the grader regenerates it with one command:

    python -m minimech.grading.manifest --update

(tests/test_grading_manifest.py fails, naming that command, while it is stale.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from .api import GradingError

MANIFEST = Path(__file__).resolve().parent / "manifest.json"
UPDATE_COMMAND = "python -m minimech.grading.manifest --update"
LESSON_SUFFIXES = (".py", ".json")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def roots() -> dict[str, Path]:
    """Where each section of the manifest lives in this installation."""
    import minimech.lessons as installed_lessons

    from ..loading import weights_dir

    return {"lessons": Path(installed_lessons.__file__).resolve().parent, "weights": Path(weights_dir()).resolve(),
            "grading": Path(__file__).resolve().parent}


def _section_files(section: str, root: Path) -> list[Path]:
    if section == "lessons":
        return sorted(p for p in root.glob("[0-9][0-9]_*/*") if p.is_file() and p.suffix in LESSON_SUFFIXES)
    if section == "weights":
        return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".md" and "__pycache__" not in p.parts
                      and p.name != "__init__.py")
    return sorted(p for p in root.glob("*.py") if p.is_file())


def compute() -> dict[str, str]:
    """{"section/relative/path": sha256} for every file the manifest covers, as installed now."""
    entries = {}
    for section, root in roots().items():
        for path in _section_files(section, root):
            entries[f"{section}/{path.relative_to(root).as_posix()}"] = sha256(path)
    return dict(sorted(entries.items()))


def read() -> dict[str, str]:
    try:
        return json.loads(MANIFEST.read_text())["sha256"]
    except (OSError, ValueError, KeyError) as exc:
        raise GradingError(f"the grader's manifest {MANIFEST} is missing or unreadable ({exc}): reinstall "
                           f"minimech, or regenerate it with `{UPDATE_COMMAND}`") from None


def update() -> Path:
    MANIFEST.write_text(json.dumps({"regenerate with": UPDATE_COMMAND, "sha256": compute()}, indent=1) + "\n")
    return MANIFEST


def verify(lesson, model_name: str | None = None, manifest: dict | None = None, where: dict | None = None) -> None:
    """Refuse (GradingError naming the file) if a file the grading of `lesson` uses differs from the manifest: the
    lesson's own files (when it is one of the installed lessons), the model's weights folder (when shipped), and
    the grader's modules. A lesson from elsewhere (MINIMECH_LESSONS, an author's folder) has no entries to check."""
    manifest = read() if manifest is None else manifest
    where = roots() if where is None else where
    checks: list[tuple[str, Path]] = []
    lesson_path = Path(lesson.path).resolve()
    if lesson_path.parent == where["lessons"]:
        checks.append((f"lessons/{lesson_path.name}/", lesson_path))
    model_dir = where["weights"] / str(model_name or "")
    if model_name and (model_dir / "card.json").is_file():
        checks.append((f"weights/{model_name}/", model_dir))
    checks.append(("grading/", where["grading"]))
    for prefix, folder in checks:
        section = prefix.split("/")[0]
        listed = {k: v for k, v in manifest.items() if k.startswith(prefix)}
        present = {f"{section}/{p.relative_to(where[section]).as_posix()}": p
                   for p in _section_files(section, where[section]) if str(p).startswith(str(folder) + "/")}
        for key, path in sorted(present.items()):
            if key not in listed:
                raise GradingError(f"refusing to grade: {path} is not in the grader's manifest (a file added "
                                   f"after installation?); remove it, or if it is yours, run `{UPDATE_COMMAND}`")
            if sha256(path) != listed[key]:
                raise GradingError(f"refusing to grade: {path} differs from the grader's manifest (changed after "
                                   f"installation?); restore it (reinstall minimech), or if the change is yours, "
                                   f"run `{UPDATE_COMMAND}`")
        for key in sorted(set(listed) - set(present)):
            raise GradingError(f"refusing to grade: {key.split('/', 1)[1]} ({section}) is missing; reinstall "
                               "minimech")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimech.grading.manifest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="rewrite the manifest from the files as they are")
    args = parser.parse_args(argv)
    if args.update:
        print(f"wrote {update()} ({len(compute())} files)")
        return 0
    stale = sorted(k for k, v in compute().items() if read().get(k) != v) + sorted(set(read()) - set(compute()))
    print("manifest up to date" if not stale else f"stale for {', '.join(stale[:10])}: run `{UPDATE_COMMAND}`")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())

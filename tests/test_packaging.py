"""The package list in pyproject.toml names every subpackage, so a non-editable install is complete."""

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"minimech"} | {"minimech." + p.parent.name for p in (ROOT / "minimech").glob("*/__init__.py")}
    assert found | {"minimech.weights", "minimech.lessons"} == listed


def test_a_built_wheel_carries_the_shipped_models_and_tokenizer_files(tmp_path):
    """What a plain `pip install .` installs: the wheel must hold weights/ (as minimech/weights) and the BPE files."""
    import subprocess
    import sys
    import zipfile

    pytest.importorskip("setuptools")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("minimech-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"minimech/data/gpt2/vocab.bpe", "minimech/data/gpt2/encoder.json"} <= names
    assert "minimech/weights/DEFAULT" in names and "minimech/weights/gpt2-manifest.json" in names
    shipped = [p.parent.name for p in (ROOT / "weights").glob("*/card.json")]
    assert shipped
    for name in shipped:
        assert {f"minimech/weights/{name}/card.json", f"minimech/weights/{name}/model.safetensors"} <= names
    assert "minimech/lessons/__init__.py" in names  # the lessons, each folder's files (minimech.grading finds them)
    for lesson_file in (ROOT / "lessons").glob("[0-9][0-9]_*/*"):
        if lesson_file.suffix in (".py", ".md", ".json"):
            assert f"minimech/lessons/{lesson_file.parent.name}/{lesson_file.name}" in names

"""The package list in pyproject.toml names every subpackage, so a non-editable install is complete."""

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"minimech"} | {"minimech." + p.parent.name for p in (ROOT / "minimech").glob("*/__init__.py")}
    assert found | {"minimech.weights"} == listed

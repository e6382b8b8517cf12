"""Every notebook in tutorials/ runs from top to bottom without an error, in its quick mode.

Each notebook is executed in a fresh kernel, in a temporary folder, with
``CELLFLOW_TUTORIAL_QUICK=1`` (fewer training steps, fewer seeds, smaller subsets; the notebook
reads it) and without ``CELLFLOW_TUTORIAL_FIGURES`` (so no figure is written into the repository).
A notebook that needs an optional package names it in its metadata,
``{"cellflow": {"requires": ["scvelo"]}}``, and is skipped when that package is not importable.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the tutorials need the 'test' extra: pip install 'cellflow[test]'")
nbclient = pytest.importorskip("nbclient", reason="the tutorials need the 'test' extra: pip install 'cellflow[test]'")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "tutorials").glob("*.ipynb"))
CELL_TIMEOUT = 600  # seconds one cell may take before the notebook counts as failed


def missing_requirements(notebook) -> list[str]:
    """The optional packages a notebook names in ``metadata["cellflow"]["requires"]`` that are not importable."""
    required = notebook.metadata.get("cellflow", {}).get("requires", [])
    return [name for name in required if importlib.util.find_spec(name) is None]


def repository_files() -> dict[Path, int]:
    """Files of the folders a notebook could write figures or results into, with their modification times."""
    return {path: path.stat().st_mtime_ns for folder in ("docs", "tutorials") for path in (ROOT / folder).rglob("*")
            if path.is_file()}


def test_every_tutorial_is_collected():
    assert NOTEBOOKS, f"no notebooks found in {ROOT / 'tutorials'}"


def test_missing_requirements_names_what_cannot_be_imported():
    notebook = nbformat.v4.new_notebook(metadata={"cellflow": {"requires": ["json", "no_such_package_xyz"]}})
    assert missing_requirements(notebook) == ["no_such_package_xyz"]
    assert missing_requirements(nbformat.v4.new_notebook()) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_tutorial_states_its_key_result_and_checks_it(path):
    """The run below can fail on what a notebook teaches, not only on an error: its last cells say the key
    result and assert it (with margins that hold in quick mode and in the full run)."""
    notebook = nbformat.read(path, as_version=4)
    statement, check = notebook.cells[-2:]
    assert statement.cell_type == "markdown" and statement.source.startswith("## Key result"), path.name
    assert check.cell_type == "code" and check.source.count("assert") >= 2, path.name


@pytest.mark.slow  # a fresh kernel and every cell of the notebook: minutes in all (.ci/run's slow step runs them)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_runs(path, tmp_path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    missing = missing_requirements(notebook)
    if missing:
        pytest.skip(f"{path.name} needs {', '.join(missing)}, which is not installed")
    monkeypatch.setenv("CELLFLOW_TUTORIAL_QUICK", "1")
    monkeypatch.delenv("CELLFLOW_TUTORIAL_FIGURES", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' output folders land in pytest's temporary folder
    # the kernel and the notebooks' shell commands import this checkout of cellflow
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    client = nbclient.NotebookClient(
        notebook, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    before = repository_files()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails
    assert repository_files() == before, "the notebook wrote into docs/ or tutorials/; write into a temporary folder"

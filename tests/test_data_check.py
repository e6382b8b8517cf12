"""The start-of-run check of the real data files (tests/conftest.py), run on a data test in a fresh pytest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_TEST = "tests/test_growth_prior.py::test_moscot_temporal_mouse"  # loads cf.datasets.moscot_temporal()


def _pytest(**env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "CELLFLOW_REQUIRE_DATA"}
    environment.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", DATA_TEST],
                          cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # a pytest run of its own: once per CI run, in the slow step
def test_missing_data_skips_with_one_message(tmp_path):
    run = _pytest(CELLFLOW_DATA_DIR=str(tmp_path / "nonexistent"))
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("real data: 5 of 5 files missing or damaged")  # said first ...
    assert sum(line.startswith("real data:") for line in lines) == 2  # ... and once more in the summary
    assert "moscot/moscot_temporal_tests.h5ad" in lines[0]
    assert "1 skipped" in lines[-1] and "error" not in run.stdout.lower()


@pytest.mark.slow  # a pytest run of its own: once per CI run, in the slow step
def test_required_data_stops_the_run_once(tmp_path):
    run = _pytest(CELLFLOW_DATA_DIR=str(tmp_path / "nonexistent"), CELLFLOW_REQUIRE_DATA="1")
    assert run.returncode == 4  # pytest's usage error: nothing ran
    assert run.stderr.count("real data:") == 1 and "CELLFLOW_REQUIRE_DATA is set" in run.stderr

"""Every benchmark script's quick mode runs to the end, writes its rows and section where asked, and leaves
BENCHMARKS.md alone.

Each script runs as a subprocess, as from the command line (``python benchmarks/<name>.py --quick``),
from the repository root with one thread per process and the data folder of the test run; its
results folder (or report file) is a temporary folder of its own. The runs the session selected
start together, two at a time (one per core of a small machine: most of each run is importing
torch and cellflow), and each test checks one of them. ``horizon.py``'s quick mode is run, and its
rows checked in detail, by ``tests/test_horizon.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cellflow import datasets

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
QUICK_REPORT = "BENCHMARKS_quick.md"
RESULTS = "{results}"  # replaced by the run's temporary folder
WORKERS = 2  # quick runs at a time

# script -> (its arguments after --quick, the rows it writes under the results folder, its sections)
QUICK_RUNS = {
    "leave_one_out": (["--write", "--results", RESULTS], ["steps-40/simulate__otcfm.csv",
                                                          "steps-40/simulate__torchcfm_otcfm.csv"], ["leave_one_out"]),
    "time_to_accuracy": (["--results", RESULTS], ["time_to_accuracy_quick.csv"], ["time_to_accuracy"]),
    "multimarginal": (["--results", RESULTS], ["multimarginal_simulate.csv"], ["multimarginal"]),
    "potentials": (["--results", RESULTS], ["potentials_simulate.csv"], ["potentials"]),
    "reflow": (["--results", RESULTS], ["reflow_quick.csv", "reflow_fields_quick.csv"], ["reflow"]),
    "stochastic_bridges": (["--results", RESULTS], ["stochastic_bridges_quick.csv"], ["stochastic_bridges"]),
    "unbalanced": (["--results", RESULTS], ["unbalanced_simulate.csv", "unbalanced_simulate_in_sample.csv"],
                   ["unbalanced", "unbalanced_simulate"]),
    "small_data_speed": (["--results", RESULTS], ["small_data_speed_quick.csv"], ["small_data_speed"]),
    "scale": (["--results", RESULTS], ["scale_quick.csv", "scale_quick.png"], ["scale"]),
    "expression": (["--results", RESULTS], ["expression_quick.csv"], ["expression"]),
    "calibration": (["--results", RESULTS], ["calibration_quick.csv", "calibration_real_quick.csv"],
                    ["calibration", "calibration_real"]),
    "gpu_check": (["--device", "cpu", "--write", "--out", f"{RESULTS}/{QUICK_REPORT}"], [], ["gpu_check"]),
}


def run_quick(script: str, folder: Path) -> subprocess.CompletedProcess:
    """Run ``benchmarks/<script>.py --quick`` with its arguments of :data:`QUICK_RUNS`, writing under ``folder``."""
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
                       **{datasets.DATA_DIR_ENV: os.environ[datasets.DATA_DIR_ENV]})
    command = [sys.executable, f"benchmarks/{script}.py", "--quick",
               *(argument.replace(RESULTS, str(folder)) for argument in QUICK_RUNS[script][0])]
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def quick_runs(request, tmp_path_factory):
    """BENCHMARKS.md before the runs, and the folder and finished process of every quick run the session selected."""
    selected = set()
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if item.module is request.module and callspec is not None and "script" in callspec.params:
            selected.add(callspec.params["script"])
    selected = sorted(selected)
    before = BENCHMARKS.read_bytes()
    folders = {script: tmp_path_factory.mktemp(script) for script in selected}
    with ThreadPoolExecutor(WORKERS) as pool:
        processes = dict(zip(selected, pool.map(run_quick, selected, [folders[s] for s in selected])))
    return before, {script: (folders[script], processes[script]) for script in selected}


def test_every_benchmark_script_has_a_quick_run():
    # sections.py and the private helpers (_common.py, _torchcfm.py, _measure.py) are imported by the scripts
    scripts = {path.stem for path in (ROOT / "benchmarks").glob("*.py") if not path.stem.startswith("_")} - {"sections"}
    assert scripts == set(QUICK_RUNS) | {"horizon"}


@pytest.mark.slow  # ten scripts, each in a process of its own that imports torch and cellflow: minutes in all
@pytest.mark.xdist_group("benchmark_scripts")  # one pytest-xdist worker runs them all, through one quick_runs
@pytest.mark.parametrize("script", sorted(QUICK_RUNS))
def test_quick_run_writes_its_rows_and_sections_and_leaves_benchmarks_md_alone(script, quick_runs):
    before, runs = quick_runs
    folder, done = runs[script]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _, rows, sections = QUICK_RUNS[script]
    for name in rows:
        assert (folder / name).stat().st_size > 0, f"{script} wrote no {name}"
    report = (folder / QUICK_REPORT).read_text()
    for section in sections:
        assert f"<!-- {section}:start -->" in report and f"<!-- {section}:end -->" in report
    assert BENCHMARKS.read_bytes() == before

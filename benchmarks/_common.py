"""What several benchmark scripts share: the time courses they load, and the lines that describe the machine.

``load_course`` reads the published courses of the leave-one-out benchmark and the small simulated
course of every ``--quick`` run; ``machine_lines`` is the CPU, load and versions a run reports.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "benchmarks"):  # cellflow from a checkout, and the shared sections.py
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
os.environ.setdefault("CELLFLOW_DATA_DIR", str(ROOT.parent / "shared" / "data"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sections import QUICK_DATASET  # noqa: E402

import cellflow  # noqa: E402
from cellflow.io import read_time_course  # noqa: E402
from cellflow.model import TimeCourse  # noqa: E402

COURSES = ("emt", "kouno_thp1", "mouse_hematopoiesis", "moscot_temporal")  # the published courses of load_course
N_PCS = 10  # components of each fold's PCA (datasets with genes)


def load_course(name: str) -> tuple[TimeCourse, int | None, str]:
    """The time course of ``name``, the PCA size of its folds (``None``: fixed embedding) and a note."""
    if name == QUICK_DATASET:
        adata = cellflow.datasets.simulate(n_cells=80, times=(0.0, 1.0, 2.0, 3.0), n_genes=5, seed=0)
        note = "cellflow.datasets.simulate, 80 cells at time 0, its 2-d latent states"
        return read_time_course(adata, "time", "X_pca"), None, note
    if name in ("emt", "mouse_hematopoiesis"):
        adata = getattr(cellflow.datasets, name)()
        note = (f"the published {adata.obsm['X_pca'].shape[1]}-d embedding of the DeepRUOT file, used as it is: "
                "the file has no genes, so no PCA per fold is possible (the embedding was computed by its "
                "authors on all time points)")
        return read_time_course(adata, "time", "X_pca"), None, note
    if name == "kouno_thp1":
        course = read_time_course(cellflow.datasets.kouno_thp1(), "time", "X")
        note = (f"log2 relative expression of 45 genes; each fold's PCA ({N_PCS} components) fitted on its "
                "training times")
        return course, N_PCS, note
    if name == "moscot_temporal":
        course = read_time_course(cellflow.datasets.moscot_temporal(), "time", "X")
        note = (f"the file's log-normalised X, 1479 genes; each fold's PCA ({N_PCS} components) fitted on its "
                "training times")
        return course, N_PCS, note
    raise ValueError(f"unknown dataset {name!r}; choose from {COURSES}")


_NOTES: dict[str, str] = {}
_TIMES: dict[str, np.ndarray] = {}


def load_note(name: str) -> str:
    if name not in _NOTES:
        course, _, _NOTES[name] = load_course(name)
        _TIMES[name] = course.times
    return _NOTES[name]


def load_course_times(name: str) -> np.ndarray:
    load_note(name)
    return _TIMES[name]


def machine_lines(device: str) -> list[str]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return [
        f"CPU: {cpu}; nproc {os.cpu_count()}; torch threads {torch.get_num_threads()}; device {device}; "
        f"load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}",
        f"Python {platform.python_version()}, torch {torch.__version__}, torchcfm {version('torchcfm')}, "
        f"POT {version('pot')}, scikit-learn {version('scikit-learn')}, cellflow {cellflow.__version__}",
    ]

"""cellflow: single-cell trajectory alignment by optimal transport and flow matching.

The subpackages (``cf.tl``, ``cf.pl``, ...) and the names below are imported on first use (PEP 562), so that
``import cellflow`` does not load torch, POT, scanpy or matplotlib before they are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names are, for type checkers and the architecture test
    from . import benchmark, datasets, io, metrics, pl, pp, tl
    from .io import read_time_course
    from .model import CellFlow, TimeCourse
    from .tl._chain import DisagreementWarning
    from .tl._support import ExtrapolationWarning, OffDataWarning

__version__ = "0.1.0"  # the one place the version is written: pyproject.toml and the wheel read it here

__all__ = [
    "CellFlow", "DisagreementWarning", "ExtrapolationWarning", "OffDataWarning", "TimeCourse", "benchmark", "datasets",
    "io", "metrics", "pl", "pp", "read_time_course", "tl", "__version__",
]

# the engine's subpackages: reachable as attributes too, as they were when the faces imported them eagerly
_SUBPACKAGES = frozenset({
    "benchmark", "datasets", "io", "metrics", "pl", "pp", "tl",
    "fields", "model", "paths", "solvers", "training", "transport",
})
_NAMES = {
    "CellFlow": "model", "TimeCourse": "model", "read_time_course": "io",
    "DisagreementWarning": "tl._chain", "OffDataWarning": "tl._support", "ExtrapolationWarning": "tl._support",
}


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBPACKAGES)

"""cellflow: single-cell trajectory alignment by optimal transport and flow matching."""

from . import datasets, io, metrics, pl, pp, tl
from .io import read_time_course
from .model import CellFlow, TimeCourse
from .tl._chain import DisagreementWarning
from .tl._support import ExtrapolationWarning, OffDataWarning

__version__ = "0.1.0"  # the one place the version is written: pyproject.toml and the wheel read it here

__all__ = [
    "CellFlow", "DisagreementWarning", "ExtrapolationWarning", "OffDataWarning", "TimeCourse", "datasets", "io",
    "metrics", "pl", "pp", "read_time_course", "tl", "__version__",
]

"""cellflow: single-cell trajectory alignment by optimal transport and flow matching."""

from . import datasets, io, metrics, pl, pp, tl
from .chain import DisagreementWarning
from .model import CellFlow
from .readers import TimeCourse, read_time_course
from .support import OffDataWarning

__version__ = "0.1.0"

__all__ = [
    "CellFlow", "DisagreementWarning", "OffDataWarning", "TimeCourse", "datasets", "io", "metrics", "pl", "pp",
    "read_time_course", "tl", "__version__",
]

"""The model: a method (coupling, path, objective) fitted to a time course, its settings and what a fit
resolves from the data, and the trust signals every fit records.
"""

from ._config import Config, Resolved
from ._course import TimeCourse
from ._delta import cross_validated_delta, default_delta, wfr_interpolation
from ._ensemble import Ensemble, interval
from ._horizon import HISTORY_KEYS, horizon, horizon_history, interval_gain
from ._methods import COUPLINGS, METHODS, PATHS, Method, resolve_method
from ._model import CellFlow
from ._resolve import default_batch_size, default_hidden

__all__ = [
    "COUPLINGS", "HISTORY_KEYS", "METHODS", "PATHS", "CellFlow", "Config", "Ensemble", "Method", "Resolved",
    "TimeCourse", "cross_validated_delta", "default_batch_size", "default_delta", "default_hidden", "horizon",
    "horizon_history", "interval", "interval_gain", "resolve_method", "wfr_interpolation",
]

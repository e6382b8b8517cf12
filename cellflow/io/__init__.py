"""Reading AnnData time courses into the engine's arrays, and model files."""

from .._times import TimeReading, describe_reading, read_times
from ._model_files import load_model, save_model
from ._readers import get_representation, parse_times, read_time_course

__all__ = [
    "TimeReading", "describe_reading", "get_representation", "load_model", "parse_times", "read_time_course",
    "read_times", "save_model",
]

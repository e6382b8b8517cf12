"""Neural fields ``v(x, t)`` (velocity, growth, score) and the clock on which they see time."""

from ._clock import Clock
from ._networks import (
    FIELDS,
    FieldOutput,
    Fields,
    GradientField,
    TimeMLP,
    field_output,
    velocity_network,
)

__all__ = ["FIELDS", "Clock", "FieldOutput", "Fields", "GradientField", "TimeMLP", "field_output", "velocity_network"]

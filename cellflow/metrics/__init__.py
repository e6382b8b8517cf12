"""Distances between populations of cells, and the straightness and mass error of a flow."""

from ._distances import (
    energy_distance,
    mass_error,
    mmd,
    straightness,
    w1,
    w2,
    wasserstein,
)

__all__ = ["energy_distance", "mass_error", "mmd", "straightness", "w1", "w2", "wasserstein"]

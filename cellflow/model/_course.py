"""The engine's input: cells of a time course grouped by time point, in plain arrays."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class TimeCourse:
    """Cells of a time course grouped by time point.

    Attributes
    ----------
    times
        Sorted, distinct time points (float, in the user's unit).
    populations
        One ``(n_k, d)`` float32 array per time point, the representation of its cells.
    indices
        One integer array per time point: the rows of the AnnData the cells came from.
    weights
        One positive array per time point (per-cell mass), or ``None`` for unit mass. With known
        population sizes the masses of a time point sum to its size relative to the first time
        point, times the first time point's number of cells (see :func:`cellflow.io.read_time_course`).
    growth
        One array per time point of prior growth rates (per unit of the time column), or ``None``.
    sizes
        Known population size of each time point relative to the first (``sizes[0] == 1``), or ``None``
        when the sizes are not known (then the cell numbers, or a growth prior, set them).
    growth_key
        The ``obs`` column the prior growth rates were read from, for messages.
    use_rep, time_key
        Where the representation and the times were read from.
    obs_times
        The time of every cell of the AnnData, in its row order.
    time_reading
        How the time labels were read (a :class:`cellflow.io.TimeReading`: each label's time and
        the unit), or ``None``.
    """

    times: np.ndarray
    populations: list[np.ndarray]
    indices: list[np.ndarray]
    weights: list[np.ndarray] | None = None
    growth: list[np.ndarray] | None = None
    sizes: np.ndarray | None = None
    growth_key: str | None = None
    use_rep: str = "X_pca"
    time_key: str = "time"
    obs_times: np.ndarray | None = field(default=None, repr=False)
    time_reading: Any = field(default=None, repr=False)

    @property
    def time_unit(self) -> str:
        """The unit of the times (``"hours"``, ``"days"``, ...), or ``""`` when none is known."""
        return str(getattr(self.time_reading, "unit", "") or "")

    @property
    def n_dims(self) -> int:
        """Dimension of the representation."""
        return self.populations[0].shape[1]

    def index_of(self, time: float) -> int:
        """Position of a measured time point in :attr:`times`."""
        hits = np.flatnonzero(np.isclose(self.times, float(time)))
        if hits.size == 0:
            raise ValueError(
                f"time {time!r} is not a measured time point of {self.time_key!r}; "
                f"measured: {self.times.tolist()}"
            )
        return int(hits[0])

    def without(self, k: int) -> TimeCourse:
        """The same course with time point ``k`` left out (for leave-one-out)."""
        keep = [i for i in range(len(self.times)) if i != k]
        return TimeCourse(
            times=self.times[keep],
            populations=[self.populations[i] for i in keep],
            indices=[self.indices[i] for i in keep],
            weights=None if self.weights is None else [self.weights[i] for i in keep],
            growth=None if self.growth is None else [self.growth[i] for i in keep],
            sizes=None if self.sizes is None else self.sizes[keep] / self.sizes[keep][0],
            growth_key=self.growth_key,
            use_rep=self.use_rep,
            time_key=self.time_key,
            obs_times=self.obs_times,
            time_reading=self.time_reading,
        )

    def resampled(self, rng: np.random.Generator) -> TimeCourse:
        """A bootstrap resample: the cells of each time point drawn with replacement, as many as it has.

        Masses, prior growth and AnnData rows follow the cells drawn; known sizes stay as they are.
        """
        draws = [rng.integers(0, len(cells), len(cells)) for cells in self.populations]
        return TimeCourse(
            times=self.times,
            populations=[cells[d] for cells, d in zip(self.populations, draws)],
            indices=[rows[d] for rows, d in zip(self.indices, draws)],
            weights=None if self.weights is None else [w[d] for w, d in zip(self.weights, draws)],
            growth=None if self.growth is None else [g[d] for g, d in zip(self.growth, draws)],
            sizes=self.sizes,
            growth_key=self.growth_key,
            use_rep=self.use_rep,
            time_key=self.time_key,
            obs_times=self.obs_times,
            time_reading=self.time_reading,
        )

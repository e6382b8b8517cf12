"""How sure a fit is, cell by cell: summaries of a bootstrap ensemble (``cf.tl.fit(..., n_fits=K)``).

Each of the ``K`` members is the same method fitted on a bootstrap resample of every time point's
cells with its own seed (:class:`cellflow.model.Ensemble`). At each cell, at its own time point:

- ``velocity_spread``: the root mean square distance between the members' velocities and their
  mean, in the representation's units per unit of time;
- ``velocity_agreement``: the mean cosine between each member's velocity and the mean velocity
  (1: all point the same way; 0: no agreement);
- ``growth_rate_low`` and ``growth_rate_high`` (methods with growth): the central interval of the
  members' growth rates at the level the fit asked for (90% by default);
- ``on_data_share``: the share of members whose push of the cell to the next measured time point
  (the one before, for the last) lands on the measured cells there (see :mod:`cellflow.tl`); low
  where the members carry the cell off the data.
"""

from __future__ import annotations

import numpy as np

from ..io._readers import TimeCourse
from ..model import Ensemble, interval
from ._support import Support

SUMMARIES = ("velocity_spread", "velocity_agreement", "on_data_share")
GROWTH_SUMMARIES = ("growth_rate_low", "growth_rate_high")


def ensemble_summaries(ensemble: Ensemble, course: TimeCourse, n_obs: int, level: float) -> dict[str, np.ndarray]:
    """Every summary of the module's list for every cell, in the AnnData's row order (NaN where undefined)."""
    names = [*SUMMARIES, *(GROWTH_SUMMARIES if ensemble.has_growth else ())]
    out = {name: np.full(n_obs, np.nan) for name in names}
    support = Support(course.populations, course.times)
    for k, (t, rows, cells) in enumerate(zip(course.times, course.indices, course.populations)):
        velocity, growth = ensemble.evaluate(cells, t)
        mean = velocity.mean(axis=0)
        out["velocity_spread"][rows] = np.sqrt(((velocity - mean) ** 2).sum(axis=-1).mean(axis=0))
        norms = np.linalg.norm(velocity, axis=-1) * np.linalg.norm(mean, axis=-1)
        cosine = (velocity * mean).sum(axis=-1) / np.maximum(norms, 1e-12)
        out["velocity_agreement"][rows] = cosine.mean(axis=0)
        if growth is not None:
            out["growth_rate_low"][rows], out["growth_rate_high"][rows] = interval(growth, level)
        if len(course.times) > 1:
            target = float(course.times[k + 1] if k + 1 < len(course.times) else course.times[k - 1])
            pushed = ensemble.push(cells, float(t), target)
            out["on_data_share"][rows] = np.mean([~support.off_data(p, target) for p in pushed], axis=0)
    return out

"""Bootstrap ensembles: one configuration fitted on resamples of the cells, for how sure a fit is.

A fit sees one sample of cells per time point; another sample of the same tissue, or another
seed, gives another field. :class:`Ensemble` fits the same settings ``n_fits`` times, each on a
bootstrap resample of every time point's cells (:meth:`cellflow.model.TimeCourse.resampled`)
with its own seed, so that the spread between the members measures the doubt from the sample,
the coupling drawn from it and the network's training. The point estimate stays the fit on all
cells; the members give intervals around it (percentile bootstrap).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from .._checks import integer
from .._utils import progress_bar
from ._course import TimeCourse
from ._model import CellFlow


class Ensemble:
    """``n_fits`` fits of one configuration, each on a bootstrap resample of the cells with its own seed.

    Parameters
    ----------
    method
        The method of every member (see :class:`cellflow.CellFlow`).
    n_fits
        Number of members (at least 2).
    seed
        Seed of the resampling; member ``k`` trains with seed ``seed + 1 + k``.
    **settings
        The other settings of :class:`cellflow.CellFlow`, the same for every member.
    """

    def __init__(self, method: str = "otcfm", n_fits: int = 10, *, seed: int = 0, **settings: Any) -> None:
        self.n_fits = integer("n_fits", n_fits, minimum=2)
        self.seed = integer("seed", seed, minimum=0)
        self.method, self.settings = method, dict(settings)
        CellFlow(method, seed=seed, **settings)  # the settings are checked before any fit
        self.members: list[CellFlow] = []

    def __repr__(self) -> str:
        state = f"{len(self.members)} fitted" if self.members else "not fitted: call fit()"
        return f"Ensemble of {self.n_fits} {self.method!r} fits on bootstrap resamples ({state})"

    @property
    def has_growth(self) -> bool:
        """Whether the members learn growth."""
        return (self.members[0] if self.members else CellFlow(self.method, **self.settings)).has_growth

    def fit(self, course: TimeCourse, progress: bool | None = None) -> Ensemble:
        """Fit every member on its own resample of ``course``.

        Returns
        -------
        The ensemble itself, fitted.
        """
        rng = np.random.default_rng(self.seed)
        self.members = []
        with progress_bar(self.n_fits, "bootstrap fits", progress) as bar:
            for k in range(self.n_fits):
                member = CellFlow(self.method, seed=self.seed + 1 + k, **self.settings)
                self.members.append(member.fit(course.resampled(rng), progress=False))
                bar.update(1)
        return self

    def _fitted_members(self) -> list[CellFlow]:
        if not self.members:
            raise RuntimeError("the ensemble is not fitted yet: call fit() first")
        return self.members

    def evaluate(self, x: npt.ArrayLike, t: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray | None]:
        """Velocity ``(n_fits, n, d)`` and growth rate ``(n_fits, n)`` (or ``None``) of every member at ``x``, ``t``."""
        outputs = [member.evaluate(x, t) for member in self._fitted_members()]
        velocity = np.stack([v for v, _ in outputs])
        rates = [g for _, g in outputs if g is not None]
        growth = np.stack(rates) if len(rates) == len(outputs) else None
        return velocity, growth

    def push(self, x: npt.ArrayLike, from_time: float, to_time: float, **options: Any) -> np.ndarray:
        """Positions ``(n_fits, n, d)`` of the cells ``x`` pushed by every member (options of :meth:`CellFlow.push`)."""
        return np.stack([member.push(x, from_time, to_time, **options) for member in self._fitted_members()])

    def to_dict(self) -> dict[str, Any]:
        """The members' states (:meth:`CellFlow.to_dict`) and the ensemble's settings, as plain values."""
        return {"n_fits": self.n_fits, "seed": self.seed, "method": self.method,
                "members": {str(k): member.to_dict() for k, member in enumerate(self._fitted_members())}}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], device: str = "auto") -> Ensemble:
        """Restore an ensemble written by :meth:`to_dict` (e.g. read back from an ``.h5ad``).

        Returns
        -------
        The ensemble, every member checked as :meth:`CellFlow.from_dict` checks a model.
        """
        if not isinstance(state, Mapping) or not isinstance(state.get("members"), Mapping):
            raise ValueError("the ensemble state has no 'members' mapping; fit the ensemble again")
        members = [CellFlow.from_dict(dict(state["members"][k]), device=device)
                   for k in sorted(state["members"], key=int)]
        ensemble = cls.__new__(cls)
        ensemble.n_fits, ensemble.seed = len(members), int(state.get("seed", 0))
        ensemble.method, ensemble.settings = str(state.get("method", members[0].params["method"])), {}
        ensemble.members = members
        return ensemble


def interval(values: np.ndarray, level: float = 0.9, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The central ``level`` percentile interval of ``values`` over ``axis`` (the members).

    Returns
    -------
    ``low`` and ``high``, the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles.
    """
    if not 0 < level < 1:
        raise ValueError(f"level={level!r} must lie between 0 and 1 (e.g. 0.9 for a 90% interval)")
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2], axis=axis)
    return low, high

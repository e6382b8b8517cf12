"""The method table: every method is a coupling, a conditional path and a training objective.

Adding a coupling or a path is a class in :mod:`cellflow.transport` or :mod:`cellflow.paths`
(which declares its settings, defaults and whether it carries mass), its name in
:data:`COUPLINGS` or :data:`PATHS` and, for a named method, a row of
:data:`METHODS`; nothing else looks at names.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._checks import choice
from ..paths import (
    BrownianBridgePath,
    ConditionalPath,
    CubicSplinePath,
    EntropyControlledPath,
    LinearPath,
    MetricPath,
    MonotoneHermitePath,
    RBFMetricPath,
    VariancePreservingPath,
    WFRPath,
)
from ..training import OBJECTIVES
from ..transport import (
    Coupling,
    EntropicOTCoupling,
    ExactOTCoupling,
    IndependentCoupling,
    PotentialCoupling,
    PotentialMapCoupling,
    WFRCoupling,
)

#: The conditional paths by name (:mod:`cellflow.paths`).
PATHS: dict[str, type[ConditionalPath]] = {
    "linear": LinearPath,
    "brownian": BrownianBridgePath,
    "vp": VariancePreservingPath,
    "wfr": WFRPath,
    "spline": CubicSplinePath,
    "hermite": MonotoneHermitePath,
    "entropy": EntropyControlledPath,
    "metric": MetricPath,
    "metric_rbf": RBFMetricPath,
}

#: The couplings by name (:mod:`cellflow.transport`).
COUPLINGS: dict[str, type[Coupling]] = {
    "independent": IndependentCoupling,
    "exact": ExactOTCoupling,
    "entropic": EntropicOTCoupling,
    "wfr": WFRCoupling,
    "potential": PotentialCoupling,
    "potential_map": PotentialMapCoupling,
}


@dataclass(frozen=True)
class Method:
    """A coupling between time points, a conditional path and a training objective.

    Attributes
    ----------
    coupling
        Key of :data:`COUPLINGS`.
    path
        Key of :data:`PATHS`.
    objective
        ``"pairs"``: pairs of neighbouring time points, one path per pair; ``"chains"``: the
        plans chained into tuples through every time point, one path per tuple (a curve
        through all knots, or a pair path on each tuple's own segment).
    """

    coupling: str
    path: str
    objective: str

    @property
    def coupling_class(self) -> type[Coupling]:
        """The coupling's class."""
        return COUPLINGS[self.coupling]

    @property
    def path_class(self) -> type[ConditionalPath]:
        """The path's class."""
        return PATHS[self.path]

    @property
    def has_growth(self) -> bool:
        """A growth field is learned: the coupling carries mass or the path makes growth."""
        return self.coupling_class.unbalanced or self.path_class.makes_growth

    @property
    def needs_delta(self) -> bool:
        """The coupling or the path has the WFR length scale ``delta``."""
        return "delta" in self.coupling_class.settings or "delta" in self.path_class.settings


#: The named methods, each a coupling, a conditional path and an objective (:class:`Method`).
METHODS = {
    "icfm": Method("independent", "linear", "pairs"),
    "otcfm": Method("exact", "linear", "pairs"),
    "sbcfm": Method("entropic", "brownian", "pairs"),
    "wfr": Method("wfr", "wfr", "pairs"),
    "mmfm": Method("exact", "hermite", "chains"),
    "ecfm": Method("exact", "entropy", "pairs"),
    "mmfm_potential": Method("potential", "hermite", "chains"),
    "mfm": Method("exact", "metric", "pairs"),
}


def resolve_method(method: str, coupling: str | None = None, path: str | None = None,
                   objective: str | None = None) -> Method:
    """The method's row of :data:`METHODS` with any piece replaced.

    A curve through every time point needs chains: when ``path`` is such a curve and
    ``objective`` is not given, the objective becomes ``"chains"``.
    """
    row = METHODS[choice("method", method, METHODS)]
    coupling = choice("coupling", coupling or row.coupling, COUPLINGS)
    path = choice("path", path or row.path, PATHS)
    through_knots = PATHS[path].through_knots
    objective = choice("objective", objective or ("chains" if through_knots else row.objective), OBJECTIVES)
    if through_knots and objective != "chains":
        raise ValueError(f"path={path!r} is a curve through every time point and trains on chains; "
                         "use objective='chains' (or a pair path)")
    return Method(coupling, path, objective)

"""Conditional paths: how a coupled pair or tuple of cells is joined, and the velocity along the way."""

from ._controlled import EntropyControlledPath
from ._curves import CubicSplinePath, MonotoneHermitePath
from ._entropy import (
    default_entropy_rate,
    displacement_factor,
    knn_entropy,
    noise_level,
)
from ._metric import LANDMetric, MetricPath, RBFMetric, RBFMetricPath
from ._paths import (
    BrownianBridgePath,
    ConditionalPath,
    LinearPath,
    PathSample,
    VariancePreservingPath,
    WFRPath,
)

__all__ = [
    "BrownianBridgePath", "ConditionalPath", "CubicSplinePath", "EntropyControlledPath", "LANDMetric", "LinearPath",
    "MetricPath", "MonotoneHermitePath", "PathSample", "RBFMetric", "RBFMetricPath", "VariancePreservingPath",
    "WFRPath", "default_entropy_rate", "displacement_factor", "knn_entropy", "noise_level",
]

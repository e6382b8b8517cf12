"""Paths bent toward the cells: interpolants of least kinetic energy under a metric built from the data.

Metric flow matching (Kapusniak et al., NeurIPS 2024) replaces the straight line between two
coupled cells by

    x_s = (1 - s) x0 + s x1 + g(s) phi(x0, x1, s),    g(s) = 2 s (1 - s),

whose velocity is ``u = x1 - x0 + g'(s) phi + g(s) d phi / ds``. The correction ``phi`` is a
small network trained before the velocity network so that the paths have the least expected
kinetic energy ``E = sum_d G_dd(x_s) (u_d)^2`` under a diagonal metric ``G`` that is cheap on
the cells of the interval's two time points and expensive away from them: the paths bend
toward the data instead of cutting through empty space. Two metrics are offered:

- :class:`LANDMetric`: ``G(x) = (h(x) + rho)^(-alpha)`` with ``h_d(x)`` a kernel-weighted
  local spread of the reference cells around ``x`` in coordinate ``d``;
- :class:`RBFMetric`: ``G(x) = (h(x) + eps)^(-1) I`` with ``h`` a non-negative sum of
  Gaussian bumps at k-means centres, fitted to be about one on the cells.

Every length scale is derived from the reference cells themselves (positions in cellflow's
internal units: centred, one overall scale), never fixed for one dataset. The reference
cells of an interval are up to :data:`REFERENCE_CELLS` cells of each of its two time points.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from .. import _distributed as distributed
from ._paths import ConditionalPath, PathSample, _ends, _with_linear_mass

if TYPE_CHECKING:
    from ..transport import PairSampler

REFERENCE_CELLS = 256  # most cells of each of an interval's two time points that build its metric
PHI_STEPS = 400  # Adam steps that fit the path correction phi (every interval in each step)
PHI_STAGES = 4  # metrics of shrinking kernel widths phi is fitted under: half the steps in the last, the rest shared
PHI_PAIRS = 128  # coupled pairs per interval in each of those steps
PHI_WIDTH = 128  # hidden units of each of phi's three layers
PHI_LR = 1e-3  # Adam learning rate of phi
KERNEL_FLOOR_EXPONENT = 30.0  # largest exponent of the Gaussian kernels (see gaussian_kernel)
LAND_CEILING = 1.0  # the path's LAND metric: support beyond the median cell's costs no less
ENERGY_PAIRS = 2048  # pairs per interval on which the straight and the fitted energies are reported


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``|x_i - y_j|^2`` ``(n, m)`` as ``|x|^2 - 2 x.y + |y|^2`` (cheaper to differentiate than cdist), clamped at 0."""
    return (x.square().sum(dim=1, keepdim=True) - 2 * x @ y.T + y.square().sum(dim=1)).clamp(min=0)


def gaussian_kernel(squared: torch.Tensor, width: float | torch.Tensor) -> torch.Tensor:
    """``exp(-squared / (2 width^2))`` with the exponent capped at :data:`KERNEL_FLOOR_EXPONENT`.

    Far values stay at ``exp(-30)`` (about ``1e-13``) instead of becoming subnormal floats,
    which processors handle tens of times slower; against ``rho`` or ``eps`` the floor is nil.
    """
    return torch.exp(-(squared / (2 * width**2)).clamp(max=KERNEL_FLOOR_EXPONENT))


def neighbour_distance(cells: torch.Tensor, k: int) -> float:
    """Median over ``cells`` of the distance to their ``k``-th nearest other cell.

    Parameters
    ----------
    cells
        ``(n, d)`` positions, ``n >= 2``.
    k
        Which neighbour (1: the nearest); capped at ``n - 1``.
    """
    distances = torch.cdist(cells, cells)
    k = min(int(k), len(cells) - 1)
    return float(distances.kthvalue(k + 1, dim=1).values.median())  # the 1st value is the cell itself


class LANDMetric:
    """Diagonal LAND metric ``G(x) = (h(x) / h_scale + rho)^(-alpha)`` of a set of reference cells.

    ``h_d(x) = sum_i exp(-|x - x_i|^2 / (2 gamma^2)) (x_{i,d} - x_d)^2`` over the reference
    cells ``x_i``: the spread of the cells within about ``gamma`` of ``x`` along coordinate
    ``d``. It vanishes away from the cells, where ``G`` approaches ``rho^(-alpha)``.

    Parameters
    ----------
    reference
        ``(m, d)`` reference cells, ``m >= 2``.
    gamma
        Kernel width; ``None``: the median distance of a reference cell to its ``(d + 1)``-th
        nearest neighbour (:func:`neighbour_distance`), so that the kernel holds about the
        ``d + 1`` cells a local spread in ``d`` dimensions needs, whatever the units and density.
    rho
        Floor added to ``h / h_scale``; sets how much more a step off the cells costs than on
        them (about ``rho^(-alpha)`` times).
    alpha
        Exponent of the metric.
    h_scale
        Unit of ``h``; ``None``: the median over reference cells of ``mean_d h_d(x_i)``, so that
        ``rho`` is relative to the spread on the data (``h_scale=1`` gives the formula on raw ``h``).
    ceiling
        Largest value of ``h / h_scale`` (``None``: no limit). With ``ceiling=1`` every point as
        well supported as the median cell costs the same: the metric keeps paths on the data
        without drawing them further into its densest parts.
    """

    def __init__(self, reference: torch.Tensor, gamma: float | None = None, rho: float = 1e-3,
                 alpha: float = 2.0, h_scale: float | None = None, ceiling: float | None = None):
        if reference.ndim != 2 or len(reference) < 2:
            raise ValueError(f"the LAND metric needs at least two reference cells as an (m, d) array, got shape "
                             f"{tuple(reference.shape)}")
        for name, value in (("gamma", gamma), ("h_scale", h_scale)):
            if value is not None and not value > 0:
                raise ValueError(f"LAND metric: {name}={value} must be positive (or None to derive it from the cells)")
        if not rho > 0 or not alpha > 0 or not (ceiling is None or ceiling > 0):
            raise ValueError(f"LAND metric: rho={rho}, alpha={alpha} and ceiling={ceiling} must be positive "
                             "(ceiling may be None: no limit)")
        self.reference = reference
        self.gamma = neighbour_distance(reference, reference.shape[1] + 1) if gamma is None else float(gamma)
        self.rho, self.alpha = float(rho), float(alpha)
        self.ceiling = None if ceiling is None else float(ceiling)
        self.h_scale = float(self.spread(reference).mean(dim=1).median()) if h_scale is None else float(h_scale)

    def spread(self, x: torch.Tensor) -> torch.Tensor:
        """``h(x)`` ``(n, d)``: the kernel-weighted spread of the reference cells around ``x``."""
        weights = gaussian_kernel(squared_distances(x, self.reference), self.gamma)  # (n, m)
        # sum_i w_i (x_i - x)^2 = sum_i w_i x_i^2 - 2 x sum_i w_i x_i + x^2 sum_i w_i
        spread = weights @ self.reference.square() - 2 * x * (weights @ self.reference) \
            + x.square() * weights.sum(dim=1, keepdim=True)
        return spread.clamp(min=0)  # rounding can leave tiny negatives far from the cells

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The diagonal of ``G(x)``, ``(n, d)``."""
        support = self.spread(x) / self.h_scale
        if self.ceiling is not None:
            support = support.clamp(max=self.ceiling)
        return (support + self.rho) ** (-self.alpha)


class RBFMetric:
    """Isotropic metric ``G(x) = (h(x) + eps)^(-1) I`` from Gaussian bumps fitted to the cells.

    ``h(x) = sum_k w_k exp(-|x - c_k|^2 / (2 lambda_k^2))`` with ``c_k`` the k-means centres of
    the reference cells, ``lambda_k`` the root mean square distance of cluster ``k``'s cells to
    its centre (the median over clusters for a cluster of one cell), and weights ``w_k >= 0``
    fitted by non-negative least squares so that ``h`` is as close to one as possible at every
    reference cell. ``G`` is about one on the cells and approaches ``1 / eps`` away from them.

    Parameters
    ----------
    reference
        ``(m, d)`` reference cells, ``m >= 2``.
    n_centres
        Number of k-means centres; ``None``: ``ceil(sqrt(m))`` (clusters of about ``sqrt(m)``
        cells each), capped at ``m``.
    eps
        Floor added to ``h``: a step off the cells costs up to ``1 / eps`` times a step on them.
    seed
        Seed of the k-means initialisation.
    width_scale
        Factor on every ``lambda_k`` (the weights are fitted for the scaled bumps); wider bumps
        give a smoother metric (see :class:`MetricPath` on how it is used).
    """

    def __init__(self, reference: torch.Tensor, n_centres: int | None = None, eps: float = 1e-2, seed: int = 0,
                 width_scale: float = 1.0):
        from sklearn.cluster import KMeans

        if reference.ndim != 2 or len(reference) < 2:
            raise ValueError(f"the RBF metric needs at least two reference cells as an (m, d) array, got shape "
                             f"{tuple(reference.shape)}")
        if not eps > 0 or not width_scale > 0:
            raise ValueError(f"RBF metric: eps={eps} and width_scale={width_scale} must both be positive")
        m = len(reference)
        n_centres = int(np.ceil(np.sqrt(m))) if n_centres is None else int(n_centres)
        if not 1 <= n_centres <= m:
            raise ValueError(f"RBF metric: n_centres={n_centres} must be between 1 and the {m} reference cells")
        cells = reference.detach().cpu().numpy().astype(np.float64)
        kmeans = KMeans(n_clusters=n_centres, n_init=1, random_state=seed).fit(cells)
        centres, labels = kmeans.cluster_centers_, kmeans.labels_
        widths = np.array([np.sqrt(((cells[labels == k] - centres[k]) ** 2).sum(axis=1).mean())
                           for k in range(n_centres)])
        widths[widths <= 0] = np.median(widths[widths > 0]) if (widths > 0).any() else 1.0
        widths = widths * width_scale
        bumps = np.exp(-((cells[:, None] - centres[None]) ** 2).sum(axis=2) / (2 * widths**2))
        from scipy.optimize import nnls  # on use: scipy.optimize is slow to import
        weights, _ = nnls(bumps, np.ones(m))
        like: dict[str, Any] = dict(dtype=reference.dtype, device=reference.device)
        self.centres, self.widths = torch.as_tensor(centres, **like), torch.as_tensor(widths, **like)
        self.weights, self.eps = torch.as_tensor(weights, **like), float(eps)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """``h(x)`` ``(n,)``: the fitted sum of bumps."""
        return gaussian_kernel(squared_distances(x, self.centres), self.widths) @ self.weights

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The diagonal of ``G(x)``, ``(n, d)`` (equal entries)."""
        return (1 / (self.density(x) + self.eps))[:, None].expand_as(x)


METRICS = {"land": LANDMetric, "rbf": RBFMetric}
Metric = LANDMetric | RBFMetric  # the diagonal of G(x), (n, d), from points (n, d)


class PathCorrection(nn.Module):
    """``phi(x0, x1, s)`` of every interval: one small tanh network, with a learned bias per interval.

    Its last layer starts at zero, so the untrained correction is the straight line; ``bent``
    (one per interval, 1 or 0) switches the correction off where it does not pay. The
    derivative ``d phi / ds`` is carried forward through the layers beside the values
    (forward-mode differentiation written out: each affine layer maps it by its weights,
    each ``tanh`` multiplies it by ``1 - tanh^2``), so one pass gives both, batched, and
    both can be differentiated with respect to the weights.
    """

    bent: torch.Tensor  # a buffer

    def __init__(self, n_dims: int, n_intervals: int):
        super().__init__()
        self.first = nn.Linear(2 * n_dims + 1, PHI_WIDTH)
        self.interval_bias = nn.Embedding(n_intervals, PHI_WIDTH)
        nn.init.zeros_(self.interval_bias.weight)
        self.rest = nn.ModuleList([nn.Linear(PHI_WIDTH, PHI_WIDTH), nn.Linear(PHI_WIDTH, PHI_WIDTH),
                                   nn.Linear(PHI_WIDTH, n_dims)])
        nn.init.zeros_(cast(nn.Linear, self.rest[-1]).weight)
        nn.init.zeros_(cast(nn.Linear, self.rest[-1]).bias)
        self.register_buffer("bent", torch.ones(n_intervals))  # 0 where an interval keeps its straight lines

    def correction(self, x0: torch.Tensor, x1: torch.Tensor, s: torch.Tensor,
                   segment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``phi`` and ``d phi / ds`` at ``s`` ``(n, 1)`` for the intervals ``segment`` ``(n,)``, ``(n, d)`` each."""
        value = self.first(torch.cat([x0, x1, s], dim=1)) + self.interval_bias(segment)
        rate = self.first.weight[:, -1].expand_as(value)  # d/ds of the first layer: its weights on s
        for layer in cast(list[nn.Linear], self.rest):
            squashed = torch.tanh(value)
            rate = (1 - squashed.square()) * rate
            value, rate = layer(squashed), rate @ layer.weight.T
        gate = self.bent[segment][:, None]
        return gate * value, gate * rate

    def curve(self, x0: torch.Tensor, x1: torch.Tensor, s: torch.Tensor,
              segment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Position ``x_s`` and velocity ``d x_s / ds`` of the bent path, ``(n, d)`` each."""
        phi, phi_rate = self.correction(x0, x1, s, segment)
        bend, bend_rate = 2 * s * (1 - s), 2 - 4 * s
        return (1 - s) * x0 + s * x1 + bend * phi, x1 - x0 + bend_rate * phi + bend * phi_rate


def _pair_cells(sampler: PairSampler, populations: Sequence[torch.Tensor], k: int,
                n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` coupled pairs of interval ``k`` as cells ``(x0, x1)``; a cell that dies stays where it is."""
    pairs = sampler.sample(n)
    x0, x1 = populations[k][pairs.i], populations[k + 1][pairs.j]
    if pairs.died is not None:
        x1 = torch.where(pairs.died[:, None], x0, x1)
    return x0, x1


class MetricPath(ConditionalPath):
    """Pair path bent toward the cells: least kinetic energy under a data metric (metric flow matching).

    ``x_s = (1-s) x0 + s x1 + 2 s (1-s) phi(x0, x1, s) + sigma eps`` with target
    ``u = x1 - x0 + (2 - 4 s) phi + 2 s (1-s) d phi / ds`` (see the module's notes). Before
    training, :meth:`calibrate` builds each interval's metric from up to
    :data:`REFERENCE_CELLS` cells of each of its two time points and fits ``phi`` (one network
    for all intervals, :class:`PathCorrection`) by :data:`PHI_STEPS` Adam steps on
    :data:`PHI_PAIRS` pairs per interval drawn from the coupling, each at a uniform ``s``,
    minimising the sum over intervals of the expected energy ``sum_d G_dd(x_s) u_d^2``, each
    relative to the interval's straight-line energy. The fit runs under :data:`PHI_STAGES`
    metrics whose kernels shrink to the metric's own (see :meth:`_metric_stages`), the last
    with half the steps; an interval whose bent paths end with more energy under its own
    metric than its straight lines keeps the straight lines (``metric_bent`` 0 in
    :attr:`calibration`, beside each interval's straight and fitted energies and the seconds
    spent). Masses, where the coupling carries them, change linearly along the path (as on
    the straight line).

    Parameters
    ----------
    sigma
        Gaussian noise added to the position (not to the target), as for the straight line.
    metric
        ``"land"`` (:class:`LANDMetric`) or ``"rbf"`` (:class:`RBFMetric`), each with its
        defaults derived from the cells.
    """

    default_sigma = 0.1

    def __init__(self, sigma: float = 0.0, metric: str = "land"):
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r} is not a metric of the metric path; choose one of {sorted(METRICS)}")
        if not sigma >= 0:
            raise ValueError(f"sigma={sigma} must be >= 0 (0: no noise around the bent path)")
        self.sigma, self.metric = float(sigma), metric
        self.correction: PathCorrection | None = None

    def calibrate(self, populations: Sequence[torch.Tensor], times: Sequence[float] | np.ndarray,
                  samplers: Sequence[PairSampler]) -> None:
        """Build each interval's metrics from its two time points and fit ``phi`` to their least energy."""
        start = time.perf_counter()
        like = populations[0]
        self.correction = PathCorrection(like.shape[1], len(samplers)).to(device=like.device, dtype=like.dtype)
        parameters = list(self.correction.parameters())
        if distributed.active():  # every process fits the same phi: rank 0's start, gradients averaged
            for p in parameters:
                torch.distributed.broadcast(p.data, 0)
        stages = self._metric_stages(populations, samplers)
        optimiser = torch.optim.Adam(parameters, lr=PHI_LR)
        earlier_steps = PHI_STEPS // (2 * (PHI_STAGES - 1))
        for stage, metrics in enumerate(stages):
            with torch.no_grad():
                straight = self._energies(populations, samplers, metrics, ENERGY_PAIRS, bent=False)
            straight = straight.clamp(min=torch.finfo(like.dtype).tiny)
            for _ in range(earlier_steps if stage < PHI_STAGES - 1 else PHI_STEPS - stage * earlier_steps):
                optimiser.zero_grad(set_to_none=True)
                relative = self._energies(populations, samplers, metrics, PHI_PAIRS) / straight
                relative.sum().backward()
                if distributed.active():
                    for p in parameters:
                        assert p.grad is not None, "every weight of phi has a gradient after backward()"
                        torch.distributed.all_reduce(p.grad)
                        p.grad /= distributed.part()[1]
                optimiser.step()
        self.correction.requires_grad_(False)
        with torch.no_grad():
            fitted = self._energies(populations, samplers, stages[-1], ENERGY_PAIRS)
        # the coarse stages may leave an interval's paths worse than straight under its own metric
        bent = torch.as_tensor(distributed.mean((fitted < straight).to(like.dtype).cpu().numpy()) > 0.5)
        self.correction.bent.copy_(bent.to(self.correction.bent))
        self.calibration = {
            "metric_straight_energy": distributed.mean(straight.cpu().numpy()),
            "metric_fitted_energy": distributed.mean(fitted.cpu().numpy()),
            "metric_bent": bent.numpy().astype(np.float64),
            "metric_seconds": np.array(time.perf_counter() - start),
        }

    def _metric_stages(self, populations: Sequence[torch.Tensor],
                       samplers: Sequence[PairSampler]) -> list[list[Metric]]:
        """Per stage, every interval's metric, the kernels shrinking geometrically to the metric's own.

        Where the kernels are narrow, a straight line that passes farther than a few widths from
        every cell sees a flat metric and no pull toward the cells: the fit would stay there.
        The first stage therefore widens each interval's kernels to half the median length of
        its coupled pairs (the distance from a straight line's midpoint to its ends), and every
        later stage narrows them by the same factor, down to the metric's own widths in the last.
        """
        stages: list[list[Metric]] = [[] for _ in range(PHI_STAGES)]
        for k, sampler in enumerate(samplers):
            reference = torch.cat([z[torch.randperm(len(z), device=z.device)[:REFERENCE_CELLS]]
                                   for z in populations[k : k + 2]])
            x0, x1 = _pair_cells(sampler, populations, k, ENERGY_PAIRS)
            reach = 0.5 * float(torch.linalg.vector_norm(x1 - x0, dim=1).median())
            own: Metric
            if self.metric == "land":
                own = LANDMetric(reference, ceiling=LAND_CEILING)
                width = own.gamma
            else:
                seed = int(torch.randint(2**31 - 1, (1,)))
                own = RBFMetric(reference, seed=seed)
                width = float(own.widths.median())
            widest = max(1.0, reach / width)
            for j in range(PHI_STAGES - 1):
                factor = widest ** (1 - j / (PHI_STAGES - 1))
                stages[j].append(LANDMetric(reference, gamma=width * factor, ceiling=LAND_CEILING)
                                 if self.metric == "land" else RBFMetric(reference, seed=seed, width_scale=factor))
            stages[-1].append(own)
        return stages

    def _energies(self, populations: Sequence[torch.Tensor], samplers: Sequence[PairSampler],
                  metrics: Sequence[Metric], n: int, bent: bool = True) -> torch.Tensor:
        """Mean kinetic energy of every interval, ``(K,)``, over ``n`` coupled pairs each at uniform ``s``,
        on the bent paths or (``bent=False``) on the straight lines.
        """
        ends = [_pair_cells(sampler, populations, k, n) for k, sampler in enumerate(samplers)]
        x0, x1 = torch.cat([pair[0] for pair in ends]), torch.cat([pair[1] for pair in ends])
        s = torch.rand(len(x0), 1, device=x0.device, dtype=x0.dtype)
        segment = torch.arange(len(samplers), device=x0.device).repeat_interleave(n)
        curve = cast(PathCorrection, self.correction).curve if bent else None  # calibrate() built the correction
        x, u = curve(x0, x1, s, segment) if curve else ((1 - s) * x0 + s * x1, x1 - x0)
        return torch.stack([(metric(x_k) * u_k.square()).sum(dim=1).mean()
                            for metric, x_k, u_k in zip(metrics, x.split(n), u.split(n))])

    def sample(self, points: torch.Tensor, segment: torch.Tensor, s: torch.Tensor, eps: torch.Tensor,
               m0: torch.Tensor | None = None, m1: torch.Tensor | None = None) -> PathSample:
        """Points and targets on the bent path of each sample's interval (``segment``)."""
        if self.correction is None:
            raise RuntimeError("the metric path fits its bend to the coupled cells: call calibrate() first")
        x0, x1 = _ends(points, segment)
        with torch.no_grad():
            x, u = self.correction.curve(x0, x1, s, segment)
        return _with_linear_mass(PathSample(x=x + self.sigma * eps, u=u), s, m0, m1)


class RBFMetricPath(MetricPath):
    """:class:`MetricPath` under the RBF metric (:class:`RBFMetric`); ``path="metric_rbf"``."""

    def __init__(self, sigma: float = 0.0):
        super().__init__(sigma, metric="rbf")

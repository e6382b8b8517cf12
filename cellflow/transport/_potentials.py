"""Optimal-transport potentials between two populations, and the coupling they define.

For the cost ``c(x, y) = |x - y|^2 / 2``, entropic optimal transport at temperature ``eps``
between cells ``x_i`` (masses ``a``) and ``y_j`` (masses ``b``) has a plan
``P_ij = exp((f_i + g_j - c(x_i, y_j)) / eps)`` with dual potentials ``f`` and ``g``. The target
potential ``g``, known on the cells ``y_j``, extends the source potential to every point ``x``
by its c-transform

- soft: ``f(x) = -eps log sum_j exp((g_j - c(x, y_j)) / eps)``, a smooth function whose
  gradient is ``x - sum_j pi_j(x) y_j`` with ``pi(x) = softmax_j((g_j - c(x, y_j)) / eps)``;
  at a solved cell ``x_i``, ``pi(x_i)`` is exactly its row of ``P`` divided by ``a_i``;
- hard: ``f(x) = min_j (c(x, y_j) - g_j)``, whose gradient is ``x - y_j*`` with ``j*`` the
  arg-min: the cell whose Laguerre cell (power-diagram cell) holds ``x``.

Either way the map is ``T(x) = x - grad f(x)`` and the displacement ``-grad f(x)``. Because the
extension needs only ``g`` on the cells it was solved on, the problem can be solved on a
subsample and every other cell placed by the c-transform: the rule of
:class:`PotentialCoupling` for populations larger than ``block_size``.

The multimarginal method built on them (``method="mmfm_potential"``) follows the idea of
Kansal et al. (2026), multimarginal flow matching with OT potentials; it was designed here from
the definitions above, without the paper's text.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from .._utils import progress_bar
from ._couplings import Coupling, EntropicOTCoupling, _support, entropic_potentials
from ._samplers import Device, PlanSampler

CHUNK_ENTRIES = 2**22  # entries of one chunk of (points x support) logits: 32 MB in float64


@dataclass
class Potential:
    """A dual potential on the cells of one side of an entropic OT problem.

    Attributes
    ----------
    support
        ``(m, d)`` cells the potential is known on (the target side of the map it defines).
    values
        ``(m,)`` potential ``g_j`` for the cost ``|x - y|^2 / 2``.
    eps
        Temperature of the problem, in the units of that cost (half the ``reg`` of
        :func:`solve_potentials`, which is in units of squared distance).
    """

    support: np.ndarray
    values: np.ndarray
    eps: float

    def _chunks(self, x: npt.ArrayLike) -> Iterator[tuple[int, np.ndarray]]:
        """Logits ``(g_j - c(x, y_j)) / eps`` of consecutive chunks of ``x``, as ``(start, logits)``."""
        import ot
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.support.shape[1]:
            raise ValueError(f"points of shape {x.shape} do not match the potential's "
                             f"{self.support.shape[1]} dimensions; pass an (n, {self.support.shape[1]}) array")
        rows = max(1, CHUNK_ENTRIES // len(self.support))
        for start in range(0, len(x), rows):
            cost = 0.5 * ot.dist(x[start : start + rows], self.support)
            yield start, (self.values - cost) / self.eps

    def partners(self, x: np.ndarray) -> np.ndarray:
        """Index of the support cell of each point's Laguerre cell: the arg-min of the hard c-transform."""
        out = np.empty(len(x), dtype=np.int64)
        for start, logits in self._chunks(x):
            out[start : start + len(logits)] = logits.argmax(axis=1)
        return out

    def c_transform(self, x: np.ndarray, hard: bool = False) -> np.ndarray:
        """The source potential ``f(x)`` at the points ``x`` ``(n, d)``: soft-min (or min, ``hard``)."""
        out = np.empty(len(x))
        for start, logits in self._chunks(x):
            value = logits.max(axis=1) if hard else np.logaddexp.reduce(logits, axis=1)
            out[start : start + len(logits)] = -self.eps * value
        return out

    def transport(self, x: np.ndarray, hard: bool = False) -> np.ndarray:
        """The map ``T(x) = x - grad f(x)``: the mean of the soft assignment, or the Laguerre cell's cell."""
        if hard:
            return self.support[self.partners(x)]
        out = np.empty((len(x), self.support.shape[1]))
        for start, logits in self._chunks(x):
            weights = np.exp(logits - logits.max(axis=1, keepdims=True))
            out[start : start + len(logits)] = (weights @ self.support) / weights.sum(axis=1, keepdims=True)
        return out

    def displacement(self, x: np.ndarray, hard: bool = False) -> np.ndarray:
        """``-grad f(x) = T(x) - x`` at the points ``x`` ``(n, d)``."""
        return self.transport(x, hard) - np.asarray(x, dtype=np.float64)

    def rows(self, x: np.ndarray, mass: npt.ArrayLike | None = None, hard: bool = False,
             progress: bool = False) -> sp.csr_matrix:
        """The coupling of the points ``x`` with the support, one row per point, as a sparse matrix.

        Row ``i`` is ``mass_i`` times the soft assignment ``pi(x_i)`` (its entries holding all but
        the last 0.01% of the row's mass, as for the stored plans of :mod:`cellflow.transport`),
        or ``mass_i`` on the Laguerre partner alone (``hard``).
        """
        mass = np.ones(len(x)) if mass is None else np.asarray(mass, dtype=np.float64)
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        n_chunks = -(-len(x) // max(1, CHUNK_ENTRIES // len(self.support)))
        bar = progress_bar(n_chunks, "potential rows", progress and n_chunks > 1)
        for start, logits in self._chunks(x):
            index = np.arange(start, start + len(logits))
            if hard:
                rows.append(index)
                cols.append(logits.argmax(axis=1))
                vals.append(mass[index])
            else:
                weights = np.exp(logits - logits.max(axis=1, keepdims=True))
                weights /= weights.sum(axis=1, keepdims=True)
                r, c = np.nonzero(_support(weights))
                rows.append(index[r])
                cols.append(c)
                vals.append(mass[index[r]] * weights[r, c])
            bar.update()
        bar.close()
        return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(len(x), len(self.support)))


def solve_potentials(x0: npt.ArrayLike, x1: npt.ArrayLike, a: npt.ArrayLike | None = None,
                     b: npt.ArrayLike | None = None, reg: float = 0.05) -> tuple[Potential, Potential]:
    """Entropic OT between ``x0`` and ``x1``, returned as its two dual potentials.

    Parameters
    ----------
    x0, x1
        ``(n0, d)`` and ``(n1, d)`` cells.
    a, b
        Their masses (one each when ``None``); normalised to one.
    reg
        Entropic regularisation in units of the squared distance, as for
        :class:`cellflow.transport.EntropicOTCoupling` (the plan is ``~ exp(-|x - y|^2 / reg)``).

    Returns
    -------
    ``forward``, the potential on ``x1`` whose c-transform maps points toward ``x1``, and
    ``backward``, the potential on ``x0`` that maps points toward ``x0``. The cells' masses are
    part of the potentials (the soft assignment of ``x`` is ``softmax_j((g_j - c(x, y_j)) / eps)``).
    """
    import ot
    x0, x1 = np.asarray(x0, dtype=np.float64), np.asarray(x1, dtype=np.float64)
    if not reg > 0:
        raise ValueError(f"reg must be positive, got {reg}")
    mass0 = np.full(len(x0), 1.0) if a is None else np.asarray(a, dtype=np.float64)
    mass1 = np.full(len(x1), 1.0) if b is None else np.asarray(b, dtype=np.float64)
    mass0, mass1 = mass0 / mass0.sum(), mass1 / mass1.sum()
    f, g = entropic_potentials(mass0, mass1, ot.dist(x0, x1), reg)
    log_a, log_b = np.log(mass0), np.log(mass1)
    # exp((f + g - |x - y|^2) / reg) = exp((f / 2 + g / 2 - |x - y|^2 / 2) / eps), eps = reg / 2
    eps = reg / 2
    forward = (g + reg * log_b) / 2
    backward = (f + reg * log_a) / 2
    return Potential(x1, forward, eps), Potential(x0, backward, eps)


def support_cells(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """The cells an interval's problem is solved on: all ``n``, or ``size`` of them drawn at random."""
    return np.arange(n) if n <= size else np.sort(rng.choice(n, size, replace=False))


class PotentialCoupling(Coupling):
    """The coupling defined by the OT potentials of an interval, extended to every cell.

    The entropic OT problem between the two populations is solved once (on at most
    ``block_size`` cells per side, drawn at random, when a population is larger), and its target
    potential ``g`` is extended to every source cell by the c-transform. Each source cell's
    partner is drawn from the soft assignment ``pi(x)`` of the smooth c-transform, whose mean
    displacement is ``-grad f(x)``: at cells the problem was solved on, this is the entropic
    plan's own row, and chained through the time points (:func:`cellflow.transport.sample_chains`)
    the tuples have the populations as marginals. :class:`PotentialMapCoupling` pairs each cell
    with the arg-min of the hard c-transform instead.

    Large populations: one dense ``block_size x block_size`` problem per interval, and the
    c-transform of every cell computed in chunks against the ``block_size`` support cells
    (memory ``O(block_size^2)``, time ``O(n block_size)``). Unlike the blocks of the other
    couplings, every source cell sees the same support and is coupled by the same potential,
    solved or not; cells of the target population outside the support are never reached. In a
    distributed fit every process solves the same problem (the same random support from the
    same seed).

    Parameters
    ----------
    reg
        Entropic regularisation of the problem, in units of the squared distance (the plan is
        ``~ exp(-|x - y|^2 / reg)``): small values give nearly exact OT.
    block_size
        Largest number of cells per side of the problem that is solved.
    """

    settings: ClassVar[tuple[str, ...]] = ("reg", "block_size")
    hard: ClassVar[bool] = False

    @staticmethod
    def default_reg(sigma: float) -> float:
        """As for entropic OT: ``2 sigma**2``, or 0.05 for a path without noise."""
        return EntropicOTCoupling.default_reg(sigma)

    def __init__(self, reg: float = 0.05, block_size: int = 2048):
        if not reg > 0:
            raise ValueError(f"reg must be positive, got {reg}")
        if block_size < 2:
            raise ValueError(f"block_size must be at least 2, got {block_size}")
        self.reg, self.block_size = float(reg), int(block_size)

    def potential(self, x0: np.ndarray, x1: np.ndarray, a: npt.ArrayLike | None = None,
                  b: npt.ArrayLike | None = None, *,
                  rng: np.random.Generator | None = None) -> tuple[Potential, np.ndarray]:
        """The forward potential of the interval and the indices of ``x1`` it is known on."""
        rng = np.random.default_rng(0) if rng is None else rng
        a = np.full(len(x0), 1.0) if a is None else np.asarray(a, dtype=np.float64)
        b = np.full(len(x1), 1.0) if b is None else np.asarray(b, dtype=np.float64)
        rows, cols = support_cells(len(x0), self.block_size, rng), support_cells(len(x1), self.block_size, rng)
        forward, _ = solve_potentials(x0[rows], x1[cols], a[rows], b[cols], self.reg)
        return forward, cols

    def plan(self, x0: np.ndarray, x1: np.ndarray, a: npt.ArrayLike | None = None, b: npt.ArrayLike | None = None,
             *, rng: np.random.Generator | None = None, part: tuple[int, int] = (0, 1),
             progress: bool = False) -> sp.csr_matrix:
        """The ``(n0, n1)`` sparse coupling: every source cell's row from the extended potential,
        weighted by the cell's mass ``a`` (normalised to one).
        """
        forward, cols = self.potential(x0, x1, a, b, rng=rng)
        mass = np.full(len(x0), 1.0) if a is None else np.asarray(a, dtype=np.float64)
        rows = forward.rows(x0, mass / mass.sum(), hard=self.hard, progress=progress).tocoo()
        return sp.csr_matrix((rows.data, (rows.row, cols[rows.col])), shape=(len(x0), len(x1)))

    def sampler(self, x0: np.ndarray, x1: np.ndarray, a: npt.ArrayLike | None = None, b: npt.ArrayLike | None = None,
                *, rng: np.random.Generator | None = None, source_mass: npt.ArrayLike | None = None,
                device: Device = "cpu", part: tuple[int, int] = (0, 1), progress: bool = False) -> PlanSampler:
        """A sampler of the pairs (and, chained, the tuples) the potentials define."""
        return PlanSampler(self.plan(x0, x1, a, b, rng=rng, progress=progress), device)


class PotentialMapCoupling(PotentialCoupling):
    """As :class:`PotentialCoupling`, but each source cell goes to its Laguerre cell's cell.

    The partner of ``x`` is the cell ``y_j`` attaining the hard c-transform
    ``f(x) = min_j (|x - y_j|^2 / 2 - g_j)``, so the pair's displacement ``y_j - x`` is
    ``-grad f(x)`` and a piecewise-linear path trains on the potentials' displacements
    themselves. Chained, every cell of the first time point has one deterministic trajectory of
    cells (a Monge chain). A map cannot split a cell: several cells may share a partner and some
    target cells are nobody's (more of them the larger ``reg`` is against the squared distance
    between neighbouring cells), so the tuples' later marginals are only close to the populations.
    """

    hard: ClassVar[bool] = True

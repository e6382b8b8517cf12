"""Couplings between two populations, and samplers of cell pairs from them.

A coupling is solved once per interval, on blocks of at most ``block_size`` cells per side
(the whole population when it fits), so no ``n x n`` matrix of the whole data is ever formed.
Training then draws pairs from the stored plan, with replacement, at the cost of a lookup.

Every coupling class declares what it needs from a method's settings
(:attr:`Coupling.settings`, from ``reg``, ``delta``, ``block_size``), its default entropic
regularisation (:meth:`Coupling.default_reg`) and whether it is unbalanced (its pairs carry
masses, so the method learns growth). :data:`COUPLINGS` names them for the method table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import ot
import scipy.sparse as sp


@dataclass
class Pairs:
    """Indices of paired cells, with the masses of the pair at both ends where transport is unbalanced.

    ``died`` marks source cells with no partner: they stay where they are while their mass
    ``m0`` decays to ``m1 = 0`` (their ``j`` is meaningless).
    """

    i: np.ndarray
    j: np.ndarray
    m0: np.ndarray | None = None
    m1: np.ndarray | None = None
    died: np.ndarray | None = None


class IndependentSampler:
    """Pairs drawn from the product of the two marginals (no plan stored)."""

    def __init__(self, a: np.ndarray, b: np.ndarray):
        self._cdf_a = np.cumsum(a) / a.sum()
        self._cdf_b = np.cumsum(b) / b.sum()

    def sample(self, n: int, rng: np.random.Generator) -> Pairs:
        """Draw ``n`` pairs: source and target cell indices."""
        i = np.searchsorted(self._cdf_a, rng.random(n) * self._cdf_a[-1], side="right")
        j = np.searchsorted(self._cdf_b, rng.random(n) * self._cdf_b[-1], side="right")
        return Pairs(np.minimum(i, self._cdf_a.size - 1), np.minimum(j, self._cdf_b.size - 1))

    def sources(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` source cells in proportion to their mass."""
        return self.sample(n, rng).i

    def conditional(self, i: np.ndarray, rng: np.random.Generator) -> Pairs:
        """A partner for each source cell ``i``: independent of ``i``."""
        return Pairs(i, self.sample(len(i), rng).j)


class PlanSampler:
    """Pairs drawn in proportion to a sparse transport plan.

    Parameters
    ----------
    plan
        ``(n0, n1)`` sparse matrix with non-negative entries; it need not sum to one.
    """

    def __init__(self, plan: sp.spmatrix):
        self.plan = sp.csr_matrix(plan)
        self.plan.eliminate_zeros()
        coo = self.plan.tocoo()  # row-major order, so each row's entries are contiguous
        self._rows, self._cols = coo.row, coo.col
        self._cdf = np.cumsum(coo.data, dtype=float)
        self._row_start = self.plan.indptr

    def sample(self, n: int, rng: np.random.Generator) -> Pairs:
        """Draw ``n`` pairs with probability proportional to the plan."""
        k = self._draw(n, rng)
        return Pairs(self._rows[k], self._cols[k])

    def _draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        k = np.searchsorted(self._cdf, rng.random(n) * self._cdf[-1], side="right")
        return np.minimum(k, self._cdf.size - 1)

    def _draw_in_rows(self, i: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each source cell ``i``, an entry of its own row, in proportion to the plan."""
        start, stop = self._row_start[i], self._row_start[i + 1]
        low = np.where(start > 0, self._cdf[np.maximum(start - 1, 0)], 0.0)
        high = self._cdf[np.maximum(stop - 1, 0)]
        k = np.searchsorted(self._cdf, low + rng.random(len(i)) * (high - low), side="right")
        return np.clip(k, start, np.maximum(stop - 1, start))

    def sources(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` source cells in proportion to the plan's row sums."""
        return self._rows[self._draw(n, rng)]

    def conditional(self, i: np.ndarray, rng: np.random.Generator) -> Pairs:
        """A partner for each source cell ``i`` from that cell's own row of the plan."""
        return Pairs(i, self._cols[self._draw_in_rows(i, rng)])


def _blocks(n0: int, n1: int, block_size: int, rng: np.random.Generator):
    """Split two populations into the same number of random blocks of at most ``block_size``."""
    n_blocks = max(1, math.ceil(max(n0, n1) / block_size))
    if n_blocks == 1:
        return [(np.arange(n0), np.arange(n1))]
    parts0 = np.array_split(rng.permutation(n0), n_blocks)
    parts1 = np.array_split(rng.permutation(n1), n_blocks)
    return list(zip(parts0, parts1))


class Coupling:
    """Base of the couplings: what a coupling declares to the method table.

    Attributes
    ----------
    settings
        Names of the method settings the constructor takes (from ``reg``, ``delta``, ``block_size``).
    unbalanced
        Pairs carry masses (``m0``, ``m1``): a method with this coupling learns growth.
    """

    settings: tuple[str, ...] = ()
    unbalanced = False

    @staticmethod
    def default_reg(sigma: float) -> float | None:
        """Entropic regularisation when none is given (``None``: the coupling has none)."""
        return None

    def sampler(self, x0, x1, a=None, b=None, rng=None, source_mass=None):
        """A pair sampler between ``x0`` and ``x1`` with cell masses ``a`` and ``b``.

        ``source_mass`` is the mass each source cell carries where it differs from the
        marginal ``a`` the plan is fitted to (unbalanced couplings; ignored by balanced ones).
        """
        raise NotImplementedError


class _BlockwiseOT(Coupling):
    """Shared machinery: solve a plan on each block and assemble one sparse plan."""

    settings = ("block_size",)

    def __init__(self, block_size: int = 2048):
        if block_size < 2:
            raise ValueError(f"block_size must be at least 2, got {block_size}")
        self.block_size = int(block_size)

    def solve_block(self, a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def cost(self, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
        """Ground cost between two blocks of cells: squared Euclidean distance."""
        return ot.dist(x0, x1)

    def plan(self, x0: np.ndarray, x1: np.ndarray, a=None, b=None, rng=None) -> sp.csr_matrix:
        """The transport plan between ``x0`` and ``x1`` as a sparse ``(n0, n1)`` matrix.

        ``a`` and ``b`` are the masses of the cells (one each when ``None``). For balanced
        couplings each block's masses are normalised and its plan weighted by the block's
        share of the mass, so the plan sums to one; unbalanced plans keep the masses as they are.
        """
        rng = np.random.default_rng(0) if rng is None else rng
        n0, n1 = len(x0), len(x1)
        a = np.full(n0, 1.0) if a is None else np.asarray(a, dtype=float)
        b = np.full(n1, 1.0) if b is None else np.asarray(b, dtype=float)
        rows, cols, vals = [], [], []
        for i0, i1 in _blocks(n0, n1, self.block_size, rng):
            cost = self.cost(x0[i0].astype(np.float64), x1[i1].astype(np.float64))
            if not self.unbalanced:
                share = 0.5 * (a[i0].sum() / a.sum() + b[i1].sum() / b.sum())
                block = self.solve_block(a[i0] / a[i0].sum(), b[i1] / b[i1].sum(), cost) * share
            else:
                block = self.solve_block(a[i0], b[i1], cost)
            if not block.any():
                continue
            r, c = np.nonzero(block > 1e-12 * block.max())
            rows.append(i0[r])
            cols.append(i1[c])
            vals.append(block[r, c])
        if not rows:
            return sp.csr_matrix((n0, n1))
        return sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n0, n1)
        )

    def sampler(self, x0, x1, a=None, b=None, rng=None, source_mass=None) -> PlanSampler:
        """A pair sampler over the plan between ``x0`` and ``x1``."""
        return PlanSampler(self.plan(x0, x1, a, b, rng))


class IndependentCoupling(Coupling):
    """The product coupling: every source cell with every target cell (I-CFM)."""

    def sampler(self, x0, x1, a=None, b=None, rng=None, source_mass=None) -> IndependentSampler:
        """A sampler of independent pairs."""
        a = np.ones(len(x0)) if a is None else np.asarray(a, dtype=float)
        b = np.ones(len(x1)) if b is None else np.asarray(b, dtype=float)
        return IndependentSampler(a, b)


class ExactOTCoupling(_BlockwiseOT):
    """Exact optimal transport with squared Euclidean cost (``ot.emd``), solved in blocks.

    Parameters
    ----------
    block_size
        Largest number of cells per side of one OT problem.
    """

    def solve_block(self, a, b, cost):
        return ot.emd(a, b, cost, numItermax=10_000_000)


class EntropicOTCoupling(_BlockwiseOT):
    """Entropic optimal transport (``ot.sinkhorn``), solved in blocks.

    Parameters
    ----------
    reg
        Entropic regularisation, in the units of the squared distances (for the
        Schroedinger bridge of noise ``sigma``: ``2 sigma**2``).
    block_size
        Largest number of cells per side of one OT problem.
    """

    settings = ("reg", "block_size")

    @staticmethod
    def default_reg(sigma: float) -> float:
        """``2 sigma**2``, the Schroedinger bridge of the path's noise; 0.05 for a path without noise."""
        return 2 * sigma**2 if sigma > 0 else 0.05

    def __init__(self, reg: float = 0.05, block_size: int = 2048):
        super().__init__(block_size)
        if reg <= 0:
            raise ValueError(f"reg must be positive, got {reg}")
        self.reg = float(reg)

    def solve_block(self, a, b, cost):
        # The kernel exp(-cost / reg) is fast; switch to the log domain only where it would
        # underflow to a row or column of zeros.
        exponent = max(cost.min(axis=1).max(), cost.min(axis=0).max()) / self.reg
        method = "sinkhorn" if exponent < 600 else "sinkhorn_log"
        return ot.sinkhorn(a, b, cost, self.reg, method=method, numItermax=5000, stopThr=1e-6)


class WFRSampler(PlanSampler):
    """Pairs of a static Wasserstein-Fisher-Rao plan with the masses of its semi-couplings.

    With the plan ``G``, source masses ``a`` and target masses ``b``:
    ``gamma0_ij = G_ij a_i / sum_j G_ij`` and ``gamma1_ij = G_ij b_j / sum_i G_ij``. Pairs are
    drawn in proportion to ``gamma0`` and carry ``m0 = gamma0_ij``, ``m1 = gamma1_ij``. Source
    cells with no partner within ``pi * delta`` die where they are: they are drawn in
    proportion to their mass with ``m1 = 0``.
    """

    def __init__(self, plan: sp.spmatrix, a: np.ndarray, b: np.ndarray):
        plan = sp.csr_matrix(plan)
        plan.eliminate_zeros()
        coo = plan.tocoo()
        row_sums = np.asarray(plan.sum(axis=1)).ravel()
        col_sums = np.asarray(plan.sum(axis=0)).ravel()
        m0 = coo.data * a[coo.row] / row_sums[coo.row]
        m1 = coo.data * b[coo.col] / col_sums[coo.col]
        orphans = np.flatnonzero(row_sums <= 0)
        self.plan = plan
        self.n_died = orphans.size
        rows = np.concatenate([coo.row, orphans])
        order = np.argsort(rows, kind="stable")  # each row's entries contiguous, as for PlanSampler
        self._rows = rows[order]
        self._cols = np.concatenate([coo.col, np.zeros(orphans.size, dtype=coo.col.dtype)])[order]
        self._m0 = np.concatenate([m0, a[orphans]])[order]
        self._m1 = np.concatenate([m1, np.zeros(orphans.size)])[order]
        self._died = np.concatenate([np.zeros(coo.nnz, bool), np.ones(orphans.size, bool)])[order]
        self._cdf = np.cumsum(self._m0)
        self._row_start = np.searchsorted(self._rows, np.arange(plan.shape[0] + 1))

    def sample(self, n: int, rng: np.random.Generator) -> Pairs:
        """Draw ``n`` pairs in proportion to ``gamma0``, with their masses."""
        return self._pairs(self._draw(n, rng))

    def conditional(self, i: np.ndarray, rng: np.random.Generator) -> Pairs:
        """A partner for each source cell ``i`` from its own row, with the pair's masses."""
        return self._pairs(self._draw_in_rows(i, rng))

    def all_pairs(self) -> Pairs:
        """Every pair of the plan (and every dying source cell), with its masses."""
        return self._pairs(np.arange(self._rows.size))

    def _pairs(self, k: np.ndarray) -> Pairs:
        return Pairs(self._rows[k], self._cols[k], self._m0[k], self._m1[k], self._died[k])


class WFRCoupling(_BlockwiseOT):
    """Static unbalanced (Wasserstein-Fisher-Rao) transport between two populations.

    Every cell carries its own mass (one by default, so a change in cell numbers is
    growth), the cost is ``-log cos^2(min(|x - y| / (2 delta), pi/2))`` (infinite beyond
    ``pi * delta``: no transport, only death and birth), and both marginals are relaxed by a
    KL penalty of weight ``marginal_penalty``; solved by entropic unbalanced Sinkhorn
    (``ot.unbalanced.sinkhorn_unbalanced``) in blocks.

    Parameters
    ----------
    delta
        Length scale trading transport against growth (``delta -> inf``: balanced OT).
    reg
        Entropic regularisation of the solver (in units of the cost).
    marginal_penalty
        Weight of the KL penalties on both marginals.
    block_size
        Largest problem per side.
    """

    unbalanced = True
    settings = ("delta", "reg", "block_size")

    @staticmethod
    def default_reg(sigma: float) -> float:
        """0.01, in units of the cost (whose scale is fixed by ``delta``)."""
        return 0.01

    def __init__(self, delta: float, reg: float = 0.01, marginal_penalty: float = 1.0, block_size: int = 2048):
        super().__init__(block_size)
        if not delta > 0:
            raise ValueError(f"delta must be positive, got {delta}")
        self.delta, self.reg, self.marginal_penalty = float(delta), float(reg), float(marginal_penalty)

    def cost(self, x0, x1):
        angle = np.minimum(np.sqrt(ot.dist(x0, x1)) / (2 * self.delta), np.pi / 2)
        # cos^2 floored at 1e-30: a finite stand-in for infinity, removed after solving.
        return -np.log(np.maximum(np.cos(angle) ** 2, 1e-30))

    def solve_block(self, a, b, cost):
        # A cell whose every partner lies at (or numerically at) the transport horizon has a
        # kernel row exp(-cost / reg) of zeros, which would stall Sinkhorn for the whole block:
        # such cells take no part in the problem (sources die in place, targets are not reached).
        reachable = cost / self.reg < 700
        rows, cols = reachable.any(axis=1), reachable.any(axis=0)
        plan = np.zeros_like(cost)
        if rows.any() and cols.any():
            inner = np.ix_(rows, cols)
            plan[inner] = ot.unbalanced.sinkhorn_unbalanced(
                a[rows], b[cols], cost[inner], self.reg, self.marginal_penalty, numItermax=3000, stopThr=1e-6
            )
        plan[~reachable] = 0.0
        return np.nan_to_num(plan, nan=0.0)

    def sampler(self, x0, x1, a=None, b=None, rng=None, source_mass=None) -> WFRSampler:
        """A sampler of pairs with semi-coupling masses.

        ``a``, ``b`` are the marginals the plan is fitted to (e.g. a growth prior on ``a``);
        ``source_mass`` is the mass each source cell actually carries (``a`` when ``None``).
        """
        a = np.ones(len(x0)) if a is None else np.asarray(a, dtype=float)
        b = np.ones(len(x1)) if b is None else np.asarray(b, dtype=float)
        plan = self.plan(x0, x1, a, b, rng)
        return WFRSampler(plan, a if source_mass is None else np.asarray(source_mass, dtype=float), b)


def sample_chains(samplers, n: int, rng: np.random.Generator) -> list[Pairs]:
    """Chain the plans of consecutive intervals into ``n`` tuples ``(x_0, ..., x_K)``.

    ``x_0`` is drawn in proportion to the first plan's source marginal; each next cell is
    drawn from the plan row of the cell just drawn (conditioning on that cell's own row, so
    monotone plans give rank-preserving chains).

    Returns
    -------
    One :class:`Pairs` per interval: the chain's cells (indices into the two populations)
    at both ends, with masses where the coupling is unbalanced.
    """
    i = samplers[0].sources(n, rng)
    links = []
    for sampler in samplers:
        pairs = sampler.conditional(i, rng)
        links.append(pairs)
        i = pairs.j
    return links


COUPLINGS = {
    "independent": IndependentCoupling,
    "exact": ExactOTCoupling,
    "entropic": EntropicOTCoupling,
    "wfr": WFRCoupling,
}

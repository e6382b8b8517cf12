"""Couplings between two populations, and samplers of cell pairs from them.

A coupling is solved once per interval, on blocks of at most ``block_size`` cells per side
(the whole population when it fits), so no ``n x n`` matrix of the whole data is ever formed.
Training then draws pairs from the stored plan, with replacement, at the cost of a lookup.
"""

from __future__ import annotations

import math

import numpy as np
import ot
import scipy.sparse as sp


class IndependentSampler:
    """Pairs drawn from the product of the two marginals (no plan stored)."""

    def __init__(self, a: np.ndarray, b: np.ndarray):
        self._cdf_a = np.cumsum(a) / a.sum()
        self._cdf_b = np.cumsum(b) / b.sum()

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` pairs ``(i, j)``: source and target cell indices."""
        i = np.searchsorted(self._cdf_a, rng.random(n) * self._cdf_a[-1], side="right")
        j = np.searchsorted(self._cdf_b, rng.random(n) * self._cdf_b[-1], side="right")
        return np.minimum(i, self._cdf_a.size - 1), np.minimum(j, self._cdf_b.size - 1)


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
        coo = self.plan.tocoo()
        self._rows, self._cols = coo.row, coo.col
        self._cdf = np.cumsum(coo.data, dtype=float)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` pairs ``(i, j)`` with probability proportional to the plan."""
        k = np.searchsorted(self._cdf, rng.random(n) * self._cdf[-1], side="right")
        k = np.minimum(k, self._cdf.size - 1)
        return self._rows[k], self._cols[k]


def _blocks(n0: int, n1: int, block_size: int, rng: np.random.Generator):
    """Split two populations into the same number of random blocks of at most ``block_size``."""
    n_blocks = max(1, math.ceil(max(n0, n1) / block_size))
    if n_blocks == 1:
        return [(np.arange(n0), np.arange(n1))]
    parts0 = np.array_split(rng.permutation(n0), n_blocks)
    parts1 = np.array_split(rng.permutation(n1), n_blocks)
    return list(zip(parts0, parts1))


class _BlockwiseOT:
    """Shared machinery: solve a plan on each block and assemble one sparse plan."""

    def __init__(self, block_size: int = 2048):
        if block_size < 2:
            raise ValueError(f"block_size must be at least 2, got {block_size}")
        self.block_size = int(block_size)

    def solve_block(self, a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def plan(self, x0: np.ndarray, x1: np.ndarray, a=None, b=None, rng=None) -> sp.csr_matrix:
        """The transport plan between ``x0`` and ``x1`` as a sparse ``(n0, n1)`` matrix.

        ``a`` and ``b`` are the masses of the cells (uniform when ``None``). Each block's
        masses are normalised and its plan weighted by the block's share of the mass.
        """
        rng = np.random.default_rng(0) if rng is None else rng
        n0, n1 = len(x0), len(x1)
        a = np.full(n0, 1.0) if a is None else np.asarray(a, dtype=float)
        b = np.full(n1, 1.0) if b is None else np.asarray(b, dtype=float)
        rows, cols, vals = [], [], []
        for i0, i1 in _blocks(n0, n1, self.block_size, rng):
            share = 0.5 * (a[i0].sum() / a.sum() + b[i1].sum() / b.sum())
            cost = ot.dist(x0[i0].astype(np.float64), x1[i1].astype(np.float64))
            block = self.solve_block(a[i0] / a[i0].sum(), b[i1] / b[i1].sum(), cost)
            r, c = np.nonzero(block > 1e-12 * block.max())
            rows.append(i0[r])
            cols.append(i1[c])
            vals.append(block[r, c] * share)
        return sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n0, n1)
        )

    def sampler(self, x0, x1, a=None, b=None, rng=None) -> PlanSampler:
        """A pair sampler over the plan between ``x0`` and ``x1``."""
        return PlanSampler(self.plan(x0, x1, a, b, rng))


class IndependentCoupling:
    """The product coupling: every source cell with every target cell (I-CFM)."""

    def sampler(self, x0, x1, a=None, b=None, rng=None) -> IndependentSampler:
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

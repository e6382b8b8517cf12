"""Samplers of cell pairs from stored plans, drawn on the training device.

Training draws pairs from the plan each coupling solved once (:mod:`cellflow.transport`),
with replacement, at the cost of a lookup: every sampler keeps the cumulative weights of its
entries on its device and draws with torch's global generator, so no index is copied from
the host. :class:`StackedPlans` draws every interval's pairs with one lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeGuard

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

Device = str | torch.device


@dataclass
class Pairs:
    """Indices of paired cells (torch tensors on the sampler's device), with the masses of the
    pair at both ends where transport is unbalanced.

    ``died`` marks source cells with no partner: they stay where they are while their mass
    ``m0`` decays to ``m1 = 0`` (their ``j`` is meaningless).
    """

    i: torch.Tensor
    j: torch.Tensor
    m0: torch.Tensor | None = None
    m1: torch.Tensor | None = None
    died: torch.Tensor | None = None


def _cumulative(weights: npt.ArrayLike, device: Device) -> torch.Tensor:
    """Cumulative sums of non-negative weights, float64 on ``device`` (the draws' lookup table)."""
    return torch.as_tensor(np.cumsum(np.asarray(weights, dtype=np.float64)), device=device)


def _lookup(cdf: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` entries drawn in proportion to the increments of ``cdf``, on its device (global torch generator)."""
    u = torch.rand(n, dtype=cdf.dtype, device=cdf.device) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.numel() - 1)


class PairSampler(Protocol):
    """What every sampler of :mod:`cellflow.transport` offers training (and what paths calibrate on)."""

    def sample(self, n: int) -> Pairs:
        """Draw ``n`` pairs."""
        ...

    def sources(self, n: int) -> torch.Tensor:
        """Draw ``n`` source cells."""
        ...

    def conditional(self, i: torch.Tensor) -> Pairs:
        """A partner for each source cell ``i``."""
        ...


class IndependentSampler:
    """Pairs drawn from the product of the two marginals (no plan stored).

    Every sampler draws on its ``device`` with torch's global generator, so training never
    copies indices from the host.
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, device: Device = "cpu"):
        self._cdf_a, self._cdf_b = _cumulative(a, device), _cumulative(b, device)

    def sample(self, n: int) -> Pairs:
        """Draw ``n`` pairs: source and target cell indices."""
        return Pairs(self.sources(n), _lookup(self._cdf_b, n))

    def sources(self, n: int) -> torch.Tensor:
        """Draw ``n`` source cells in proportion to their mass."""
        return _lookup(self._cdf_a, n)

    def conditional(self, i: torch.Tensor) -> Pairs:
        """A partner for each source cell ``i``: independent of ``i``."""
        return Pairs(i, _lookup(self._cdf_b, len(i)))


class PlanSampler:
    """Pairs drawn in proportion to a sparse transport plan.

    Parameters
    ----------
    plan
        ``(n0, n1)`` sparse matrix with non-negative entries; it need not sum to one.
    device
        Where the plan's lookup tables live and pairs are drawn.
    """

    def __init__(self, plan: sp.spmatrix, device: Device = "cpu"):
        self.plan = sp.csr_matrix(plan)
        self.plan.eliminate_zeros()
        coo = self.plan.tocoo()  # row-major order, so each row's entries are contiguous
        self._set_entries(coo.row, coo.col, coo.data, self.plan.shape[0], device)

    def _set_entries(self, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, n_rows: int,
                     device: Device) -> None:
        """Store row-sorted entries with their weights as the device's lookup tables."""
        self.n_entries = len(rows)
        self._rows = torch.as_tensor(rows, dtype=torch.long, device=device)
        self._cols = torch.as_tensor(cols, dtype=torch.long, device=device)
        self._cdf = _cumulative(weights, device)
        self._row_start = torch.as_tensor(np.searchsorted(rows, np.arange(n_rows + 1)), device=device)

    def _draw(self, n: int) -> torch.Tensor:
        return _lookup(self._cdf, n)

    def _draw_in_rows(self, i: torch.Tensor) -> torch.Tensor:
        """For each source cell ``i``, an entry of its own row, in proportion to the plan."""
        start, stop = self._row_start[i], self._row_start[i + 1]
        low = torch.where(start > 0, self._cdf[(start - 1).clamp(min=0)], 0.0)
        high = self._cdf[(stop - 1).clamp(min=0)]
        u = low + torch.rand(len(i), dtype=self._cdf.dtype, device=self._cdf.device) * (high - low)
        return torch.searchsorted(self._cdf, u, right=True).clamp(min=start, max=(stop - 1).clamp(min=start))

    def sample(self, n: int) -> Pairs:
        """Draw ``n`` pairs with probability proportional to the plan."""
        k = self._draw(n)
        return Pairs(self._rows[k], self._cols[k])

    def sources(self, n: int) -> torch.Tensor:
        """Draw ``n`` source cells in proportion to the plan's row sums."""
        return self._rows[self._draw(n)]

    def conditional(self, i: torch.Tensor) -> Pairs:
        """A partner for each source cell ``i`` from that cell's own row of the plan."""
        return Pairs(i, self._cols[self._draw_in_rows(i)])


class WFRSampler(PlanSampler):
    """Pairs of a static Wasserstein-Fisher-Rao plan with the masses of its semi-couplings.

    With the plan ``G``, source masses ``a`` and target masses ``b``:
    ``gamma0_ij = G_ij a_i / sum_j G_ij`` and ``gamma1_ij = G_ij b_j / sum_i G_ij``. Pairs are
    drawn in proportion to ``gamma0`` and carry ``m0 = gamma0_ij``, ``m1 = gamma1_ij``. Source
    cells with no partner within ``pi * delta`` die where they are: they are drawn in
    proportion to their mass with ``m1 = 0``.
    """

    def __init__(self, plan: sp.spmatrix, a: np.ndarray, b: np.ndarray, device: Device = "cpu"):
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
        cols = np.concatenate([coo.col, np.zeros(orphans.size, dtype=coo.col.dtype)])[order]
        m0 = np.concatenate([m0, a[orphans]])[order]
        self._set_entries(rows[order], cols, m0, plan.shape[0], device)
        self._m0 = torch.as_tensor(m0, device=device)
        self._m1 = torch.as_tensor(np.concatenate([m1, np.zeros(orphans.size)])[order], device=device)
        self._died = torch.as_tensor(np.concatenate([np.zeros(coo.nnz, bool), np.ones(orphans.size, bool)])[order],
                                     device=device)

    def sample(self, n: int) -> Pairs:
        """Draw ``n`` pairs in proportion to ``gamma0``, with their masses."""
        return self._pairs(self._draw(n))

    def conditional(self, i: torch.Tensor) -> Pairs:
        """A partner for each source cell ``i`` from its own row, with the pair's masses."""
        return self._pairs(self._draw_in_rows(i))

    def all_pairs(self) -> Pairs:
        """Every pair of the plan (and every dying source cell), with its masses."""
        return self._pairs(torch.arange(self.n_entries, device=self._rows.device))

    def _pairs(self, k: torch.Tensor) -> Pairs:
        return Pairs(self._rows[k], self._cols[k], self._m0[k], self._m1[k], self._died[k])


class StackedPlans:
    """Every interval's plan in one table: a batch of pairs for all intervals from one lookup.

    The entries of interval ``k`` carry cumulative weights normalised to ``(k, k + 1]``, so a
    uniform draw in ``[k, k + 1)`` lands on an entry of that interval in proportion to its
    plan, and each interval gets the same number of pairs whatever its total mass. Cell indices
    are offset into the stacked populations (sources by ``source_offsets[k]``, targets by
    ``target_offsets[k]``).

    Parameters
    ----------
    samplers
        One :class:`PlanSampler` (or :class:`WFRSampler`) per interval, all on one device.
    source_offsets, target_offsets
        Offset of each interval's source and target cells in the stacked populations.
    batch_size
        Pairs drawn per interval.
    """

    def __init__(self, samplers: Sequence[PlanSampler], source_offsets: Sequence[int],
                 target_offsets: Sequence[int], batch_size: int):
        self.n_intervals = len(samplers)
        self._cdf = torch.cat([s._cdf / s._cdf[-1] + k for k, s in enumerate(samplers)])
        self._rows = torch.cat([s._rows + off for s, off in zip(samplers, source_offsets)])
        self._cols = torch.cat([s._cols + off for s, off in zip(samplers, target_offsets)])
        self.unbalanced = isinstance(samplers[0], WFRSampler)
        if self.unbalanced:
            self._m0, self._m1, self._died = (torch.cat([getattr(s, name) for s in samplers])
                                              for name in ("_m0", "_m1", "_died"))
        intervals = torch.arange(self.n_intervals, dtype=self._cdf.dtype, device=self._cdf.device)
        self._interval = intervals.repeat_interleave(int(batch_size))

    @staticmethod
    def stacks(samplers: Sequence[PairSampler]) -> TypeGuard[Sequence[PlanSampler]]:
        """Whether :class:`StackedPlans` can take these samplers (plans of one kind)."""
        kinds = {type(s) for s in samplers}
        return len(kinds) == 1 and kinds <= {PlanSampler, WFRSampler}

    def sample(self) -> Pairs:
        """``batch_size`` pairs of every interval, interval after interval."""
        u = torch.rand(len(self._interval), dtype=self._cdf.dtype, device=self._cdf.device).add_(self._interval)
        k = torch.searchsorted(self._cdf, u, right=True).clamp_(max=self._cdf.numel() - 1)

        def pick(table: torch.Tensor) -> torch.Tensor:
            return table.index_select(0, k)

        if not self.unbalanced:
            return Pairs(pick(self._rows), pick(self._cols))
        return Pairs(pick(self._rows), pick(self._cols), pick(self._m0), pick(self._m1), pick(self._died))


def sample_chains(samplers: Sequence[PairSampler], n: int) -> list[Pairs]:
    """Chain the plans of consecutive intervals into ``n`` tuples ``(x_0, ..., x_K)``.

    ``x_0`` is drawn in proportion to the first plan's source marginal; each next cell is
    drawn from the plan row of the cell just drawn (conditioning on that cell's own row, so
    monotone plans give rank-preserving chains).

    Returns
    -------
    One :class:`Pairs` per interval: the chain's cells (indices into the two populations)
    at both ends, with masses where the coupling is unbalanced.
    """
    i = samplers[0].sources(n)
    links = []
    for sampler in samplers:
        pairs = sampler.conditional(i)
        links.append(pairs)
        i = pairs.j
    return links

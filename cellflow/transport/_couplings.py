"""Couplings between two populations, solved once into the plans that training draws pairs from.

A coupling is solved once per interval, on blocks of at most ``block_size`` cells per side
(the whole population when it fits), so no ``n x n`` matrix of the whole data is ever formed.
Training then draws pairs from the stored plan, with replacement, at the cost of a lookup.

Every coupling class declares what it needs from a method's settings
(:attr:`Coupling.settings`, from ``reg``, ``delta``, ``block_size``), its default entropic
regularisation (:meth:`Coupling.default_reg`) and whether it is unbalanced (its pairs carry
masses, so the method learns growth). :data:`cellflow.model.COUPLINGS` names them for the method
table (with the couplings of :mod:`cellflow.transport`, built on these).
"""

from __future__ import annotations

import math
import warnings
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
from scipy.special import logsumexp

from .._checks import choice
from .._utils import progress_bar
from ._samplers import Device, IndependentSampler, PairSampler, PlanSampler, WFRSampler

BLOCK_ORDERS = ("random", "projection")
KEPT_MASS = 1 - 1e-4  # share of each row's mass that a stored plan keeps (see _support)


def _support(block: np.ndarray) -> np.ndarray:
    """The entries of a block's plan that are stored: in each row, the largest ones that together
    hold :data:`KEPT_MASS` of the row's mass (and every entry tied with the last of them).

    Entropic and unbalanced plans have a tail of tiny entries in every row; dropping the last
    0.01% of each row's mass keeps the stored plan sparse (tens of entries per row rather than
    the block's width) while no cell loses a partner that carries real mass.
    """
    ordered = -np.sort(-block, axis=1)
    cumulative = np.cumsum(ordered, axis=1)
    last = (cumulative < KEPT_MASS * cumulative[:, -1:]).sum(axis=1)
    threshold = ordered[np.arange(len(block)), np.minimum(last, block.shape[1] - 1)]
    return (block >= threshold[:, None]) & (block > 0)


def _principal_axis(x0: np.ndarray, x1: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """First principal axis of the pooled cells (of at most 10,000 of them; a cheap projection)."""
    pooled = np.concatenate([x0, x1])
    sample = pooled[rng.choice(len(pooled), min(len(pooled), 10_000), replace=False)].astype(np.float64)
    centred = sample - sample.mean(axis=0)
    return np.linalg.svd(centred, full_matrices=False)[2][0]


def blocks(x0: np.ndarray, x1: np.ndarray, block_size: int, rng: np.random.Generator,
           order: str = "random") -> list[tuple[np.ndarray, np.ndarray]]:
    """Split two populations into the same number of blocks of at most ``block_size`` cells per side.

    The number of blocks is ``ceil(max(n0, n1) / block_size)``; both sides are cut into that many
    near-equal parts. ``order="random"``: the parts of a random permutation, so each block is a
    random subsample of its population and the plans of the blocks together approximate the
    population's plan without bias in where cells go. ``order="projection"``: both
    populations sorted along the first principal axis of the pooled cells and cut into
    consecutive slabs, so a block's cells are neighbours (and the k-th slab of one time point can
    only reach the k-th slab of the next).

    Returns
    -------
    A list of ``(rows of x0, rows of x1)`` index pairs.
    """
    n0, n1 = len(x0), len(x1)
    n_blocks = max(1, math.ceil(max(n0, n1) / block_size))
    if n_blocks == 1:
        return [(np.arange(n0), np.arange(n1))]
    if order == "projection":
        axis = _principal_axis(x0, x1, rng)
        first, second = np.argsort(x0 @ axis, kind="stable"), np.argsort(x1 @ axis, kind="stable")
    else:
        first, second = rng.permutation(n0), rng.permutation(n1)
    return list(zip(np.array_split(first, n_blocks), np.array_split(second, n_blocks)))


class Coupling:
    """Base of the couplings: what a coupling declares to the method table.

    Attributes
    ----------
    settings
        Names of the method settings the constructor takes (from ``reg``, ``delta``, ``block_size``).
    unbalanced
        Pairs carry masses (``m0``, ``m1``): a method with this coupling learns growth.
    """

    settings: ClassVar[tuple[str, ...]] = ()
    unbalanced: ClassVar[bool] = False

    @staticmethod
    def default_reg(sigma: float) -> float | None:
        """Entropic regularisation when none is given (``None``: the coupling has none)."""
        return None

    def sampler(self, x0: np.ndarray, x1: np.ndarray, a: npt.ArrayLike | None = None, b: npt.ArrayLike | None = None,
                *, rng: np.random.Generator | None = None, source_mass: npt.ArrayLike | None = None,
                device: Device = "cpu", part: tuple[int, int] = (0, 1), progress: bool = False) -> PairSampler:
        """A pair sampler between ``x0`` and ``x1`` with cell masses ``a`` and ``b``.

        ``source_mass`` is the mass each source cell carries where it differs from the
        marginal ``a`` the plan is fitted to (unbalanced couplings; ignored by balanced ones).
        ``device``: where pairs are drawn. ``part=(rank, size)``: solve only this process's
        share of the blocks (see :meth:`_BlockwiseOT.plan`). ``progress``: a bar over the blocks.
        """
        raise NotImplementedError


class _BlockwiseOT(Coupling):
    """Shared machinery: solve a plan on each block and assemble one sparse plan."""

    settings: ClassVar[tuple[str, ...]] = ("block_size", "block_order")

    def __init__(self, block_size: int = 2048, block_order: str = "random"):
        if block_size < 2:
            raise ValueError(f"block_size must be at least 2, got {block_size}")
        self.block_size = int(block_size)
        self.block_order = choice("block_order", block_order, BLOCK_ORDERS)

    def solve_block(self, a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def cost(self, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
        """Ground cost between two blocks of cells: squared Euclidean distance."""
        import ot
        return ot.dist(x0, x1)

    def plan(self, x0: np.ndarray, x1: np.ndarray, a: npt.ArrayLike | None = None, b: npt.ArrayLike | None = None,
             *, rng: np.random.Generator | None = None, part: tuple[int, int] = (0, 1),
             progress: bool = False) -> sp.csr_matrix:
        """The transport plan between ``x0`` and ``x1`` as a sparse ``(n0, n1)`` matrix.

        ``a`` and ``b`` are the masses of the cells (one each when ``None``). Populations larger
        than ``block_size`` are split by :func:`blocks` (in :attr:`block_order`) and each block
        is solved on its own, so memory stays linear in the number of cells: one dense
        ``block_size x block_size`` cost at a time, and the plan kept sparse. For balanced
        couplings each block's masses are normalised and its plan weighted by the block's share
        of the mass, so the plan sums to one; unbalanced plans keep the masses as they are.

        ``part=(rank, size)`` solves only every ``size``-th block from the ``rank``-th (the
        share of one process of a distributed fit; all blocks when there are fewer blocks
        than processes). ``progress`` shows a bar over the blocks.
        """
        rng = np.random.default_rng(0) if rng is None else rng
        n0, n1 = len(x0), len(x1)
        a = np.full(n0, 1.0) if a is None else np.asarray(a, dtype=float)
        b = np.full(n1, 1.0) if b is None else np.asarray(b, dtype=float)
        rank, size = part
        pieces = blocks(x0, x1, self.block_size, rng, self.block_order)
        if len(pieces) >= size:
            pieces = pieces[rank::size]
        rows, cols, vals = [], [], []
        bar = progress_bar(len(pieces), "coupling blocks", progress and len(pieces) > 1)
        for i0, i1 in pieces:
            cost = self.cost(x0[i0].astype(np.float64), x1[i1].astype(np.float64))
            if not self.unbalanced:
                share = 0.5 * (a[i0].sum() / a.sum() + b[i1].sum() / b.sum())
                block = self.solve_block(a[i0] / a[i0].sum(), b[i1] / b[i1].sum(), cost) * share
            else:
                block = self.solve_block(a[i0], b[i1], cost)
            bar.update()
            if not block.any():
                continue
            r, c = np.nonzero(_support(block))
            rows.append(i0[r])
            cols.append(i1[c])
            vals.append(block[r, c])
        bar.close()
        if not rows:
            return sp.csr_matrix((n0, n1))
        return sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n0, n1)
        )

    def sampler(self, x0: np.ndarray, x1: np.ndarray, a: npt.ArrayLike | None = None, b: npt.ArrayLike | None = None,
                *, rng: np.random.Generator | None = None, source_mass: npt.ArrayLike | None = None,
                device: Device = "cpu", part: tuple[int, int] = (0, 1), progress: bool = False) -> PlanSampler:
        """A pair sampler over the plan between ``x0`` and ``x1``."""
        return PlanSampler(self.plan(x0, x1, a, b, rng=rng, part=part, progress=progress), device)


class IndependentCoupling(Coupling):
    """The product coupling: every source cell with every target cell (I-CFM)."""

    def sampler(self, x0: np.ndarray, x1: np.ndarray, a: npt.ArrayLike | None = None, b: npt.ArrayLike | None = None,
                *, rng: np.random.Generator | None = None, source_mass: npt.ArrayLike | None = None,
                device: Device = "cpu", part: tuple[int, int] = (0, 1), progress: bool = False) -> IndependentSampler:
        """A sampler of independent pairs."""
        a = np.ones(len(x0)) if a is None else np.asarray(a, dtype=float)
        b = np.ones(len(x1)) if b is None else np.asarray(b, dtype=float)
        return IndependentSampler(a, b, device)


class ExactOTCoupling(_BlockwiseOT):
    """Exact optimal transport with squared Euclidean cost (``ot.emd``), solved in blocks.

    Parameters
    ----------
    block_size
        Largest number of cells per side of one OT problem.
    block_order
        How larger populations are cut into blocks (:func:`blocks`).
    """

    def solve_block(self, a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> np.ndarray:
        """The exact plan of one block."""
        import ot
        return ot.emd(a, b, cost, numItermax=10_000_000)


MARGINAL_ERROR = 1e-3  # L1 error of an entropic plan's marginals accepted (0.1% of the mass misplaced)
SINKHORN_ITERATIONS = 5000  # the most updates at one temperature


def _annealed_sinkhorn(cost: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor,
                       reg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-domain Sinkhorn with the temperature annealed down to ``reg`` (each stage warm-starts the next).

    Solves for ``f``, ``g`` with plan ``P_ij = a_i b_j exp((f_i + g_j - cost_ij) / reg)``; each
    stage stops when the rows of ``P`` miss ``a`` by less than :data:`MARGINAL_ERROR` in L1 (ten
    times that before the last stage; the columns are exact after every update), or after
    :data:`SINKHORN_ITERATIONS` updates. At low
    temperature plain Sinkhorn needs a number of updates that grows like ``1 / reg``;
    annealing needs a few dozen per halving.
    """
    f, g = torch.zeros_like(log_a), torch.zeros_like(log_b)
    temperature = max(reg, float(cost.mean()) / 8)
    while True:
        for update in range(SINKHORN_ITERATIONS):
            f = -temperature * torch.logsumexp((g - cost) / temperature + log_b, dim=1)
            g = -temperature * torch.logsumexp((f[:, None] - cost) / temperature + log_a[:, None], dim=0)
            if update % 10 == 9:
                rows = torch.logsumexp((f[:, None] + g - cost) / temperature + log_b, dim=1)
                error = float((log_a.exp() * (rows.exp() - 1).abs()).sum())
                if error < MARGINAL_ERROR * (1 if temperature == reg else 10):
                    break
        if temperature == reg:
            return f, g
        temperature = max(reg, temperature / 2)


def _row_error(f: np.ndarray, g: np.ndarray, a: np.ndarray, b: np.ndarray, cost: np.ndarray, reg: float) -> float:
    """L1 error of the row sums of the plan ``a_i b_j exp((f_i + g_j - cost_ij) / reg)`` against ``a``, computed
    from the potentials (where the scaling form's kernel underflows, its own plan is not this one).
    """
    with np.errstate(divide="ignore"):
        rows = logsumexp((f[:, None] + g[None, :] - cost) / reg + np.log(b)[None, :], axis=1)
    return float(np.abs(a * (np.exp(rows) - 1))[a > 0].sum())


def entropic_potentials(a: np.ndarray, b: np.ndarray, cost: np.ndarray, reg: float) -> tuple[np.ndarray, np.ndarray]:
    """Dual potentials ``f``, ``g`` of entropic OT, the plan being ``a_i b_j exp((f_i + g_j - cost_ij) / reg)``.

    The scaling form (``ot.sinkhorn``) is fast and is kept where it meets the marginals to
    :data:`MARGINAL_ERROR`; where its kernel under- or overflows, or it does not converge, the
    annealed log-domain Sinkhorn in torch takes over (POT's own log-domain solver needs many
    more updates at small ``reg``). ``a`` and ``b`` sum to one.
    """
    import ot
    if max(cost.min(axis=1).max(), cost.min(axis=0).max()) / reg < 700:  # exp underflows near -745
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # a breakdown is caught below
            _, log = ot.sinkhorn(a, b, cost, reg, numItermax=5000, stopThr=1e-6, log=True)
            f, g = reg * np.log(log["u"] / a), reg * np.log(log["v"] / b)
        finite = np.isfinite(f[a > 0]).all() and np.isfinite(g[b > 0]).all()
        if finite and _row_error(f, g, a, b, cost, reg) < MARGINAL_ERROR:
            return f, g
    with np.errstate(divide="ignore"):  # a cell without mass has log-mass -inf and no row in the plan
        log_a, log_b = torch.as_tensor(np.log(a)), torch.as_tensor(np.log(b))
    f, g = _annealed_sinkhorn(torch.as_tensor(cost, dtype=torch.float64), log_a, log_b, float(reg))
    return f.numpy(), g.numpy()


class EntropicOTCoupling(_BlockwiseOT):
    """Entropic optimal transport (``ot.sinkhorn``), solved in blocks.

    Parameters
    ----------
    reg
        Entropic regularisation, in the units of the squared distances (for the
        Schroedinger bridge of noise ``sigma``: ``2 sigma**2``).
    block_size
        Largest number of cells per side of one OT problem.
    block_order
        How larger populations are cut into blocks (:func:`blocks`).
    """

    settings: ClassVar[tuple[str, ...]] = ("reg", "block_size", "block_order")

    @staticmethod
    def default_reg(sigma: float) -> float:
        """``2 sigma**2``, the Schroedinger bridge of the path's noise; 0.05 for a path without noise."""
        return 2 * sigma**2 if sigma > 0 else 0.05

    def __init__(self, reg: float = 0.05, block_size: int = 2048, block_order: str = "random"):
        super().__init__(block_size, block_order)
        if reg <= 0:
            raise ValueError(f"reg must be positive, got {reg}")
        self.reg = float(reg)

    def solve_block(self, a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> np.ndarray:
        """The entropic plan of one block, with the block's total mass."""
        total = a.sum()
        a, b = a / total, b / b.sum()
        f, g = entropic_potentials(a, b, cost, self.reg)
        with np.errstate(divide="ignore"):
            exponent = (f[:, None] + g[None, :] - cost) / self.reg + np.log(a)[:, None] + np.log(b)[None, :]
        return total * np.exp(exponent)


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
    block_order
        How larger populations are cut into blocks (:func:`blocks`).
    """

    unbalanced: ClassVar[bool] = True
    settings: ClassVar[tuple[str, ...]] = ("delta", "reg", "block_size", "block_order")

    @staticmethod
    def default_reg(sigma: float) -> float:
        """0.01, in units of the cost (whose scale is fixed by ``delta``)."""
        return 0.01

    def __init__(self, delta: float, reg: float = 0.01, marginal_penalty: float = 1.0, block_size: int = 2048,
                 block_order: str = "random"):
        super().__init__(block_size, block_order)
        if not delta > 0:
            raise ValueError(f"delta must be positive, got {delta}")
        self.delta, self.reg, self.marginal_penalty = float(delta), float(reg), float(marginal_penalty)

    def cost(self, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
        """The WFR cost ``-log cos^2(min(|x - y| / (2 delta), pi/2))``, floored where transport is impossible."""
        import ot
        angle = np.minimum(np.sqrt(ot.dist(x0, x1)) / (2 * self.delta), np.pi / 2)
        # cos^2 floored at 1e-30: a finite stand-in for infinity, removed after solving.
        return -np.log(np.maximum(np.cos(angle) ** 2, 1e-30))

    def solve_block(self, a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> np.ndarray:
        """The unbalanced entropic plan of one block."""
        import ot
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

    def sampler(self, x0: np.ndarray, x1: np.ndarray, a: npt.ArrayLike | None = None, b: npt.ArrayLike | None = None,
                *, rng: np.random.Generator | None = None, source_mass: npt.ArrayLike | None = None,
                device: Device = "cpu", part: tuple[int, int] = (0, 1), progress: bool = False) -> WFRSampler:
        """A sampler of pairs with semi-coupling masses.

        ``a``, ``b`` are the marginals the plan is fitted to (e.g. a growth prior on ``a``);
        ``source_mass`` is the mass each source cell actually carries (``a`` when ``None``).
        """
        a = np.ones(len(x0)) if a is None else np.asarray(a, dtype=float)
        b = np.ones(len(x1)) if b is None else np.asarray(b, dtype=float)
        plan = self.plan(x0, x1, a, b, rng=rng, part=part, progress=progress)
        return WFRSampler(plan, a if source_mass is None else np.asarray(source_mass, dtype=float), b, device)

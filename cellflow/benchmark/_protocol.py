"""The leave-one-time-point-out benchmark and its no-learning baselines.

Every method predicts one point per cell of ``t_{k-1}``: a flow pushes each cell once. The
exact-OT plan between ``t_{k-1}`` and ``t_{k+1}`` gives two baselines of that kind, the
barycentric map and the displacement interpolation drawn once per cell from its plan row; its
full-support interpolation (one point per pair of the plan) is kept as a reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import metrics
from .._utils import progress_bar
from ..metrics import mass_error
from ..model import METHODS, CellFlow, TimeCourse
from ..transport import ExactOTCoupling

#: The no-learning baselines, all from one exact OT plan between ``t_{k-1}`` and ``t_{k+1}``.
BASELINES = ("ot_map", "ot_draw", "ot_interpolation")
#: Kernel widths of the MMD, as multiples of the median distance between the held-out cells.
MMD_BANDWIDTHS = (0.5, 1.0, 2.0)


def _exact_plan(x0, x1, block_size: int, seed: int):
    return ExactOTCoupling(block_size).plan(x0, x1, rng=np.random.default_rng(seed)).tocsr()


def _displace(x0, x1, plan, fraction: float):
    """The full-support McCann interpolation of a sparse ``plan``: points and their masses."""
    plan = plan.tocoo()
    return (1 - fraction) * x0[plan.row] + fraction * x1[plan.col], plan.data


def _barycentre(x0, x1, plan, fraction: float) -> np.ndarray:
    partners = (plan @ x1) / np.asarray(plan.sum(axis=1))
    return (1 - fraction) * x0 + fraction * partners


def _draw(x0, x1, plan, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """One partner per source cell, drawn in proportion to the cell's own row of ``plan``."""
    plan = plan.tocsr()
    plan.eliminate_zeros()
    row_start, row_end = plan.indptr[:-1], plan.indptr[1:]
    if (row_end <= row_start).any():
        raise ValueError(f"cell {int(np.argmax(row_end <= row_start))} of x0 has no partner in the plan")
    cumulative = np.cumsum(plan.data)
    before = np.where(row_start > 0, cumulative[np.maximum(row_start - 1, 0)], 0.0)
    row_mass = cumulative[row_end - 1] - before
    # a uniform point inside each row's stretch of the cumulative masses picks that row's partner
    target = before + rng.random(len(x0)) * row_mass
    pick = np.searchsorted(cumulative, target, side="right")
    pick = np.clip(pick, row_start, row_end - 1)  # rounding at a row's upper edge stays in the row
    return (1 - fraction) * x0 + fraction * x1[plan.indices[pick]]


def ot_interpolation(x0, x1, fraction: float, block_size: int = 2048, seed: int = 0):
    """McCann displacement interpolation of the exact OT plan between ``x0`` and ``x1``.

    Returns
    -------
    Points ``(1 - fraction) x0_i + fraction x1_j`` for the pairs in the plan's support, and
    their masses (the plan's entries).
    """
    return _displace(x0, x1, _exact_plan(x0, x1, block_size, seed), fraction)


def ot_barycentric_map(x0, x1, fraction: float, block_size: int = 2048, seed: int = 0) -> np.ndarray:
    """Every cell of ``x0`` moved ``fraction`` of the way to the mean of its partners in the exact OT plan.

    The deterministic counterpart of :func:`ot_interpolation`: one point per source cell, as a
    flow that pushes the cells of ``x0`` gives, where the interpolation keeps every split of a
    cell's mass as a point of its own. The two agree when the plan is a permutation.
    """
    return _barycentre(x0, x1, _exact_plan(x0, x1, block_size, seed), fraction)


def ot_interpolation_draw(x0, x1, fraction: float, block_size: int = 2048, seed: int = 0) -> np.ndarray:
    """The displacement interpolation of the exact OT plan, drawn once per cell of ``x0``.

    Each cell ``i`` of ``x0`` picks one partner ``j`` with probability ``P_ij / sum_j P_ij``
    (its own row of the plan ``P``) and lands at ``(1 - fraction) x0_i + fraction x1_j``: one
    point per source cell, a sample of the interpolation where :func:`ot_barycentric_map`
    averages each row. ``seed`` sets both the plan's block order and the draw.
    """
    rng = np.random.default_rng(seed)
    return _draw(x0, x1, _exact_plan(x0, x1, block_size, seed), fraction, rng)


def baselines(x0, x1, fraction: float, *, block_size: int = 2048, seed: int = 0) -> dict:
    """All of :data:`BASELINES` from one plan: ``{name: (points, masses or None)}``."""
    plan = _exact_plan(x0, x1, block_size, seed)
    return {
        "ot_map": (_barycentre(x0, x1, plan, fraction), None),
        "ot_draw": (_draw(x0, x1, plan, fraction, np.random.default_rng(seed)), None),
        "ot_interpolation": _displace(x0, x1, plan, fraction),
    }


def mmd_bandwidths(observed) -> tuple[float, ...]:
    """RBF widths of the benchmark's MMD: :data:`MMD_BANDWIDTHS` times the median distance between
    the observed cells (at most 2000 of them, drawn with a fixed seed). They depend on the held-out
    cells only, so every method of a fold is scored with the same kernel.
    """
    import ot
    observed = np.asarray(observed, dtype=np.float64)
    if len(observed) > 2000:
        observed = observed[np.random.default_rng(0).choice(len(observed), 2000, replace=False)]
    distances = np.sqrt(np.maximum(ot.dist(observed, observed), 0))
    median = float(np.median(distances[np.triu_indices(len(observed), 1)])) or 1.0
    return tuple(f * median for f in MMD_BANDWIDTHS)


def score(predicted, observed, weights=None, bandwidths=None) -> dict:
    """W1, W2 and MMD between predicted (optionally weighted) and observed cells.

    ``bandwidths``: RBF widths of the MMD (default :func:`mmd_bandwidths` of ``observed``).
    """
    bandwidths = mmd_bandwidths(observed) if bandwidths is None else bandwidths
    return {
        "w1": metrics.w1(predicted, observed, weights),
        "w2": metrics.w2(predicted, observed, weights),
        "mmd": metrics.mmd(predicted, observed, weights, bandwidths=bandwidths),
    }


def fold_pca(training: Sequence[np.ndarray], n_pcs: int, seed: int = 0):
    """A PCA fitted on the cells of the training time points only.

    Returns
    -------
    ``project(x)``, the map from the input coordinates (e.g. genes) to the ``n_pcs`` principal
    components (centred on the training cells), and the fraction of the training variance it keeps.
    """
    from sklearn.decomposition import PCA

    cells = np.concatenate([np.asarray(x, dtype=np.float64) for x in training])
    largest = min(cells.shape)
    if not 1 <= n_pcs <= largest:
        raise ValueError(f"n_pcs={n_pcs} must be between 1 and {largest} (the training cells and input "
                         f"dimensions of a fold: {cells.shape}); choose fewer components")
    pca = PCA(n_components=int(n_pcs), random_state=seed).fit(cells)
    return (lambda x: pca.transform(np.asarray(x, dtype=np.float64)).astype(np.float32),
            float(pca.explained_variance_ratio_.sum()))


def fold(course: TimeCourse, k: int, n_pcs: int | None = None):
    """The training course without time point ``k``, and the cells of ``k - 1``, ``k`` and ``k + 1``.

    With ``n_pcs`` the course holds input coordinates (e.g. genes): a PCA is fitted on the
    training time points (:func:`fold_pca`) and every population is projected onto it, the
    held-out cells included, which take no part in the fit.

    Returns
    -------
    ``(training, before, held, after, explained)`` with ``explained`` the PCA's kept fraction of
    the training variance (``nan`` without ``n_pcs``).
    """
    training = course.without(k)
    explained = np.nan
    populations = course.populations
    if n_pcs is not None:
        project, explained = fold_pca(training.populations, n_pcs)
        populations = [project(x) for x in populations]
        training.populations = [p for i, p in enumerate(populations) if i != k]
        training.use_rep = f"PCA({n_pcs}) of {course.use_rep}, fitted without time point {course.times[k]:g}"
    return training, populations[k - 1], populations[k], populations[k + 1], explained


def predict(model, cells, t_from: float, t_to: float):
    """One point per cell: each cell pushed once by the model (its mass too when it has growth)."""
    if isinstance(model, CellFlow):
        return model.push(cells, t_from, t_to, return_mass=True)
    points = model.push(cells, t_from, t_to)
    return points, np.ones(len(points))


def leave_one_out(
    course: TimeCourse,
    methods: Sequence[str] = ("otcfm",),
    *,
    seeds: Sequence[int] = (0, 1, 2),
    baseline: bool = True,
    n_pcs: int | None = None,
    fitters: Mapping[str, Callable] | None = None,
    skip: Callable[[str, int, float], bool] | None = None,
    on_row: Callable[[dict], None] | None = None,
    progress: bool | None = None,
    **model_kwargs,
) -> pd.DataFrame:
    """Hold out each inner time point in turn; see :func:`cellflow.tl.leave_one_out`.

    Parameters
    ----------
    course
        The time course: its representation, or input coordinates to reduce per fold (``n_pcs``).
    methods
        Names of :data:`cellflow.model.METHODS` or of ``fitters``.
    seeds
        Every fit, and the baselines' draw, is repeated with each seed.
    baseline
        Add the rows of :data:`BASELINES`.
    n_pcs
        Fit a PCA of this many components on the training time points of each fold (:func:`fold`).
    fitters
        Other methods: ``name -> fit(training, seed, held_out_time)`` returning an object whose
        ``push(x, t_from, t_to)`` gives one point per cell.
    skip
        ``skip(method, seed, held_out_time)``: true for a run already done (nothing is fitted).
    on_row
        Called with every row as soon as it is scored (to save it, or to print progress).
    progress
        Show a progress bar: ``True`` or ``False``; ``None`` (default) shows it unless
        ``scanpy.settings.verbosity`` is 0 (:func:`cellflow._utils.show_progress`).
    **model_kwargs
        Passed to :class:`cellflow.CellFlow`.
    """
    if len(course.times) < 3:
        raise ValueError(
            f"leave-one-out needs at least 3 time points (an inner one to hold out); got {course.times.tolist()}"
        )
    fitters = dict(fitters or {})
    unknown = [m for m in methods if m not in METHODS and m not in fitters]
    if unknown:
        raise ValueError(f"method {unknown[0]!r} is neither a method ({', '.join(METHODS)}) nor one of the "
                         f"fitters ({', '.join(fitters) or 'none given'})")
    names = (list(BASELINES) if baseline else []) + list(methods)
    skip = skip or (lambda method, seed, held_out_time: False)
    rows = []
    inner = range(1, len(course.times) - 1)
    bar = progress_bar(len(inner) * len(seeds) * len(names), "leave-one-out", progress)
    for k in inner:
        t_prev, t_held, t_next = (float(t) for t in course.times[k - 1 : k + 2])
        todo = [(seed, name) for seed in seeds for name in names if not skip(name, seed, t_held)]
        bar.update(len(seeds) * len(names) - len(todo))
        if not todo:
            continue
        training, before, held, after, explained = fold(course, k, n_pcs)
        bandwidths = mmd_bandwidths(held)
        fraction = (t_held - t_prev) / (t_next - t_prev)
        common = dict(held_out_time=t_held, n_source=len(before), n_held_out=len(held),
                      pca_explained=explained, mmd_bandwidths=" ".join(f"{h:.4g}" for h in bandwidths))
        plans = {}  # seed -> the baselines of that seed, from one plan
        for seed, name in todo:
            start = time.perf_counter()
            if name in BASELINES:
                if seed not in plans:
                    plans[seed] = baselines(before, after, fraction, seed=seed)
                points, mass = plans[seed][name]
                fit_seconds, n_steps = 0.0, 0
            else:
                if name in fitters:
                    model = fitters[name](training, seed, t_held)
                else:
                    model = CellFlow(name, seed=seed, **model_kwargs).fit(training, progress=False)
                fit_seconds = time.perf_counter() - start
                n_steps = len(model.history["loss"]) if "loss" in getattr(model, "history", {}) else 0
                points, mass = predict(model, before, t_prev, t_held)
            ratio = 1.0 if name in BASELINES else float(np.mean(mass))  # a cell's mass starts at one
            row = dict(method=name, seed=seed, **common, n_predicted=len(points), n_steps=n_steps,
                       fit_seconds=fit_seconds, seconds=time.perf_counter() - start,
                       **score(points, held, mass, bandwidths), mass_error=mass_error(ratio, len(before), len(held)))
            rows.append(row)
            if on_row is not None:
                on_row(row)
            bar.update()
    bar.close()
    return pd.DataFrame(rows)

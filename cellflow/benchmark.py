"""The leave-one-time-point-out benchmark and its no-learning baseline."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import pandas as pd

from . import metrics
from ._utils import progress_bar
from .couplings import ExactOTCoupling
from .model import CellFlow
from .readers import TimeCourse


def ot_interpolation(x0, x1, fraction: float, block_size: int = 2048, seed: int = 0):
    """McCann displacement interpolation of the exact OT plan between ``x0`` and ``x1``.

    Returns
    -------
    Points ``(1 - fraction) x0_i + fraction x1_j`` for the pairs in the plan's support, and
    their masses (the plan's entries).
    """
    plan = ExactOTCoupling(block_size).plan(x0, x1, rng=np.random.default_rng(seed)).tocoo()
    points = (1 - fraction) * x0[plan.row] + fraction * x1[plan.col]
    return points, plan.data


def ot_barycentric_map(x0, x1, fraction: float, block_size: int = 2048, seed: int = 0) -> np.ndarray:
    """Every cell of ``x0`` moved ``fraction`` of the way to the mean of its partners in the exact OT plan.

    The deterministic counterpart of :func:`ot_interpolation`: one point per source cell, as a
    flow that pushes the cells of ``x0`` gives, where the interpolation keeps every split of a
    cell's mass as a point of its own. The two agree when the plan is a permutation.
    """
    plan = ExactOTCoupling(block_size).plan(x0, x1, rng=np.random.default_rng(seed)).tocsr()
    partners = (plan @ x1) / np.asarray(plan.sum(axis=1))
    return (1 - fraction) * x0 + fraction * partners


def score(predicted, observed, weights=None) -> dict:
    """W1, W2 and MMD between predicted (optionally weighted) and observed cells."""
    return {
        "w1": metrics.w1(predicted, observed, weights),
        "w2": metrics.w2(predicted, observed, weights),
        "mmd": metrics.mmd(predicted, observed, weights),
    }


def mass_error(predicted_ratio: float, n_start: float, n_end: float) -> float:
    """Relative error of a predicted population-size ratio: ``|M_hat - n_end/n_start| / (n_end/n_start)``."""
    truth = n_end / n_start
    return abs(predicted_ratio - truth) / truth


def leave_one_out(
    course: TimeCourse,
    methods: Sequence[str] = ("otcfm",),
    *,
    seeds: Sequence[int] = (0, 1, 2),
    baseline: bool = True,
    progress: bool = True,
    **model_kwargs,
) -> pd.DataFrame:
    """Hold out each inner time point in turn; see :func:`cellflow.tl.leave_one_out`."""
    if len(course.times) < 3:
        raise ValueError(
            f"leave-one-out needs at least 3 time points (an inner one to hold out); got {course.times.tolist()}"
        )
    rows = []
    inner = range(1, len(course.times) - 1)
    bar = progress_bar(len(inner) * (len(methods) * len(seeds) + baseline), "leave-one-out", progress)
    for k in inner:
        t_prev, t_held, t_next = course.times[k - 1 : k + 2]
        before, held, after = course.populations[k - 1 : k + 2]
        if baseline:
            start = time.perf_counter()
            points, masses = ot_interpolation(before, after, (t_held - t_prev) / (t_next - t_prev))
            rows.append(
                dict(method="ot_interpolation", held_out_time=t_held, seed=0, n_predicted=len(points),
                     seconds=time.perf_counter() - start, **score(points, held, masses),
                     mass_error=mass_error(1.0, len(before), len(held)))
            )
            bar.update()
        training = course.without(k)
        for method in methods:
            for seed in seeds:
                start = time.perf_counter()
                model = CellFlow(method, seed=seed, **model_kwargs).fit(training, progress=False)
                predicted, mass = model.push(before, t_prev, t_held, return_mass=True)
                rows.append(
                    dict(method=method, held_out_time=t_held, seed=seed, n_predicted=len(predicted),
                         seconds=time.perf_counter() - start, **score(predicted, held, mass),
                         mass_error=mass_error(mass.mean(), len(before), len(held)))
                )
                bar.update()
    bar.close()
    return pd.DataFrame(rows)

"""A simulated time course with known velocity and growth (an oracle for tests and benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

# ---------------------------------------------------------------------------------------------
# Simulated time course
#
# The latent state z = (z1, z2) moves with the time-independent field v(z) = (1, 1.2 tanh(2 z2)):
# a constant drift in z1 and a bifurcation in z2. Its flow map between any two times acts on each
# coordinate separately, z1 -> z1 + t and z2 -> phi_t(z2), with phi_t increasing (a 1-D flow keeps
# the order of its points). A separable map with increasing components is the gradient of a convex
# function, so by Brenier's theorem it is the quadratic-OT map between the marginals: OT-based flow
# matching should recover v exactly in the balanced case (growth_scale = 0).
# With growth, cells are reweighted by w = exp(int g(z(s)) ds) on top of the flow.
# Closed forms, handy as oracles: sinh(2 z2(t)) = sinh(2 z2(0)) exp(2.4 t), and since
# g = growth_scale / 1.2 * dz2/dt, log w(t) = growth_scale / 1.2 * (z2(t) - z2(0)).
# ---------------------------------------------------------------------------------------------

_SIM_SPREAD = 0.3
_SIM_DT = 0.01
_SIM_POOL = 20  # particles in the pool per observed cell
_SIM_RK4_MAX_CELLS = 50_000  # larger time courses move their pools by the exact flow map (_flow)


def simulated_velocity(z: np.ndarray) -> np.ndarray:
    """True velocity of :func:`simulate` in its latent (``X_pca``) space.

    Parameters
    ----------
    z
        States, shape ``(n, 2)``.

    Returns
    -------
    ``(n, 2)`` array ``(1, 1.2 tanh(2 z2))``.
    """
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    out[:, 0] = 1.0
    out[:, 1] = 1.2 * np.tanh(2.0 * z[:, 1])
    return out


def simulated_growth(z: np.ndarray, growth_scale: float = 0.5) -> np.ndarray:
    """True growth rate (per unit time) of :func:`simulate`: ``growth_scale * tanh(2 z2)``.

    Parameters
    ----------
    z
        States, shape ``(n, 2)``.
    growth_scale
        As passed to :func:`simulate`.

    Returns
    -------
    ``(n,)`` array.
    """
    z = np.asarray(z, dtype=np.float64)
    return growth_scale * np.tanh(2.0 * z[:, 1])


def _integrate(z0: np.ndarray, t: float, growth_scale: float, dt: float = _SIM_DT):
    """RK4 integration of ``(z, log w)`` from time 0 to ``t``; returns ``(z(t), log w(t))``."""
    z = np.array(z0, dtype=np.float64)
    logw = np.zeros(len(z))
    n_steps = int(np.ceil(t / dt - 1e-9))
    if n_steps == 0:
        return z, logw
    h = t / n_steps

    # v1 = 1 is constant, so z1 advances by exactly h per step; v2 and g share tanh(2 z2).
    z1, z2 = z[:, 0], z[:, 1]
    for _ in range(n_steps):
        a1 = np.tanh(2.0 * z2)
        a2 = np.tanh(2.0 * (z2 + 0.6 * h * a1))
        a3 = np.tanh(2.0 * (z2 + 0.6 * h * a2))
        a4 = np.tanh(2.0 * (z2 + 1.2 * h * a3))
        mean_slope = (a1 + 2.0 * a2 + 2.0 * a3 + a4) * (h / 6.0)
        z2 = z2 + 1.2 * mean_slope
        logw = logw + growth_scale * mean_slope
    z = np.column_stack([z1 + t, z2])
    return z, logw


def _flow(z0: np.ndarray, t: float, growth_scale: float):
    """The exact flow map of ``(z, log w)`` from time 0 to ``t`` (what :func:`_integrate` approximates).

    ``sinh(2 z2(t)) = sinh(2 z2(0)) e^a`` with ``a = 2.4 t`` is solved as
    ``2 z2(t) = sign(s) (a + log(|s| + hypot(s, e^-a)))``, ``s = sinh(2 z2(0))``, which stays
    finite where ``s e^a`` itself would overflow (``t`` above about 295).
    """
    z = np.asarray(z0, dtype=np.float64)
    a = 2.4 * t
    s = np.sinh(2.0 * z[:, 1])
    z2 = np.sign(s) * (a + np.log(np.abs(s) + np.hypot(s, np.exp(-a)))) / 2.0
    return np.column_stack([z[:, 0] + t, z2]), growth_scale / 1.2 * (z2 - z[:, 1])


def _simulate_time(rng: np.random.Generator, t: float, n_cells: int, growth_scale: float):
    """Fresh cells observed at time ``t``: true states, from a weighted pool of particles.

    The pool moves by RK4 (:func:`_integrate`) up to :data:`_SIM_RK4_MAX_CELLS` cells at time 0,
    and by the exact flow map (:func:`_flow`) beyond, where RK4 would take minutes.
    """
    move = _integrate if n_cells <= _SIM_RK4_MAX_CELLS else _flow
    z_pool = np.empty((0, 2))
    logw_pool = np.empty(0)
    target = _SIM_POOL * n_cells
    while True:
        z0 = rng.normal(0.0, _SIM_SPREAD, size=(target - len(z_pool), 2))
        z_t, logw = move(z0, t, growth_scale)
        z_pool = np.concatenate([z_pool, z_t])
        logw_pool = np.concatenate([logw_pool, logw])
        w = np.exp(logw_pool)
        n_obs = int(round(n_cells * w.mean()))
        # Grow the pool until it holds many particles per observed cell, so duplicates stay rare.
        if len(z_pool) >= _SIM_POOL * n_obs:
            break
        target = _SIM_POOL * n_obs
    pick = rng.choice(len(z_pool), size=n_obs, replace=True, p=w / w.sum())
    return z_pool[pick]


def simulate(
    n_cells: int = 500,
    times: Sequence[float] = (0.0, 1.0, 2.0, 3.0, 4.0),
    growth_scale: float = 0.5,
    n_genes: int = 50,
    noise: float = 0.02,
    seed: int = 0,
) -> AnnData:
    """Simulate a time course with known velocity and known growth.

    Latent states ``z`` in R^2 start as ``N(0, 0.3^2 I)`` and follow ``v(z) = (1, 1.2 tanh(2 z2))``
    (see :func:`simulated_velocity`) while growing at rate ``growth_scale * tanh(2 z2)`` (see
    :func:`simulated_growth`): the upper branch divides, the lower one dies. Each time point gets
    fresh cells: a pool of particles is integrated (RK4) with their log-weights, the number of
    observed cells is ``round(n_cells * mean weight)`` and cells are resampled (with replacement)
    in proportion to weight, then Gaussian measurement noise is added. Courses of more than
    50,000 cells at time 0 move the pool by the exact flow map instead (RK4 with steps of 0.01
    differs from it by less than 1e-7 up to ``t = 10``): the same distribution, a million cells in
    seconds rather than minutes; smaller courses are as before, value for value.

    Parameters
    ----------
    n_cells
        Number of cells at time 0 (and at every time when ``growth_scale=0``).
    times
        Non-negative time points.
    growth_scale
        Amplitude of the growth rate.
    n_genes
        Number of genes; the latent plane is embedded by a random orthonormal ``(n_genes, 2)`` map.
    noise
        Standard deviation of the isotropic measurement noise on ``z``.
    seed
        Seed of the random generator.

    Returns
    -------
    AnnData with ``X = X_pca @ varm["PCs"].T`` (float32), ``obsm["X_pca"]`` the noisy latent
    states, ``varm["PCs"]`` the orthonormal map (so gene velocity is ``V_pca @ PCs.T``),
    ``obs["time"]``, ``obs["day"]`` (categorical, e.g. ``"day 1.5"``), the truth at each cell's
    noise-free state in ``obsm["velocity_true_pca"]`` and ``obs["growth_true"]``, and
    ``uns["cellflow_dataset"]``.
    """
    times_arr = np.asarray(sorted(float(t) for t in times), dtype=np.float64)
    if len(times_arr) == 0 or np.any(times_arr < 0) or len(np.unique(times_arr)) != len(times_arr):
        raise ValueError(f"`times` must be distinct, non-negative and non-empty; got {list(times)}.")
    if n_genes < 2:
        raise ValueError(f"`n_genes` must be at least 2, got {n_genes}.")
    if n_cells < 1:
        raise ValueError(f"`n_cells` must be positive, got {n_cells}.")
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(times_arr) + 2)]

    q, r = np.linalg.qr(streams[0].normal(size=(n_genes, 2)))
    pcs = (q * np.sign(np.diag(r))).astype(np.float32)

    states = [_simulate_time(streams[k + 2], t, n_cells, growth_scale) for k, t in enumerate(times_arr)]
    counts = [len(s) for s in states]
    z_true = np.concatenate(states) if states else np.empty((0, 2))
    z_obs = (z_true + noise * streams[1].normal(size=z_true.shape)).astype(np.float32)
    time_col = np.repeat(times_arr, counts)

    labels = [f"day {t:g}" for t in times_arr]
    obs = pd.DataFrame(
        {
            "time": time_col,
            "day": pd.Categorical(np.repeat(labels, counts), categories=labels, ordered=True),
            "growth_true": simulated_growth(z_true, growth_scale),
        },
        index=[f"cell_{i}" for i in range(len(z_true))],
    )
    adata = AnnData(
        X=z_obs @ pcs.T,
        obs=obs,
        var=pd.DataFrame(index=[f"gene_{j}" for j in range(n_genes)]),
    )
    adata.obsm["X_pca"] = z_obs
    adata.obsm["velocity_true_pca"] = simulated_velocity(z_true).astype(np.float32)
    adata.varm["PCs"] = pcs
    adata.uns["cellflow_dataset"] = {
        "name": "simulate",
        "source": "cellflow.datasets.simulate",
        "license": "synthetic",
        "velocity": "v(z) = (1, 1.2 tanh(2 z2))",
        "growth": "g(z) = growth_scale tanh(2 z2)",
        "n_cells": int(n_cells),
        "times": [float(t) for t in times_arr],
        "counts": [int(c) for c in counts],
        "growth_scale": float(growth_scale),
        "n_genes": int(n_genes),
        "noise": float(noise),
        "seed": int(seed),
    }
    return adata

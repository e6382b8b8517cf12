"""Tools on AnnData: fit a flow, interpolate populations, benchmark by leaving time points out."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from . import benchmark
from .analysis import ancestors, fate, transitions, trajectories
from .model import CellFlow
from .readers import get_representation, read_time_course


def _basis(use_rep: str) -> str:
    """scVelo-style basis name of a representation: ``"X_pca"`` -> ``"pca"``."""
    return use_rep[2:] if use_rep.startswith("X_") else use_rep


def _claim(adata: AnnData, store: str, key: str, key_added: str, overwrite: bool) -> None:
    """Refuse to overwrite a key that cellflow did not write, unless told to."""
    ours = adata.uns.get(key_added, {}).get("written_keys", [])
    existing = adata.obs.columns if store == "obs" else getattr(adata, store).keys()
    if key in existing and f"{store}/{key}" not in list(ours) and not overwrite:
        raise ValueError(
            f"adata.{store}[{key!r}] already exists and was not written by cellflow; "
            "pass key_added='another_name' or overwrite=True"
        )


def fit(
    adata: AnnData,
    time_key: str = "time",
    use_rep: str = "X_pca",
    method: str = "otcfm",
    *,
    weight_key: str | None = None,
    growth_key: str | None = None,
    time_map: Mapping | None = None,
    key_added: str = "cellflow",
    overwrite: bool = False,
    progress: bool = True,
    **model_kwargs,
) -> CellFlow:
    """Learn a velocity field of a time course and write it into ``adata``.

    Parameters
    ----------
    adata
        Cells of all time points.
    time_key
        ``obs`` column with each cell's time (numbers, or labels such as ``"day 2.5"``).
    use_rep
        ``obsm`` key, ``"X"`` or a layer holding the representation to learn in.
    method
        ``"otcfm"`` (default), ``"sbcfm"``, ``"icfm"``, or ``"wfr"`` (unbalanced, with growth);
        see :class:`cellflow.CellFlow`.
    weight_key
        Optional ``obs`` column of per-cell masses.
    growth_key
        Optional ``obs`` column of prior growth rates (log growth per time unit, e.g. from
        :func:`cellflow.pp.score_growth`): the source marginal of each interval's coupling
        becomes ``mass * exp(rate * dt)``.
    time_map
        Optional mapping of time labels to numbers (stage names).
    key_added
        Prefix of every key written.
    overwrite
        Replace keys of the same name that another tool wrote.
    progress
        Show a progress bar.
    **model_kwargs
        Passed to :class:`cellflow.CellFlow` (``seed``, ``n_steps``, ``device``, ...).

    Returns
    -------
    The trained model. Writes ``obsm["{key_added}_velocity_{basis}"]`` (velocity in the
    representation, per unit of time), ``layers["{key_added}_velocity"]`` (gene space, when
    ``use_rep="X_pca"`` and ``varm["PCs"]`` exist), ``uns["{key_added}_velocity_params"]`` and
    ``uns[key_added]`` (the model as plain arrays: an ``.h5ad`` round trip restores it); for
    methods with growth also ``obs["{key_added}_growth_rate"]`` (``d log m / dt`` per time unit).
    """
    course = read_time_course(adata, time_key, use_rep, weight_key, time_map, growth_key)
    model = CellFlow(method, **model_kwargs).fit(course, progress=progress)
    rep = get_representation(adata, use_rep)
    velocity = model.velocity(rep, course.obs_times).astype(np.float32)
    growth_key_added = f"{key_added}_growth_rate"

    basis = _basis(use_rep)
    obsm_key, layer_key = f"{key_added}_velocity_{basis}", f"{key_added}_velocity"
    written = [f"obsm/{obsm_key}"]
    _claim(adata, "obsm", obsm_key, key_added, overwrite)
    gene_velocity = None
    if use_rep == "X":
        gene_velocity = velocity
    elif use_rep == "X_pca" and "PCs" in adata.varm:
        gene_velocity = velocity @ np.asarray(adata.varm["PCs"], dtype=np.float32).T
    if gene_velocity is not None:
        _claim(adata, "layers", layer_key, key_added, overwrite)
        written.append(f"layers/{layer_key}")
    if model.has_growth:
        _claim(adata, "obs", growth_key_added, key_added, overwrite)
        written.append(f"obs/{growth_key_added}")

    if model.has_growth:
        adata.obs[growth_key_added] = model.growth(rep, course.obs_times)
    adata.obsm[obsm_key] = velocity
    if gene_velocity is not None:
        adata.layers[layer_key] = gene_velocity
    adata.uns[f"{layer_key}_params"] = {"embeddings": [basis]}
    state = model.to_dict()
    state.update(time_key=time_key, use_rep=use_rep, written_keys=np.array(written))
    if time_map is not None:
        state["time_map"] = {str(k): float(v) for k, v in time_map.items()}
    adata.uns[key_added] = state
    return model


def load_model(adata: AnnData, key: str = "cellflow", device: str = "auto") -> CellFlow:
    """Restore the model that :func:`fit` stored in ``adata.uns[key]``."""
    if key not in adata.uns:
        raise KeyError(f"adata.uns[{key!r}] does not exist: run cellflow.tl.fit first (or pass key=...)")
    return CellFlow.from_dict(adata.uns[key], device=device)


def _gene_space(adata: AnnData, positions: np.ndarray, use_rep: str) -> np.ndarray | None:
    """Expression of predicted cells: positions themselves, or PCA loadings plus gene means."""
    if use_rep == "X":
        return positions.astype(np.float32)
    if use_rep == "X_pca" and "PCs" in adata.varm:
        mean = np.asarray(adata.X.mean(axis=0)).ravel() if not adata.isbacked else 0.0
        return (positions @ np.asarray(adata.varm["PCs"]).T + mean).astype(np.float32)
    return None


def interpolate(
    adata: AnnData,
    from_time: float,
    to_time: float,
    *,
    key: str = "cellflow",
    model: CellFlow | None = None,
    solver: str = "dopri5",
    step_size: float | None = None,
) -> AnnData:
    """Push the cells measured at ``from_time`` to any time ``to_time``.

    Parameters
    ----------
    adata
        The AnnData that :func:`fit` wrote into.
    from_time
        A measured time point (its cells are the starting population).
    to_time
        Any real time, between, before or beyond the measured ones.
    key
        Where :func:`fit` stored the model.
    model
        Use this model instead of the stored one.
    solver, step_size
        Integrator (see :func:`cellflow.integration.integrate`); ``step_size`` in time units.

    Returns
    -------
    A new AnnData with one row per starting cell: predicted positions in ``obsm[use_rep]``,
    gene space in ``X`` where PCA loadings exist, ``obs["time"]``, ``obs["cellflow_mass"]``
    (how many cells each row stands for: one at ``from_time``, changed by the growth field of
    unbalanced methods, so that its sum predicts the population size) and ``obs["source_cell"]``.
    """
    if key not in adata.uns:
        raise KeyError(f"adata.uns[{key!r}] does not exist: run cellflow.tl.fit first")
    state = adata.uns[key]
    model = model or CellFlow.from_dict(state)
    use_rep = str(state["use_rep"])
    course = read_time_course(adata, str(state["time_key"]), use_rep, time_map=state.get("time_map"))
    k = course.index_of(from_time)
    positions, mass = model.push(
        course.populations[k], float(from_time), float(to_time), return_mass=True, method=solver, step_size=step_size
    )
    source = adata.obs_names[course.indices[k]]
    obs = pd.DataFrame(
        {"time": float(to_time), "cellflow_mass": mass, "source_cell": np.asarray(source)},
        index=[f"{name}@{float(to_time):g}" for name in source],
    )
    genes = _gene_space(adata, positions, use_rep)
    out = AnnData(
        X=genes if genes is not None else sp.csr_matrix((len(obs), 0), dtype=np.float32),
        obs=obs,
        var=adata.var.copy() if genes is not None and genes.shape[1] == adata.n_vars else None,
    )
    out.obsm[use_rep if use_rep != "X" else "X_cellflow"] = positions.astype(np.float32)
    out.uns["cellflow_interpolation"] = {"from_time": float(from_time), "to_time": float(to_time), "key": key}
    return out


def leave_one_out(
    adata: AnnData,
    time_key: str = "time",
    use_rep: str = "X_pca",
    method: str | Sequence[str] = "otcfm",
    *,
    seeds: Sequence[int] = (0, 1, 2),
    baseline: bool = True,
    time_map: Mapping | None = None,
    progress: bool = True,
    **model_kwargs,
) -> pd.DataFrame:
    """Leave-one-time-point-out benchmark (DESIGN.md section 3).

    For every inner time point ``t_k``: fit on the other time points, push the cells of
    ``t_{k-1}`` to ``t_k`` and compare with the held-out cells.

    Parameters
    ----------
    adata, time_key, use_rep, time_map
        The time course, as for :func:`fit`.
    method
        One method name or several.
    seeds
        Seeds to repeat every fit with.
    baseline
        Add the exact-OT displacement interpolation between ``t_{k-1}`` and ``t_{k+1}``.
    progress
        Show progress bars.
    **model_kwargs
        Passed to :class:`cellflow.CellFlow`.

    Returns
    -------
    One row per method, held-out time and seed: ``w1``, ``w2``, ``mmd`` (see
    :mod:`cellflow.metrics`; predicted cells weighted by their normalised mass),
    ``mass_error`` (relative error of the predicted population size, DESIGN.md section 3),
    ``n_predicted`` (points in the prediction: the cells of ``t_{k-1}`` for a flow, every pair
    of the plan for the interpolation, which splits a cell whose mass the plan splits) and
    ``seconds`` (fit and prediction).
    """
    course = read_time_course(adata, time_key, use_rep, time_map=time_map)
    methods = [method] if isinstance(method, str) else list(method)
    return benchmark.leave_one_out(course, methods, seeds=seeds, baseline=baseline, progress=progress, **model_kwargs)

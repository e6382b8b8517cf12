"""Fit a flow on an AnnData time course, load it back, interpolate populations, leave time points out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .. import _distributed as distributed
from .._checks import choice, integer
from .._utils import copy_option
from ..benchmark import _protocol as benchmark
from ..io._readers import TimeCourse, read_time_course
from ..model import CellFlow, Ensemble
from . import _keys as keys
from ._expression import gene_space, sparse_gene_velocity, velocity_genes
from ._fitted import _stored_ensemble, _stored_model
from ._uncertainty import GROWTH_SUMMARIES, SUMMARIES, ensemble_summaries

_GENE_BLOCK_VALUES = 2**22  # entries of an output computed (gene space) or checked (finite) at a time


def _basis(use_rep: str) -> str:
    """scVelo-style basis name of a representation: ``"X_pca"`` -> ``"pca"``."""
    return use_rep[2:] if use_rep.startswith("X_") else use_rep


def _finite(values: np.ndarray) -> bool:
    """Whether every entry of ``values`` is finite, checked in blocks of rows (no full-size mask)."""
    rows = max(1, _GENE_BLOCK_VALUES // max(int(np.prod(values.shape[1:])), 1))
    return all(np.isfinite(values[start : start + rows]).all() for start in range(0, len(values), rows))


def _check_finite(use_rep: str, **outputs) -> None:
    """Raise a ``ValueError`` when an output of a trained model has NaN or inf values."""
    for name, values in outputs.items():
        values = values.data if sp.issparse(values) else values
        if values is None or _finite(values):
            continue
        raise ValueError(
            f"training diverged: the {name.replace('_', ' ')} has NaN or inf values, so nothing was written; "
            f"fit again with a lower lr= (e.g. lr=1e-4), and check that use_rep={use_rep!r} is scaled "
            "sensibly (no extreme values)"
        )


def _evaluate_cells(model: CellFlow, course: TimeCourse, n_obs: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Velocity (float32) and growth rate of every cell at its own time point, in the AnnData's row order.

    Evaluated one time point at a time, straight from the populations (no copy of the
    representation; :meth:`CellFlow.evaluate` bounds its own memory by evaluating in chunks).
    """
    velocity = np.empty((n_obs, course.n_dims), dtype=np.float32)
    growth = np.empty(n_obs) if model.has_growth else None
    for t, rows, cells in zip(course.times, course.indices, course.populations):
        velocity[rows], g = model.evaluate(cells, t)
        if growth is not None:
            growth[rows] = g
    return velocity, growth


@copy_option
def fit(
    adata: AnnData,
    time_key: str = "time",
    use_rep: str = "X_pca",
    method: str = "otcfm",
    *,
    weight_key: str | None = None,
    growth_key: str | None = None,
    population_size: Mapping | str | None = None,
    time_unit: str | None = None,
    growth_unit: str | None = None,
    time_map: Mapping | None = None,
    gene_velocity: str = "representation",
    n_fits: int = 1,
    interval: float = 0.9,
    key_added: str = "cellflow",
    overwrite: bool = False,
    progress: bool | None = None,
    **model_kwargs,
) -> CellFlow | AnnData:
    """Learn a velocity field of a time course and write it into ``adata``.

    Parameters
    ----------
    adata
        Cells of all time points.
    time_key
        ``obs`` column with each cell's time: numbers, or labels that hold one number with nothing or
        a unit of time around it (``"day 2.5"``, ``"12h"``, ``"E10.5"``, ``"P7"``); other labels
        (``"8C"``, cells per embryo) are refused unless ``time_map`` reads them.
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
        becomes ``mass * exp(rate * dt)``. Without ``population_size`` the prior also sets how much the
        population grows over each interval (the next time point's masses are scaled to that total), so a
        constant prior of ``log 2`` per unit time doubles it whatever the number of cells sequenced.
    population_size
        Optional known population size of each time point (relative sizes matter): ``{time: size}`` or an
        ``obs`` column. The cells of a time point share its size as their mass, so the learned growth and
        the predicted sizes (``obs["{key}_mass"]`` of :func:`interpolate`) follow it rather than the
        sampling depth; see :func:`cellflow.io.read_time_course`.
    time_unit, growth_unit
        Unit of ``time_key`` and of the ``growth_key`` rates (``"hour"``, ``"day"``, ``"week"``, ...), when
        they differ: e.g. ``growth_unit="day", time_unit="hour"`` divides rates per day by 24. The learned
        ``growth_rate`` is always per unit of the time column.
    time_map
        Optional mapping of time labels to numbers (stage names, cells per embryo, mixed units).
    gene_velocity
        The gene-space layer ``layers["{key_added}_velocity"]`` of a fit in ``use_rep="X_pca"`` with
        ``varm["PCs"]``: ``"representation"`` (default) the velocity through the loadings for the genes
        the PCA describes (a nonzero loading; e.g. the highly variable genes), stored sparse, its other
        columns empty; ``"all"`` a dense layer of every gene (zero where the loadings are); ``"none"``, no
        layer (the velocity in gene space is always ``obsm["{key_added}_velocity_pca"] @ varm["PCs"].T``).
        ``var["{key_added}_velocity_genes"]`` marks the genes the PCA describes (scVelo reads it). With
        ``use_rep="X"`` the representation is the genes: the layer is the velocity itself (not with
        ``"none"``).
    n_fits
        With ``n_fits=K`` (at least 2), also fit ``K`` members on bootstrap resamples of each time point's cells,
        each with its own seed (:class:`cellflow.model.Ensemble`), and write how much they disagree, cell by cell
        (see Returns). The written velocity and growth stay those of the fit on all cells. Each member chooses its
        own ``delta`` and entropy rate from its resample (when not given): sharing the full fit's choice narrowed
        the intervals and cut their coverage of a known growth rate from 66% to 46% (``tests/test_uncertainty.py``).
    interval
        The level of the intervals drawn from the members (default 0.9, a 90% interval).
    key_added
        Prefix of every key written, and the ``uns`` key of the fit.
    overwrite
        Replace keys of the same name that another tool (or another ``key_added``) wrote.
    progress
        Show a progress bar: ``True`` or ``False``; ``None`` (default) shows it unless
        ``scanpy.settings.verbosity`` is 0 (:func:`cellflow._utils.show_progress`).
    copy
        Fit on a copy of ``adata``, write into the copy and return it (``adata`` is left as it
        was); the model is then ``cellflow.tl.load_model(returned_copy, key_added)``.
    **model_kwargs
        Passed to :class:`cellflow.CellFlow` (``seed``, ``n_steps``, ``device``, ...), e.g.
        ``field="gradient"`` (the velocity as the gradient of a learned potential) or
        ``reflow=k`` (``k`` rounds of rectified flow after the fit, which straighten the paths).

    Returns
    -------
    The trained model, or with ``copy=True`` the AnnData written into. Writes
    ``obsm["{key_added}_velocity_{basis}"]`` (velocity in the representation, per unit of time),
    ``layers["{key_added}_velocity"]`` (gene space, see ``gene_velocity``) and
    ``var["{key_added}_velocity_genes"]`` (when ``varm["PCs"]`` exist), ``uns["{key_added}_velocity_params"]``
    and ``uns[key_added]`` (the model as plain arrays, with ``written_keys``, the keys written:
    an ``.h5ad`` round trip restores both; ``time_reading``, how the time labels were read: each
    label, its time and the unit detected, see :func:`cellflow.io.read_times`, which the model's
    printed summary shows); for methods with growth also
    ``obs["{key_added}_growth_rate"]`` (``d log m / dt`` per time unit). With ``n_fits`` also
    ``obs["{key_added}_velocity_spread"]`` (root mean square distance of the members' velocities from
    their mean), ``obs["{key_added}_velocity_agreement"]`` (mean cosine of each member's velocity to
    the mean), ``obs["{key_added}_on_data_share"]`` (share of members whose push of the cell to the
    next time point, the one before for the last, lands on the measured cells) and, with growth,
    ``obs["{key_added}_growth_rate_low"]`` and ``obs["{key_added}_growth_rate_high"]`` (the central
    ``interval`` of the members' growth rates), and the members in ``uns[key_added]["ensemble"]``
    (:func:`load_ensemble`). Every key is checked
    before training, and nothing is written when a check fails. A refit of the same
    ``key_added`` first removes what the earlier fit, and the analyses of its model
    (:func:`fate`, :func:`ancestors`), wrote.

    Under ``torchrun`` every process runs this same call on its own AnnData and trains the same
    model together with the others (:mod:`cellflow._distributed`); each writes into its own
    ``adata``, and only rank 0 shows progress.
    """
    gene_velocity = choice("gene_velocity", gene_velocity, ["representation", "all", "none"])
    n_fits = integer("n_fits", n_fits)
    if not 0 < interval < 1:
        raise ValueError(f"interval={interval!r} must lie between 0 and 1 (e.g. 0.9 for a 90% interval)")
    model = CellFlow(method, **model_kwargs)
    course = read_time_course(adata, time_key, use_rep, weight_key, time_map, growth_key,
                              population_size=population_size, time_unit=time_unit, growth_unit=growth_unit)
    loadings = keys.pca_loadings(adata, use_rep, course.n_dims)
    basis = _basis(use_rep)
    obsm_key, layer_key = f"{key_added}_velocity_{basis}", f"{key_added}_velocity"
    params_key, growth_key_added = f"{layer_key}_params", f"{key_added}_growth_rate"
    written = [f"obsm/{obsm_key}", f"uns/{params_key}"]
    if (use_rep == "X" or loadings is not None) and gene_velocity != "none":
        written.append(f"layers/{layer_key}")
    if loadings is not None:
        written.append(f"var/{layer_key}_genes")
    if model.has_growth:
        written.append(f"obs/{growth_key_added}")
    if n_fits > 1:
        names = [*SUMMARIES, *(GROWTH_SUMMARIES if model.has_growth else ())]
        written += [f"obs/{key_added}_{name}" for name in names]
    keys.claim(adata, key_added, [*written, f"uns/{key_added}"], overwrite)

    # under torchrun rank 0 alone shows progress
    model.fit(course, progress=progress if distributed.is_main() else False)
    velocity, growth = _evaluate_cells(model, course, adata.n_obs)
    ensemble = None
    if n_fits > 1:
        settings = {k: v for k, v in model_kwargs.items() if k != "seed"}
        ensemble = Ensemble(method, n_fits, seed=int(model.params["seed"]), **settings)
        ensemble.fit(course, progress=progress if distributed.is_main() else False)
        summaries = ensemble_summaries(ensemble, course, adata.n_obs, interval)
    genes = None if loadings is None else velocity_genes(loadings)
    if f"layers/{layer_key}" not in written:
        layer = None
    elif gene_velocity == "representation" and genes is not None:
        layer = sparse_gene_velocity(velocity, loadings, genes)
    else:
        layer = gene_space(velocity, use_rep, loadings)
    _check_finite(use_rep, velocity=velocity, gene_space_velocity=layer, growth_rate=growth)

    keys.remove_written(adata, key_added)
    adata.obsm[obsm_key] = velocity
    adata.uns[params_key] = {"embeddings": [basis]}
    if layer is not None:
        adata.layers[layer_key] = layer
    if genes is not None:
        adata.var[f"{layer_key}_genes"] = genes
    if growth is not None:
        adata.obs[growth_key_added] = growth
    if ensemble is not None:
        for name, values in summaries.items():
            adata.obs[f"{key_added}_{name}"] = values
    state = model.to_dict()
    if ensemble is not None:
        state["ensemble"] = {**ensemble.to_dict(), "interval": float(interval)}
    state.update(time_key=time_key, use_rep=use_rep)
    if time_map is not None:
        state["time_map"] = {str(k): float(v) for k, v in time_map.items()}
    if course.time_reading is not None:
        state["time_reading"] = course.time_reading.as_dict()
        model.time_reading = state["time_reading"]
    adata.uns[key_added] = state
    keys.record(adata, key_added, written)
    return model


def load_model(adata: AnnData, key: str = "cellflow", device: str = "auto") -> CellFlow:
    """Restore the model that :func:`fit` stored in ``adata.uns[key]``.

    Parameters
    ----------
    adata
        The AnnData that :func:`fit` wrote into (in memory, backed, or read back from ``.h5ad``).
    key
        The ``key_added`` of the fit.
    device
        Where to put the network: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ...

    Returns
    -------
    The trained :class:`cellflow.CellFlow`; nothing is written.
    """
    return _stored_model(adata, key, device)


def load_ensemble(adata: AnnData, key: str = "cellflow", device: str = "auto") -> Ensemble:
    """Restore the bootstrap ensemble that :func:`fit` stored with ``n_fits`` in ``adata.uns[key]["ensemble"]``.

    Parameters
    ----------
    adata
        The AnnData that :func:`fit` wrote into (in memory, backed, or read back from ``.h5ad``).
    key
        The ``key_added`` of the fit.
    device
        Where to put the networks.

    Returns
    -------
    The :class:`cellflow.model.Ensemble` of the fit's members; nothing is written.
    """
    return _stored_ensemble(adata, key, device)


def leave_one_out(
    adata: AnnData,
    time_key: str = "time",
    use_rep: str | None = None,
    method: str | Sequence[str] = "otcfm",
    *,
    seeds: Sequence[int] = (0, 1, 2),
    baseline: bool = True,
    n_pcs: int | None = None,
    time_map: Mapping | None = None,
    progress: bool | None = None,
    **model_kwargs,
) -> pd.DataFrame:
    """Leave-one-time-point-out benchmark.

    For every inner time point ``t_k``: fit on the other time points, push each cell of
    ``t_{k-1}`` once to ``t_k`` (one predicted point per cell, for every method) and compare
    with the held-out cells.

    Parameters
    ----------
    adata, time_key, time_map
        The time course, as for :func:`fit`.
    use_rep
        The representation, as for :func:`fit` (default ``"X_pca"``); with ``n_pcs``, the
        coordinates a PCA reduces (default ``"X"``).
    method
        One method name or several.
    seeds
        Seeds to repeat every fit (and the drawn baseline) with.
    baseline
        Add the no-learning baselines from the exact OT plan between ``t_{k-1}`` and
        ``t_{k+1}`` (:data:`cellflow.benchmark.BASELINES`): ``ot_map``, each cell moved toward the
        mean of its partners; ``ot_draw``, each cell moved toward one partner drawn from its own
        row of the plan; ``ot_interpolation``, every pair of the plan as a weighted point (more
        points than cells where the plan splits a cell: a reference, not one point per cell).
    n_pcs
        Fit a PCA of ``n_pcs`` components on the training time points of every fold, so that
        the held-out cells take no part in the representation they are scored in (a PCA of the
        whole ``adata`` has seen them).
    progress
        Show progress bars: ``True`` or ``False``; ``None`` (default) shows them unless
        ``scanpy.settings.verbosity`` is 0 (:func:`cellflow._utils.show_progress`).
    **model_kwargs
        Passed to :class:`cellflow.CellFlow`.

    Returns
    -------
    One row per method, held-out time and seed: ``w1``, ``w2``, ``mmd`` (see
    :mod:`cellflow.metrics`; predicted cells weighted by their normalised mass when the method
    has growth, equally otherwise; the MMD's RBF widths, ``mmd_bandwidths``, are 0.5, 1 and 2
    times the median distance between the held-out cells), ``mass_error`` (relative error of the
    predicted population size, ``|M_hat - n_k / n_{k-1}| / (n_k / n_{k-1})``), ``n_predicted``
    (points in the prediction: the cells of ``t_{k-1}``, except for ``ot_interpolation``),
    ``n_steps`` (training steps), ``fit_seconds``, ``seconds`` (fit and prediction) and
    ``pca_explained`` (with ``n_pcs``: the training variance the fold's PCA keeps).
    """
    use_rep = use_rep or ("X" if n_pcs is not None else "X_pca")
    course = read_time_course(adata, time_key, use_rep, time_map=time_map)
    methods = [method] if isinstance(method, str) else list(method)
    return benchmark.leave_one_out(course, methods, seeds=seeds, baseline=baseline, n_pcs=n_pcs, progress=progress,
                                   **model_kwargs)

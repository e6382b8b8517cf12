"""Fate drivers: genes whose expression predicts a fate."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._checks import choice, number
from ..io import parse_times
from . import _keys as keys
from ._genes import _expression, _fate_column, _gene_columns, _select

_BLOCK_VALUES = 2**22  # entries of expression densified at a time when correlating genes


def _correlations(block: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``block`` with ``target`` (NaN for a constant column)."""
    centred = block - block.mean(axis=0)
    norms = np.sqrt((centred**2).sum(axis=0)) * np.sqrt((target**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (target @ centred) / norms
    return np.clip(np.where(norms > 0, r, np.nan), -1.0, 1.0)


def fate_drivers(
    adata: AnnData,
    fate,
    *,
    fate_key: str | None = None,
    time: float | None = None,
    genes: Sequence[str] | None = None,
    layer: str | None = None,
    method: str = "pearson",
    confidence: float = 0.95,
    key: str = "cellflow",
) -> pd.DataFrame:
    """Genes ranked by how well their expression predicts a fate.

    Over the cells with a probability of ``fate`` (those of the source time point of
    :func:`cellflow.tl.fate`), each gene's expression is correlated with that probability.
    Nothing is written into ``adata``; a sparse ``X`` is densified a block of genes at a time.

    Parameters
    ----------
    adata
        The AnnData with the fate table.
    fate
        A column of the fate table (a group of the later time point).
    fate_key
        ``obsm`` key of the table; default ``"{key}_fate"``.
    time
        Use only the cells of this measured time point (read from the fit's time key).
    genes
        Genes to test; default every gene of ``var_names``.
    layer
        Layer of expression to read; default ``X``.
    method
        ``"pearson"`` or ``"spearman"`` (Pearson's on ranks, ties averaged).
    confidence
        Level of the confidence interval of the correlation: Fisher's ``arctanh`` transform with
        standard error ``1 / sqrt(n - 3)`` for Pearson, ``sqrt((1 + r^2 / 2) / (n - 3))`` for
        Spearman (Bonett and Wright).
    key
        ``key_added`` of the fit, for the default ``fate_key`` and to read times.

    Returns
    -------
    One row per gene (index ``gene``), highest correlation first: ``correlation``, ``pvalue``
    (two-sided, from ``t = r sqrt((n - 2) / (1 - r^2))`` with ``n - 2`` degrees of freedom),
    ``qvalue`` (Benjamini-Hochberg over the genes tested, by
    ``scipy.stats.false_discovery_control``), ``ci_low`` and ``ci_high``. Genes constant over
    the cells get NaN and come last.
    """
    from scipy import stats  # imported on use: scipy.stats is slow to import

    method = choice("method", method, ["pearson", "spearman"])
    confidence = number("confidence", confidence, minimum=0.0, maximum=1.0, strict=True)
    fate_key = fate_key or f"{key}_fate"
    probability = _fate_column(adata, fate_key, fate)
    rows = np.flatnonzero(np.isfinite(probability))
    if time is not None:
        state = keys.fit_state(adata, key)
        time_key = str(state["time_key"])
        obs_times = parse_times(adata.obs[time_key], time_key, state.get("time_map"))
        rows = rows[np.isclose(obs_times[rows], number("time", time))]
    if rows.size < 4:
        where = "" if time is None else f" at time={time!r}"
        raise ValueError(f"{rows.size} cell(s){where} have a probability of fate={fate!r}; at least 4 are needed")
    target = probability[rows]
    if np.ptp(target) == 0:
        raise ValueError(f"every cell has the same probability of fate={fate!r}: nothing to correlate with")
    if method == "spearman":
        target = stats.rankdata(target)
    target = target - target.mean()
    names, columns = _gene_columns(adata, adata.var_names if genes is None else genes)
    expression = _select(_expression(adata, layer), rows, columns)
    if sp.issparse(expression):
        expression = expression.tocsc()
    r = np.empty(len(names))
    width = max(1, _BLOCK_VALUES // rows.size)
    for start in range(0, len(names), width):
        block = expression[:, start : start + width]
        block = block.toarray() if sp.issparse(block) else block
        block = stats.rankdata(block, axis=0) if method == "spearman" else block
        r[start : start + width] = _correlations(block, target)

    n = rows.size
    with np.errstate(divide="ignore", invalid="ignore"):
        t = r * np.sqrt((n - 2) / (1.0 - r**2))
        se = np.sqrt((1.0 + (r**2 / 2 if method == "spearman" else 0.0)) / (n - 3))
        half = stats.norm.ppf(0.5 + confidence / 2) * se
        pvalue = 2.0 * stats.t.sf(np.abs(t), n - 2)
        z = np.arctanh(r)
    tested = np.isfinite(pvalue)
    qvalue = np.full(len(names), np.nan)
    if tested.any():
        qvalue[tested] = stats.false_discovery_control(pvalue[tested])
    table = pd.DataFrame(
        {"correlation": r, "pvalue": pvalue, "qvalue": qvalue,
         "ci_low": np.tanh(z - half), "ci_high": np.tanh(z + half)},
        index=pd.Index(names, name="gene"),
    )
    return table.sort_values("correlation", ascending=False, na_position="last", kind="stable")

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
from ._expression import expression_matrix, select
from ._genes import _fate_column, _gene_columns

_BLOCK_VALUES = 2**22  # entries of expression densified at a time when correlating genes


def _centre(values: np.ndarray, codes: np.ndarray | None) -> np.ndarray:
    """``values`` (cells x columns, or cells) less their mean, or less their group's mean when ``codes`` are given."""
    if codes is None:
        return values - values.mean(axis=0)
    counts = np.bincount(codes)
    indicator = sp.csr_matrix((np.ones(codes.size), (codes, np.arange(codes.size))), shape=(counts.size, codes.size))
    means = (indicator @ values) / (counts[:, None] if values.ndim == 2 else counts)
    return values - means[codes]


def _correlations(block: np.ndarray, target: np.ndarray, codes: np.ndarray | None) -> np.ndarray:
    """Pearson correlation of each column of ``block`` with the centred ``target``, within the groups ``codes``
    when given (NaN for a column that is constant, within each group).
    """
    centred = _centre(block, codes)
    spread = np.abs(centred).max(axis=0) > 1e-12 * np.abs(block).max(axis=0)
    norms = np.sqrt((centred**2).sum(axis=0)) * np.sqrt((target**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (target @ centred) / norms
    return np.clip(np.where(spread & (norms > 0), r, np.nan), -1.0, 1.0)


def _groups(adata: AnnData, rows: np.ndarray, groupby, restrict_to, regress_out: bool):
    """``rows`` within the groups ``restrict_to`` of ``obs[groupby]``, and the group of each (``None``: no
    regression), with errors naming the problem.
    """
    if groupby is None:
        if restrict_to is not None or regress_out:
            raise ValueError("restrict_to= and regress_out= need groupby= an obs column of labels (e.g. cell types)")
        return rows, None
    if restrict_to is None and not regress_out:
        raise ValueError(
            f"groupby={groupby!r} is used only with restrict_to= (labels of that column to keep) or regress_out=True"
        )
    if not isinstance(groupby, str) or groupby not in adata.obs:
        raise KeyError(f"groupby={groupby!r} is not a column of adata.obs (columns: {list(adata.obs.columns)})")
    column = adata.obs[groupby]
    labels = column.astype(str).to_numpy()
    labelled = column.notna().to_numpy()
    keep = labelled[rows]
    if restrict_to is not None:
        wanted = [restrict_to] if isinstance(restrict_to, str) else [str(w) for w in restrict_to]
        if not wanted:
            raise ValueError(f"restrict_to is empty: name at least one label of obs[{groupby!r}]")
        known = sorted({str(v) for v in column.dropna().unique()})
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise ValueError(
                f"restrict_to: {unknown} {'is' if len(unknown) == 1 else 'are'} not a label of obs[{groupby!r}] "
                f"(labels: {known[:20]})"
            )
        keep &= np.isin(labels[rows], wanted)
    rows = rows[keep]
    if not regress_out:
        return rows, None
    _, codes = np.unique(labels[rows], return_inverse=True)
    return rows, codes.astype(np.intp)


def fate_drivers(
    adata: AnnData,
    fate,
    *,
    fate_key: str | None = None,
    time: float | None = None,
    groupby: str | None = None,
    restrict_to: str | Sequence[str] | None = None,
    regress_out: bool = False,
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

    Over all cells of the start time, the genes that best predict a fate are often markers of the
    cell type that already *is* that fate, not genes that drive a choice. Two options remove the
    identity: ``restrict_to`` keeps only the cells of chosen groups (CellRank's ``cluster_key`` and
    ``clusters`` of ``compute_lineage_drivers``), typically the progenitors that are still
    undecided; ``regress_out=True`` correlates within the groups of ``groupby`` (a partial
    correlation: each group's mean is subtracted from the expression and from the probability, and
    one degree of freedom is spent per group). Both may be given: e.g.
    ``groupby="cell_type", restrict_to="progenitor"`` or ``groupby="cell_type", regress_out=True``.

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
    groupby
        ``obs`` column of categorical labels (e.g. cell types) that ``restrict_to`` and
        ``regress_out`` read; cells without a label are left out.
    restrict_to
        A label of ``groupby``, or a list of them: correlate over the cells of these groups only.
    regress_out
        Correlate within the groups of ``groupby`` (after ``restrict_to``): expression and
        probability are centred on their group's mean, so a gene that only marks a group, or a
        fate that only one group reaches, gives no correlation.
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
    (two-sided, from ``t = r sqrt(d / (1 - r^2))`` with ``d = n - 2`` degrees of freedom for
    ``n`` cells, ``d = n - g - 1`` with ``regress_out`` over ``g`` groups; the standard error of
    the interval is computed on ``d - 1`` in place of ``n - 3``), ``qvalue`` (Benjamini-Hochberg
    over the genes tested, by ``scipy.stats.false_discovery_control``), ``ci_low`` and
    ``ci_high``. Genes constant over the cells (within each group, with ``regress_out``) get NaN
    and come last. ``attrs["n_cells"]`` and ``attrs["degrees_of_freedom"]`` give ``n`` and ``d``.
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
    rows, codes = _groups(adata, rows, groupby, restrict_to, bool(regress_out))
    n, n_groups = rows.size, 1 if codes is None else int(codes.max(initial=-1)) + 1
    if n < n_groups + 3:
        where = "" if time is None else f" at time={time!r}"
        where += "" if restrict_to is None else f" in restrict_to={restrict_to!r} of obs[{groupby!r}]"
        where += "" if codes is None else f" (with a label of obs[{groupby!r}], in {n_groups} group(s))"
        raise ValueError(
            f"{n} cell(s){where} have a probability of fate={fate!r}; at least {max(n_groups, 1) + 3} are needed"
        )
    target = probability[rows]
    if method == "spearman":
        target = stats.rankdata(target)
    target = _centre(target, codes)
    if not (np.abs(target) > 1e-12 * np.abs(probability[rows]).max()).any():
        within = "" if codes is None else f" within each group of obs[{groupby!r}]"
        raise ValueError(f"every cell has the same probability of fate={fate!r}{within}: nothing to correlate with")
    names, columns = _gene_columns(adata, adata.var_names if genes is None else genes)
    expression = select(expression_matrix(adata, layer), rows, columns)
    if sp.issparse(expression):
        expression = expression.tocsc()
    r = np.empty(len(names))
    width = max(1, _BLOCK_VALUES // rows.size)
    for start in range(0, len(names), width):
        block = expression[:, start : start + width]
        block = block.toarray() if sp.issparse(block) else block
        block = stats.rankdata(block, axis=0) if method == "spearman" else block
        r[start : start + width] = _correlations(block, target, codes)

    dof = n - 1 - n_groups  # n - 2 without groups; one more spent on each group's mean
    with np.errstate(divide="ignore", invalid="ignore"):
        t = r * np.sqrt(dof / (1.0 - r**2))
        se = np.sqrt((1.0 + (r**2 / 2 if method == "spearman" else 0.0)) / (dof - 1))
        half = stats.norm.ppf(0.5 + confidence / 2) * se
        pvalue = 2.0 * stats.t.sf(np.abs(t), dof)
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
    table = table.sort_values("correlation", ascending=False, na_position="last", kind="stable")
    table.attrs.update(n_cells=int(n), degrees_of_freedom=int(dof))
    return table

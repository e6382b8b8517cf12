"""Expression of predicted cells for every gene, read off the measured cells near them.

The rule (``expression="neighbors"`` of :func:`cellflow.tl.interpolate` and
:func:`cellflow.tl.gene_trends`): a predicted cell follows the flow's path from its starting cell;
at a measured time point its expression is the neighbour-weighted mean expression of the
``n_neighbors`` real cells measured there nearest to where its path passes (weights as in
:mod:`cellflow.tl`); between two measured time points ``t_a < t < t_b`` it is
``(1 - s) e_a + s e_b`` with ``s = (t - t_a) / (t_b - t_a)``, ``e_a`` and ``e_b`` the readings at
``t_a`` and ``t_b``; before the first (after the last) time point it is the reading at the first
(last). So a held-out or in-between time is read where the path meets measured cells, not among
cells far from the predicted position. Only measured expression
is reported, for every gene, whether or not the representation describes it; a convex
combination of measured values, it is non-negative where the input is, and sparse input gives
sparse output.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from ._fitted import neighbor_weights

_MEAN_CHUNK_VALUES = 2**22  # entries of X read at a time when averaging the genes
_GENE_BLOCK_VALUES = 2**22  # entries of an output computed (gene space) at a time


def expression_matrix(adata: AnnData, layer: str | None):
    """``X``, or the layer ``layer``, with a clear error when the layer is missing."""
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise KeyError(f"layer={layer!r} is not a layer of adata (layers: {list(adata.layers.keys())})")
    return adata.layers[layer]


def is_sparse(matrix) -> bool:
    """Whether ``matrix`` is sparse: a SciPy matrix, or a sparse dataset of a backed AnnData."""
    return sp.issparse(matrix) or getattr(matrix, "format", None) in ("csr", "csc")


def select(matrix, rows: np.ndarray, columns: np.ndarray | None = None, dtype=np.float64):
    """``matrix[rows][:, columns]`` (every column when ``columns`` is None): CSR when ``matrix`` is sparse."""
    if is_sparse(matrix):
        part = matrix[rows]
        return sp.csr_matrix(part if columns is None else part[:, columns], dtype=dtype)
    if columns is None:
        return np.asarray(matrix[rows], dtype=dtype)
    return np.asarray(matrix[np.ix_(rows, columns)], dtype=dtype)


def brackets(t: float, measured: np.ndarray) -> list[tuple[int, float]]:
    """The measured time points read at time ``t`` and their shares (see the module's notes)."""
    hits = np.flatnonzero(np.isclose(measured, t))
    if hits.size:
        return [(int(hits[0]), 1.0)]
    if t < measured[0]:
        return [(0, 1.0)]
    if t > measured[-1]:
        return [(len(measured) - 1, 1.0)]
    later = int(np.searchsorted(measured, t))
    share = (t - measured[later - 1]) / (measured[later] - measured[later - 1])
    return [(later - 1, 1.0 - share), (later, share)]


def _averaging(points: np.ndarray, reference: np.ndarray, n_neighbors: int) -> sp.csr_matrix:
    """``(points, reference cells)`` sparse matrix whose rows are the neighbour weights of each point."""
    index, weights = neighbor_weights(points, reference, n_neighbors)
    n = len(points)
    return sp.csr_matrix((weights.ravel(), index.ravel(), np.arange(n + 1) * index.shape[1]),
                         shape=(n, len(reference)))


def neighbor_readout(course, measured_positions: np.ndarray, grid: np.ndarray, reference: list, n_neighbors: int
                     ) -> list[np.ndarray]:
    """Dense expression at every time of ``grid`` of cells whose paths pass ``measured_positions``.

    ``measured_positions[k]`` ``(cells, d)`` is where the cells' paths are at measured time point
    ``k``; ``reference[k]`` the expression of that time point's cells (rows as in
    ``course.populations[k]``). Each time point is read once and the readings blended for every
    grid time.
    """
    plan = [brackets(t, course.times) for t in grid]
    readings = {}
    for k in sorted({k for pairs in plan for k, _ in pairs}):
        values = _averaging(measured_positions[k], course.populations[k], n_neighbors) @ reference[k]
        readings[k] = values.toarray() if sp.issparse(values) else np.asarray(values)
    return [sum(share * readings[k] for k, share in pairs) for pairs in plan]


def expression_at(course, path_at, t: float, matrix, n_neighbors: int):
    """Expression of every gene of predicted cells at time ``t``.

    ``path_at(time)`` gives the cells' positions ``(cells, d)`` at a measured time; ``matrix`` is
    the AnnData's expression (all cells, every gene), of which only the rows of the measured time
    points around ``t`` are read. Returns float32, CSR when ``matrix`` is sparse.
    """
    total = None
    for k, share in brackets(t, course.times):
        averaging = _averaging(path_at(float(course.times[k])), course.populations[k], n_neighbors)
        values = averaging @ select(matrix, course.indices[k], dtype=np.float32)
        values = (values * np.float32(share)).astype(np.float32)
        total = values if total is None else total + values
    return sp.csr_matrix(total) if is_sparse(matrix) else np.asarray(total, dtype=np.float32)


# -- gene space through the PCA loadings ------------------------------------------------------
def gene_space(values: np.ndarray, use_rep: str, loadings: np.ndarray | None) -> np.ndarray | None:
    """Rows of the representation in gene space: as they are for ``"X"``, through the PCA loadings, or ``None``.

    Computed in blocks of rows into one preallocated float32 array, so the only full-size
    array is the result.
    """
    if use_rep != "X" and loadings is None:
        return None
    n_genes = values.shape[1] if loadings is None else loadings.shape[0]
    genes = np.empty((len(values), n_genes), dtype=np.float32)
    rows = max(1, _GENE_BLOCK_VALUES // max(n_genes, 1))
    for start in range(0, len(values), rows):
        block = values[start : start + rows]
        genes[start : start + rows] = block if loadings is None else block @ loadings.T
    return genes


def velocity_genes(loadings: np.ndarray) -> np.ndarray:
    """Genes the representation describes: those with a nonzero PCA loading."""
    return np.any(loadings != 0, axis=1)


def sparse_gene_velocity(velocity: np.ndarray, loadings: np.ndarray, genes: np.ndarray) -> sp.csr_matrix:
    """Velocity through the PCA loadings for the columns ``genes`` (a mask) only, as CSR, block by block."""
    columns = np.flatnonzero(genes).astype(np.int32)
    n, width = len(velocity), columns.size
    data = np.empty(n * width, dtype=np.float32)
    rows = max(1, _GENE_BLOCK_VALUES // max(width, 1))
    for start in range(0, n, rows):
        block = velocity[start : start + rows] @ loadings[columns].T
        data[start * width : start * width + block.size] = block.ravel()
    indptr = np.arange(n + 1, dtype=np.int64) * width
    return sp.csr_matrix((data, np.tile(columns, n), indptr), shape=(n, len(loadings)))


def gene_means(adata: AnnData) -> np.ndarray:
    """Mean of every gene over the cells, read in blocks of rows (so a backed ``X`` stays on disk)."""
    rows = max(1, _MEAN_CHUNK_VALUES // max(adata.n_vars, 1))
    total = np.zeros(adata.n_vars)
    for start in range(0, adata.n_obs, rows):
        total += np.asarray(adata.X[start : start + rows].sum(axis=0, dtype=np.float64)).ravel()
    return total / adata.n_obs

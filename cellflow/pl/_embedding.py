"""Cells on an embedding: velocity streamlines, growth, interpolated populations and fates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from anndata import AnnData

from ..tl import _keys as keys
from . import _style as style

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def _grid_flow(points: np.ndarray, vectors: np.ndarray, n_grid: int = 30):
    """Velocities averaged on a regular grid with a Gaussian kernel, NaN where no cell is near.

    The grid spans the cells' bounding box; distances are measured with each axis scaled to
    ``[0, 1]``, so that both axes count alike whatever the embedding's units. A node keeps its
    average only if a cell lies within one grid step of it: streamlines stay where cells are,
    and stop in the gaps between the clusters of an embedding such as UMAP.
    """
    from scipy.spatial import cKDTree

    lo, hi = points.min(axis=0), points.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    unit = (points - lo) / span
    grid = np.linspace(0.0, 1.0, n_grid)
    gx, gy = np.meshgrid(grid, grid)
    nodes = np.stack([gx.ravel(), gy.ravel()], axis=1)
    step = 1.0 / (n_grid - 1)
    width = 1.5 * step
    tree = cKDTree(unit)
    near = tree.query_ball_point(nodes, r=3 * width)
    node_of = np.repeat(np.arange(len(nodes)), [len(cells) for cells in near])
    cell_of = np.fromiter((c for cells in near for c in cells), dtype=np.int64, count=len(node_of))
    weight = np.exp(-((nodes[node_of] - unit[cell_of]) ** 2).sum(axis=1) / (2 * width**2))
    density = np.bincount(node_of, weight, minlength=len(nodes))
    flow = np.stack(
        [np.bincount(node_of, weight * vectors[cell_of, i], minlength=len(nodes)) for i in range(2)], axis=1
    ) / np.maximum(density, 1e-300)[:, None]
    nearest, _ = tree.query(nodes)
    flow[nearest > step] = np.nan
    shape = gx.shape
    return (lo[0] + gx * span[0], lo[1] + gy * span[1], flow[:, 0].reshape(shape), flow[:, 1].reshape(shape))


def _fitted_velocity(adata: AnnData, key: str, basis: str, components) -> np.ndarray:
    """The velocity on ``basis``: as written by the fit (or by scVelo), else projected from the fit's representation."""
    vel_key = f"{key}_velocity_{basis}"
    if vel_key in adata.obsm:
        return np.asarray(adata.obsm[vel_key])[:, list(components)].astype(float)
    fitted = str(adata.uns[key]["use_rep"]) if key in adata.uns and "use_rep" in adata.uns[key] else None
    learned = f"{key}_velocity_{style.basis_name(fitted)}" if fitted is not None else None
    if fitted is None or style.basis_name(fitted) == basis or learned not in adata.obsm:
        raise KeyError(f"adata.obsm[{vel_key!r}] is missing; run cellflow.tl.fit with use_rep='X_{basis}'")
    return _projected_velocity(adata, fitted, np.asarray(adata.obsm[learned], dtype=float),
                               style.embedding(adata, basis, components))


def _projected_velocity(adata: AnnData, use_rep: str, velocity: np.ndarray, points: np.ndarray,
                        n_neighbors: int = 15) -> np.ndarray:
    """Velocity carried onto an embedding through the cells' neighbours in the fitted representation.

    Each cell ``x`` and the point ``x + h v`` a short step ahead are placed on the embedding as
    the neighbour-weighted mean of the embedding positions of their ``n_neighbors`` nearest
    cells (the weights of :func:`cellflow.tl._fate.neighbor_weights`); the difference over ``h``
    is the drawn velocity. ``h`` moves the median cell by half the median distance to its nearest
    neighbour, so the step reaches the next cells without jumping past them. Placing ``x``
    itself the same way cancels the offset of the placement. Directions come out right; speeds
    come out shorter, since averaging over neighbours shortens the steps.
    """
    from ..io import get_representation

    rep = get_representation(adata, use_rep).astype(float)
    here, index = _placed(rep, rep, points, n_neighbors + 1)
    gap = np.median(np.linalg.norm(rep[index[:, 1]] - rep, axis=1))
    speed = np.median(np.linalg.norm(velocity, axis=1))
    h = 0.5 * gap / speed if speed > 0 and gap > 0 else 1.0
    ahead, _ = _placed(rep + h * velocity, rep, points, n_neighbors + 1)
    return (ahead - here) / h


def _placed(positions: np.ndarray, rep: np.ndarray, embedding: np.ndarray, n_neighbors: int):
    """Points of the fitted representation placed on an embedding, and their nearest cells.

    A point goes to the mean embedding position of its ``n_neighbors`` nearest cells of ``rep``,
    with the weights of :func:`cellflow.tl._fate.neighbor_weights`.
    """
    from ..tl._fitted import neighbor_weights

    index, weight = neighbor_weights(positions, rep, n_neighbors)
    return (weight[:, :, None] * embedding[index]).sum(axis=1), index


def _time_map(adata: AnnData, key: str):
    state = adata.uns.get(key)
    return state.get("time_map") if isinstance(state, Mapping) else None


def velocity(
    adata: AnnData,
    basis: str = "pca",
    *,
    key: str = "cellflow",
    color: str | None = None,
    palette=None,
    cmap=None,
    size: float | None = None,
    title: str | None = None,
    legend_loc: str | None = "right margin",
    layer: str | None = None,
    components: tuple[int, int] = (0, 1),
    ax=None,
    show: bool | None = None,
    save: str | None = None,
) -> Axes | None:
    """Velocity streamlines over the cells on any embedding.

    Parameters
    ----------
    adata
        AnnData after :func:`cellflow.tl.fit`.
    basis
        Embedding, with or without the ``"X_"`` prefix (``"pca"``, ``"umap"``, any ``obsm`` key):
        ``obsm["X_{basis}"]`` and ``obsm["{key}_velocity_{basis}"]`` are drawn.
        :func:`cellflow.tl.fit` writes the velocity of the representation it learned in; on
        another embedding without ``obsm["{key}_velocity_{basis}"]`` (e.g. from
        ``scv.tl.velocity_embedding``), the velocity is carried over through each cell's
        neighbours in the fitted representation (:func:`_projected_velocity`; nothing is
        written). Streamlines are drawn only near cells (see :func:`_grid_flow`).
    key
        ``key_added`` of the fit.
    color
        ``obs`` column or gene to colour cells by (default: the fit's time column).
    palette
        Category colours: a colormap name, a list of colours or a dict from category to colour
        (default: ``uns[f"{color}_colors"]`` as in scanpy; a sequential palette for time).
    cmap
        Colour map for numbers (default ``viridis``).
    size
        Dot area (default ``120000 / n_cells`` as in scanpy, at most 60).
    title
        Axes title (default ``"velocity"``).
    legend_loc
        ``"right margin"``, ``"on data"``, ``None``/``"none"`` or a matplotlib location (``"best"``).
    layer
        Layer to read a gene's expression from (default ``X``).
    components
        Which two dimensions to draw.
    ax, show, save
        Target axes; show the figure; save it to this path.

    Returns
    -------
    The axes, unless the figure is shown (``show=True``, or ``show=None`` without ``save``, as
    in scanpy): then ``None``.
    """
    basis = style.basis_name(basis)
    points = style.embedding(adata, basis, components)
    vectors = _fitted_velocity(adata, key, basis, components)
    time_key = style.fit_time_key(adata, key)
    color = color or time_key
    values = style.cell_values(adata, color, layer) if color else None
    fig, ax = style.axes(ax)
    style.draw_cells(fig, ax, points, values, adata=adata, name=color, palette=palette, cmap=cmap, size=size,
                     legend_loc=legend_loc, time_key=time_key, time_map=_time_map(adata, key), alpha=0.6)
    gx, gy, u, v = _grid_flow(points, vectors)
    ax.streamplot(gx, gy, u, v, color="k", density=1.2, linewidth=0.7, arrowsize=0.9)
    style.label_axes(ax, basis, components)
    ax.set_title("velocity" if title is None else title)
    return style.finish(fig, ax, show, save)


def growth(
    adata: AnnData,
    basis: str = "pca",
    *,
    key: str = "cellflow",
    components: tuple[int, int] = (0, 1),
    cmap="RdBu_r",
    size: float | None = None,
    title: str | None = None,
    ax=None,
    show: bool | None = None,
    save: str | None = None,
) -> Axes | None:
    """Growth rate of each cell on an embedding, in a diverging colour map centred at zero.

    Parameters
    ----------
    adata
        AnnData after :func:`cellflow.tl.fit` with a method that learns growth (``"wfr"``).
    basis
        Embedding, with or without the ``"X_"`` prefix.
    key
        ``key_added`` of the fit: ``obs["{key}_growth_rate"]`` is drawn (``d log m / dt``, per
        time unit; positive: proliferating, negative: dying).
    components
        Which two dimensions to draw.
    cmap
        A diverging colour map; its centre is zero growth (marked on the colour bar).
    size, title
        Dot area (as for :func:`velocity`); axes title (default ``"growth rate"``).
    ax, show, save
        Target axes; show the figure; save it to this path.

    Returns
    -------
    The axes, unless the figure is shown (``show=True``, or ``show=None`` without ``save``, as
    in scanpy): then ``None``.
    """
    growth_key = f"{key}_growth_rate"
    if growth_key not in adata.obs:
        raise KeyError(
            f"adata.obs[{growth_key!r}] is missing: only methods with growth learn it; "
            "run cellflow.tl.fit(adata, method='wfr', ...) (or pass key= the key_added of that fit)"
        )
    points = style.embedding(adata, basis, components)
    rate = adata.obs[growth_key].to_numpy(dtype=float)
    limit = float(np.nanmax(np.abs(rate))) or 1.0
    fig, ax = style.axes(ax)
    style.frame(ax, points)
    order = np.argsort(np.abs(rate))  # strongest on top
    size = style.default_size(len(points)) if size is None else size
    scatter = ax.scatter(*points[order].T, c=rate[order], cmap=style.colormap(cmap), vmin=-limit, vmax=limit,
                         s=size, linewidths=0)
    bar = fig.colorbar(scatter, ax=ax, label="growth rate (log mass per time unit)")
    bar.ax.axhline(0.0, color="k", lw=0.8)
    style.label_axes(ax, style.basis_name(basis), components)
    ax.set_title("growth rate" if title is None else title)
    return style.finish(fig, ax, show, save)


_PREDICTED_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "h")


def interpolation(
    adata: AnnData,
    predicted,
    *,
    basis: str | None = None,
    key: str = "cellflow",
    color: str | None = None,
    palette=None,
    cmap=None,
    size: float | None = None,
    n_neighbors: int = 15,
    title: str | None = None,
    legend_loc: str | None = "right margin",
    components: tuple[int, int] = (0, 1),
    ax=None,
    show: bool | None = None,
    save: str | None = None,
) -> Axes | None:
    """Interpolated populations over the measured cells.

    Parameters
    ----------
    adata
        The AnnData that :func:`cellflow.tl.fit` wrote into (the measured cells).
    predicted
        One AnnData returned by :func:`cellflow.tl.interpolate`, or a list of them.
    basis
        Embedding to draw on (default: the representation of the fit). Predicted cells have
        coordinates only in that representation: on another embedding (e.g. UMAP) each is
        drawn at the weighted mean embedding position of its ``n_neighbors`` nearest measured
        cells in the representation (Gaussian weights, as in :mod:`cellflow.tl`).
    key
        ``key_added`` of the fit.
    color
        ``obs`` column or gene to colour measured cells by; predicted cells take the value of the
        cell they started from (``obs["source_cell"]``). Default: time, on one scale for both.
    palette, cmap, legend_loc
        As for :func:`velocity`.
    size
        Dot area of measured cells (as for :func:`velocity`); a predicted cell's area is this times
        its relative mass (unbalanced methods).
    n_neighbors
        Measured cells that place a predicted cell on another embedding.
    title
        Axes title (default ``"interpolated vs measured cells"``).
    components
        Which two dimensions to draw.
    ax, show, save
        Target axes; show the figure; save it to this path.

    Returns
    -------
    The axes, unless the figure is shown (``show=True``, or ``show=None`` without ``save``, as
    in scanpy): then ``None``.

    Notes
    -----
    Measured cells are faint dots without an edge; predicted cells are outlined in black, with
    one marker shape per predicted time and a legend entry each.
    """
    import matplotlib.pyplot as plt
    from matplotlib.legend import Legend

    from ..io import get_representation, parse_times

    style.check_legend_loc(legend_loc)
    state = keys.fit_state(adata, key)
    use_rep, time_key, time_map = str(state["use_rep"]), str(state["time_key"]), state.get("time_map")
    pred_key = use_rep if use_rep != "X" else "X_cellflow"
    predictions = [predicted] if isinstance(predicted, AnnData) else list(predicted)
    for i, pred in enumerate(predictions):
        if pred_key not in pred.obsm or "time" not in pred.obs:
            raise KeyError(
                f"predicted[{i}] has no obsm[{pred_key!r}] and obs['time']; pass what cellflow.tl.interpolate returned"
            )
    dims = list(components)
    rep_basis = style.basis_name(use_rep) if use_rep != "X" else "cellflow"
    rep = get_representation(adata, use_rep)
    in_rep = basis is None or style.basis_name(basis) == rep_basis
    measured = rep[:, dims] if in_rep else style.embedding(adata, basis, components)

    def place(pred: AnnData) -> np.ndarray:
        positions = np.asarray(pred.obsm[pred_key])
        if in_rep:
            return positions[:, dims]
        return _placed(positions, rep, measured, n_neighbors)[0]

    fig, ax = style.axes(ax)
    size = style.default_size(len(measured)) if size is None else size
    if color is None:
        times = parse_times(adata.obs[time_key], time_key, time_map)
        every = np.concatenate([times] + [p.obs["time"].to_numpy(dtype=float) for p in predictions])
        scatter = ax.scatter(*measured.T, c=times, cmap=style.colormap(cmap), vmin=every.min(), vmax=every.max(),
                             s=size, alpha=0.35, linewidths=0)
        fig.colorbar(plt.cm.ScalarMappable(scatter.norm, scatter.cmap), ax=ax, label=time_key)
        colours = {}
    else:
        values = style.cell_values(adata, color)
        scatter, colours = style.draw_cells(fig, ax, measured, values, adata=adata, name=color, palette=palette,
                                            cmap=cmap, size=size, legend_loc=legend_loc, time_key=time_key,
                                            time_map=time_map, alpha=0.35)
    handles = [plt.Line2D([], [], marker="o", ls="", color="grey", alpha=0.5, label="measured")]
    placed = [place(pred) for pred in predictions]
    for pred, points, marker in zip(predictions, placed, _PREDICTED_MARKERS * len(predictions)):
        mass_key = f"{key}_mass"
        mass = pred.obs[mass_key].to_numpy(dtype=float) if mass_key in pred.obs else np.ones(pred.n_obs)
        if color is None:
            face = dict(c=pred.obs["time"].to_numpy(dtype=float), cmap=scatter.cmap, norm=scatter.norm)
        else:
            source = values.reindex(pred.obs["source_cell"]) if "source_cell" in pred.obs else None
            if source is None:
                face = dict(c="white")
            elif colours:
                face = dict(c=[colours.get(v, style.NA_COLOUR) for v in source])
            else:
                face = dict(c=source.to_numpy(dtype=float), cmap=scatter.cmap, norm=scatter.norm)
        label = f"predicted, {style.time_label(time_key, pred.obs['time'].iloc[0])}"
        ax.scatter(*points.T, s=size * mass / max(float(np.mean(mass)), 1e-12), marker=marker,
                   edgecolors="k", linewidths=0.6, label=label, **face)
        handles.append(plt.Line2D([], [], marker=marker, ls="", markerfacecolor="white", markeredgecolor="k",
                                  label=label))
    if legend_loc not in (None, "none"):  # a second legend, beside the one of the colours
        ax.add_artist(Legend(ax, handles, [h.get_label() for h in handles], loc="best", frameon=False, fontsize=7))
    style.frame(ax, np.vstack([measured, *placed]))
    style.label_axes(ax, rep_basis if in_rep else style.basis_name(basis), components)
    ax.set_title("interpolated vs measured cells" if title is None else title)
    return style.finish(fig, ax, show, save)

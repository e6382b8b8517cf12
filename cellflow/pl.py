"""Plots with matplotlib; ``show`` and ``save`` behave as in scanpy."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData


def _finish(fig, ax, show: bool | None, save: str | None):
    import matplotlib.pyplot as plt

    if save:
        fig.savefig(save, dpi=150, bbox_inches="tight")
    if show or (show is None and not save):
        plt.show()
        return None
    if save and not show:
        plt.close(fig)
    return ax


def _axes(ax, figsize=(5.5, 4.5)):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def _grid_flow(points: np.ndarray, vectors: np.ndarray, n_grid: int = 30):
    """Velocities averaged on a regular grid with a Gaussian kernel; empty cells masked."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    axes = [np.linspace(lo[i], hi[i], n_grid) for i in range(2)]
    gx, gy = np.meshgrid(*axes)
    nodes = np.stack([gx.ravel(), gy.ravel()], axis=1)
    width = (hi - lo).mean() / n_grid * 1.5
    sq = ((nodes[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    kernel = np.exp(-sq / (2 * width**2))
    density = kernel.sum(axis=1)
    flow = kernel @ vectors / np.maximum(density, 1e-12)[:, None]
    flow[density < 0.02 * density.max()] = np.nan
    return gx, gy, flow[:, 0].reshape(gx.shape), flow[:, 1].reshape(gx.shape)


def _basis_name(basis: str) -> str:
    """``"X_umap"`` and ``"umap"`` both name the basis ``"umap"``."""
    return basis[2:] if basis.startswith("X_") else basis


def _embedding(adata: AnnData, basis: str, components) -> np.ndarray:
    """Two columns of ``obsm["X_{basis}"]``, with a clear error when it is missing."""
    rep_key = f"X_{_basis_name(basis)}"
    if rep_key not in adata.obsm:
        hint = {"umap": " (e.g. scanpy.tl.umap)", "pca": " (e.g. scanpy.pp.pca)", "tsne": " (e.g. scanpy.tl.tsne)"}
        raise KeyError(
            f"adata.obsm[{rep_key!r}] is missing; compute the embedding first{hint.get(_basis_name(basis), '')} "
            f"or pass basis= one of {[k[2:] for k in adata.obsm if k.startswith('X_')]}"
        )
    points = np.asarray(adata.obsm[rep_key])
    dims = list(components)
    if max(dims) >= points.shape[1]:
        raise ValueError(f"components={tuple(components)} asks for more than the {points.shape[1]} dims of {rep_key!r}")
    return points[:, dims]


def _colour_cells(fig, ax, points, values, label, cmap="viridis", s=6, **kwargs):
    """Scatter cells coloured by a categorical (legend) or numeric (colour bar) column."""
    import matplotlib.pyplot as plt

    if values is not None and not pd.api.types.is_numeric_dtype(values):
        categories = pd.Series(values).astype("category")
        codes, labels = categories.cat.codes.to_numpy(), categories.cat.categories
        scatter = ax.scatter(*points.T, c=codes, cmap="tab10" if len(labels) <= 10 else "tab20",
                             vmin=0, vmax=max(len(labels) - 1, 1), s=s, linewidths=0, **kwargs)
        colours = [scatter.cmap(scatter.norm(i)) for i in range(len(labels))]
        handles = [plt.Line2D([], [], marker="o", ls="", color=c) for c in colours]
        ax.legend(handles, labels, title=label, fontsize=7, frameon=False)
        return scatter
    scatter = ax.scatter(*points.T, c=None if values is None else np.asarray(values, dtype=float), cmap=cmap,
                         s=s, linewidths=0, **kwargs)
    if values is not None:
        fig.colorbar(scatter, ax=ax, label=label)
    return scatter


def velocity(
    adata: AnnData,
    basis: str = "pca",
    *,
    key: str = "cellflow",
    color: str | None = None,
    components: tuple[int, int] = (0, 1),
    ax=None,
    show: bool | None = None,
    save: str | None = None,
):
    """Velocity streamlines over the cells on any embedding.

    Parameters
    ----------
    adata
        AnnData after :func:`cellflow.tl.fit`.
    basis
        Embedding (``"pca"``, ``"umap"``, ...): ``obsm["X_{basis}"]`` and
        ``obsm["{key}_velocity_{basis}"]`` are drawn. :func:`cellflow.tl.fit` writes the velocity
        of the representation it learned in; for another embedding project it first, e.g.
        ``scv.tl.velocity_embedding(adata, basis="umap", vkey="cellflow_velocity")``.
    key
        ``key_added`` of the fit.
    color
        ``obs`` column to colour cells by (default: the fit's time key).
    components
        Which two dimensions to draw.
    ax, show, save
        Target axes; show the figure; save it to this path.
    """
    basis = _basis_name(basis)
    vel_key = f"{key}_velocity_{basis}"
    points = _embedding(adata, basis, components)
    if vel_key not in adata.obsm:
        fitted = str(adata.uns[key]["use_rep"]) if key in adata.uns and "use_rep" in adata.uns[key] else None
        if fitted is None or _basis_name(fitted) == basis:
            raise KeyError(f"adata.obsm[{vel_key!r}] is missing; run cellflow.tl.fit with use_rep='X_{basis}'")
        raise KeyError(
            f"adata.obsm[{vel_key!r}] is missing: the model learned in {fitted!r}. Project the velocity onto "
            f"{basis!r} with scvelo: scv.tl.velocity_graph(adata, vkey='{key}_velocity', xkey=<expression layer>) "
            f"then scv.tl.velocity_embedding(adata, basis='{basis}', vkey='{key}_velocity'), or write your own "
            f"projection to adata.obsm[{vel_key!r}]"
        )
    vectors = np.asarray(adata.obsm[vel_key])[:, list(components)]
    color = color or (str(adata.uns[key]["time_key"]) if key in adata.uns and "time_key" in adata.uns[key] else None)
    if color is not None and color not in adata.obs:
        raise KeyError(f"color={color!r} is not a column of adata.obs")
    fig, ax = _axes(ax)
    _colour_cells(fig, ax, points, adata.obs[color] if color else None, color, alpha=0.6)
    gx, gy, u, v = _grid_flow(points, vectors)
    ax.streamplot(gx, gy, u, v, color="k", density=1.2, linewidth=0.7, arrowsize=0.9)
    _label_axes(ax, basis, components)
    ax.set_title("cellflow velocity")
    return _finish(fig, ax, show, save)


def _label_axes(ax, basis: str, components) -> None:
    ax.set_xlabel(f"{basis} {components[0] + 1}")
    ax.set_ylabel(f"{basis} {components[1] + 1}")
    ax.set_xticks([])
    ax.set_yticks([])


def growth(
    adata: AnnData,
    basis: str = "pca",
    *,
    key: str = "cellflow",
    components: tuple[int, int] = (0, 1),
    cmap: str = "RdBu_r",
    ax=None,
    show: bool | None = None,
    save: str | None = None,
):
    """Growth rate of each cell on an embedding, in a diverging colour map centred at zero.

    Parameters
    ----------
    adata
        AnnData after :func:`cellflow.tl.fit` with a method that learns growth (``"wfr"``).
    basis
        Embedding: ``obsm["X_{basis}"]``.
    key
        ``key_added`` of the fit: ``obs["{key}_growth_rate"]`` is drawn (``d log m / dt``, per
        time unit; positive: proliferating, negative: dying).
    components
        Which two dimensions to draw.
    cmap
        A diverging colour map; its centre is zero growth.
    ax, show, save
        Target axes; show the figure; save it to this path.
    """
    growth_key = f"{key}_growth_rate"
    if growth_key not in adata.obs:
        raise KeyError(
            f"adata.obs[{growth_key!r}] is missing: only methods with growth learn it; "
            "run cellflow.tl.fit(adata, method='wfr', ...) (or pass key= the key_added of that fit)"
        )
    points = _embedding(adata, basis, components)
    rate = adata.obs[growth_key].to_numpy(dtype=float)
    limit = float(np.nanmax(np.abs(rate))) or 1.0
    fig, ax = _axes(ax)
    order = np.argsort(np.abs(rate))  # strongest on top
    scatter = ax.scatter(*points[order].T, c=rate[order], cmap=cmap, vmin=-limit, vmax=limit, s=8, linewidths=0)
    fig.colorbar(scatter, ax=ax, label="growth rate (log mass per time unit)")
    _label_axes(ax, _basis_name(basis), components)
    ax.set_title("cellflow growth")
    return _finish(fig, ax, show, save)


def interpolation(
    adata: AnnData,
    predicted,
    *,
    key: str = "cellflow",
    components: tuple[int, int] = (0, 1),
    ax=None,
    show: bool | None = None,
    save: str | None = None,
):
    """Interpolated populations over the measured ones, on two dimensions of the representation.

    Parameters
    ----------
    adata
        The AnnData that :func:`cellflow.tl.fit` wrote into (the measured cells).
    predicted
        One AnnData returned by :func:`cellflow.tl.interpolate`, or a list of them.
    key
        ``key_added`` of the fit (it names the representation).
    components
        Which two dimensions of the representation to draw.
    ax, show, save
        Target axes; show the figure; save it to this path.

    Notes
    -----
    Measured cells are small dots, predicted cells crosses, both coloured by time on one scale;
    a predicted cell's size grows with its mass (unbalanced methods).
    """
    import matplotlib.pyplot as plt

    from .readers import get_representation, parse_times

    if key not in adata.uns or "use_rep" not in adata.uns[key]:
        raise KeyError(f"adata.uns[{key!r}] does not exist: run cellflow.tl.fit first (or pass key=...)")
    state = adata.uns[key]
    use_rep, time_key = str(state["use_rep"]), str(state["time_key"])
    pred_key = use_rep if use_rep != "X" else "X_cellflow"
    predictions = [predicted] if isinstance(predicted, AnnData) else list(predicted)
    for i, pred in enumerate(predictions):
        if pred_key not in pred.obsm or "time" not in pred.obs:
            raise KeyError(
                f"predicted[{i}] has no obsm[{pred_key!r}] and obs['time']; pass what cellflow.tl.interpolate returned"
            )
    dims = list(components)
    measured = get_representation(adata, use_rep)[:, dims]
    times = parse_times(adata.obs[time_key], time_key, state.get("time_map"))
    all_times = np.concatenate([times] + [p.obs["time"].to_numpy(dtype=float) for p in predictions])
    norm = plt.Normalize(all_times.min(), all_times.max())
    fig, ax = _axes(ax)
    scatter = ax.scatter(*measured.T, c=times, cmap="viridis", norm=norm, s=5, alpha=0.35, linewidths=0,
                         label="measured")
    for pred in predictions:
        points = np.asarray(pred.obsm[pred_key])[:, dims]
        mass_key = f"{key}_mass"
        mass = pred.obs[mass_key].to_numpy(dtype=float) if mass_key in pred.obs else np.ones(len(points))
        size = 14 * mass / max(float(np.mean(mass)), 1e-12)
        t = float(pred.obs["time"].iloc[0])
        ax.scatter(*points.T, c=pred.obs["time"].to_numpy(dtype=float), cmap="viridis", norm=norm, s=size,
                   marker="x", linewidths=0.8, label=f"predicted at {t:g}")
    fig.colorbar(scatter, ax=ax, label=time_key)
    ax.legend(frameon=False, fontsize=7)
    _label_axes(ax, _basis_name(use_rep), components)
    ax.set_title("interpolated vs measured cells")
    return _finish(fig, ax, show, save)


def fate(
    adata: AnnData,
    groups: str | list[str] | None = None,
    basis: str = "pca",
    *,
    key: str = "cellflow",
    fate_key: str | None = None,
    argmax: bool = False,
    components: tuple[int, int] = (0, 1),
    ncols: int = 3,
    ax=None,
    show: bool | None = None,
    save: str | None = None,
):
    """Fate probabilities of cells on an embedding: one panel per group, or the most likely group.

    Parameters
    ----------
    adata
        AnnData after :func:`cellflow.tl.fate` (or :func:`cellflow.tl.ancestors`).
    groups
        Groups (columns of the fate table) to draw; default all.
    basis
        Embedding: ``obsm["X_{basis}"]``.
    key
        ``key`` given to :func:`cellflow.tl.fate`.
    fate_key
        ``obsm`` key of the table; default ``"{key}_fate"`` (``"{key}_ancestors"`` for ancestors).
    argmax
        One panel with each cell coloured by its most likely group instead.
    components
        Which two dimensions to draw.
    ncols
        Panels per row.
    ax, show, save
        Target axes (one panel only: ``argmax=True`` or a single group); show; save to this path.

    Returns
    -------
    The axes (a list with several panels) unless shown. Cells without probabilities (not at the
    starting time) are drawn in light grey.
    """
    import matplotlib.pyplot as plt

    fate_key = fate_key or f"{key}_fate"
    table = adata.obsm[fate_key] if fate_key in adata.obsm else None
    if not isinstance(table, pd.DataFrame):
        raise KeyError(
            f"adata.obsm[{fate_key!r}] is missing or not a table; run cellflow.tl.fate first (or pass fate_key=)"
        )
    chosen = list(table.columns) if groups is None else ([groups] if isinstance(groups, str) else list(groups))
    unknown = [g for g in chosen if g not in table.columns]
    if unknown:
        raise KeyError(f"groups {unknown} are not in adata.obsm[{fate_key!r}] (groups: {list(table.columns)})")
    points = _embedding(adata, basis, components)
    values = table[chosen].to_numpy(dtype=float)
    has = ~np.isnan(values).any(axis=1)
    if argmax or len(chosen) == 1:
        fig, ax = _axes(ax)
        axes = [ax]
    else:
        if ax is not None:
            raise ValueError("ax= takes one panel: pass argmax=True or a single group, or leave ax=None")
        nrows = -(-len(chosen) // ncols)
        fig, grid = plt.subplots(nrows, min(ncols, len(chosen)), figsize=(3.6 * min(ncols, len(chosen)), 3.2 * nrows),
                                 squeeze=False)
        axes = list(grid.ravel())
        for extra in axes[len(chosen):]:
            extra.set_axis_off()
        axes = axes[: len(chosen)]
    for panel in axes:
        panel.scatter(*points[~has].T, c="#dddddd", s=4, linewidths=0)
    if argmax:
        best = pd.Categorical(np.asarray(chosen, dtype=object)[values[has].argmax(axis=1)], categories=chosen)
        _colour_cells(fig, axes[0], points[has], pd.Series(best), "most likely group", s=8)
        axes[0].set_title(f"cellflow {fate_key.removeprefix(key + '_')}: most likely group")
        _label_axes(axes[0], _basis_name(basis), components)
    else:
        for panel, group, column in zip(axes, chosen, values.T):
            order = np.argsort(column[has])
            scatter = panel.scatter(*points[has][order].T, c=column[has][order], cmap="viridis", vmin=0, vmax=1, s=8,
                                    linewidths=0)
            panel.set_title(str(group))
            _label_axes(panel, _basis_name(basis), components)
        fig.colorbar(scatter, ax=axes, label="probability", shrink=0.8)
    return _finish(fig, axes[0] if len(axes) == 1 else axes, show, save)


def loss(adata: AnnData, *, key: str = "cellflow", ax=None, show: bool | None = None, save: str | None = None):
    """Training loss per step (and a running mean) of the model stored in ``uns[key]``."""
    history = np.asarray(adata.uns[key]["history"]["loss"])
    fig, ax = _axes(ax, (5, 3.5))
    ax.plot(history, lw=0.5, alpha=0.4, label="step")
    window = max(1, len(history) // 50)
    ax.plot(np.convolve(history, np.ones(window) / window, mode="valid"), lw=1.5, label=f"mean of {window}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.legend(frameon=False)
    return _finish(fig, ax, show, save)

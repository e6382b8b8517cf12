"""Plots with matplotlib; ``show`` and ``save`` behave as in scanpy."""

from __future__ import annotations

import numpy as np
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
    """Velocity streamlines over the cells in the representation the model was fitted in.

    Parameters
    ----------
    adata
        AnnData after :func:`cellflow.tl.fit`.
    basis
        Representation: ``obsm["X_{basis}"]`` and ``obsm["{key}_velocity_{basis}"]`` are used.
    key
        ``key_added`` of the fit.
    color
        ``obs`` column to colour cells by (default: the fit's time key).
    components
        Which two dimensions to draw.
    ax, show, save
        Target axes; show the figure; save it to this path.
    """
    import matplotlib.pyplot as plt

    rep_key, vel_key = f"X_{basis}", f"{key}_velocity_{basis}"
    for store_key in (rep_key, vel_key):
        if store_key not in adata.obsm:
            raise KeyError(f"adata.obsm[{store_key!r}] is missing; run cellflow.tl.fit with use_rep={rep_key!r}")
    dims = list(components)
    points = np.asarray(adata.obsm[rep_key])[:, dims]
    vectors = np.asarray(adata.obsm[vel_key])[:, dims]
    color = color or (str(adata.uns[key]["time_key"]) if key in adata.uns else None)
    fig, ax = _axes(ax)
    values = adata.obs[color] if color is not None else None
    if values is not None and not np.issubdtype(np.asarray(values).dtype, np.number):
        codes, labels = values.astype("category").cat.codes, values.astype("category").cat.categories
        scatter = ax.scatter(*points.T, c=codes, cmap="tab10", s=6, alpha=0.6, linewidths=0)
        handles = [plt.Line2D([], [], marker="o", ls="", color=scatter.cmap(scatter.norm(i))) for i in range(len(labels))]
        ax.legend(handles, labels, title=color, fontsize=7, frameon=False)
    else:
        scatter = ax.scatter(*points.T, c=values, cmap="viridis", s=6, alpha=0.6, linewidths=0)
        if values is not None:
            fig.colorbar(scatter, ax=ax, label=color)
    gx, gy, u, v = _grid_flow(points, vectors)
    ax.streamplot(gx, gy, u, v, color="k", density=1.2, linewidth=0.7, arrowsize=0.9)
    ax.set_xlabel(f"{basis} {dims[0] + 1}")
    ax.set_ylabel(f"{basis} {dims[1] + 1}")
    ax.set_title("cellflow velocity")
    return _finish(fig, ax, show, save)


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

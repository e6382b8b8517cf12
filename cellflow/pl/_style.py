"""Pieces the plots share: axes, showing and saving, embeddings, palettes and coloured cells.

Colours follow scanpy: a categorical column takes ``adata.uns[f"{name}_colors"]`` (one colour per
category, in the order of its categories) when it has enough valid colours, else scanpy's
default palettes; ``palette=`` overrides both (without writing into ``uns``). Continuous values
use ``viridis``, whose lightness rises steadily, so that a greyscale print still shows the order.
The time column and ordered categories get a sequential palette (early dark, late light).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

NA_COLOUR = "lightgray"
SEQUENTIAL = "viridis"


# -- figures -----------------------------------------------------------------------------------
def axes(ax, figsize=(5.5, 4.5)):
    """A new figure and axes, or the figure of ``ax``."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def finish(fig, ax, show: bool | None, save: str | None):
    """Save to ``save`` (a path); show unless ``show=False`` or saving without ``show``; ``ax`` if not shown."""
    import matplotlib.pyplot as plt

    if save:
        fig.savefig(save, dpi=150, bbox_inches="tight")
    if show or (show is None and not save):
        plt.show()
        return None
    if save and not show:
        plt.close(fig)
    return ax


def label_axes(ax, basis: str, components) -> None:
    ax.set_xlabel(f"{basis} {components[0] + 1}")
    ax.set_ylabel(f"{basis} {components[1] + 1}")
    ax.set_xticks([])
    ax.set_yticks([])


# -- embeddings and values ---------------------------------------------------------------------
def basis_name(basis: str) -> str:
    """``"X_umap"`` and ``"umap"`` both name the basis ``"umap"``."""
    return basis[2:] if basis.startswith("X_") else basis


def embedding(adata: AnnData, basis: str, components) -> np.ndarray:
    """Two columns of ``obsm["X_{basis}"]`` (or ``obsm[basis]``), with a clear error when it is missing."""
    name = basis_name(basis)
    rep_key = f"X_{name}" if f"X_{name}" in adata.obsm or basis not in adata.obsm else basis
    if rep_key not in adata.obsm:
        hint = {"umap": " (e.g. scanpy.tl.umap)", "pca": " (e.g. scanpy.pp.pca)", "tsne": " (e.g. scanpy.tl.tsne)"}
        raise KeyError(
            f"adata.obsm[{rep_key!r}] is missing; compute the embedding first{hint.get(name, '')} "
            f"or pass basis= one of {list(adata.obsm.keys())}"
        )
    points = np.asarray(adata.obsm[rep_key])
    dims = list(components)
    if len(dims) != 2 or min(dims) < 0 or max(dims) >= points.shape[1]:
        raise ValueError(f"components={tuple(components)} must be two of the {points.shape[1]} dims of {rep_key!r}")
    return points[:, dims].astype(float)


def fit_time_key(adata: AnnData, key: str) -> str | None:
    """The time column of the fit stored in ``uns[key]``, if there is one."""
    state = adata.uns.get(key)
    return str(state["time_key"]) if isinstance(state, Mapping) and "time_key" in state else None


def time_label(time_key: str | None, time: float) -> str:
    """``"day 10"`` for time 10 of the column ``"day"``."""
    return f"{time_key or 'time'} {float(time):g}"


def cell_values(adata: AnnData, color: str, layer: str | None = None) -> pd.Series:
    """Values of an ``obs`` column, or the expression of a gene (from ``layer`` or ``X``)."""
    if color in adata.obs:
        return adata.obs[color]
    if color in adata.var_names:
        matrix = adata.layers[layer] if layer is not None else adata.X
        column = matrix[:, adata.var_names.get_loc(color)]
        column = column.toarray() if hasattr(column, "toarray") else np.asarray(column)
        return pd.Series(np.ravel(column).astype(float), index=adata.obs_names, name=color)
    raise KeyError(f"color={color!r} is neither a column of adata.obs nor a gene of adata.var_names")


# -- palettes ----------------------------------------------------------------------------------
def categories_of(values: pd.Series) -> pd.Categorical:
    """The values as scanpy sees them: categories in their own order (booleans as strings)."""
    if values.dtype == bool:
        values = values.astype(str)
    return pd.Categorical(values)


def is_categorical(values: pd.Series) -> bool:
    return values.dtype == bool or not pd.api.types.is_numeric_dtype(values)


def default_colours(n: int) -> list:
    """``n`` colours as scanpy picks them when nothing is given: matplotlib's cycle, then scanpy's palettes."""
    from matplotlib import rcParams
    from scanpy.plotting import palettes

    cycle = rcParams["axes.prop_cycle"].by_key()["color"]
    for candidate in (cycle, palettes.default_20, palettes.default_28, palettes.default_102):
        if len(candidate) >= n:
            return list(candidate[:n])
    return [NA_COLOUR] * n


def palette_colours(palette, categories, name: str) -> list:
    """A colour per category from ``palette``: a colormap name, a list of colours (cycled) or a dict."""
    from matplotlib import colormaps
    from matplotlib.colors import is_color_like

    if isinstance(palette, str) and palette in colormaps:
        return list(colormaps[palette](np.linspace(0, 1, len(categories))))
    if isinstance(palette, Mapping):
        missing = [c for c in categories if c not in palette and str(c) not in palette]
        if missing:
            raise KeyError(f"palette has no colour for the categories {missing[:5]} of {name!r}; add them")
        return [palette[c] if c in palette else palette[str(c)] for c in categories]
    if isinstance(palette, Sequence) and not isinstance(palette, str) and len(palette) > 0:
        bad = [c for c in palette if not is_color_like(c)]
        if bad:
            raise ValueError(f"palette has entries that are not colours: {bad[:3]}")
        return [palette[i % len(palette)] for i in range(len(categories))]
    raise ValueError(
        f"palette={palette!r} is not a colormap name, a list of colours or a dict from category to colour"
    )


def _time_order(categories, time_map) -> np.ndarray | None:
    """Positions of time categories sorted by the time they stand for, or None if unreadable."""
    from ..io import parse_times

    try:
        times = parse_times(pd.Series(np.asarray(categories, dtype=object).astype(str)), "time", time_map)
    except ValueError:
        return None
    return np.argsort(np.argsort(times, kind="stable"))


def category_colours(
    adata: AnnData | None, name: str, values: pd.Categorical, palette=None, *, time_key=None, time_map=None
) -> dict:
    """Colour of each category of ``values`` (a dict in category order), as scanpy chooses it.

    ``palette`` first, then ``adata.uns[f"{name}_colors"]`` when it has enough valid colours, then a
    sequential palette for the time column (ordered by time) and for ordered categories, then
    scanpy's defaults.
    """
    from matplotlib import colormaps
    from matplotlib.colors import is_color_like, to_hex

    categories = list(values.categories)
    stored = adata.uns.get(f"{name}_colors") if adata is not None else None
    if palette is not None:
        colours = palette_colours(palette, categories, name)
    elif stored is not None and len(stored) >= len(categories) and all(is_color_like(c) for c in stored):
        colours = list(stored[: len(categories)])
    elif name == time_key or values.ordered:
        rank = _time_order(categories, time_map) if name == time_key and not values.ordered else None
        rank = np.arange(len(categories)) if rank is None else rank
        ramp = colormaps[SEQUENTIAL](np.linspace(0.0, 0.9, max(len(categories), 2)))
        colours = [ramp[r] for r in rank]
    else:
        colours = default_colours(len(categories))
    return {c: to_hex(colour, keep_alpha=True) for c, colour in zip(categories, colours)}


def colormap(cmap=None):
    """A colour map from a name or a ``Colormap`` (default ``viridis``), grey where values are missing."""
    from matplotlib import colormaps
    from matplotlib.colors import Colormap

    chosen = cmap if isinstance(cmap, Colormap) else colormaps[cmap or SEQUENTIAL]
    return chosen.with_extremes(bad=NA_COLOUR)


# -- cells -------------------------------------------------------------------------------------
_RIGHT_MARGIN, _ON_DATA = "right margin", "on data"


def check_legend_loc(legend_loc) -> None:
    from matplotlib.legend import Legend

    if legend_loc in (None, "none", _RIGHT_MARGIN, _ON_DATA) or legend_loc in Legend.codes:
        return
    raise ValueError(
        f"legend_loc={legend_loc!r} is not one of 'right margin', 'on data', None, 'none' or a matplotlib "
        f"legend location ({', '.join(Legend.codes)})"
    )


def category_legend(ax, colours: Mapping, shown, legend_loc, *, points=None, labels=None, marker="o", title=None):
    """A legend of ``shown`` categories: beside the axes, on the data (at each group's median) or inside."""
    import matplotlib.pyplot as plt

    if legend_loc in (None, "none"):
        return
    if legend_loc == _ON_DATA:
        for category in shown:
            where = np.median(points[np.asarray(labels) == category], axis=0)
            ax.text(*where, str(category), fontsize=8, fontweight="bold", ha="center", va="center")
        return
    handles = [plt.Line2D([], [], marker=marker, ls="", color=colours[c], label=str(c)) for c in shown]
    if legend_loc == _RIGHT_MARGIN:
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8,
                  title=title)
    else:
        ax.legend(handles=handles, loc=legend_loc, frameon=False, fontsize=8, title=title)


def default_size(n_cells: int) -> float:
    """Dot area as scanpy sizes it, 120000 / number of cells, but at most 60 (that of 2000 cells)."""
    return min(120000 / max(n_cells, 1), 60.0)


def frame(ax, points: np.ndarray, margin: float = 0.05) -> None:
    """Axis limits around the cells with a margin, so that no dot is cut at the edge."""
    lo, hi = np.nanmin(points, axis=0), np.nanmax(points, axis=0)
    pad = np.where(hi > lo, hi - lo, 1.0) * margin
    ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
    ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])


def draw_cells(
    fig, ax, points: np.ndarray, values: pd.Series | None, *, adata=None, name=None, palette=None, cmap=None,
    size=None, legend_loc="right margin", time_key=None, time_map=None, colours=None, **kwargs,
):
    """Scatter cells coloured by categories (with a legend) or numbers (with a colour bar).

    Returns the scatter and the colour of each category (empty for numbers); the axes frame the
    cells. ``colours`` fixes
    the category colours (else :func:`category_colours`). Cells without a value are light grey,
    below the others; numbers are drawn low to high (high on top).
    """
    check_legend_loc(legend_loc)
    frame(ax, points)
    size = default_size(len(points)) if size is None else size
    if values is None:
        return ax.scatter(*points.T, c=NA_COLOUR, s=size, linewidths=0, **kwargs), {}
    if is_categorical(values):
        labels = categories_of(values)
        if colours is None:
            colours = category_colours(adata, name, labels, palette, time_key=time_key, time_map=time_map)
        known = np.asarray(labels.codes) >= 0
        face = np.array([colours[c] if k else NA_COLOUR for c, k in zip(labels, known)], dtype=object)
        order = np.argsort(known, kind="stable")  # missing labels first, under the others
        scatter = ax.scatter(*points[order].T, c=list(face[order]), s=size, linewidths=0, **kwargs)
        shown = [c for c in labels.categories if (labels == c).any()]
        category_legend(ax, colours, shown, legend_loc, points=points, labels=labels)
        return scatter, colours
    numbers = np.asarray(values, dtype=float)
    order = np.argsort(np.where(np.isnan(numbers), -np.inf, numbers), kind="stable")
    scatter = ax.scatter(*points[order].T, c=numbers[order], cmap=colormap(cmap), s=size, linewidths=0,
                         plotnonfinite=True, **kwargs)
    fig.colorbar(scatter, ax=ax, label=name)
    return scatter, {}

"""Fate and ancestor probabilities on an embedding, titled with the direction of time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData

from . import _style as style

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def _stored_times(adata: AnnData, fate_key: str) -> Mapping:
    """The ``from_time``/``to_time`` (and ``groupby``) that :func:`cellflow.tl.fate` stored with a table, if any."""
    entry = adata.uns.get(f"{fate_key}_params")
    return entry if isinstance(entry, Mapping) and "from_time" in entry and "to_time" in entry else {}


def _cells_time(adata: AnnData, key: str, has: np.ndarray) -> float | None:
    """The one time point of the cells that have probabilities (None if unknown or several)."""
    from ..io import parse_times

    time_key = style.fit_time_key(adata, key)
    if time_key is None or time_key not in adata.obs or not has.any():
        return None
    state = adata.uns[key]
    times = np.unique(parse_times(adata.obs[time_key][has], time_key, state.get("time_map")))
    return float(times[0]) if times.size == 1 else None


def _direction(adata: AnnData, key: str, fate_key: str, stored: Mapping, has: np.ndarray) -> tuple[str, bool]:
    """A heading with the direction of time (``"day 10 -> day 11"``) and whether it is an ancestry."""
    time_key = style.fit_time_key(adata, key)
    cells_time = _cells_time(adata, key, has)
    named_backward = fate_key.endswith("ancestors")
    if stored:
        start, end = float(stored["from_time"]), float(stored["to_time"])
        earlier, later = min(start, end), max(start, end)
        backward = cells_time == later if cells_time is not None else (start > end or named_backward)
        return f"{style.time_label(time_key, earlier)} -> {style.time_label(time_key, later)}", backward
    if cells_time is not None:
        return f"cells of {style.time_label(time_key, cells_time)}", named_backward
    return "", named_backward


def _group_colours(adata: AnnData, groupby: str | None, stored: Mapping, groups: list, palette, key: str) -> dict:
    """Colour of each group, from the ``obs`` column of the groups when it is known (as scanpy would)."""
    column = groupby or stored.get("groupby")
    if groupby is not None and groupby not in adata.obs:
        raise KeyError(f"groupby={groupby!r} is not a column of adata.obs; name the column of the fate's groups")
    if column is None or column not in adata.obs:
        wanted = {str(g) for g in groups}
        column = next(
            (name for name, values in adata.obs.items() if isinstance(values.dtype, pd.CategoricalDtype)
             and wanted <= {str(c) for c in values.cat.categories}),
            None,
        )
    if column is None:
        labels = pd.Categorical(groups, categories=groups)
        return {str(k): v for k, v in style.category_colours(None, "fate", labels, palette).items()}
    colours = style.category_colours(adata, column, style.categories_of(adata.obs[column]), palette,
                                     time_key=style.fit_time_key(adata, key))
    return {str(k): v for k, v in colours.items()}


def fate(
    adata: AnnData,
    groups: str | list[str] | None = None,
    basis: str = "pca",
    *,
    key: str = "cellflow",
    fate_key: str | None = None,
    groupby: str | None = None,
    argmax: bool = False,
    components: tuple[int, int] = (0, 1),
    palette=None,
    cmap=None,
    size: float | None = None,
    title: str | list[str] | None = None,
    legend_loc: str | None = "right margin",
    ncols: int = 3,
    ax=None,
    show: bool | None = None,
    save: str | None = None,
) -> Axes | list[Axes] | None:
    """Fate probabilities of cells on an embedding: one panel per group, or the most likely group.

    Parameters
    ----------
    adata
        AnnData after :func:`cellflow.tl.fate` (or :func:`cellflow.tl.ancestors`).
    groups
        Groups (columns of the fate table) to draw; default all.
    basis
        Embedding, with or without the ``"X_"`` prefix.
    key
        ``key`` given to :func:`cellflow.tl.fate`.
    fate_key
        ``obsm`` key of the table; default ``"{key}_fate"`` (``"{key}_ancestors"`` for ancestors).
    groupby
        ``obs`` column of the groups, for their colours (``uns[f"{groupby}_colors"]``); default
        the one stored with the table, else a categorical column holding every group.
    argmax
        One panel with each cell coloured by its most likely group instead.
    components
        Which two dimensions to draw.
    palette
        Group colours with ``argmax`` (as for :func:`velocity`).
    cmap
        Colour map of the probabilities (default ``viridis``).
    size
        Dot area (as for :func:`cellflow.pl.velocity`).
    title
        Title, or one per panel (default: the group and the direction of time, e.g.
        ``"to Epithelial / day 10 -> day 11"``, from the times stored with the table, else the
        time of the cells that have probabilities).
    legend_loc
        Legend of the groups with ``argmax`` (as for :func:`velocity`).
    ncols
        Panels per row.
    ax, show, save
        Target axes (one panel only: ``argmax=True`` or a single group); show; save to this path.

    Returns
    -------
    The axes (a list of axes with several panels), unless the figure is shown (``show=True``,
    or ``show=None`` without ``save``, as in scanpy): then ``None``. Cells without probabilities (not at the
    starting time) are drawn in light grey.
    """
    import matplotlib.pyplot as plt

    style.check_legend_loc(legend_loc)
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
    points = style.embedding(adata, basis, components)
    values = table[chosen].to_numpy(dtype=float)
    has = ~np.isnan(values).any(axis=1)
    stored = _stored_times(adata, fate_key)
    heading, backward = _direction(adata, key, fate_key, stored, has)
    size = style.default_size(len(points)) if size is None else size
    if argmax or len(chosen) == 1:
        fig, ax = style.axes(ax)
        axes = [ax]
    else:
        if ax is not None:
            raise ValueError("ax= takes one panel: pass argmax=True or a single group, or leave ax=None")
        width, height = min(ncols, len(chosen)), -(-len(chosen) // ncols)
        fig, grid = plt.subplots(height, width, figsize=(3.6 * width, 3.4 * height), squeeze=False,
                                 layout="constrained")
        axes = list(grid.ravel())
        for extra in axes[len(chosen):]:
            extra.set_axis_off()
        axes = axes[: len(chosen)]
    for panel in axes:
        style.frame(panel, points)
        panel.scatter(*points[~has].T, c=style.NA_COLOUR, s=size / 2, linewidths=0)
        style.label_axes(panel, style.basis_name(basis), components)
    if argmax:
        best = pd.Series(np.asarray(chosen, dtype=object)[values[has].argmax(axis=1)]).astype(
            pd.CategoricalDtype([str(c) for c in chosen])
        )
        colours = _group_colours(adata, groupby, stored, chosen, palette, key)
        style.draw_cells(fig, axes[0], points[has], best, colours=colours, size=size, legend_loc=legend_loc)
        titles = [f"most likely {'ancestor' if backward else 'fate'}"]
    else:
        for panel, column in zip(axes, values.T):
            order = np.argsort(column[has])
            scatter = panel.scatter(*points[has][order].T, c=column[has][order], cmap=style.colormap(cmap), vmin=0,
                                    vmax=1, s=size, linewidths=0)
        fig.colorbar(scatter, ax=axes, label="probability", shrink=0.8)
        titles = [f"{'from' if backward else 'to'} {group}" for group in chosen]
    if isinstance(title, str) and len(axes) > 1:
        fig.suptitle(title)
    else:
        titles = [title] if isinstance(title, str) else list(title) if title is not None else titles
        if len(titles) != len(axes):
            raise ValueError(f"title has {len(titles)} entries for {len(axes)} panels; pass one per panel or a string")
        for panel, text in zip(axes, titles):
            panel.set_title(f"{text}\n{heading}" if heading and title is None else text)
    return style.finish(fig, axes[0] if len(axes) == 1 else axes, show, save)

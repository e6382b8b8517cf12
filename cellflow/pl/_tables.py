"""Plots of tables: group transitions as a heatmap and as a Sankey flow, and the training loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData

from .._utils import renamed_arguments
from . import _style as style

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_NORMALIZED = {
    "forward": ("row_normalized", "where cells go", "share of the row's mass"),
    "backward": ("column_normalized", "where cells come from", "share of the column's mass"),
    None: ("counts", "transported mass", "mass (cells of {start})"),
}


def _time_key_of(table) -> str | None:
    """The time column kept in a Transitions' coupling (its ``obs`` holds the time column and ``groupby``)."""
    others = [c for c in table.coupling.obs.columns if c != table.groupby]
    return str(others[0]) if others else None


def _ink(rgba) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba``."""
    red, green, blue = rgba[:3]
    return "k" if 0.2126 * red + 0.7152 * green + 0.0722 * blue > 0.5 else "w"


@renamed_arguments(t1="from_time", t2="to_time")
def transitions(
    transitions_or_adata,
    from_time: float | None = None,
    to_time: float | None = None,
    groupby: str = "cell_type",
    *,
    key: str = "cellflow",
    normalize: str | None = "forward",
    n_neighbors: int = 15,
    ax=None,
    cmap=None,
    annotate: bool = True,
    title: str | None = None,
    show: bool | None = None,
    save: str | None = None,
) -> Axes | None:
    """Heatmap of the group-to-group transitions between two time points.

    Parameters
    ----------
    transitions_or_adata
        A :class:`cellflow.tl._transitions.Transitions` (from :func:`cellflow.tl.transitions`), or the
        AnnData of a fit, for which it is computed between ``from_time`` and ``to_time``.
    from_time, to_time, groupby, key, n_neighbors
        Passed to :func:`cellflow.tl.transitions` with an AnnData; ignored with a Transitions.
        (``from_time`` and ``to_time`` were called ``t1`` and ``t2``.)
    normalize
        ``"forward"``: rows sum to one (where the cells of a group at ``from_time`` go);
        ``"backward"``: columns sum to one (where the cells of a group at ``to_time`` come from);
        ``None``: the transported mass, in cells of ``from_time``.
    ax
        Target axes.
    cmap
        Colour map (default ``viridis``); groups with no mass are grey.
    annotate
        Write each value in its cell.
    title
        Axes title (default: the two times and what the values mean).
    show, save
        Show the figure; save it to this path.

    Returns
    -------
    The axes, unless the figure is shown (``show=True``, or ``show=None`` without ``save``, as
    in scanpy): then ``None``.
    """
    from ..tl import transitions as compute
    from ..tl._transitions import Transitions

    if normalize not in _NORMALIZED:
        raise ValueError(f"normalize={normalize!r} is not one of 'forward', 'backward' or None")
    if isinstance(transitions_or_adata, AnnData):
        if from_time is None or to_time is None:
            raise ValueError("with an AnnData, pass from_time= and to_time= (the two measured times) to compute the "
                             "transitions")
        table = compute(transitions_or_adata, from_time, to_time, groupby, key=key, n_neighbors=n_neighbors,
                        progress=False)
        time_key = style.fit_time_key(transitions_or_adata, key)
    elif isinstance(transitions_or_adata, Transitions):
        table = transitions_or_adata
        time_key = _time_key_of(table)
    else:
        raise TypeError(
            f"transitions_or_adata is a {type(transitions_or_adata).__name__}; pass what cellflow.tl.transitions "
            "returned, or the AnnData of a fit with from_time= and to_time="
        )
    attribute, meaning, bar_label = _NORMALIZED[normalize]
    values: pd.DataFrame = getattr(table, attribute)
    start, end = style.time_label(time_key, table.from_time), style.time_label(time_key, table.to_time)
    n_rows, n_cols = values.shape
    fig, ax = style.axes(ax, figsize=(2.5 + 0.7 * n_cols, 1.5 + 0.45 * n_rows))
    matrix = values.to_numpy(dtype=float)
    peak = 1.0 if normalize else max(float(np.nanmax(matrix)), 1e-12)
    image = ax.imshow(matrix, cmap=style.colormap(cmap), vmin=0.0, vmax=peak, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label=bar_label.format(start=start))
    if annotate:
        for (row, col), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                ax.text(col, row, f"{value:.2f}" if normalize else f"{value:.3g}", ha="center", va="center",
                        fontsize=7, color=_ink(image.cmap(image.norm(value))))
    ax.set_xticks(range(n_cols), [str(c) for c in values.columns], rotation=45, ha="right")
    ax.set_yticks(range(n_rows), [str(r) for r in values.index])
    ax.set_xlabel(f"{table.groupby} at {end}")
    ax.set_ylabel(f"{table.groupby} at {start}")
    ax.set_title(f"{start} -> {end}: {meaning}" if title is None else title)
    return style.finish(fig, ax, show, save)


def _smooth_step(fraction: np.ndarray) -> np.ndarray:
    return fraction * fraction * (3 - 2 * fraction)


def sankey(
    adata: AnnData,
    times,
    groupby: str = "cell_type",
    *,
    key: str = "cellflow",
    n_neighbors: int = 15,
    across: str = "chain",
    palette=None,
    legend_loc: str | None = "right margin",
    title: str | None = None,
    ax=None,
    show: bool | None = None,
    save: str | None = None,
) -> Axes | None:
    """Flow of the groups across several time points, as a Sankey diagram.

    :func:`cellflow.tl.transitions` is computed between each pair of consecutive times. Each
    time point is a column of bars, one per group; a band joins group ``A`` at one time with
    group ``B`` at the next, as wide as the share of that step's transported mass moving from
    ``A`` to ``B`` (``counts / counts.sum()``), in the colour of ``A``. A bar is as tall as the
    larger of the mass arriving in its group and the mass leaving it, so a bar with a gap on
    one side shows a group whose share the flow predicts differently from what was measured.

    Parameters
    ----------
    adata
        The AnnData that :func:`cellflow.tl.fit` wrote into.
    times
        Two or more measured times, increasing.
    groupby
        ``obs`` column of the groups.
    key, n_neighbors, across
        Passed to :func:`cellflow.tl.transitions` (which warns when its pushed cells left the data,
        or, between times with measured ones between them, when the chain and the flow disagree).
    palette
        Group colours (as for :func:`cellflow.pl.velocity`; default ``uns[f"{groupby}_colors"]``).
    legend_loc
        ``"right margin"``, ``"on data"`` (names beside the bars), ``None``/``"none"`` or a
        matplotlib location.
    title
        Axes title (default: the groups and the times, e.g. ``"cell_type: day 10 -> day 11"``).
    ax, show, save
        Target axes; show the figure; save it to this path.

    Returns
    -------
    The axes, unless the figure is shown (``show=True``, or ``show=None`` without ``save``, as
    in scanpy): then ``None``.
    """
    import matplotlib.patches as mpatches

    from ..tl import transitions as compute

    style.check_legend_loc(legend_loc)
    times = [float(t) for t in np.atleast_1d(np.asarray(times, dtype=float))]
    if len(times) < 2 or np.any(np.diff(times) <= 0):
        raise ValueError(f"times={times} must be two or more measured times, increasing")
    if groupby not in adata.obs:
        raise KeyError(f"groupby={groupby!r} is not a column of adata.obs; name the column of the cell groups")
    steps = [compute(adata, a, b, groupby, key=key, n_neighbors=n_neighbors, progress=False, across=across)
             for a, b in zip(times, times[1:])]
    shares = [step.counts / max(float(step.counts.to_numpy().sum()), 1e-300) for step in steps]
    time_key = style.fit_time_key(adata, key)
    labels = style.categories_of(adata.obs[groupby])
    colours = {str(k): v for k, v in style.category_colours(adata, groupby, labels, palette, time_key=time_key).items()}
    order = [str(c) for c in labels.categories]

    leaving = [share.sum(axis=1) for share in shares] + [pd.Series(dtype=float)]
    arriving = [pd.Series(dtype=float)] + [share.sum(axis=0) for share in shares]
    heights = [{g: max(float(out.get(g, 0.0)), float(into.get(g, 0.0))) for g in order} for out, into in
               zip(leaving, arriving)]
    gap = 0.03 * max(sum(column.values()) for column in heights)
    tops = []
    for column in heights:
        top, cursor = {}, 0.0
        for group in order:
            if column[group] > 0:
                top[group] = cursor
                cursor -= column[group] + gap
        tops.append(top)

    fig, ax = style.axes(ax, figsize=(2.2 * len(times) + 1.5, 4.5))
    bar = 0.08
    for i, (column, top) in enumerate(zip(heights, tops)):
        for group, y in top.items():
            node = mpatches.Rectangle((i - bar / 2, y - column[group]), bar, column[group], color=colours[group], lw=0)
            node.set_gid(f"{times[i]:g}:{group}")
            ax.add_patch(node)
            if legend_loc == "on data":
                ax.text(i + bar, y - column[group] / 2, group, fontsize=7, va="center",
                        bbox=dict(facecolor="white", alpha=0.7, lw=0, pad=1))
    xs = np.linspace(0.0, 1.0, 60)
    for i, share in enumerate(shares):
        below_left, below_right = dict(tops[i]), dict(tops[i + 1])
        for source in share.index:
            for target in share.columns:
                width = float(share.loc[source, target])
                if width <= 0:
                    continue
                left, right = below_left[source], below_right[target]
                upper = left + (right - left) * _smooth_step(xs)
                band = ax.fill_between(i + bar / 2 + xs * (1 - bar), upper - width, upper, color=colours[source],
                                       alpha=0.45, lw=0)
                band.set_gid(f"{times[i]:g}->{times[i + 1]:g}:{source}->{target}")
                below_left[source], below_right[target] = left - width, right - width
    lowest = min(min(y - column[g] for g, y in top.items()) for column, top in zip(heights, tops) if top)
    ax.set_xlim(-0.3, len(times) - 0.7)
    ax.set_ylim(lowest - gap, gap)
    ax.set_xticks(range(len(times)), [style.time_label(time_key, t) for t in times])
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    shown = [g for g in order if any(g in top for top in tops)]
    if legend_loc != "on data":
        style.category_legend(ax, colours, shown, legend_loc, marker="s")
    route = " -> ".join(style.time_label(time_key, t) for t in times)
    ax.set_title(f"{groupby}: {route}" if title is None else title)
    return style.finish(fig, ax, show, save)


def loss(
    adata: AnnData, *, key: str = "cellflow", ax=None, show: bool | None = None, save: str | None = None
) -> Axes | None:
    """Training loss per step (and a running mean) of the model stored in ``uns[key]``.

    Parameters
    ----------
    adata
        The AnnData that :func:`cellflow.tl.fit` wrote into.
    key
        The ``key_added`` of the fit.
    ax
        Target axes; default a new figure.
    show, save
        Show the figure; save it to this path.

    Returns
    -------
    The axes, unless the figure is shown (``show=True``, or ``show=None`` without ``save``, as
    in scanpy): then ``None``.
    """
    history = np.asarray(adata.uns[key]["history"]["loss"])
    fig, ax = style.axes(ax, (5, 3.5))
    ax.plot(history, lw=0.5, alpha=0.4, label="step")
    window = max(1, len(history) // 50)
    ax.plot(np.convolve(history, np.ones(window) / window, mode="valid"), lw=1.5, label=f"mean of {window}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.legend(frameon=False)
    return style.finish(fig, ax, show, save)

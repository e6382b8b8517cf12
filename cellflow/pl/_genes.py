"""Plot of gene trends (:func:`cellflow.tl.gene_trends`); ``show`` and ``save`` behave as in scanpy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from . import _style as style

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_COLUMNS = ("gene", "time", "mean", "std")


def gene_trends(
    trends_frame: pd.DataFrame,
    *,
    genes: str | Sequence[str] | None = None,
    ax=None,
    title: str | None = None,
    palette=None,
    show: bool | None = None,
    save: str | None = None,
) -> Axes | None:
    """Mean expression over time, one line per gene, with a band of one standard deviation.

    Parameters
    ----------
    trends_frame
        The table of :func:`cellflow.tl.gene_trends` (columns ``gene``, ``time``, ``mean``,
        ``std``; rows with ``measured`` true are drawn as dots, the measured time points).
    genes
        Genes to draw, in this order; default all of the table.
    ax
        Axes to draw into; default a new figure.
    title
        Default: which cells were followed (``trends_frame.attrs["cells"]``).
    palette
        Colours: a colormap name, a list, or a mapping gene -> colour; default as scanpy (matplotlib's cycle).
    show, save
        Show the figure; save it to this path.

    Returns
    -------
    The axes, unless the figure is shown (``show=True``, or ``show=None`` without ``save``, as
    in scanpy): then ``None``.
    """
    if not isinstance(trends_frame, pd.DataFrame) or not set(_COLUMNS) <= set(trends_frame.columns):
        raise ValueError(f"trends_frame must be the table of cellflow.tl.gene_trends, with columns {list(_COLUMNS)}")
    present = list(dict.fromkeys(trends_frame["gene"].astype(str)))
    genes = present if genes is None else [genes] if isinstance(genes, str) else [str(g) for g in genes]
    if not genes:
        raise ValueError("genes is empty: name at least one gene of the trends table")
    missing = [g for g in genes if g not in present]
    if missing:
        raise KeyError(f"genes {missing[:5]} are not in the trends table (genes: {present[:10]})")
    fig, ax = style.axes(ax)
    for gene, colour in zip(genes, style.palette_colours(palette, genes, "genes") if palette is not None
                                   else style.default_colours(len(genes))):
        rows = trends_frame[trends_frame["gene"].astype(str) == gene].sort_values("time")
        time, mean, std = (rows[c].to_numpy(dtype=float) for c in ("time", "mean", "std"))
        ax.plot(time, mean, color=colour, label=gene, linewidth=1.5)
        ax.fill_between(time, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
        if "measured" in rows:
            measured = rows["measured"].to_numpy(dtype=bool)
            ax.plot(time[measured], mean[measured], "o", color=colour, markersize=4)
    ax.set_xlabel("time")
    ax.set_ylabel("mean expression")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(title if title is not None else trends_frame.attrs.get("cells", "gene trends"))
    return style.finish(fig, ax, show, save)

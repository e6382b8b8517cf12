"""Plot of a fit's trust signals (:mod:`cellflow.model`): how far long pushes drift from the data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from anndata import AnnData

from . import _style as style

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: Where a long push is trusted: W1 from the first time point at most this times the one-interval W1.
RATIO_BAND = 1.3
_PANELS = ("gain", "norm_ratio")


def _history(model_or_adata, key: str) -> Mapping:
    """The history of a :class:`cellflow.CellFlow`, or of the model stored in ``adata.uns[key]``."""
    from ..model import HISTORY_KEYS, CellFlow
    from ..tl import _keys as keys

    if isinstance(model_or_adata, CellFlow):
        history, whose = model_or_adata.history, "the model"
    elif isinstance(model_or_adata, AnnData):
        history, whose = keys.fit_state(model_or_adata, key).get("history", {}), f"the model of adata.uns[{key!r}]"
    else:
        raise TypeError("pass a fitted cellflow.CellFlow or the AnnData of a fit, not a "
                        f"{type(model_or_adata).__name__}")
    missing = [name for name in HISTORY_KEYS if name not in history]
    if missing:
        raise KeyError(f"{whose} has no horizon in its history (missing {', '.join(missing)}): it was fitted by a "
                       "cellflow that did not record one; refit it")
    return history


def horizon(
    model_or_adata,
    *,
    key: str = "cellflow",
    panel: str = "gain",
    ax=None,
    title: str | None = None,
    show: bool | None = None,
    save: str | None = None,
) -> list[Axes] | None:
    """How far a push from the first time point drifts from the data, against one interval, over time.

    Top: W1 between the cells of the first time point pushed to each later measured time and the
    measured cells there, beside the W1 of the cells of the time point before pushed over one
    interval, with a band from that one-interval W1 up to 1.3 times it (where the long push is
    trusted). Bottom: the gain of each interval's map on cells moved slightly off the data, drawn
    at the interval's end (``panel="gain"``, one is neutral), or the largest pushed norm over the data's
    (``panel="norm_ratio"``, above one: cells beyond the data). Both are recorded by the fit in
    ``history`` (:func:`cellflow.model.horizon_history`). The W1 axis is logarithmic when the
    long push is more than ten times the largest one-interval W1.

    Parameters
    ----------
    model_or_adata
        A fitted :class:`cellflow.CellFlow`, or the AnnData whose model :func:`cellflow.tl.fit`
        stored in ``uns[key]``.
    key
        The ``key_added`` of the fit, with an AnnData.
    panel
        The lower panel: ``"gain"`` or ``"norm_ratio"``.
    ax
        Two axes to draw into (top and bottom); default a new figure.
    title
        Title of the top panel (default: what it shows).
    show, save
        Show the figure; save it to this path.

    Returns
    -------
    The two axes, as a list ``[top, bottom]``, unless the figure is shown (``show=True``, or
    ``show=None`` without ``save``, as in scanpy): then ``None``.
    """
    import matplotlib.pyplot as plt

    if panel not in _PANELS:
        raise ValueError(f"panel={panel!r} is not one of {', '.join(map(repr, _PANELS))}")
    history = _history(model_or_adata, key)
    times = np.asarray(history["horizon_times"], dtype=float)
    first = np.asarray(history["horizon_w1_first"], dtype=float)
    previous = np.asarray(history["horizon_w1_previous"], dtype=float)
    if ax is None:
        fig, axes = plt.subplots(2, 1, figsize=(5.5, 6), sharex=True, height_ratios=(2, 1))
    else:
        axes = np.ravel(np.asarray(ax, dtype=object))
        if len(axes) != 2:
            raise ValueError(f"ax must be two axes (top and bottom panel), got {len(axes)}")
        fig = axes[0].figure
    top, bottom = axes
    top.fill_between(times, previous, RATIO_BAND * previous, color="tab:blue", alpha=0.15, linewidth=0,
                     label=f"1 to {RATIO_BAND:g}x the one-interval W1")
    top.plot(times, previous, "o-", color="tab:blue", label="pushed from the time point before")
    top.plot(times, first, "o-", color="tab:red", label="pushed from the first time point")
    top.set_ylabel("W1 to the measured cells")
    if np.nanmax(first) > 10 * np.nanmax(previous):  # a diverging push: keep the one-interval W1 readable
        top.set_yscale("log")
    top.legend(frameon=False, fontsize=8)
    top.set_title("Horizon: long push against one interval" if title is None else title)
    if panel == "gain":  # each interval's gain at its end time
        bottom.plot(times, np.asarray(history["interval_gain"], dtype=float), "o-", color="tab:gray")
        bottom.set_ylabel("gain off the data\n(interval ending here)")
    else:
        bottom.plot(times, np.asarray(history["horizon_norm_ratio"], dtype=float), "o-", color="tab:gray")
        bottom.set_ylabel("largest pushed norm\nover the data's")
    bottom.axhline(1.0, color="k", lw=0.8, ls="--")
    bottom.set_xlabel("time")
    return style.finish(fig, [top, bottom], show, save)

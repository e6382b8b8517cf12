"""Preprocessing of time courses."""

from __future__ import annotations

from typing import Mapping

from anndata import AnnData

from .readers import parse_times


def numeric_time(
    adata: AnnData,
    time_key: str,
    *,
    time_map: Mapping | None = None,
    key_added: str = "time",
    copy: bool = False,
) -> AnnData | None:
    """Write each cell's time as a number to ``obs[key_added]``.

    Labels such as ``"day 2.5"``, ``"D3"`` or ``"12h"`` are read for the number they hold;
    stage names need ``time_map``. The source column is left as it is.

    Returns
    -------
    The AnnData when ``copy=True``, else ``None``.
    """
    adata = adata.copy() if copy else adata
    if key_added != time_key and key_added in adata.obs:
        raise ValueError(f"adata.obs[{key_added!r}] already exists; pass another key_added")
    adata.obs[key_added] = parse_times(adata.obs[time_key], time_key, time_map)
    return adata if copy else None

"""Plots with matplotlib, with scanpy's habits.

Embedding plots take ``basis=`` (any ``obsm`` key, with or without ``"X_"``), colour cells by an
``obs`` column or a gene with the colours scanpy would use (``uns[f"{color}_colors"]``), and take
``palette``, ``size``, ``title``, ``legend_loc``, ``ax``, ``show`` and ``save`` (a file path).
Each returns its axes unless the figure is shown.
"""

from ._embedding import growth, interpolation, velocity
from ._fates import fate
from ._genes import gene_trends
from ._horizon import horizon
from ._tables import loss, sankey, transitions

__all__ = ["fate", "gene_trends", "growth", "horizon", "interpolation", "loss", "sankey", "transitions", "velocity"]


def __dir__():
    return list(__all__)

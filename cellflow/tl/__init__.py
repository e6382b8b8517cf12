"""Tools on AnnData: fit a flow, then read fates, ancestors, pushes and pulls, transitions, trajectories and
gene trends from it, and hand it to CellRank.
"""

from ._drivers import fate_drivers
from ._fate import ancestors, fate
from ._fit import fit, leave_one_out, load_ensemble, load_model
from ._genes import gene_trends
from ._interop import cellrank_couplings
from ._interpolate import interpolate
from ._labels import transfer_labels
from ._mapping import pull, push
from ._trajectories import trajectories
from ._transitions import transitions

__all__ = [
    "ancestors", "cellrank_couplings", "fate", "fate_drivers", "fit", "gene_trends", "interpolate", "leave_one_out",
    "load_ensemble", "load_model", "pull", "push", "trajectories", "transfer_labels", "transitions",
]


def __dir__() -> list[str]:
    """The public tools only."""
    return list(__all__)

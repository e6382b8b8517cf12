"""Training: objectives that draw batches from couplings along paths, the one loop, its stopping rule and the
rollout term.
"""

from ._loop import LR_SCHEDULES, learning_rate, train
from ._objectives import (
    OBJECTIVES,
    Batch,
    EndpointObjective,
    PairObjective,
    TupleObjective,
)
from ._reflow import rectify
from ._rollout import RolloutLoss, fit_rollouts, rollout_steps
from ._stopping import CHECK_CELLS, EarlyStopping, transport_stopping

__all__ = [
    "CHECK_CELLS", "LR_SCHEDULES", "OBJECTIVES", "Batch", "EarlyStopping", "EndpointObjective", "PairObjective",
    "RolloutLoss", "TupleObjective", "fit_rollouts", "learning_rate", "rectify", "rollout_steps", "train",
    "transport_stopping",
]

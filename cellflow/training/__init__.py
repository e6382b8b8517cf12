"""Training: objectives that draw batches from couplings along paths, the one loop, its stopping rule and the
rollout term."""

from ._loop import LR_SCHEDULES, learning_rate, train
from ._objectives import (
    OBJECTIVES,
    Batch,
    EndpointObjective,
    PairObjective,
    TupleObjective,
)
from ._rollout import RolloutLoss
from ._stopping import CHECK_CELLS, EarlyStopping, transport_stopping

__all__ = [
    "CHECK_CELLS", "LR_SCHEDULES", "OBJECTIVES", "Batch", "EarlyStopping", "EndpointObjective", "PairObjective",
    "RolloutLoss", "TupleObjective", "learning_rate", "train", "transport_stopping",
]

"""The benchmark protocol: leave one time point out, predict it, and score it against the exact-OT baselines."""

from ._protocol import (
    BASELINES,
    MMD_BANDWIDTHS,
    baselines,
    fold,
    fold_pca,
    leave_one_out,
    mmd_bandwidths,
    ot_barycentric_map,
    ot_interpolation,
    ot_interpolation_draw,
    predict,
    score,
)

__all__ = [
    "BASELINES", "MMD_BANDWIDTHS", "baselines", "fold", "fold_pca", "leave_one_out", "mmd_bandwidths",
    "ot_barycentric_map", "ot_interpolation", "ot_interpolation_draw", "predict", "score",
]

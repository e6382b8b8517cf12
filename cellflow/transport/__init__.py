"""Couplings between the cells of neighbouring time points (optimal transport, balanced or unbalanced) and
the samplers that draw coupled pairs and chains from them.
"""

from ._couplings import (
    BLOCK_ORDERS,
    Coupling,
    EntropicOTCoupling,
    ExactOTCoupling,
    IndependentCoupling,
    WFRCoupling,
    blocks,
    entropic_potentials,
)
from ._potentials import PotentialCoupling, PotentialMapCoupling, solve_potentials
from ._samplers import (
    IndependentSampler,
    Pairs,
    PairSampler,
    PlanSampler,
    StackedPlans,
    WFRSampler,
    sample_chains,
)

__all__ = [
    "BLOCK_ORDERS", "Coupling", "EntropicOTCoupling", "ExactOTCoupling", "IndependentCoupling", "IndependentSampler",
    "PairSampler", "Pairs", "PlanSampler", "PotentialCoupling", "PotentialMapCoupling", "StackedPlans", "WFRCoupling",
    "WFRSampler", "blocks", "entropic_potentials", "sample_chains", "solve_potentials",
]

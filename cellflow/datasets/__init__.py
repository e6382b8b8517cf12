"""Published time-course datasets (upstream files, checksum verified) and a simulated time course with known
velocity and growth.
"""

from ._files import (
    CACHE_DIR_ENV,
    DATA_DIR_ENV,
    SHA256,
    URLS,
    emt,
    kouno_thp1,
    moscot_temporal,
    mouse_hematopoiesis,
    simulation_gene,
)
from ._simulate import simulate, simulated_growth, simulated_velocity

__all__ = [
    "CACHE_DIR_ENV", "DATA_DIR_ENV", "SHA256", "URLS", "emt", "kouno_thp1", "moscot_temporal", "mouse_hematopoiesis",
    "simulate", "simulated_growth", "simulated_velocity", "simulation_gene",
]

"""Rectified flow ("reflow"): train again on straight lines from each cell to the end of its own trajectory."""

from __future__ import annotations

import time

import numpy as np
import torch

from .. import metrics
from ..fields import Clock
from ..paths import LinearPath
from ..solvers import integrate
from ._loop import train
from ._objectives import EndpointObjective
from ._stopping import CHECK_CELLS, TrainingField


def rectify(net: torch.nn.Module, field: TrainingField, populations: list[torch.Tensor], times: np.ndarray,
            clock: Clock, *,
            masses: list[torch.Tensor] | None, rounds: int, n_steps: int, batch_size: int, lr: float,
            lr_schedule: str, ema_decay: float | None, rng: np.random.Generator, progress: bool,
            history: dict[str, np.ndarray]) -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    """Rounds of rectified flow on internal populations.

    A round pushes every cell of each time point ``t_k`` but the last to ``t_(k+1)`` along the
    current flow (dopri5), and trains the network again on straight lines without noise from each
    cell to its own end point (:class:`EndpointObjective`, cells drawn in proportion to ``masses``),
    from the current weights, for ``n_steps`` steps without early stopping.

    Parameters
    ----------
    net
        The trained network; ``field(z, t, net) -> (velocity, growth)`` per unit of real time.
    populations, times, clock
        Cells of each time point (internal units), their real times, the internal clock.
    history
        The history so far: the ``reflow_*`` entries of earlier rounds are extended.

    Returns
    -------
    The network after the last round, and ``reflow_loss`` (rounds x steps), ``reflow_seconds`` and
    ``reflow_straightness`` (:func:`cellflow.metrics.straightness` of each interval on up to
    :data:`CHECK_CELLS` cells of its start; the first row is before the first round).
    """
    checked = [z[torch.as_tensor(rng.choice(len(z), min(CHECK_CELLS, len(z)), replace=False), device=z.device)]
               for z in populations[:-1]]
    spans = list(zip(times[:-1], times[1:]))

    def straightness(current: torch.nn.Module) -> list[float]:
        return [metrics.straightness(lambda z, t: field(z, t, current)[0], cells, t0, t1)
                for cells, (t0, t1) in zip(checked, spans)]

    log = {key: list(history.get(f"reflow_{key}", [])) for key in ("loss", "seconds", "straightness")}
    if not log["straightness"]:
        log["straightness"].append(straightness(net))
    for _ in range(rounds):
        start = time.perf_counter()
        def velocity(z: torch.Tensor, t: torch.Tensor, current: torch.nn.Module = net) -> torch.Tensor:
            return field(z, t, current)[0]

        with torch.no_grad():
            ends = [integrate(velocity, z, torch.tensor([t0, t1], dtype=torch.float32))[-1]
                    for z, (t0, t1) in zip(populations[:-1], spans)]
        objective = EndpointObjective(populations[:-1], ends, times, LinearPath(), batch_size, masses)
        net, round_log = train(net.requires_grad_(True), objective, clock, n_steps=n_steps, lr=lr,
                               lr_schedule=lr_schedule, ema_decay=ema_decay, progress=progress)
        net = net.eval()
        log["loss"].append(round_log["loss"])
        log["seconds"].append(time.perf_counter() - start)
        log["straightness"].append(straightness(net))
    return net, {f"reflow_{key}": np.array(values) for key, values in log.items()}

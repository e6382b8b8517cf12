"""The one training loop: Adam steps on a flow-matching objective, with optional rollout term and stopping rule."""

from __future__ import annotations

import copy
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from .. import _distributed as distributed
from .._checks import choice
from .._utils import finish_early, progress_bar
from ..fields import Clock, field_output
from ._objectives import Batch, Objective
from ._stopping import EarlyStopping

LR_SCHEDULES = ("constant", "cosine")


class StepTerm(Protocol):
    """A term added to each step's loss (:class:`cellflow.training.RolloutLoss`): ``term(net, loss)`` is the
    step's loss, and ``last`` the term's own value at the last step.
    """

    last: float

    def __call__(self, net: nn.Module, matching_loss: torch.Tensor) -> torch.Tensor:
        """The step's loss from flow matching's ``matching_loss``."""
        ...


def learning_rate(step: int, n_steps: int, lr: float, schedule: str = "constant") -> float:
    """Learning rate of ``step`` (0-based) out of ``n_steps``.

    ``"constant"``: ``lr`` throughout. ``"cosine"``: half a cosine from ``lr`` at the first step
    to ``lr / 100`` at the last.
    """
    if schedule == "constant" or n_steps < 2:
        return lr
    floor = lr / 100
    return floor + 0.5 * (lr - floor) * (1 + np.cos(np.pi * step / (n_steps - 1)))


def _squared_error(net: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean over the batch of ``(|v - u|^2 + |g_net - g|^2 + |noise_scale s_net - score|^2) * weight``."""
    with_score = batch.score is not None
    output = field_output(net(batch.x, batch.t, score=True) if with_score else net(batch.x, batch.t))
    error = ((output.velocity - batch.u) ** 2).sum(dim=1)
    if batch.g is not None:
        assert output.growth is not None, "a method with growth targets has a growth network"
        error = error + (output.growth[:, 0] - batch.g) ** 2
    if batch.score is not None:
        assert output.score is not None and batch.noise_scale is not None, "score targets come with their network"
        error = error + ((batch.noise_scale * output.score - batch.score) ** 2).sum(dim=1)
    if batch.weight is not None:
        error = error * batch.weight
    return error.mean()


def train(
    net: nn.Module,
    objective: Objective,
    clock: Clock,
    *,
    n_steps: int,
    lr: float = 1e-3,
    lr_schedule: str = "constant",
    ema_decay: float | None = 0.999,
    stopping: EarlyStopping | None = None,
    rollout: StepTerm | None = None,
    progress: bool | None = None,
    description: str = "training",
) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """Fit ``net(x, t)`` to the targets of ``objective`` by Adam on the squared error.

    The loss is ``E[(|v - u|^2 + |g_net - g|^2 + |noise_scale s_net - score|^2) * weight]``, the growth and
    score terms and the weight only where the batch has them. Velocity, growth and score are
    separate networks (:class:`cellflow.fields.Fields`), so each is fitted to its own target (a
    relative weight of the errors would not change the fit under Adam).

    Under an initialised ``torch.distributed`` process group of several processes the network is
    wrapped in :class:`torch.nn.parallel.DistributedDataParallel`: every process draws its own
    batches, gradients are averaged across processes, and the scores of early stopping are
    averaged too, so every process takes the same steps and stops at the same one.

    Parameters
    ----------
    net
        The field, trained in place: returns a velocity, or a :class:`cellflow.fields.FieldOutput`
        (with the score output when called with ``score=True``).
    objective
        Anything with ``draw() -> Batch`` (real-time targets).
    clock
        Turns each batch into the network's units (:meth:`cellflow.fields.Clock.to_network`).
    n_steps
        Optimiser steps (the most, with ``stopping``).
    lr
        Adam learning rate (the peak rate with a schedule).
    lr_schedule
        ``"constant"``, or ``"cosine"``: half a cosine from ``lr`` down to ``lr / 100`` over the steps.
    ema_decay
        Decay of an exponential moving average of the weights (``None``: no average). Early on
        the decay is ``min(ema_decay, (1 + step) / (10 + step))`` so the first weights do not linger.
    stopping
        Stop early by a score of the network (:class:`EarlyStopping`); ``None`` runs every step.
    rollout
        A :class:`cellflow.training.RolloutLoss`: each step's loss becomes ``rollout(net, loss)``,
        flow matching plus the rollout term, each over its value when the stage started.
    progress
        Show a progress bar: ``True`` or ``False``; ``None`` (default) shows it unless
        ``scanpy.settings.verbosity`` is 0 (:func:`cellflow._utils.show_progress`).
    description
        The progress bar's label.

    Returns
    -------
    The trained field (the averaged copy when ``ema_decay`` is set) and its history: ``loss``
    of every step run (with ``rollout``, the rollout term's own value at each step as
    ``rollout``) and, with ``stopping``, ``stopping_score`` at each check with the checks'
    ``stopping_step``, and ``stopping_reason`` (a string: why training ended, early or at ``n_steps``).
    A stop before ``n_steps`` completes the progress bar at the steps run, with the reason beside it.
    """
    choice("lr_schedule", lr_schedule, LR_SCHEDULES)
    model = net
    if distributed.active():
        model = nn.parallel.DistributedDataParallel(net)  # starts from rank 0's weights
    optimiser = torch.optim.Adam(net.parameters(), lr=lr, foreach=True)
    average = copy.deepcopy(net).requires_grad_(False) if ema_decay else None
    result = average if average is not None else net
    trained: list[torch.Tensor] = list(net.parameters())
    averaged: list[torch.Tensor] = list(average.parameters()) if average is not None else []
    history = torch.empty(n_steps, device=next(net.parameters()).device)
    rollout_history = np.full(n_steps, np.nan)
    checks: list[tuple[int, float]] = []
    best, reference, waited = np.inf, np.inf, 0
    best_state: dict[str, Any] | None = None
    bar = progress_bar(n_steps, description, progress)
    step, stopped = 0, False
    for step in range(n_steps):
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, n_steps, lr, lr_schedule)
        loss = _squared_error(model, clock.to_network(objective.draw()))
        if rollout is not None:
            loss = rollout(model, loss)
            rollout_history[step] = rollout.last
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if ema_decay:  # the average exists
            decay = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(averaged, trained, 1 - decay)
        history[step] = loss.detach()
        if not bar.disable and (step % 50 == 0 or step == n_steps - 1):
            bar.set_postfix(loss=f"{loss.item():.4g}")
        bar.update()
        if stopping is not None and (step + 1) % stopping.check_every == 0:
            with torch.no_grad():
                value = float(distributed.mean(stopping.score(result)))  # every process stops at the same step
            checks.append((step + 1, value))
            if checks[-1][1] < best:
                best, best_state = checks[-1][1], copy.deepcopy(result.state_dict())
            if checks[-1][1] < reference - stopping.min_improvement * stopping.scale:
                reference, waited = checks[-1][1], 0
            else:
                waited += 1
                if waited >= stopping.patience:
                    stopped = True
                    break
    if stopped:
        assert stopping is not None
        finish_early(bar, stopping.reason())
    else:
        bar.close()
    if best_state is not None:
        result.load_state_dict(best_state)
    log = {"loss": history[: step + 1].cpu().numpy()}
    if rollout is not None:
        log["rollout"] = rollout_history[: step + 1]
    if checks:
        log["stopping_step"], log["stopping_score"] = (np.array(c) for c in zip(*checks))
    if stopping is not None:
        log["stopping_reason"] = np.array(f"{stopping.reason()} (at step {step + 1} of {n_steps})" if stopped
                                          else f"ran all {n_steps} steps: the stopping rule did not end training")
    return result, log

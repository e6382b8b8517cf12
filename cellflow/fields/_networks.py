"""Neural fields of position and time."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class TimeMLP(nn.Module):
    """Multilayer perceptron ``f(x, t)`` with the time appended to the input.

    Parameters
    ----------
    dim
        Dimension of ``x``.
    hidden
        Widths of the hidden layers.
    out_dim
        Output dimension (``dim`` when ``None``: a velocity field).
    output_bias
        Give the output layer a bias.
    """

    def __init__(self, dim: int, hidden: tuple[int, ...] = (256, 256, 256), out_dim: int | None = None,
                 output_bias: bool = True):
        super().__init__()
        widths = [dim + 1, *hidden]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(w_in, w_out), nn.SiLU()]
        layers.append(nn.Linear(widths[-1], dim if out_dim is None else out_dim, bias=output_bias))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Evaluate at positions ``x`` ``(n, dim)`` and times ``t`` (scalar, ``(n,)`` or ``(n, 1)``)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(x.shape[0], 1)
        return self.net(torch.cat([x, t], dim=1))


class GradientField(nn.Module):
    """A velocity that is the gradient of a learned scalar potential: ``v(x, t) = grad_x phi(x, t)``.

    Such a field has no curl (its Jacobian in ``x`` is symmetric), as the velocity of optimal
    transport has. The gradient is taken by autograd: where gradients are on (training), with
    ``create_graph=True`` so that the loss reaches the potential's weights; under
    ``torch.no_grad`` (evaluation, integration, early stopping) gradients are switched on for
    this one computation only and nothing is kept for a backward pass.

    Parameters
    ----------
    dim
        Dimension of ``x``.
    hidden
        Widths of the potential's hidden layers (smooth SiLU activations, so the field is smooth).
    """

    def __init__(self, dim: int, hidden: tuple[int, ...] = (256, 256, 256)):
        super().__init__()
        # a constant added to the potential moves no cell: without that bias every weight gets a
        # gradient, as DistributedDataParallel requires
        self.potential = TimeMLP(dim, hidden, out_dim=1, output_bias=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The velocity ``(n, dim)`` at positions ``x`` ``(n, dim)`` and times ``t``."""
        training = torch.is_grad_enabled()
        with torch.enable_grad():
            position = x if x.requires_grad else x.detach().requires_grad_(True)
            phi = self.potential(position, t).sum()
            (velocity,) = torch.autograd.grad(phi, position, create_graph=training)
        return velocity


FIELDS = {"direct": TimeMLP, "gradient": GradientField}  # how a velocity network is parametrised


def velocity_network(dim: int, hidden: tuple[int, ...], field: str = "direct") -> nn.Module:
    """A velocity network of :data:`FIELDS`: ``"direct"`` (an MLP with ``dim`` outputs) or
    ``"gradient"`` (the gradient of a scalar MLP, :class:`GradientField`).
    """
    return FIELDS[field](dim, hidden)


class FieldOutput(NamedTuple):
    """What a field network returns: velocity ``(n, dim)``, growth rate ``(n, 1)`` and score ``(n, dim)``,
    each ``None`` where absent.
    """

    velocity: torch.Tensor
    growth: torch.Tensor | None = None
    score: torch.Tensor | None = None


def field_output(output: FieldOutput | torch.Tensor) -> FieldOutput:
    """A network's output as a :class:`FieldOutput` (a bare tensor is a velocity)."""
    return output if isinstance(output, FieldOutput) else FieldOutput(output)


class Fields(nn.Module):
    """A velocity network beside a growth network (unbalanced methods) and/or a score network
    (paths with bridge noise), each fitted to its own target.

    Parameters
    ----------
    velocity
        The velocity network ``v(x, t)``.
    growth
        The growth network ``(n, 1)``, or ``None``.
    score
        The score network ``(n, dim)``, or ``None``.
    """

    def __init__(self, velocity: nn.Module, growth: nn.Module | None = None, score: nn.Module | None = None):
        super().__init__()
        self.velocity, self.growth, self.score = velocity, growth, score

    def forward(self, x: torch.Tensor, t: torch.Tensor, score: bool = False) -> FieldOutput:
        """Velocity and growth at ``(x, t)``, and the score when ``score`` is set (training and
        stochastic sampling; a deterministic flow does not need it).
        """
        return FieldOutput(
            self.velocity(x, t),
            None if self.growth is None else self.growth(x, t),
            self.score(x, t) if score and self.score is not None else None,
        )

"""Neural fields of position and time."""

from __future__ import annotations

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
    """

    def __init__(self, dim: int, hidden: tuple[int, ...] = (256, 256, 256), out_dim: int | None = None):
        super().__init__()
        widths = [dim + 1, *hidden]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(w_in, w_out), nn.SiLU()]
        layers.append(nn.Linear(widths[-1], dim if out_dim is None else out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Evaluate at positions ``x`` ``(n, dim)`` and times ``t`` (scalar, ``(n,)`` or ``(n, 1)``)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(x.shape[0], 1)
        return self.net(torch.cat([x, t], dim=1))


class VelocityGrowthField(nn.Module):
    """A velocity network and a growth network of the same inputs, for unbalanced methods.

    Parameters
    ----------
    dim
        Dimension of positions.
    hidden
        Hidden widths of both networks.
    """

    def __init__(self, dim: int, hidden: tuple[int, ...] = (256, 256, 256)):
        super().__init__()
        self.velocity = TimeMLP(dim, hidden)
        self.growth = TimeMLP(dim, hidden, out_dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocity ``(n, dim)`` and growth rate ``(n, 1)``."""
        return self.velocity(x, t), self.growth(x, t)

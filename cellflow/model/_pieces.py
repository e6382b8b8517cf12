"""The pieces of a method (coupling, path, networks), built from the configuration and what a fit resolved."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..fields import Fields, TimeMLP, velocity_network
from ..paths import ConditionalPath, default_entropy_rate
from ..transport import Coupling
from ._config import Config, Resolved
from ._methods import Method


def method_settings(config: Config, resolved: Resolved | None, times: np.ndarray,
                    internal_delta: float | None) -> dict[str, Any]:
    """Every setting a coupling or a path may ask for, in internal units.

    Returns
    -------
    ``sigma``, ``reg``, ``delta`` (internal units), ``block_size``, ``block_order``, ``times`` and
    ``entropy_rate`` (the fit's, else the configured one, else the default for ``times``).
    """
    rate = resolved.entropy_rate if resolved is not None else config.entropy_rate
    rate = default_entropy_rate(times) if rate is None else rate
    return dict(sigma=config.sigma, reg=config.reg, delta=internal_delta, block_size=config.block_size,
                block_order=config.block_order, times=times, entropy_rate=rate)


def _internal_delta(config: Config, resolved: Resolved | None) -> float | None:
    """The WFR length scale in internal units (the fit's, else the configured one; none before a fit)."""
    delta = resolved.delta if resolved is not None else config.delta
    return None if delta is None or resolved is None else delta / resolved.scale


def build_coupling(config: Config, method: Method, resolved: Resolved) -> Coupling:
    """The method's coupling with the fit's settings.

    Returns
    -------
    A :class:`cellflow.transport.Coupling`.
    """
    cls = method.coupling_class
    settings = method_settings(config, resolved, resolved.times, _internal_delta(config, resolved))
    return cls(**{name: settings[name] for name in cls.settings})


def build_path(config: Config, method: Method, resolved: Resolved | None, times: np.ndarray,
               internal_delta: float | None = None) -> ConditionalPath:
    """The method's conditional path through ``times``; ``internal_delta`` overrides the fit's WFR length scale.

    Returns
    -------
    A :class:`cellflow.paths.ConditionalPath`.
    """
    cls = method.path_class
    if internal_delta is None:
        internal_delta = _internal_delta(config, resolved)
    settings = method_settings(config, resolved, times, internal_delta)
    return cls(**{name: settings[name] for name in cls.settings})


def build_network(field: str, n_dims: int, hidden: tuple[int, ...], growth: bool, score: bool) -> torch.nn.Module:
    """The velocity network (``field``: ``"direct"`` or ``"gradient"``), with a growth and a score network beside
    it where the method learns them.

    Returns
    -------
    The network (a :class:`cellflow.fields.Fields` when it has more than the velocity).
    """
    velocity = velocity_network(n_dims, hidden, field)
    if not (growth or score):
        return velocity
    return Fields(velocity, TimeMLP(n_dims, hidden, out_dim=1) if growth else None,
                  TimeMLP(n_dims, hidden) if score else None)

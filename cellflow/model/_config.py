"""A model's configuration (the user's settings, validated once) and what a fit resolves from its data."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .. import _checks
from ..fields import FIELDS, Clock
from ..training import LR_SCHEDULES
from ..transport import BLOCK_ORDERS
from ._methods import Method, resolve_method

MAX_WIDTH = 65536  # widest hidden layer accepted (a guard against typos and tampered files)

Auto = Literal["auto"]


def _optional(name: str, value: float | None, **bounds: Any) -> float | None:
    return None if value is None else _checks.number(name, value, **bounds)


@dataclass(frozen=True)
class Config:
    """The settings of a :class:`cellflow.CellFlow`, as the user gave them, checked once.

    Every field is described under :class:`cellflow.CellFlow`'s parameters. Settings that a fit
    chooses from the data (``delta``, ``entropy_rate``, ``batch_size``, ``hidden`` left at
    ``None`` or ``"auto"``) stay unresolved here: a fit stores its choices in a
    :class:`Resolved`, so that fitting the same model on another time course chooses again.
    Settings that the method does not use are ``None`` (``sigma`` for a path without noise,
    ``reg`` for a coupling without entropy, ``delta`` without WFR, ``entropy_rate`` without the
    entropy-controlled path).
    """

    method: str
    coupling: str
    path: str
    objective: str
    sigma: float | None
    reg: float | None
    delta: float | None
    entropy_rate: float | None
    hidden: tuple[int, ...] | Auto
    n_steps: int | Auto
    batch_size: int | Auto
    lr: float
    lr_schedule: str
    ema_decay: float
    block_size: int
    block_order: str
    seed: int
    field: str
    reflow: int
    rollout: bool | Auto

    @classmethod
    def create(
        cls,
        method: str = "otcfm",
        *,
        coupling: str | None = None,
        path: str | None = None,
        objective: str | None = None,
        sigma: float | None = None,
        reg: float | None = None,
        delta: float | None = None,
        entropy_rate: float | None = None,
        hidden: tuple[int, ...] | list[int] | str = "auto",
        n_steps: int | str = "auto",
        batch_size: int | str = "auto",
        lr: float = 1e-3,
        lr_schedule: str = "constant",
        ema_decay: float | None = 0.999,
        block_size: int = 2048,
        block_order: str = "random",
        field: str = "direct",
        reflow: int = 0,
        rollout: bool | str = "auto",
        seed: int = 0,
    ) -> Config:
        """Check the settings and fill in the method's defaults.

        Returns
        -------
        The configuration; raises ``ValueError`` naming the first setting that is wrong.
        """
        chosen = resolve_method(method, coupling, path, objective)
        coupling_class, path_class = chosen.coupling_class, chosen.path_class
        if sigma is not None and "sigma" not in path_class.settings:
            raise ValueError(f"sigma={sigma!r} does not apply to path={chosen.path!r}, whose settings are "
                             f"{list(path_class.settings)}; leave sigma out")
        sigma = path_class.default_sigma if sigma is None else _checks.number("sigma", sigma, minimum=0)
        reg = coupling_class.default_reg(sigma) if reg is None else _checks.number("reg", reg, minimum=0, strict=True)
        delta = _optional("delta", delta, minimum=0, strict=True,
                          hint=" (a length in the representation's units; None chooses it from the data)")
        rate = _optional("entropy_rate", entropy_rate, minimum=0, hint=" (nats per dimension per time unit)")
        widths = not isinstance(hidden, (str, bytes)) and hasattr(hidden, "__len__") and len(hidden) > 0
        if hidden != "auto" and not widths:
            raise ValueError(f"hidden={hidden!r} must be 'auto' or a list of layer widths, e.g. (256, 256, 256)")
        return cls(
            method=method, coupling=chosen.coupling, path=chosen.path, objective=chosen.objective,
            sigma=sigma if "sigma" in path_class.settings else None,
            reg=reg if "reg" in coupling_class.settings else None,
            delta=delta if chosen.needs_delta else None,
            entropy_rate=rate if "entropy_rate" in path_class.settings else None,
            hidden="auto" if hidden == "auto" else tuple(_checks.integer("hidden", h, 1, MAX_WIDTH) for h in hidden),
            n_steps="auto" if n_steps == "auto" else _checks.integer("n_steps", n_steps, hint=" (or 'auto')"),
            batch_size="auto" if batch_size == "auto" else _checks.integer("batch_size", batch_size,
                                                                            hint=" (or 'auto')"),
            lr=_checks.number("lr", lr, minimum=0, strict=True),
            lr_schedule=_checks.choice("lr_schedule", lr_schedule, LR_SCHEDULES),
            ema_decay=0.0 if ema_decay is None else _checks.number("ema_decay", ema_decay, minimum=0,
                                                                   maximum=1 - 1e-12),
            block_size=_checks.integer("block_size", block_size, 2),
            block_order=_checks.choice("block_order", block_order, BLOCK_ORDERS),
            seed=_checks.integer("seed", seed, 0),
            field=_checks.choice("field", field, FIELDS),
            reflow=_checks.integer("reflow", reflow, 0),
            rollout="auto" if isinstance(rollout, str) and rollout == "auto" else _checks.flag(
                "rollout", rollout, hint=" or 'auto'"),
        )

    @property
    def chosen_method(self) -> Method:
        """The method's row of the table, with the pieces replaced as configured."""
        return resolve_method(self.method, self.coupling, self.path, self.objective)

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values (``hidden`` as a list), the arguments of :meth:`create`."""
        out = dataclasses.asdict(self)
        if out["hidden"] != "auto":
            out["hidden"] = list(out["hidden"])
        return out


@dataclass(frozen=True)
class Resolved:
    """What a fit chose from its time course, kept apart from the :class:`Config`.

    Attributes
    ----------
    delta, entropy_rate
        The WFR length scale and the entropy rate the fit used (``None`` where the method uses
        neither), in the user's units.
    batch_size
        Pairs per interval and step.
    hidden
        Hidden layer widths of the networks.
    center, scale
        The internal frame: positions are centred on ``center`` and divided by ``scale``.
    times
        The measured time points the model was fitted on.
    clock
        The internal clock (:class:`cellflow.fields.Clock`), set once the training targets are drawn.
    reflow
        Rounds of rectified flow done on the fitted network.
    """

    delta: float | None
    entropy_rate: float | None
    batch_size: int
    hidden: tuple[int, ...]
    center: np.ndarray
    scale: float
    times: np.ndarray
    clock: Clock | None
    reflow: int = 0

    def settings(self) -> dict[str, Any]:
        """The resolved values under the names of the settings they resolve."""
        return dict(delta=self.delta, entropy_rate=self.entropy_rate, batch_size=self.batch_size,
                    hidden=list(self.hidden), reflow=self.reflow)

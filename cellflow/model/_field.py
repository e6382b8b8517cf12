"""A trained field and how to use it: velocity, growth and score at any cell and time, and transport."""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt
import torch

from .. import _checks, metrics
from .._utils import compute_threads, renamed_arguments
from ..fields import Clock, field_output
from ..solvers import _sde as bridges
from ..solvers import check_solver, integrate
from ._config import Config, Resolved
from ._methods import Method
from ._pieces import build_network

EVALUATION_CHUNK = 65536  # cells evaluated together when writing velocity and growth


class TrainedField:
    """The part of :class:`cellflow.CellFlow` that uses a trained network.

    Positions are internally centred and divided by one overall scale, and the network sees
    time on an internal clock (:class:`cellflow.fields.Clock`); everything returned here is in
    the user's units.
    """

    config: Config
    method: Method
    device: torch.device
    net: torch.nn.Module | None
    resolved: Resolved | None
    history: dict[str, np.ndarray]
    #: How :func:`cellflow.tl.fit` read the time labels (``uns[key_added]["time_reading"]``), or ``None``.
    time_reading: dict | None = None

    @property
    def params(self) -> dict[str, Any]:
        """The settings as the last fit used them: :attr:`config` with :attr:`resolved` filled in (a copy)."""
        out = self.config.as_dict()
        if self.resolved is not None:
            out.update(self.resolved.settings())
        return out

    @property
    def has_growth(self) -> bool:
        """Whether the model learns a growth field (a coupling with mass or a path with growth)."""
        return self.method.has_growth

    @property
    def has_score(self) -> bool:
        """Whether the model learns a score (a path with bridge noise and ``sigma > 0``), so that it can
        sample its stochastic bridges (``transport(..., stochastic=True)``).
        """
        return self.method.path_class.makes_score and (self.config.sigma or 0.0) > 0

    @property
    def multimarginal(self) -> bool:
        """Whether training draws chains through all time points rather than pairs."""
        return self.method.objective == "chains"

    def __repr__(self) -> str:
        p = self.params
        learns = ["velocity" + (" (gradient of a potential)" if p["field"] == "gradient" else "")]
        learns += [name for name, flag in (("growth", self.has_growth), ("score", self.has_score)) if flag]
        lines = [f"CellFlow {p['method']!r} on {self.device}",
                 f"    coupling {p['coupling']!r}, path {p['path']!r}, objective {p['objective']!r}",
                 f"    learns {', '.join(learns)}"]
        if self.net is None:
            lines.append("    not trained: call fit()")
        else:
            shown = [f"{t:g}" for t in self.times]
            times = ", ".join(shown if len(shown) <= 8 else [*shown[:3], "...", *shown[-2:]])
            steps = self.history["loss"].size if "loss" in self.history else 0
            reflow = f", then {p['reflow']} round{'s' * (p['reflow'] > 1)} of reflow" if p["reflow"] else ""
            rollout = (f", rollout fitting {self.history['rollout_loss'].size} steps"
                       if "rollout_loss" in self.history else "")
            lines.append(f"    trained on {self.times.size} time points ({times}) in {self.center.size} dimensions, "
                         f"{steps} steps{reflow}{rollout}")
            if self.time_reading is not None:
                from .._times import describe_reading

                lines.append(f"    {describe_reading(self.time_reading)}")
            if self.has_growth:
                unit = str((self.time_reading or {}).get("unit", "")) or "unit of the time column"
                lines.append(f"    growth rates are d log(mass)/dt per {unit.rstrip('s')}")
            if "horizon_w1_first" in self.history:
                h = self.history
                worst = int(np.argmax(h["horizon_w1_first"] / h["horizon_w1_previous"]))
                ratio = h["horizon_w1_first"][worst] / h["horizon_w1_previous"][worst]
                lines.append(f"    horizon: cells of {self.times[0]:g} pushed to {h['horizon_times'][worst]:g} "
                             f"land at W1 {h['horizon_w1_first'][worst]:.3g}, {ratio:.2f}x the one-interval W1 "
                             "(the worst time)")
                lines.append(f"    pushed cells reach {h['horizon_norm_ratio'].max():.2f}x the data's largest norm; "
                             f"interval gain {h['interval_gain'].min():.2f}-{h['interval_gain'].max():.2f} "
                             "(cellflow.pl.horizon)")
        return "\n".join(lines)

    # -- what the fit resolved ------------------------------------------------------------
    def _fitted_state(self) -> Resolved:
        if self.resolved is None:
            raise RuntimeError("the model is not trained yet: call fit() first")
        return self.resolved

    @property
    def center(self) -> np.ndarray:
        """Centre of the internal frame (the mean of the cells the model was fitted on)."""
        return self._fitted_state().center

    @property
    def scale(self) -> float:
        """Scale of the internal frame (the overall standard deviation of those cells)."""
        return self._fitted_state().scale

    @property
    def times(self) -> np.ndarray:
        """The measured time points the model was fitted on."""
        return self._fitted_state().times

    @property
    def clock(self) -> Clock:
        """The internal clock of the network."""
        clock = self._fitted_state().clock
        if clock is None:
            raise RuntimeError("the model is not trained yet: call fit() first")
        return clock

    def _network(self, n_dims: int, hidden: tuple[int, ...]) -> torch.nn.Module:
        return build_network(self.config.field, n_dims, hidden, self.has_growth, self.has_score)

    # -- coordinates -----------------------------------------------------------------------
    def _to_internal(self, x: npt.ArrayLike) -> torch.Tensor:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.center.size:
            raise ValueError(f"positions of shape {x.shape} do not match the model's {self.center.size} "
                             "dimensions; pass one row per cell in the representation the model was fitted on")
        z = torch.empty(x.shape, dtype=torch.float32, device=self.device)
        rows = max(1, 2**22 // max(x.shape[1], 1))  # float64 blocks of 32 MB: memory stays that of the result
        for start in range(0, len(x), rows):
            block = (np.asarray(x[start : start + rows], dtype=np.float64) - self.center) / self.scale
            z[start : start + rows] = torch.from_numpy(block.astype(np.float32))
        return z

    def _fitted_net(self) -> torch.nn.Module:
        if self.net is None:
            raise RuntimeError("the model is not trained yet: call fit() first")
        return self.net

    def _check_fitted(self) -> None:
        self._fitted_net()

    @renamed_arguments(t_from="from_time", t_to="to_time", method="solver")
    def straightness(self, x: npt.ArrayLike, from_time: float, to_time: float, *, solver: str = "dopri5",
                     step_size: float | None = None) -> float:
        """Straightness of the flow's paths from cells ``x`` at ``from_time`` to ``to_time``.

        Returns
        -------
        Kinetic energy over squared displacement: one for straight paths at constant speed
        (:func:`cellflow.metrics.straightness`).
        """
        self._check_fitted()
        check_solver(solver, step_size)
        from_time, to_time = _checks.number("from_time", from_time), _checks.number("to_time", to_time)
        side = "after" if to_time >= from_time else "before"
        with compute_threads(self.device):
            return metrics.straightness(lambda z, t: self._field(z, t, side)[0], self._to_internal(x), from_time,
                                        to_time, method=solver, step_size=step_size)

    # -- using the field ---------------------------------------------------------------
    def _times(self, t: npt.ArrayLike, n: int, name: str = "t") -> torch.Tensor:
        """Real times broadcast to ``n`` cells, checked finite, as float64 on the model's device."""
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), (n,))
        if not np.isfinite(t).all():
            raise ValueError(f"{name}={float(t[~np.isfinite(t)][0])!r}: times must be finite numbers")
        return torch.as_tensor(t.copy(), device=self.device)

    @overload
    def _field(self, z: torch.Tensor, t: torch.Tensor, at_knots: str = ..., net: torch.nn.Module | None = ...,
               score: Literal[False] = ...) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    @overload
    def _field(self, z: torch.Tensor, t: torch.Tensor, at_knots: str = ..., net: torch.nn.Module | None = ..., *,
               score: Literal[True]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]: ...

    def _field(self, z: torch.Tensor, t: torch.Tensor, at_knots: str = "mean", net: torch.nn.Module | None = None,
               score: bool = False) -> tuple[torch.Tensor | None, ...]:
        """Internal velocity and growth (``None`` without) per unit of real time at internal positions
        ``z`` and real times ``t``; with ``score=True`` also the score network's output as a third entry.

        ``at_knots``: the unit exactly at a measured time (see :meth:`cellflow.fields.Clock.evaluate`).
        ``net``: a network other than the model's (one in training).
        """
        tau, unit = self.clock.evaluate(t.to(torch.float64).expand(len(z)), at_knots)
        net = self._fitted_net() if net is None else net
        out = field_output(net(z, tau.to(z.dtype), score=True) if score else net(z, tau.to(z.dtype)))
        unit = unit.to(z.dtype)
        growth = None if out.growth is None else out.growth * unit[:, -1:]
        return (out.velocity * unit[:, :1], growth, out.score) if score else (out.velocity * unit[:, :1], growth)

    def _state_field(self, state: torch.Tensor, t: torch.Tensor, at_knots: str,
                     net: torch.nn.Module | None = None) -> torch.Tensor:
        """``d(z, log m)/dt`` of states ``(n, d + 1)`` holding the log-mass in the last column."""
        v, g = self._field(state[:, :-1], t, at_knots, net)
        return torch.cat([v, g if g is not None else torch.zeros_like(v[:, :1])], dim=1)

    def evaluate(self, x: npt.ArrayLike, t: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray | None]:
        """Velocity and growth rate at positions ``x`` ``(n, d)`` and times ``t`` in one pass of the network.

        Returns
        -------
        Velocity ``(n, d)`` as :meth:`velocity` gives it, and growth ``(n,)`` as :meth:`growth`
        gives it, or ``None`` for balanced methods.
        """
        self._check_fitted()
        x = np.asarray(x)
        n = len(x)
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), (n,))
        velocity = np.empty((n, self.center.size))
        growth = np.empty(n) if self.has_growth else None
        with torch.no_grad(), compute_threads(self.device):
            for start in range(0, n, EVALUATION_CHUNK):  # memory bounded by the chunk, not the cells
                rows = slice(start, start + EVALUATION_CHUNK)
                z = self._to_internal(x[rows])
                v, g = self._field(z, self._times(t[rows], len(z)))
                velocity[rows] = v.cpu().numpy() * self.scale
                if growth is not None:
                    assert g is not None, "a model with growth has a growth network"
                    growth[rows] = g[:, 0].cpu().numpy()
        return velocity, growth

    def velocity(self, x: npt.ArrayLike, t: npt.ArrayLike) -> np.ndarray:
        """Velocity ``dx/dt`` in the user's units at positions ``x`` ``(n, d)`` and times ``t`` (one or ``(n,)``)."""
        return self.evaluate(x, t)[0]

    def growth(self, x: npt.ArrayLike, t: npt.ArrayLike) -> np.ndarray:
        """Growth rate ``d log m / dt`` (per unit of the user's time); zeros for balanced methods."""
        v, g = self.evaluate(x, t)
        return np.zeros(len(v)) if g is None else g

    @renamed_arguments(method="solver")
    def transport(
        self, x: npt.ArrayLike, times: npt.ArrayLike, *, solver: str = "dopri5", step_size: float | None = None,
        stochastic: bool = False, seed: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Positions and masses of cells starting at ``x`` at ``times[0]``, at every time of ``times``.

        The field is integrated in real time; ``step_size`` (fixed-step solvers only) is in the
        user's time unit. Masses start at one and follow ``d log m / dt = g``; they stay one for
        balanced methods.

        With ``stochastic=True`` (models with a score, :attr:`has_score`) each cell instead follows
        one path of the SDE ``dx = [v + (g^2 / 2) grad log p_t] dt + g dW`` whose marginals are those
        of the flow, ``g`` the diffusion of the path's bridges (:mod:`cellflow.solvers`), by
        Euler-Maruyama with ``step_size`` (default: 1/100 of each measured interval), drawn on the
        model's device from ``seed`` (default: the model's ``seed``), between the first and the
        last measured time.

        Returns
        -------
        Positions ``(len(times), n, d)`` and masses ``(len(times), n)``.
        """
        self._check_fitted()
        real = np.atleast_1d(np.asarray(times, dtype=np.float64))
        generator = None
        if stochastic:
            self._check_score("stochastic=True")
            if solver != "dopri5":
                raise ValueError(f"solver={solver!r} is an ODE solver; stochastic=True integrates the SDE by "
                                 "Euler-Maruyama: leave solver at its default and set step_size if needed")
            step = None if step_size is None else _checks.number("step_size", step_size, minimum=0, strict=True)
            seed = self.config.seed if seed is None else _checks.integer("seed", seed, 0)
            generator = torch.Generator(device=self.device).manual_seed(seed)
        else:
            step = check_solver(solver, step_size)
        knots = self._times(real, len(real), "times").to(torch.float32)
        z = self._to_internal(x)
        side = "after" if len(knots) < 2 or knots[-1] >= knots[0] else "before"  # the interval the cells move into

        with torch.no_grad(), compute_threads(self.device):
            state = torch.cat([z, torch.zeros(len(z), 1, device=z.device)], dim=1)
            if generator is not None:  # stochastic
                out = bridges.transport(self, state, real, step, generator)
            else:
                out = integrate(lambda s, t: self._state_field(s, t, side), state, knots, method=solver,
                                step_size=step)
            z, log_mass = out[..., :-1], out[..., -1]
        positions = z.cpu().numpy().astype(np.float64) * self.scale + self.center
        return positions, np.exp(log_mass.cpu().numpy().astype(np.float64))

    def _check_score(self, asked: str) -> None:
        """Raise unless the model learned a score, naming what ``asked`` for it."""
        if not self.has_score:
            c = self.config
            raise ValueError(
                f"{asked} needs a learned score, but method {c.method!r} (path {c.path!r}, "
                f"sigma={c.sigma or 0.0:g}) learns none; fit a method whose path has bridge noise, e.g. "
                "method='sbcfm', or method='mmfm' with sigma > 0"
            )

    def score(self, x: npt.ArrayLike, t: npt.ArrayLike) -> np.ndarray:
        """Score ``grad log p_t`` of the model's population at positions ``x`` ``(n, d)`` and times ``t``
        (one or ``(n,)``, between the first and the last measured time), per unit of the user's
        representation; only for models with a score (:attr:`has_score`).
        """
        self._check_fitted()
        self._check_score("score()")
        x = np.asarray(x)
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), (len(x),))
        bridges.check_range(self.times, t, "t")
        with torch.no_grad(), compute_threads(self.device):
            z = self._to_internal(x)
            score = self._field(z, self._times(t, len(z)), score=True)[2]
        assert score is not None, "a model with a score has a score network"
        return score.cpu().numpy().astype(np.float64) / self.scale

    @overload
    def push(self, x: npt.ArrayLike, from_time: float, to_time: float, *, return_mass: Literal[False] = ...,
             **kwargs: Any) -> np.ndarray: ...

    @overload
    def push(self, x: npt.ArrayLike, from_time: float, to_time: float, *, return_mass: Literal[True],
             **kwargs: Any) -> tuple[np.ndarray, np.ndarray]: ...

    @renamed_arguments(t_from="from_time", t_to="to_time")
    def push(self, x: npt.ArrayLike, from_time: float, to_time: float, *, return_mass: bool = False,
             **kwargs: Any) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Positions at ``to_time`` of cells at ``x`` at ``from_time`` (forward or backward in time).

        ``kwargs`` go to :meth:`transport` (``solver``, ``step_size``, ``stochastic``, ``seed``).

        Returns
        -------
        Positions ``(n, d)``; with ``return_mass=True`` also each cell's mass at ``to_time`` (one at
        ``from_time``).
        """
        positions, mass = self.transport(x, [from_time, to_time], **kwargs)
        return (positions[-1], mass[-1]) if return_mass else positions[-1]

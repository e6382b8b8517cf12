"""The model object: a method (coupling x path), a trained field, and how to use it."""

from __future__ import annotations

import time

import numpy as np
import torch

from ._utils import resolve_device, seed_everything
from .couplings import EntropicOTCoupling, ExactOTCoupling, IndependentCoupling
from .integration import integrate
from .networks import TimeMLP
from .paths import BrownianBridgePath, LinearPath, VariancePreservingPath
from .readers import TimeCourse
from .training import PairObjective, train

COUPLINGS = {"independent": IndependentCoupling, "exact": ExactOTCoupling, "entropic": EntropicOTCoupling}
PATHS = {"linear": LinearPath, "brownian": BrownianBridgePath, "vp": VariancePreservingPath}
METHODS = {
    "icfm": ("independent", "linear"),
    "otcfm": ("exact", "linear"),
    "sbcfm": ("entropic", "brownian"),
}


class CellFlow:
    """A flow-matching model of a time course.

    A method is a coupling between neighbouring time points and a conditional path between
    the paired cells; one network ``v(x, t)`` is regressed on the path velocities. Positions
    are internally centred and divided by one overall scale, and time is mapped onto
    ``[0, 1]``; everything the model returns is in the user's units.

    Parameters
    ----------
    method
        ``"icfm"`` (independent coupling, straight paths), ``"otcfm"`` (exact OT, straight
        paths) or ``"sbcfm"`` (entropic OT with ``reg = 2 sigma**2``, Brownian bridges).
    coupling, path
        Override the method's coupling (``"independent"``, ``"exact"``, ``"entropic"``) or
        path (``"linear"``, ``"brownian"``, ``"vp"``).
    sigma
        Noise of the path, in units of the data's overall standard deviation.
    reg
        Entropic regularisation (relative units); default ``2 sigma**2`` with Brownian bridges,
        else 0.05.
    hidden
        Hidden layer widths of the velocity network.
    n_steps, batch_size, lr, ema_decay
        Training: optimiser steps, pairs per interval and step, Adam learning rate, weight
        averaging (``None`` to switch off).
    block_size
        Largest OT problem per side; larger populations are coupled in random blocks.
    seed
        Seed of every random draw (couplings, pairs, noise, initial weights).
    device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ...
    """

    def __init__(
        self,
        method: str = "otcfm",
        *,
        coupling: str | None = None,
        path: str | None = None,
        sigma: float = 0.1,
        reg: float | None = None,
        hidden: tuple[int, ...] = (256, 256, 256),
        n_steps: int = 2000,
        batch_size: int = 256,
        lr: float = 1e-3,
        ema_decay: float | None = 0.999,
        block_size: int = 2048,
        seed: int = 0,
        device: str = "auto",
    ):
        if method not in METHODS:
            raise ValueError(f"method={method!r} is unknown; choose one of {sorted(METHODS)}")
        default_coupling, default_path = METHODS[method]
        coupling = coupling or default_coupling
        path = path or default_path
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling={coupling!r} is unknown; choose one of {sorted(COUPLINGS)}")
        if path not in PATHS:
            raise ValueError(f"path={path!r} is unknown; choose one of {sorted(PATHS)}")
        if reg is None:
            reg = 2 * sigma**2 if path == "brownian" else 0.05
        self.params = dict(
            method=method, coupling=coupling, path=path, sigma=float(sigma), reg=float(reg),
            hidden=[int(h) for h in hidden], n_steps=int(n_steps), batch_size=int(batch_size),
            lr=float(lr), ema_decay=0.0 if ema_decay is None else float(ema_decay),
            block_size=int(block_size), seed=int(seed),
        )
        self.device = resolve_device(device)
        self.net: TimeMLP | None = None
        self.history: dict[str, np.ndarray] = {}

    # -- the pieces a method is made of -------------------------------------------------
    def _coupling(self):
        name, p = self.params["coupling"], self.params
        if name == "independent":
            return IndependentCoupling()
        if name == "exact":
            return ExactOTCoupling(block_size=p["block_size"])
        return EntropicOTCoupling(reg=p["reg"], block_size=p["block_size"])

    def _path(self):
        return PATHS[self.params["path"]](sigma=self.params["sigma"])

    # -- coordinates -----------------------------------------------------------------------
    def _set_scales(self, course: TimeCourse) -> None:
        cells = np.concatenate(course.populations).astype(np.float64)
        self.center = cells.mean(axis=0)
        self.scale = float(np.sqrt(cells.var(axis=0).mean())) or 1.0
        self.t_origin = float(course.times[0])
        self.t_scale = float(course.times[-1] - course.times[0])
        self.times = np.asarray(course.times, dtype=float)

    def _to_internal(self, x) -> torch.Tensor:
        z = (np.asarray(x, dtype=np.float64) - self.center) / self.scale
        return torch.as_tensor(z, dtype=torch.float32, device=self.device)

    def _tau(self, t) -> np.ndarray:
        return (np.asarray(t, dtype=np.float64) - self.t_origin) / self.t_scale

    def _check_fitted(self) -> None:
        if self.net is None:
            raise RuntimeError("the model is not trained yet: call fit() first")

    # -- training --------------------------------------------------------------------------
    def fit(self, course: TimeCourse, progress: bool = True) -> "CellFlow":
        """Train on a time course (see :func:`cellflow.readers.read_time_course`)."""
        p = self.params
        rng = seed_everything(p["seed"])
        self._set_scales(course)
        internal = [self._to_internal(x) for x in course.populations]
        weights = course.weights or [None] * len(internal)
        start = time.perf_counter()
        coupling = self._coupling()
        cpu = [z.cpu().numpy() for z in internal]
        samplers = [
            coupling.sampler(cpu[k], cpu[k + 1], weights[k], weights[k + 1], rng)
            for k in range(len(cpu) - 1)
        ]
        coupling_seconds = time.perf_counter() - start
        objective = PairObjective(internal, self._tau(course.times), samplers, self._path(), p["batch_size"])
        net = TimeMLP(course.n_dims, tuple(p["hidden"])).to(self.device)
        net, loss = train(
            net, objective, n_steps=p["n_steps"], lr=p["lr"], ema_decay=p["ema_decay"] or None,
            rng=rng, progress=progress,
        )
        self.net = net.eval()
        self.history = {
            "loss": loss,
            "coupling_seconds": np.array(coupling_seconds),
            "fit_seconds": np.array(time.perf_counter() - start),
        }
        return self

    # -- using the field ---------------------------------------------------------------
    def _field(self, z: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return self.net(z, tau)

    def velocity(self, x, t) -> np.ndarray:
        """Velocity ``dx/dt`` in the user's units at positions ``x`` ``(n, d)`` and times ``t``."""
        self._check_fitted()
        x = np.asarray(x)
        tau = np.broadcast_to(self._tau(t), (x.shape[0],)).copy()
        with torch.no_grad():
            v = self._field(self._to_internal(x), torch.as_tensor(tau, dtype=torch.float32, device=self.device))
        return v.cpu().numpy().astype(np.float64) * self.scale / self.t_scale

    def transport(self, x, times, *, method: str = "dopri5", step_size: float | None = None) -> np.ndarray:
        """Positions of cells starting at ``x`` at ``times[0]``, at every time of ``times``.

        ``step_size`` (for fixed-step solvers) is in the user's time unit.

        Returns
        -------
        Array ``(len(times), n, d)``.
        """
        self._check_fitted()
        tau = torch.as_tensor(self._tau(np.atleast_1d(times)), dtype=torch.float32)
        step = None if step_size is None else step_size / self.t_scale
        with torch.no_grad():
            z = integrate(self._field, self._to_internal(x), tau, method=method, step_size=step)
        return z.cpu().numpy().astype(np.float64) * self.scale + self.center

    def push(self, x, t_from: float, t_to: float, **kwargs) -> np.ndarray:
        """Positions at ``t_to`` of cells at ``x`` at ``t_from`` (forward or backward in time)."""
        return self.transport(x, [t_from, t_to], **kwargs)[-1]

    # -- plain-array state (for AnnData.uns and files) -----------------------------------
    def to_dict(self) -> dict:
        """Everything needed to restore the model, as plain scalars, strings and arrays."""
        self._check_fitted()
        return {
            "params": {k: (np.array(v) if isinstance(v, list) else v) for k, v in self.params.items()},
            "center": self.center,
            "scale": self.scale,
            "t_origin": self.t_origin,
            "t_scale": self.t_scale,
            "times": self.times,
            "n_dims": int(self.center.size),
            "weights": {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()},
            "history": dict(self.history),
        }

    @classmethod
    def from_dict(cls, state: dict, device: str = "auto") -> "CellFlow":
        """Restore a model written by :meth:`to_dict` (e.g. read back from an ``.h5ad``)."""
        params = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in state["params"].items()}
        params = {k: (v.item() if hasattr(v, "item") else v) for k, v in params.items()}
        ema = params.pop("ema_decay")
        model = cls(**params, ema_decay=ema or None, device=device)
        model.center = np.asarray(state["center"], dtype=np.float64)
        model.scale = float(state["scale"])
        model.t_origin = float(state["t_origin"])
        model.t_scale = float(state["t_scale"])
        model.times = np.asarray(state["times"], dtype=float)
        net = TimeMLP(int(state["n_dims"]), tuple(model.params["hidden"]))
        net.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state["weights"].items()})
        model.net = net.to(model.device).eval()
        model.history = {k: np.asarray(v) for k, v in state.get("history", {}).items()}
        return model

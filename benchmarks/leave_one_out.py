"""Leave-one-time-point-out benchmark of cellflow against its baselines, with a speed section.

What it runs:

* datasets: ``emt`` (the published 10-d embedding, used as ``X_pca``), ``kouno_thp1``
  (``scanpy.pp.pca`` with 10 components of the log2 data) and ``moscot_temporal``
  (``scanpy.pp.pca(adata, n_comps=10)`` of the log-normalised data); time key ``time``;
* methods, in the same run on the same data: cellflow ``otcfm`` (through
  ``cellflow.benchmark.leave_one_out``, which also adds the exact-OT displacement
  interpolation baseline), the exact-OT barycentric map (a reference with one point per
  cell), and TorchCFM's OT-CFM (``ExactOptimalTransportConditionalFlowMatcher``) trained by a
  small runner below that shares everything with cellflow except the coupling: network,
  steps, pairs per interval, optimiser, weight averaging (EMA), normalisation, clock, loss
  and integrator;
* scores: ``cellflow.benchmark.score`` (W1, W2, MMD) of every prediction; no checkpoint is
  ever chosen by the held-out score (every fit is used as it ends);
* speed: cellflow ``otcfm`` vs ``icfm`` per training step on the same batch, and ``fit``
  wall time of cellflow ``otcfm`` vs the TorchCFM runner.

Writes its own delimited section of ``BENCHMARKS.md`` at the repository root (the rest of the
file is kept; ``--quick`` writes under ``benchmarks/results/`` instead) and the raw per-run tables as CSV under
``benchmarks/results/``. Run ``python benchmarks/leave_one_out.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import inspect
import os
import platform
import shlex
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "benchmarks"):  # cellflow from a checkout, and the shared sections.py
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
os.environ.setdefault("CELLFLOW_DATA_DIR", str(ROOT.parent / "shared" / "data"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import cellflow  # noqa: E402
from sections import code_version, write_section  # noqa: E402  (benchmarks/sections.py, shared by the benchmark scripts)
import cellflow.benchmark as cf_benchmark  # noqa: E402
from cellflow.clock import Clock  # noqa: E402
from cellflow.integration import integrate  # noqa: E402
from cellflow.networks import TimeMLP  # noqa: E402
from cellflow.training import Batch, train  # noqa: E402
from cellflow.readers import TimeCourse, read_time_course  # noqa: E402

DATASETS = ("emt", "kouno_thp1", "moscot_temporal")
TIME_KEY = "time"
USE_REP = "X_pca"
N_PCS = 10

# Shared training settings: cellflow's defaults, used by both trained methods.
HIDDEN = (256, 256, 256)
BATCH_SIZE = 256
LR = 1e-3
SPEED_WIDTHS = (HIDDEN, (128, 128, 128), (64, 64, 64))  # per-step timing: cellflow's default down to TorchCFM's
SIGMA = 0.1  # path noise, in units of the data's overall standard deviation (both methods)
EMA = inspect.signature(cellflow.CellFlow).parameters["ema_decay"].default  # cellflow's weight averaging

SECTION = "leave_one_out"  # <!-- leave_one_out:start --> ... <!-- leave_one_out:end --> in BENCHMARKS.md

METHOD_LABELS = {
    "otcfm": "cellflow otcfm",
    "torchcfm_otcfm": "TorchCFM OT-CFM",
    "ot_interpolation": "exact-OT interpolation",
    "ot_map": "exact-OT barycentric map",
}
BASELINES = ("ot_interpolation", "ot_map")  # no learning, deterministic: one run per held-out time


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

def load_dataset(name: str):
    """The AnnData of ``name`` with ``obsm["X_pca"]``, and a sentence on where that comes from."""
    import scanpy as sc

    if name == "emt":
        adata = cellflow.datasets.emt()
        note = "published 10-d embedding of the DeepRUOT file, used as X_pca as it is (no PCA computed)"
    elif name == "kouno_thp1":
        adata = cellflow.datasets.kouno_thp1(n_pcs=N_PCS)
        note = (f"scanpy.pp.pca(n_comps={N_PCS}) of log2 relative expression of 45 genes "
                "(zero-centred, not scaled; scanpy defaults)")
    elif name == "moscot_temporal":
        adata = cellflow.datasets.moscot_temporal()
        sc.pp.pca(adata, n_comps=N_PCS)
        note = (f"scanpy.pp.pca(adata, n_comps={N_PCS}) of the file's log-normalised X, 1479 genes "
                "(zero-centred, not scaled, no HVG selection; scanpy defaults)")
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    if "pca" in adata.uns and "variance_ratio" in adata.uns["pca"]:
        note += f"; explained variance {float(np.sum(adata.uns['pca']['variance_ratio'])):.1%}"
    return adata, note


# ---------------------------------------------------------------------------------------------
# TorchCFM runner
# ---------------------------------------------------------------------------------------------

class TorchCFMPairs:
    """Training batches of TorchCFM's exact minibatch OT-CFM, in real time as cellflow's objectives give them.

    Per step and per interval ``[t_k, t_{k+1}]`` (length ``h_k``) of the training time points,
    ``batch_size`` cells are drawn uniformly with replacement from each side; TorchCFM's
    ``sample_location_and_conditional_flow`` solves the exact OT plan of that minibatch,
    resamples pairs from it and returns ``(s, x_s, u)`` with ``s`` in ``[0, 1]``. As in
    cellflow, the path is defined in real time: the point lies at ``t = t_k + s h_k`` and moves
    at ``u / h_k``; the training loop turns these into the network's input time ``tau(t)`` and
    its units (:meth:`cellflow.clock.Clock.to_network`), exactly as for cellflow's own pairs.
    """

    def __init__(self, populations, times, batch_size: int, sigma: float):
        from torchcfm.conditional_flow_matching import ExactOptimalTransportConditionalFlowMatcher

        self.populations = populations
        self.times = [float(t) for t in times]
        self.batch_size = int(batch_size)
        self.matcher = ExactOptimalTransportConditionalFlowMatcher(sigma=sigma)

    def draw(self):
        xs, ts, us = [], [], []
        for k in range(len(self.populations) - 1):
            source, target = self.populations[k], self.populations[k + 1]
            i = torch.randint(0, source.shape[0], (self.batch_size,), device=source.device)
            j = torch.randint(0, target.shape[0], (self.batch_size,), device=target.device)
            s, x_s, u = self.matcher.sample_location_and_conditional_flow(source[i], target[j])
            span = self.times[k + 1] - self.times[k]
            xs.append(x_s)
            ts.append(self.times[k] + span * s)
            us.append(u / span)
        return Batch(x=torch.cat(xs), t=torch.cat(ts), u=torch.cat(us))


class TorchCFMRunner:
    """TorchCFM's exact minibatch OT-CFM, trained and integrated as cellflow trains and integrates.

    Batches come from :class:`TorchCFMPairs` (TorchCFM's coupling and path, cellflow's clock).
    Everything else is cellflow's own code, called rather than copied: the network
    (:class:`cellflow.networks.TimeMLP` of the same widths, hence the same initial weights for a
    seed), the training loop :func:`cellflow.training.train` (loss, Adam, weight averaging with
    the same decay, ``ema_decay``, cellflow's default unless switched off with 0), the
    coordinates (centre, one overall scale, :class:`cellflow.clock.Clock`) and the integrator
    (:func:`cellflow.integration.integrate`, dopri5 with its default tolerances) on the
    real-time field ``net(z, tau(t)) * r(t)``, the form of ``CellFlow._field``.
    """

    def __init__(self, *, sigma=SIGMA, hidden=HIDDEN, n_steps=2000, batch_size=BATCH_SIZE, lr=LR,
                 ema_decay: float | None = EMA, seed: int = 0, device: str = "cpu"):
        self.sigma = float(sigma)
        self.hidden = tuple(hidden)
        self.n_steps = int(n_steps)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.ema_decay = ema_decay or None
        self.seed = int(seed)
        self.device = torch.device(device)
        self.net = None
        self.history: dict[str, float | np.ndarray] = {}

    def network(self, n_dims: int) -> torch.nn.Module:
        """The field ``net(x, t)``: cellflow's :class:`TimeMLP` of the shared widths."""
        return TimeMLP(n_dims, self.hidden)

    def _internal(self, x) -> torch.Tensor:
        z = (np.asarray(x, dtype=np.float64) - self.center) / self.scale
        return torch.as_tensor(z, dtype=torch.float32, device=self.device)

    def fit(self, course: TimeCourse) -> "TorchCFMRunner":
        start = time.perf_counter()
        # torch: initial weights, which cells enter a minibatch and TorchCFM's draws of s and
        # noise; np.random: TorchCFM's resampling of pairs from the minibatch plan.
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)

        pooled = np.concatenate(course.populations).astype(np.float64)
        self.center = pooled.mean(axis=0)
        self.scale = float(np.sqrt(pooled.var(axis=0).mean())) or 1.0
        populations = [self._internal(x) for x in course.populations]
        pairs = TorchCFMPairs(populations, course.times, self.batch_size, self.sigma)
        self.clock = Clock.from_targets(course.times, pairs)  # units from its own targets, as cellflow's
        net = self.network(course.n_dims).to(self.device)
        net, log = train(net, pairs, self.clock, n_steps=self.n_steps, lr=self.lr, ema_decay=self.ema_decay,
                         progress=False)
        self.net = net.eval()
        self.history = {"loss": log["loss"], "fit_seconds": time.perf_counter() - start}
        return self

    def _field(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Velocity per unit of real time: the network's output at ``tau(t)`` in the unit of the interval ahead."""
        tau, unit = self.clock.evaluate(t.to(torch.float64).expand(len(z)), at_knots="after")
        return self.net(z, tau.to(z.dtype)) * unit.to(z.dtype)[:, :1]

    def push(self, x, t_from: float, t_to: float) -> np.ndarray:
        times = torch.tensor([t_from, t_to], dtype=torch.float32, device=self.device)
        with torch.no_grad():
            z = integrate(self._field, self._internal(x), times, method="dopri5")
        return z[-1].cpu().numpy().astype(np.float64) * self.scale + self.center


def torchcfm_leave_one_out(course: TimeCourse, seeds, n_steps: int, device: str, ema_decay, log) -> list[dict]:
    """The leave-one-out protocol of ``cellflow.benchmark.leave_one_out`` for the TorchCFM runner."""
    rows = []
    for k in range(1, len(course.times) - 1):
        t_prev, t_held = course.times[k - 1], course.times[k]
        before, held = course.populations[k - 1], course.populations[k]
        training = course.without(k)
        for seed in seeds:
            start = time.perf_counter()
            runner = TorchCFMRunner(n_steps=n_steps, seed=seed, device=device, ema_decay=ema_decay).fit(training)
            predicted = runner.push(before, t_prev, t_held)
            seconds = time.perf_counter() - start
            fit_seconds = float(runner.history["fit_seconds"])
            rows.append(dict(
                method="torchcfm_otcfm", held_out_time=float(t_held), seed=seed, n_predicted=len(predicted),
                seconds=seconds,
                **cf_benchmark.score(predicted, held),
                fit_seconds=fit_seconds, coupling_seconds=0.0,
                ms_per_step=1000 * fit_seconds / n_steps,
                final_loss=float(np.mean(runner.history["loss"][-50:])),
            ))
            log(f"    torchcfm  held-out {t_held:g}  seed {seed}: W1 {rows[-1]['w1']:.4f}  "
                f"fit {fit_seconds:.1f}s")
    return rows


# ---------------------------------------------------------------------------------------------
# cellflow, through its own leave-one-out, with every fit's timings recorded
# ---------------------------------------------------------------------------------------------

class _RecordingCellFlow(cellflow.CellFlow):
    """``CellFlow`` that logs the timings of every fit (``leave_one_out`` keeps no model)."""

    fits: list[dict] = []

    def fit(self, course, progress=True):
        out = super().fit(course, progress=progress)
        h = self.history
        _RecordingCellFlow.fits.append(dict(
            method=self.params["method"], seed=self.params["seed"],
            fit_seconds=float(h["fit_seconds"]), coupling_seconds=float(h["coupling_seconds"]),
            ms_per_step=1000 * (float(h["fit_seconds"]) - float(h["coupling_seconds"])) / len(h["loss"]),
            final_loss=float(np.mean(h["loss"][-50:])),
        ))
        return out


@contextlib.contextmanager
def recording_fits():
    """Swap the recording class into ``cellflow.benchmark`` for the duration of a block."""
    original = cf_benchmark.CellFlow
    _RecordingCellFlow.fits = []
    cf_benchmark.CellFlow = _RecordingCellFlow
    try:
        yield _RecordingCellFlow.fits
    finally:
        cf_benchmark.CellFlow = original


def cellflow_leave_one_out(course: TimeCourse, seeds, n_steps: int, device: str, baseline: bool) -> pd.DataFrame:
    with recording_fits() as fits:
        table = cf_benchmark.leave_one_out(
            course, ["otcfm"], seeds=seeds, baseline=baseline, progress=False, n_steps=n_steps, device=device,
        )
    trained = ~table["method"].isin(BASELINES)
    if trained.sum() != len(fits) or list(table.loc[trained, "seed"]) != [f["seed"] for f in fits]:
        raise RuntimeError("could not match cellflow's fits to the rows of its leave-one-out table")
    extra = pd.DataFrame(fits, index=table.index[trained]).drop(columns=["method", "seed"])
    return table.join(extra)


def ot_map_rows(course: TimeCourse) -> list[dict]:
    """The exact-OT barycentric map (``cellflow.benchmark.ot_barycentric_map``) on the leave-one-out protocol."""
    rows = []
    for k in range(1, len(course.times) - 1):
        t_prev, t_held, t_next = course.times[k - 1 : k + 2]
        before, held, after = course.populations[k - 1 : k + 2]
        start = time.perf_counter()
        moved = cf_benchmark.ot_barycentric_map(before, after, (t_held - t_prev) / (t_next - t_prev))
        rows.append(dict(method="ot_map", held_out_time=float(t_held), seed=0, n_predicted=len(moved),
                         seconds=time.perf_counter() - start, **cf_benchmark.score(moved, held)))
    return rows


def warm_up(course: TimeCourse, device: str) -> None:
    """A short fit of each trained method, so neither pays torch's first-call costs in a timing."""
    cellflow.CellFlow("otcfm", n_steps=20, seed=0, device=device).fit(course, progress=False)
    TorchCFMRunner(n_steps=20, seed=0, device=device).fit(course)


# ---------------------------------------------------------------------------------------------
# Speed: per-step cost of the exact-OT coupling
# ---------------------------------------------------------------------------------------------

def per_step_speed(course: TimeCourse, n_steps: int, repeats: int, device: str, log) -> pd.DataFrame:
    """ms per training step of cellflow otcfm and icfm (coupling excluded) and TorchCFM's runner.

    All on the full course (every interval, ``BATCH_SIZE`` pairs each per step), seed 0, for
    cellflow's default network (``HIDDEN``) and for narrower ones down to TorchCFM's own
    default width of 64, because the ratio to TorchCFM is ``1 + (minibatch OT) / (network)``.
    Each runner has a short warm-up fit first; the fits then alternate, ``repeats`` times.
    """
    rows = []
    for hidden in SPEED_WIDTHS:
        cellflow.CellFlow("otcfm", hidden=hidden, n_steps=20, seed=0, device=device).fit(course, progress=False)
        cellflow.CellFlow("icfm", hidden=hidden, n_steps=20, seed=0, device=device).fit(course, progress=False)
        TorchCFMRunner(hidden=hidden, n_steps=20, seed=0, device=device).fit(course)
        for r in range(repeats):
            for method in ("otcfm", "icfm"):
                model = cellflow.CellFlow(method, hidden=hidden, n_steps=n_steps, seed=0, device=device)
                model.fit(course, progress=False)
                fit_s = float(model.history["fit_seconds"])
                coupling_s = float(model.history["coupling_seconds"])
                rows.append(dict(hidden=hidden[0], runner=f"cellflow {method}", repeat=r, n_steps=n_steps,
                                 fit_seconds=fit_s, coupling_seconds=coupling_s,
                                 ms_per_step=1000 * (fit_s - coupling_s) / n_steps))
            runner = TorchCFMRunner(hidden=hidden, n_steps=n_steps, seed=0, device=device).fit(course)
            fit_s = float(runner.history["fit_seconds"])
            rows.append(dict(hidden=hidden[0], runner="TorchCFM OT-CFM", repeat=r, n_steps=n_steps,
                             fit_seconds=fit_s, coupling_seconds=0.0, ms_per_step=1000 * fit_s / n_steps))
            log(f"    width {hidden[0]}, repeat {r}: " + ", ".join(
                f"{row['runner']} {row['ms_per_step']:.2f} ms/step" for row in rows[-3:]))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def _pm(values, digits=3) -> str:
    values = np.asarray(values, dtype=float)
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return f"{values.mean():.{digits}f} ± {std:.{digits}f}"


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (over held-out times and seeds) per dataset and method."""
    rows = []
    for (dataset, method), group in table.groupby(["dataset", "method"], sort=False):
        rows.append(dict(
            dataset=dataset, method=method, runs=len(group),
            w1_mean=group.w1.mean(), w1_std=group.w1.std(ddof=1) if len(group) > 1 else 0.0,
            w2_mean=group.w2.mean(), w2_std=group.w2.std(ddof=1) if len(group) > 1 else 0.0,
            mmd_mean=group.mmd.mean(), mmd_std=group.mmd.std(ddof=1) if len(group) > 1 else 0.0,
            seconds_mean=group.seconds.mean(), points_mean=group.n_predicted.mean(),
            fit_seconds_mean=group.fit_seconds.mean() if "fit_seconds" in group else np.nan,
            ms_per_step_mean=group.ms_per_step.mean() if "ms_per_step" in group else np.nan,
        ))
    return pd.DataFrame(rows)


def verdict(dataset: str, summary: pd.DataFrame) -> list[str]:
    s = summary[summary.dataset == dataset].set_index("method")
    ours, interp, peer = (s.loc[m] for m in ("otcfm", "ot_interpolation", "torchcfm_otcfm"))
    beaten = [name for name, other in (("the exact-OT interpolation", interp), ("TorchCFM's OT-CFM", peer))
              if ours.w1_mean < other.w1_mean]
    missed = [name for name, other in (("the exact-OT interpolation", interp), ("TorchCFM's OT-CFM", peer))
              if ours.w1_mean >= other.w1_mean]
    w1 = (f"cellflow otcfm mean W1 {ours.w1_mean:.3f} vs exact-OT interpolation {interp.w1_mean:.3f} "
          f"and TorchCFM OT-CFM {peer.w1_mean:.3f}")
    if not missed:
        accuracy = f"**{dataset}: cellflow beats both baselines on W1** ({w1})."
    elif not beaten:
        accuracy = f"**{dataset}: cellflow does not yet beat either baseline on W1** ({w1})."
    else:
        accuracy = (f"**{dataset}: cellflow beats {beaten[0]} but not yet {missed[0]} on W1** ({w1}).")
    mapped = s.loc["ot_map"]
    ceiling = (f"Against the exact-OT barycentric map (one point per cell of t_(k-1), as a flow gives): "
               f"cellflow {ours.w1_mean:.3f} vs {mapped.w1_mean:.3f}; the interpolation predicts "
               f"{interp.points_mean:.0f} points per held-out time against the flows' {ours.points_mean:.0f}.")
    ratio = peer.fit_seconds_mean / ours.fit_seconds_mean
    equal_or_better = ours.w1_mean <= peer.w1_mean
    if ratio >= 5 and equal_or_better:
        speed = f"Fit is {ratio:.1f}x faster than TorchCFM at better or equal W1: the 5x target is met."
    elif ratio >= 5:
        speed = (f"Fit is {ratio:.1f}x faster than TorchCFM, but W1 is worse by {ours.w1_mean - peer.w1_mean:.3f}, "
                 "so the target (5x at equal or better W1) is not met.")
    else:
        speed = (f"Fit is only {ratio:.1f}x faster than TorchCFM "
                 f"({ours.fit_seconds_mean:.1f} s vs {peer.fit_seconds_mean:.1f} s): the 5x target is not met.")
    return [accuracy, ceiling, speed]


def machine_lines(device: str) -> list[str]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return [
        f"- load average (1, 5, 15 min) when this was written: {load} (other jobs on the machine slow every timing)",
        f"- CPU: {cpu}; `nproc` = {os.cpu_count()}; torch threads = {torch.get_num_threads()} "
        f"(interop {torch.get_num_interop_threads()}); device = {device}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, torchcfm {version('torchcfm')}, "
        f"POT {version('pot')}, scanpy {version('scanpy')}, cellflow {cellflow.__version__}",
    ]


def write_report(path: Path, *, command, args, device, started, elapsed, notes, table, summary, speed) -> str:
    methods = ["otcfm", "ot_interpolation", "ot_map", "torchcfm_otcfm"]
    out = [
        "## Balanced leave-one-out: cellflow otcfm vs exact-OT interpolation and TorchCFM OT-CFM",
        "",
        "<!-- This section is regenerated by benchmarks/leave_one_out.py; rerun it rather than editing by hand. -->",
        "",
        f"Generated {started:%Y-%m-%d %H:%M} UTC in {elapsed / 60:.1f} min by",
        "",
        "```",
        command,
        "```",
        "",
        f"Data: `CELLFLOW_DATA_DIR={os.environ['CELLFLOW_DATA_DIR']}`. Code: {args.code} (when the run started).",
        "",
        "### Machine",
        "",
        *machine_lines(device),
        "",
        "### Protocol",
        "",
        "Leave one time point out: for every inner time point t_k, fit on the",
        "other time points, push all cells of t_{k-1} to t_k and score against the held-out cells",
        "(`cellflow.benchmark.score`: exact W1 and W2, RBF-MMD with bandwidths 0.5, 1 and 2 times the",
        "median pooled distance). Scores are in the units of each dataset's 10-d representation.",
        f"Seeds {', '.join(map(str, args.seeds))}; mean ± std over held-out time points and seeds (the",
        "two exact-OT baselines are deterministic: one run per held-out time, std over times).",
        "Every fit is used as it ends: no checkpoint is chosen by a held-out score.",
        "",
        f"- **cellflow otcfm**: `cellflow.benchmark.leave_one_out(course, ['otcfm'], n_steps={args.steps})`,",
        f"  cellflow defaults otherwise (sigma {SIGMA}, hidden {list(HIDDEN)}, {BATCH_SIZE} pairs per interval",
        f"  and step, Adam lr {LR}, EMA {EMA}, exact OT solved once per interval, dopri5).",
        "- **exact-OT interpolation**: McCann interpolation of the exact OT plan between t_{k-1} and",
        "  t_{k+1} at the held-out time (`cellflow.benchmark.ot_interpolation`; no learning). Every pair of",
        "  the plan is a point, weighted by its mass: where the plan splits a cell, the prediction has more",
        "  points than t_{k-1} has cells.",
        "- **exact-OT barycentric map**: the same plan, each cell of t_{k-1} moved to the same fraction of",
        "  the way to the mass-weighted mean of its partners (`cellflow.benchmark.ot_barycentric_map`): one",
        "  point per cell, as any flow that pushes the cells of t_{k-1} predicts. Reference only, not a target.",
        "- **TorchCFM OT-CFM**: `torchcfm.conditional_flow_matching.ExactOptimalTransportConditionalFlowMatcher"
        f"(sigma={SIGMA})`",
        f"  (exact OT on every {BATCH_SIZE} x {BATCH_SIZE} minibatch, every interval, every step), same network",
        f"  class and widths, same {args.steps} steps, {BATCH_SIZE} cells per side per interval and step,",
        "  cellflow's normalisation, clock (`cellflow.clock.Clock`: network input tau(t), outputs in units of",
        "  the median target size of each interval, `Clock.from_targets`), training loop (`cellflow.training.train`:",
        "  loss, Adam lr 1e-3, weight averaging) and real-time dopri5 integration of net(z, tau(t)) r(t)",
        "  (see `TorchCFMRunner`); weight averaging: "
        + (f"EMA {args.torchcfm_ema}" + (", the same as cellflow's." if args.torchcfm_ema == EMA else
                                         f" (cellflow uses EMA {EMA}).")
           if args.torchcfm_ema else f"none (`--torchcfm-ema 0`; cellflow uses EMA {EMA})."),
        "",
        "Representations:",
        "",
        *[f"- {name}: {note}" for name, note in notes.items()],
        "",
        "### Accuracy and fit time",
        "",
    ]
    for dataset in summary.dataset.unique():
        s = summary[summary.dataset == dataset].set_index("method")
        times = sorted(table[table.dataset == dataset].held_out_time.unique())
        out += [
            f"#### {dataset}",
            "",
            f"Held-out times: {', '.join(f'{t:g}' for t in times)}.",
            "",
            "| method | runs | points | W1 | W2 | MMD | mean fit s | mean fit+predict s | ms/step |",
            "|---|---:|---:|---|---|---|---:|---:|---:|",
        ]
        for m in methods:
            if m not in s.index:
                continue
            r = s.loc[m]
            fit = "-" if np.isnan(r.fit_seconds_mean) else f"{r.fit_seconds_mean:.2f}"
            step = "-" if np.isnan(r.ms_per_step_mean) else f"{r.ms_per_step_mean:.2f}"
            out.append(
                f"| {METHOD_LABELS[m]} | {int(r.runs)} | {r.points_mean:.0f} | {r.w1_mean:.3f} ± {r.w1_std:.3f} | "
                f"{r.w2_mean:.3f} ± {r.w2_std:.3f} | {r.mmd_mean:.4f} ± {r.mmd_std:.4f} | {fit} | "
                f"{r.seconds_mean:.2f} | {step} |"
            )
        per_time = (table[table.dataset == dataset]
                    .groupby(["held_out_time", "method"]).w1.mean().unstack("method"))
        out += [
            "",
            "W1 per held-out time (mean over seeds):",
            "",
            "| held-out time | " + " | ".join(METHOD_LABELS[m] for m in methods if m in per_time) + " |",
            "|---:|" + "---:|" * sum(m in per_time for m in methods),
        ]
        for t, row in per_time.iterrows():
            out.append(f"| {t:g} | " + " | ".join(f"{row[m]:.3f}" for m in methods if m in per_time) + " |")
        out += ["", *verdict(dataset, summary), ""]

    out += ["### Speed", "", "#### Fit wall time, cellflow otcfm vs TorchCFM OT-CFM", "",
            "Mean over the leave-one-out fits of each dataset (fit only: coupling and training; "
            "cellflow's includes its one-time exact OT), after a 20-step warm-up fit of each per dataset.", "",
            "| dataset | steps | cellflow otcfm fit s | of which coupling s | TorchCFM fit s | speed-up |",
            "|---|---:|---:|---:|---:|---:|"]
    for dataset in summary.dataset.unique():
        rows = table[table.dataset == dataset]
        ours = rows[rows.method == "otcfm"]
        peer = rows[rows.method == "torchcfm_otcfm"]
        out.append(f"| {dataset} | {args.steps} | {ours.fit_seconds.mean():.2f} | {ours.coupling_seconds.mean():.3f} "
                   f"| {peer.fit_seconds.mean():.2f} | {peer.fit_seconds.mean() / ours.fit_seconds.mean():.1f}x |")

    default = speed[speed.hidden == HIDDEN[0]]
    med = default.groupby("runner", sort=False)[["ms_per_step", "coupling_seconds", "fit_seconds"]].median()
    ot_step, ind_step = med.loc["cellflow otcfm", "ms_per_step"], med.loc["cellflow icfm", "ms_per_step"]
    ratio = ot_step / ind_step
    by_width = speed.groupby(["hidden", "runner"], sort=False)[["ms_per_step", "fit_seconds"]].median()
    ours_w = by_width.xs("cellflow otcfm", level="runner")
    peer_w = by_width.xs("TorchCFM OT-CFM", level="runner")
    out += [
        "",
        "#### Per training step, cellflow otcfm vs icfm (same batch)",
        "",
        f"emt, all 4 time points (3 intervals x {BATCH_SIZE} pairs per step), seed 0, {int(speed.n_steps.iloc[0])} steps,",
        f"median of {speed.repeat.nunique()} alternating repeats after a warm-up fit. ms/step excludes cellflow's "
        "one-time coupling, shown separately.",
        "",
        "| runner | ms/step | one-time coupling s | fit s |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {r.ms_per_step:.2f} | {r.coupling_seconds:.3f} | {r.fit_seconds:.2f} |"
          for name, r in med.iterrows()],
        "",
        f"otcfm / icfm per step: **{ratio:.2f}x** (target: within 1.5x): "
        + ("met." if ratio <= 1.5 else "not met."),
        f"TorchCFM OT-CFM / cellflow otcfm per step: {med.loc['TorchCFM OT-CFM', 'ms_per_step'] / ot_step:.1f}x.",
        "",
        "#### The speed-up depends on the network",
        "",
        "TorchCFM's step is cellflow's step plus an exact OT problem per minibatch and interval, so its",
        "ratio to cellflow is about 1 + (minibatch OT time) / (network time). Same protocol as above, both",
        "runners with the same network of three hidden layers of each width (64 is TorchCFM's own default):",
        "",
        "| hidden width | cellflow otcfm ms/step | TorchCFM OT-CFM ms/step | TorchCFM / cellflow per step | fit s ratio |",
        "|---:|---:|---:|---:|---:|",
        *[f"| {w} | {ours_w.ms_per_step[w]:.2f} | {peer_w.ms_per_step[w]:.2f} | "
          f"{peer_w.ms_per_step[w] / ours_w.ms_per_step[w]:.1f}x | {peer_w.fit_seconds[w] / ours_w.fit_seconds[w]:.1f}x |"
          for w in ours_w.index],
        "",
        "### Raw tables",
        "",
        f"Per-run rows: `{args.csv_name}`; speed rows: `{args.speed_csv_name}` (under `benchmarks/results/`, "
        "not committed).",
        "",
    ]
    text = "\n".join(out)
    write_section(SECTION, text, path)  # only this script's marked section; the rest of the file is kept
    return text


# ---------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="training steps of every fit (default 2000; 200 with --quick)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2; 0 with --quick)")
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=None,
                   help="datasets (default all three; emt with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 200 steps, seed 0, emt only, short speed section; report under benchmarks/results/")
    p.add_argument("--speed-steps", type=int, default=None, help="steps of each per-step timing fit (default 300; 100 with --quick)")
    p.add_argument("--speed-repeats", type=int, default=None, help="alternating repeats of the per-step timing (default 3; 1 with --quick)")
    p.add_argument("--torchcfm-ema", type=float, default=EMA,
                   help="EMA decay of the TorchCFM runner's weights (default: cellflow's; 0 switches it off)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for every fit (default: torch's default)")
    p.add_argument("--device", default="auto", help="torch device of both trained methods (auto: CUDA when present)")
    p.add_argument("--out", type=Path, default=None,
                   help="report file whose delimited section is (re)written (default BENCHMARKS.md at the repository root; benchmarks/results/BENCHMARKS_quick.md with --quick)")
    args = p.parse_args(argv)
    args.steps = args.steps or (200 if args.quick else 2000)
    args.seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    args.datasets = args.datasets or (["emt"] if args.quick else list(DATASETS))
    args.speed_steps = args.speed_steps or (100 if args.quick else 300)
    args.speed_repeats = args.speed_repeats or (1 if args.quick else 3)
    suffix = f"_{args.steps}steps_{args.threads or torch.get_num_threads()}threads" + ("_quick" if args.quick else "")
    args.out = args.out or (ROOT / "benchmarks" / "results" / "BENCHMARKS_quick.md" if args.quick else ROOT / "BENCHMARKS.md")
    args.csv_name = f"leave_one_out{suffix}.csv"
    args.speed_csv_name = f"speed{suffix}.csv"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    t_start = time.perf_counter()
    command = "python benchmarks/leave_one_out.py" + "".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    else:
        torch.set_num_threads(torch.get_num_threads())  # the default, pinned for every fit alike
    device = str(torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                              else ("cpu" if args.device == "auto" else args.device)))
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    log(f"$ {command}")
    for line in machine_lines(device):
        log(line[2:])
    args.code = code_version()  # cellflow is imported once: the code that runs is the code at the start
    log(f"code: {args.code}")
    log("load average at start: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    log(f"CELLFLOW_DATA_DIR={os.environ['CELLFLOW_DATA_DIR']}; steps {args.steps}; seeds {args.seeds}; "
        f"datasets {args.datasets}")

    tables, notes, courses = [], {}, {}
    for name in args.datasets:
        adata, notes[name] = load_dataset(name)
        course = read_time_course(adata, TIME_KEY, USE_REP)
        courses[name] = course
        log(f"\n== {name}: {adata.n_obs} cells, times {course.times.tolist()}, "
            f"{course.n_dims}-d {USE_REP} ({notes[name]})")
        warm_up(course, device)
        # Seed by seed, cellflow then TorchCFM, so that both meet the same conditions of the
        # machine; the deterministic baseline rows come with the first seed.
        parts, clock = [], {"cellflow": 0.0, "torchcfm": 0.0}
        for seed in args.seeds:
            t0 = time.perf_counter()
            ours = cellflow_leave_one_out(course, [seed], args.steps, device, baseline=seed == args.seeds[0])
            clock["cellflow"] += time.perf_counter() - t0
            for _, r in ours.iterrows():
                extra = "" if r.method == "ot_interpolation" else f"  fit {r.fit_seconds:.1f}s"
                log(f"    {r.method:16s} held-out {r.held_out_time:g}  seed {r.seed}: W1 {r.w1:.4f}{extra}")
            t0 = time.perf_counter()
            peer = pd.DataFrame(torchcfm_leave_one_out(course, [seed], args.steps, device, args.torchcfm_ema, log))
            clock["torchcfm"] += time.perf_counter() - t0
            parts += [ours, peer]
        parts.append(pd.DataFrame(ot_map_rows(course)))
        log(f"  cellflow + baseline: {clock['cellflow']:.0f}s; TorchCFM runner: {clock['torchcfm']:.0f}s")
        table = pd.concat(parts, ignore_index=True)
        table.insert(0, "dataset", name)
        table["n_steps"] = np.where(table.method.isin(BASELINES), 0, args.steps)
        tables.append(table)
        # Keep what is done so far even if a later dataset fails.
        pd.concat(tables, ignore_index=True).to_csv(results / args.csv_name, index=False)

    table = pd.concat(tables, ignore_index=True)
    table.to_csv(results / args.csv_name, index=False)

    log(f"\n== speed: per-step time on emt ({args.speed_steps} steps x {args.speed_repeats} repeats)")
    speed_course = courses["emt"] if "emt" in courses else read_time_course(load_dataset("emt")[0], TIME_KEY, USE_REP)
    speed = per_step_speed(speed_course, args.speed_steps, args.speed_repeats, device, log)
    speed.to_csv(results / args.speed_csv_name, index=False)

    summary = summarise(table)
    elapsed = time.perf_counter() - t_start
    text = write_report(args.out, command=command, args=args, device=device, started=started, elapsed=elapsed,
                        notes=notes, table=table, summary=summary, speed=speed)
    log("\n" + text)
    log(f"wrote {args.out} and {results / args.csv_name}, {results / args.speed_csv_name} "
        f"({elapsed / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Leave-one-time-point-out benchmark under the one-point-per-cell protocol.

Every method predicts exactly one point per cell of ``t_{k-1}``:

* every row of ``cellflow.model.METHODS`` (read when the script runs), through the one loop
  ``cellflow.benchmark.leave_one_out``;
* TorchCFM's OT-CFM (``ExactOptimalTransportConditionalFlowMatcher``), trained by the runner
  below with cellflow's network, widths, pairs per step, weight averaging (EMA), training loop
  and integrator, for as many steps as cellflow's default method took on the same fold and seed;
* the exact-OT plan between ``t_{k-1}`` and ``t_{k+1}`` (no learning): the barycentric map and
  the interpolation drawn once per cell from its plan row (the two baselines), and the
  full-support interpolation (a reference with more points than cells).

Datasets: ``emt`` and ``mouse_hematopoiesis`` come as fixed published embeddings (used as they
are: no PCA possible); ``kouno_thp1`` and ``moscot_temporal`` come with genes, and each fold
fits its own PCA on its training time points only.

Runs are resumable and splittable: every (dataset, method, seed, held-out time) is one row of a
CSV under ``benchmarks/results/leave_one_out/`` and is never recomputed; separate invocations
(``--datasets``, ``--methods``, ``--seeds``) add to the same folder, and ``--write`` regenerates
the ``leave_one_out`` section of ``BENCHMARKS.md`` from every cached row. ``--quick`` runs a small
simulated course (``cellflow.datasets.simulate``) for a few steps, one seed, ``otcfm``, ``wfr``,
TorchCFM and the baselines unless ``--methods`` says otherwise (seconds, for tests); its ``--write``
goes to ``BENCHMARKS_quick.md`` in the results folder unless ``--out`` says otherwise.
Run ``python benchmarks/leave_one_out.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import inspect
import os
import platform
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

# benchmarks/sections.py, shared by the benchmark scripts
from sections import (  # noqa: E402
    QUICK_DATASET,
    QUICK_STEPS,
    code_version,
    invocation,
    report_file,
    write_section,
)

import cellflow  # noqa: E402
from cellflow._utils import resolve_device  # noqa: E402
from cellflow.benchmark import BASELINES, MMD_BANDWIDTHS, leave_one_out  # noqa: E402
from cellflow.fields import Clock, TimeMLP  # noqa: E402
from cellflow.io import read_time_course  # noqa: E402
from cellflow.model import METHODS, TimeCourse, default_batch_size, default_hidden  # noqa: E402
from cellflow.solvers import integrate  # noqa: E402
from cellflow.training import Batch, train  # noqa: E402

DATASETS = ("emt", "kouno_thp1", "mouse_hematopoiesis", "moscot_temporal")
N_PCS = 10  # components of each fold's PCA (datasets with genes)
DEFAULT_METHOD = "otcfm"  # the default the target is judged on
TORCHCFM = "torchcfm_otcfm"
QUICK_METHODS = (DEFAULT_METHOD, "wfr", TORCHCFM, "baselines")  # --quick: without and with growth, and the rivals
BASELINE_PAIR = ("ot_map", "ot_draw")  # the one-point-per-cell baselines the default must beat
_DEFAULTS = inspect.signature(cellflow.CellFlow).parameters
EMA = _DEFAULTS["ema_decay"].default
LR = _DEFAULTS["lr"].default
SIGMA = METHODS["otcfm"].path_class.default_sigma  # path noise, in units of the data's overall std
RESULTS = ROOT / "benchmarks" / "results" / "leave_one_out"
SECTION = "leave_one_out"  # <!-- leave_one_out:start --> ... <!-- leave_one_out:end --> in BENCHMARKS.md
LABELS = {
    TORCHCFM: "TorchCFM OT-CFM",
    "ot_map": "exact-OT barycentric map",
    "ot_draw": "exact-OT interpolation, drawn once per cell",
    "ot_interpolation": "exact-OT interpolation, full support (reference)",
}


def label(method: str) -> str:
    return LABELS.get(method, f"cellflow {method}")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

def load_course(name: str) -> tuple[TimeCourse, int | None, str]:
    """The time course of ``name``, the PCA size of its folds (``None``: fixed embedding) and a note."""
    if name == QUICK_DATASET:
        adata = cellflow.datasets.simulate(n_cells=80, times=(0.0, 1.0, 2.0, 3.0), n_genes=5, seed=0)
        note = "cellflow.datasets.simulate, 80 cells at time 0, its 2-d latent states"
        return read_time_course(adata, "time", "X_pca"), None, note
    if name in ("emt", "mouse_hematopoiesis"):
        adata = getattr(cellflow.datasets, name)()
        note = (f"the published {adata.obsm['X_pca'].shape[1]}-d embedding of the DeepRUOT file, used as it is: "
                "the file has no genes, so no PCA per fold is possible (the embedding was computed by its "
                "authors on all time points)")
        return read_time_course(adata, "time", "X_pca"), None, note
    if name == "kouno_thp1":
        course = read_time_course(cellflow.datasets.kouno_thp1(), "time", "X")
        note = (f"log2 relative expression of 45 genes; each fold's PCA ({N_PCS} components) fitted on its "
                "training times")
        return course, N_PCS, note
    if name == "moscot_temporal":
        course = read_time_course(cellflow.datasets.moscot_temporal(), "time", "X")
        note = (f"the file's log-normalised X, 1479 genes; each fold's PCA ({N_PCS} components) fitted on its "
                "training times")
        return course, N_PCS, note
    raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")


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
    its units (:meth:`cellflow.fields.Clock.to_network`), exactly as for cellflow's own pairs.
    """

    def __init__(self, populations, times, batch_size: int, sigma: float):
        from torchcfm.conditional_flow_matching import (
            ExactOptimalTransportConditionalFlowMatcher,
        )

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
    (:class:`cellflow.fields.TimeMLP` of the same widths, hence the same initial weights for a
    seed), the training loop :func:`cellflow.training.train` (loss, Adam, weight averaging with
    the same decay, ``ema_decay``, cellflow's default unless switched off with 0), the
    coordinates (centre, one overall scale, :class:`cellflow.fields.Clock`) and the integrator
    (:func:`cellflow.solvers.integrate`, dopri5 with its default tolerances) on the
    real-time field ``net(z, tau(t)) * r(t)``, the form of ``CellFlow._field``.
    """

    def __init__(self, *, sigma=SIGMA, hidden=(256, 256, 256), n_steps=2000, batch_size=256, lr=LR,
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

    def fit(self, course: TimeCourse) -> TorchCFMRunner:
        start = time.perf_counter()
        # torch: initial weights, which cells enter a minibatch and TorchCFM's draws of s and
        # noise; np.random: TorchCFM's resampling of pairs from the minibatch plan.
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)  # noqa: NPY002 (TorchCFM draws from numpy's global generator)

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


def torchcfm_fitter(steps_of, device: str, ema_decay):
    """``fit(training, seed, held_out_time)`` of :class:`TorchCFMRunner` with cellflow's default widths and
    pairs per step, for ``steps_of(seed, held_out_time)`` steps.
    """

    def fit(training: TimeCourse, seed: int, held_out_time: float):
        runner = TorchCFMRunner(hidden=default_hidden(training.n_dims), n_steps=steps_of(seed, held_out_time),
                                batch_size=default_batch_size(training), ema_decay=ema_decay, seed=seed,
                                device=device)
        return runner.fit(training)

    return fit


# ---------------------------------------------------------------------------------------------
# The cache of rows
# ---------------------------------------------------------------------------------------------

KEY = ["dataset", "method", "seed", "held_out_time"]


def cache_file(folder: Path, dataset: str, method: str) -> Path:
    return folder / f"{dataset}__{method}.csv"


def read_cache(folder: Path) -> pd.DataFrame:
    """Every cached row of ``folder`` (the last row of a key wins, should a run have been repeated)."""
    files = sorted(folder.glob("*__*.csv"))
    if not files:
        return pd.DataFrame(columns=KEY)
    table = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    return table.drop_duplicates(KEY, keep="last").reset_index(drop=True)


def append_row(folder: Path, row: dict) -> None:
    path = cache_file(folder, row["dataset"], row["method"])
    pd.DataFrame([row]).to_csv(path, mode="a", header=not path.exists(), index=False)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def _pm(mean: float, sd: float, digits: int = 3) -> str:
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and method: mean and sd over seeds and held-out times, and the seed spread of W1
    (the sd over seeds at each held-out time, averaged over the times).
    """
    out = []
    for (dataset, method), group in rows.groupby(["dataset", "method"], sort=False):
        per_time = group.groupby("held_out_time").w1.std(ddof=1)
        trained = group.n_steps > 0
        out.append(dict(
            dataset=dataset, method=method, runs=len(group), seeds=group.seed.nunique(),
            times=group.held_out_time.nunique(), points=group.n_predicted.mean(),
            **{f"{m}_{s}": getattr(group[m], s)() if len(group) > 1 or s == "mean" else 0.0
               for m in ("w1", "w2", "mmd") for s in ("mean", "std")},
            w1_seed_spread=float(per_time.fillna(0).mean()),
            steps=group.n_steps[trained].mean() if trained.any() else np.nan,
            fit_seconds=group.fit_seconds[trained].mean() if trained.any() else np.nan,
            seconds=group.seconds.mean(),
        ))
    return pd.DataFrame(out).set_index(["dataset", "method"])


def judge(summary: pd.DataFrame, dataset: str, method: str = DEFAULT_METHOD) -> tuple[bool | None, str]:
    """Whether ``method`` (the default unless named) beats both one-point baselines and TorchCFM on
    ``dataset`` by more than the seed spread (on mean W1), and a sentence saying so.
    """
    s = summary.loc[dataset]
    rivals = [*BASELINE_PAIR, TORCHCFM]
    missing = [m for m in [method, *rivals] if m not in s.index]
    if missing:
        return None, f"**{dataset}: not judged**, no rows for {', '.join(label(m) for m in missing)}."
    if min(s.loc[m].seeds for m in [method, *rivals]) < 2:
        return None, f"**{dataset}: not judged**: fewer than 2 seeds, so no seed spread."
    if s.loc[method].runs < max(s.loc[m].runs for m in rivals):
        return None, f"**{dataset}: not judged**: {label(method)} has not run every seed and held-out time."
    ours = s.loc[method]
    parts, wins = [], 0
    for m in rivals:
        other = s.loc[m]
        margin = other.w1_mean - ours.w1_mean
        spread = max(ours.w1_seed_spread, other.w1_seed_spread)
        won = margin > spread
        wins += won
        parts.append(f"{label(m)} {other.w1_mean:.4f} ({'beaten' if won else 'not beaten'}: margin "
                     f"{margin:+.4f} vs seed spread {spread:.4f})")
    verdict = "meets" if wins == len(rivals) else "misses"
    gap = s.loc["ot_map"].w1_mean - ours.w1_mean
    if wins < len(rivals):  # why: the map is what a flow trained on the neighbours' plan tends to
        parts.append("the fold's flow is trained toward the exact plan between the held-out time's neighbours, "
                     + ("so it can at best match the barycentric map of that plan" if gap < 0 else
                        "and gains on the map by less than the seeds disagree")
                     + (f", and here falls {-gap:.4f} short of it" if gap < 0 else ""))
    return wins == len(rivals), (f"**{dataset}: cellflow {method} {verdict} the target** (W1 "
                                 f"{ours.w1_mean:.4f}; " + "; ".join(parts) + ").")


def method_row(summary: pd.DataFrame, method: str, datasets=DATASETS) -> str:
    """One row of the per-method target table: the verdict of :func:`judge` on every one of ``datasets``."""
    marks = []
    for dataset in datasets:
        met = judge(summary, dataset, method)[0] if dataset in summary.index.get_level_values(0) else None
        marks.append("-" if met is None else ("yes" if met else "no"))
    return f"| {method} | " + " | ".join(marks) + f" | {marks.count('yes')} |"


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

    return [
        f"CPU: {cpu}; nproc {os.cpu_count()}; torch threads {torch.get_num_threads()}; device {device}; "
        f"load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}",
        f"Python {platform.python_version()}, torch {torch.__version__}, torchcfm {version('torchcfm')}, "
        f"POT {version('pot')}, scikit-learn {version('scikit-learn')}, cellflow {cellflow.__version__}",
    ]


def write_report(path: Path, folder: Path, rows: pd.DataFrame, steps: str, datasets=DATASETS) -> str:
    """Rewrite the section of ``path`` from the cached ``rows`` of ``folder``, one part per dataset of ``datasets``."""
    summary = summarise(rows)
    log = (folder / "runs.log").read_text().strip().splitlines() if (folder / "runs.log").exists() else []
    methods = [m for m in [DEFAULT_METHOD, *BASELINE_PAIR, TORCHCFM, *METHODS, "ot_interpolation"]
               if m in set(rows.method)]
    methods = list(dict.fromkeys(methods))
    out = [
        "## Leave-one-out, one point per cell: every method against the exact-OT baselines and TorchCFM",
        "",
        "<!-- Regenerated by benchmarks/leave_one_out.py --write from its cached rows; do not edit by hand. -->",
        "",
        "### Protocol",
        "",
        "For every inner time point t_k: fit on the other time points, predict **one point per cell of",
        "t_(k-1)** and score it against the held-out cells of t_k. A flow pushes each cell once (dopri5);",
        "the exact-OT plan between t_(k-1) and t_(k+1) (no learning) moves each cell toward the mean of its",
        "partners (**barycentric map**) or toward one partner drawn from its own plan row (**interpolation",
        "drawn once per cell**); these two are the baselines. The **full-support interpolation** (every pair",
        "of the plan a weighted point, more points than cells) is shown as a reference only.",
        "Scores (`cellflow.benchmark.score`): exact W1 and W2, and MMD with RBF widths "
        f"{', '.join(map(str, MMD_BANDWIDTHS))}",
        "times the median distance between the held-out cells (the same kernel for every method of a fold);",
        "points weighted equally unless the method carries mass (wfr). Mean ± sd over seeds and held-out",
        "times. *Seed spread*: the sd over seeds at each held-out time, averaged over the times; the target",
        f"is met on a dataset when cellflow `{DEFAULT_METHOD}` (the default, `DEFAULT_METHOD` in the script)",
        "has a lower mean W1 than each of the two baselines and TorchCFM OT-CFM by more than the larger",
        "seed spread of the two. Every fit is used as it ends: no checkpoint is chosen by a held-out score.",
        "",
        f"- cellflow methods: every row of `cellflow.model.METHODS`, defaults otherwise (steps: {steps}).",
        f"- TorchCFM OT-CFM: `ExactOptimalTransportConditionalFlowMatcher(sigma={SIGMA})` (exact OT on every",
        "  minibatch), trained with cellflow's network (`TimeMLP`, `default_hidden`), pairs per interval and",
        f"  step (`default_batch_size`), Adam lr {LR}, EMA {EMA}, normalisation, clock and dopri5 integration,",
        f"  for as many steps as cellflow `{DEFAULT_METHOD}` trained on the same fold and seed.",
        "",
        "Representations:",
        "",
        *[f"- {name}: {load_note(name)}" for name in datasets],
        "",
        "### Runs",
        "",
        "Rows are cached per (dataset, method, seed, held-out time) under "
        f"`{folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder}/` (not committed); "
        "invocations that produced them:",
        "",
        "```",
        *log,
        "```",
        "",
    ]
    verdicts = []
    for dataset in datasets:
        if dataset not in summary.index.get_level_values(0):
            out += [f"### {dataset}", "", "Not run yet.", ""]
            verdicts.append((dataset, None))
            continue
        s = summary.loc[dataset]
        times = sorted(rows[rows.dataset == dataset].held_out_time.unique())
        out += [f"### {dataset}", "", f"Held-out times: {', '.join(f'{t:g}' for t in times)}.", "",
                "| method | runs (seeds x times) | points | W1 | W1 seed spread | W2 | MMD | steps | fit s |",
                "|---|---:|---:|---|---:|---|---|---:|---:|"]
        for m in methods:
            if m not in s.index:
                continue
            r = s.loc[m]
            steps_cell = "-" if np.isnan(r.steps) else f"{r.steps:.0f}"
            fit = "-" if np.isnan(r.fit_seconds) else f"{r.fit_seconds:.1f}"
            out.append(f"| {label(m)} | {r.runs:.0f} ({r.seeds:.0f} x {r.times:.0f}) | {r.points:.0f} | "
                       f"{_pm(r.w1_mean, r.w1_std)} | {r.w1_seed_spread:.3f} | {_pm(r.w2_mean, r.w2_std)} | "
                       f"{_pm(r.mmd_mean, r.mmd_std, 4)} | {steps_cell} | {fit} |")
        per_time = rows[rows.dataset == dataset].groupby(["held_out_time", "method"]).w1.mean().unstack("method")
        shown = [m for m in methods if m in per_time]
        out += ["", "W1 per held-out time (mean over seeds):", "",
                "| held-out time | " + " | ".join(label(m) for m in shown) + " |",
                "|---:|" + "---:|" * len(shown)]
        out += [f"| {t:g} | " + " | ".join(f"{row[m]:.3f}" for m in shown) + " |" for t, row in per_time.iterrows()]
        met, sentence = judge(summary, dataset)
        verdicts.append((dataset, met))
        out += ["", sentence, ""]
    missing = []
    for d in datasets:
        expected = 3 * (len(load_course_times(d)) - 2)
        counts = {m: int(summary.loc[(d, m)].runs) if (d, m) in summary.index else 0
                  for m in [*METHODS, TORCHCFM, *BASELINES]}
        short = [f"{m} {n}/{expected}" for m, n in counts.items() if n < expected]
        if short:
            missing.append(f"{d}: " + ", ".join(short))
    met = [d for d, v in verdicts if v]
    out += ["### Target", "",
            f"cellflow `{DEFAULT_METHOD}` beats both one-point baselines and TorchCFM by more than the seed spread "
            f"on {len(met)} of {len(datasets)} datasets ({', '.join(met) or 'none'}); the target asks for 3. "
            + ("Met." if len(met) >= 3 else "Not met (yet)."), "",
            "Every cellflow method judged the same way (yes: beats both one-point baselines and TorchCFM by more "
            "than the seed spread on mean W1; no: does not; -: not run on every seed and held-out time):", "",
            "| method | " + " | ".join(datasets) + " | datasets met |",
            "|---|" + "---|" * len(datasets) + "---:|",
            *[method_row(summary, m, datasets) for m in METHODS],
            "",
            "Runs missing (method runs cached / 3 seeds x inner times):", "",
            *([f"- {line}" for line in missing] or ["- none"]), ""]
    text = "\n".join(out)
    write_section(SECTION, text, path)
    return text


_NOTES: dict[str, str] = {}
_TIMES: dict[str, np.ndarray] = {}


def load_note(name: str) -> str:
    if name not in _NOTES:
        course, _, _NOTES[name] = load_course(name)
        _TIMES[name] = course.times
    return _NOTES[name]


def load_course_times(name: str) -> np.ndarray:
    load_note(name)
    return _TIMES[name]


# ---------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--datasets", nargs="+", choices=[*DATASETS, QUICK_DATASET], default=list(DATASETS))
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"methods to run: rows of cellflow.model.METHODS ({', '.join(METHODS)}), {TORCHCFM}, "
                        f"baselines (the exact-OT rows); default all of them ({' '.join(QUICK_METHODS)} with --quick)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", default="auto", help="training steps of cellflow's fits ('auto': its default)")
    p.add_argument("--torchcfm-ema", type=float, default=EMA, help="EMA decay of the TorchCFM runner (0: none)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for every fit")
    p.add_argument("--device", default="auto", help="torch device of the trained methods (auto: CUDA when present)")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of the cached rows")
    p.add_argument("--write", action="store_true",
                   help="regenerate the leave_one_out section of --out from every cached row")
    p.add_argument("--no-run", action="store_true", help="fit nothing: with --write, only rewrite the section")
    p.add_argument("--quick", action="store_true",
                   help=f"a small simulated course ({QUICK_DATASET}), {QUICK_STEPS} steps, seed 0, methods "
                        f"{' '.join(QUICK_METHODS)} unless given: seconds (for tests)")
    p.add_argument("--out", type=Path, default=None,
                   help="report file whose section --write rewrites (default BENCHMARKS.md; with --quick "
                        "BENCHMARKS_quick.md in --results)")
    args = p.parse_args(argv)
    if args.quick:
        args.datasets, args.steps, args.seeds = [QUICK_DATASET], QUICK_STEPS, [0]
    args.out = report_file(args.out, args.quick, args.results)
    known = [*METHODS, TORCHCFM, "baselines"]
    args.methods = args.methods or list(QUICK_METHODS if args.quick else known)
    unknown = [m for m in args.methods if m not in known]
    if unknown:
        p.error(f"--methods {unknown[0]!r} is not one of {', '.join(known)}")
    if args.steps != "auto":
        args.steps = int(args.steps)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    folder = args.results / f"steps-{args.steps}"
    folder.mkdir(parents=True, exist_ok=True)
    command = invocation("leave_one_out", argv)
    stamp = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
    if not args.no_run:  # the invocations behind the cached rows, listed in the report
        with open(folder / "runs.log", "a") as handle:
            handle.write(f"{stamp}  {command}\n    {code_version()}\n"
                         + "".join(f"    {line}\n" for line in machine_lines(device)))
    print(f"$ {command}\n" + "\n".join(machine_lines(device)), flush=True)

    cellflow_methods = [m for m in args.methods if m in METHODS]
    if TORCHCFM in args.methods:  # TorchCFM trains for as many steps as the default did: the default first
        cellflow_methods = [DEFAULT_METHOD] + [m for m in cellflow_methods if m != DEFAULT_METHOD]
    methods = cellflow_methods + ([TORCHCFM] if TORCHCFM in args.methods else [])
    model_kwargs = dict(device=device) | ({} if args.steps == "auto" else dict(n_steps=args.steps))

    for name in [] if args.no_run else args.datasets:
        cached = read_cache(folder)
        done = set(map(tuple, cached[KEY].itertuples(index=False))) if len(cached) else set()
        course, n_pcs, note = load_course(name)
        print(f"\n== {name}: {sum(map(len, course.populations))} cells, times {course.times.tolist()}, "
              f"{course.n_dims} input dimensions; {note}", flush=True)
        new_rows: list[dict] = []

        def steps_of(seed, held_out_time, name=name, new_rows=new_rows, cached=cached):
            for row in new_rows[::-1]:
                if (row["method"], row["seed"], row["held_out_time"]) == (DEFAULT_METHOD, seed, held_out_time):
                    return int(row["n_steps"])
            match = cached[(cached.dataset == name) & (cached.method == DEFAULT_METHOD) & (cached.seed == seed)
                           & np.isclose(cached.held_out_time.astype(float), held_out_time)]
            return int(match.n_steps.iloc[-1])

        def on_row(row, name=name, new_rows=new_rows):
            row = dict(dataset=name, **row)
            new_rows.append(row)
            append_row(folder, row)
            print(f"  {name} {row['method']:18s} seed {row['seed']} held-out {row['held_out_time']:g}: "
                  f"W1 {row['w1']:.4f} W2 {row['w2']:.4f} MMD {row['mmd']:.4f}, {row['n_predicted']} points, "
                  f"{row['n_steps']} steps, fit {row['fit_seconds']:.1f} s", flush=True)

        leave_one_out(
            course, methods, seeds=args.seeds, baseline="baselines" in args.methods, n_pcs=n_pcs,
            fitters={TORCHCFM: torchcfm_fitter(steps_of, device, args.torchcfm_ema)},
            skip=lambda method, seed, t, name=name, done=done: (name, method, seed, t) in done,
            on_row=on_row, progress=False, **model_kwargs,
        )
    if args.write:
        rows = read_cache(folder)
        text = write_report(args.out, folder, rows, str(args.steps), args.datasets if args.quick else DATASETS)
        print("\n" + text)
        print(f"wrote the {SECTION} section of {args.out} from {len(rows)} cached rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

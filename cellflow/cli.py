"""Command line: ``cellflow demo | fit | interpolate | benchmark``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _demo(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from . import datasets, pl, tl

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    adata = datasets.simulate(seed=args.seed)
    print(f"simulated time course: {adata.n_obs} cells, times {sorted(set(adata.obs['time']))}")
    model = tl.fit(adata, time_key="time", use_rep="X_pca", method=args.method, seed=args.seed, n_steps=args.steps)
    h5ad, png = out / "cellflow_demo.h5ad", out / "cellflow_demo_velocity.png"
    adata.write_h5ad(h5ad)
    pl.velocity(adata, basis="pca", save=str(png), show=False)
    print(f"fitted {args.method} in {float(model.history['fit_seconds']):.1f} s")
    print(f"AnnData with velocity: {h5ad.resolve()}")
    print(f"velocity plot:         {png.resolve()}")


def _fit(args) -> None:
    import anndata as ad

    from . import tl

    adata = ad.read_h5ad(args.input)
    print(f"read {adata.n_obs} cells x {adata.n_vars} genes; fitting {args.method} ({args.steps} steps)", flush=True)
    tl.fit(adata, time_key=args.time_key, use_rep=args.use_rep, method=args.method, seed=args.seed,
           n_steps=args.steps, device=args.device)
    adata.write_h5ad(args.out)
    print(f"wrote {Path(args.out).resolve()}")


def _interpolate(args) -> None:
    import anndata as ad

    from . import tl

    adata = ad.read_h5ad(args.input)
    print(f"pushing the cells of time {args.from_time:g} to {args.to_time:g}", flush=True)
    pred = tl.interpolate(adata, args.from_time, args.to_time)
    pred.write_h5ad(args.out)
    print(f"wrote {pred.n_obs} predicted cells at time {args.to_time:g} to {Path(args.out).resolve()}")


def _benchmark(args) -> None:
    import anndata as ad

    from . import tl

    adata = ad.read_h5ad(args.input)
    print(f"read {adata.n_obs} cells; leave-one-out with {args.method}, seeds {args.seeds}", flush=True)
    table = tl.leave_one_out(adata, time_key=args.time_key, use_rep=args.use_rep, method=args.method,
                             seeds=args.seeds, n_steps=args.steps)
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"wrote {Path(args.out).resolve()}")
    summary = table.groupby("method")[["w1", "w2", "mmd", "seconds"]].agg(["mean", "std"])
    print(summary.to_string(float_format=lambda v: f"{v:.4f}"))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cellflow`` command."""
    from .model import METHODS

    method_help = f"one of {', '.join(METHODS)} (default: otcfm; wfr learns growth too)"
    parser = argparse.ArgumentParser(prog="cellflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="fit the simulated default time course; write .h5ad and a velocity plot")
    demo.add_argument("--out", default="cellflow_demo", help="output folder (default: ./cellflow_demo)")
    demo.add_argument("--method", default="otcfm", help=method_help)
    demo.add_argument("--steps", type=int, default=2000, help="training steps")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)

    def common(sub):
        sub.add_argument("input", help="input .h5ad")
        sub.add_argument("--time-key", default="time", help="obs column with each cell's time")
        sub.add_argument("--use-rep", default="X_pca", help="obsm key, 'X' or a layer")
        sub.add_argument("--method", default="otcfm", help=method_help)
        sub.add_argument("--steps", type=int, default=2000, help="training steps")

    fit = commands.add_parser("fit", help="learn velocity; write it into a copy of the .h5ad")
    common(fit)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--device", default="auto")
    fit.add_argument("--out", required=True, help="output .h5ad")
    fit.set_defaults(run=_fit)

    interp = commands.add_parser("interpolate", help="push the cells of one time point to another time")
    interp.add_argument("input", help=".h5ad written by 'cellflow fit'")
    interp.add_argument("--from", dest="from_time", type=float, required=True, help="a measured time point")
    interp.add_argument("--to", dest="to_time", type=float, required=True, help="any time")
    interp.add_argument("--out", required=True, help="output .h5ad of predicted cells")
    interp.set_defaults(run=_interpolate)

    bench = commands.add_parser("benchmark", help="leave-one-time-point-out benchmark")
    common(bench)
    bench.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    bench.add_argument("--out", help="CSV of every run")
    bench.set_defaults(run=_benchmark)
    return parser


def main(argv=None) -> int:
    """Entry point; returns the exit status (1 with a one-line reason on bad input)."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (KeyError, ValueError, FileNotFoundError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"cellflow {args.command}: error: {' '.join(str(message).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

# %% [markdown]
# # cellflow quickstart: velocity, growth and interpolation from a time course
#
# Run as a script (`python tutorials/quickstart.py [OUT_DIR]`) or open as a notebook with jupytext.
# It uses the simulated time course shipped with cellflow, whose true velocity and growth are known,
# so every step can be checked against the truth. The two files it writes (a PNG and an `.h5ad`) go
# to `OUT_DIR`, else to the folder in the environment variable `CELLFLOW_TUTORIAL_DIR`, else to a
# new temporary folder; never into the current folder.

# %%
import os
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np

import cellflow as cf

as_script = Path(sys.argv[0]).name == "quickstart.py"  # in a notebook, sys.argv is the kernel's
out_dir = Path(sys.argv[1] if as_script and len(sys.argv) > 1 else
               os.environ.get("CELLFLOW_TUTORIAL_DIR") or tempfile.mkdtemp(prefix="cellflow_quickstart_"))
out_dir.mkdir(parents=True, exist_ok=True)
print(f"writing into {out_dir}")

adata = cf.datasets.simulate(n_cells=400, seed=0)  # 5 time points, cells divide on one branch and die on the other
print(adata)

# %% [markdown]
# ## Balanced flow matching (OT-CFM)

# %%
cf.tl.fit(adata, time_key="time", use_rep="X_pca", method="otcfm", n_steps=1000)
v, truth = adata.obsm["cellflow_velocity_pca"], adata.obsm["velocity_true_pca"]
cosine = (v * truth).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(truth, axis=1)
print(f"median cosine to the true velocity: {np.median(cosine):.3f}")
cf.pl.velocity(adata, basis="pca", save=out_dir / "quickstart_velocity.png", show=False)

# %% [markdown]
# ## Unbalanced: WFR-FM learns growth too

# %%
cf.tl.fit(adata, method="wfr", n_steps=1000, key_added="wfr")
growth = adata.obs["wfr_growth_rate"]
print(f"correlation of learned and true growth: {np.corrcoef(growth, adata.obs['growth_true'])[0, 1]:.2f}")

# %% [markdown]
# ## An unmeasured time point

# %%
pred = cf.tl.interpolate(adata, from_time=2, to_time=2.5, key="wfr")
n2 = (adata.obs["time"] == 2).sum()
print(f"{pred.n_obs} cells pushed to t=2.5 stand for {pred.obs['wfr_mass'].sum():.0f} cells (were {n2} at t=2)")
pred.write_h5ad(out_dir / "quickstart_t2.5.h5ad")

# %% [markdown]
# ## Leave one time point out, against the OT interpolation baseline

# %%
table = cf.tl.leave_one_out(adata, method=["otcfm", "wfr"], seeds=[0], n_steps=500)
print(table.groupby("method")[["w1", "mass_error"]].mean())

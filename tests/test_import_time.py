"""``import cellflow`` stays light: plotting, scanpy and the optional solvers load only when used.

A behavioural check (which modules an import loads), not a timed one; timings belong in benchmarks.
"""

import json
import subprocess
import sys

HEAVY = ("matplotlib", "scanpy", "scvelo", "ot", "geomloss", "sklearn", "pooch", "torchdiffeq")


def _loaded_after(code: str) -> list[str]:
    """The modules of :data:`HEAVY` in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_cellflow_loads_no_plotting_scanpy_or_optional_solver():
    assert _loaded_after("import cellflow") == []


def test_the_tools_load_on_touch_without_plotting_scanpy_or_optional_solvers():
    code = """
import cellflow as cf
assert callable(cf.tl.fit) and callable(cf.tl.fate) and callable(cf.pp.score_growth)
assert callable(cf.read_time_course) and isinstance(cf.CellFlow, type)
assert issubclass(cf.DisagreementWarning, Warning) and issubclass(cf.OffDataWarning, Warning)
"""
    assert _loaded_after(code) == []


def test_lazy_subpackages_are_attributes_listed_by_dir_and_importable_by_name():
    code = """
import cellflow as cf
for name in ("pl", "tl", "pp", "io", "datasets", "metrics", "benchmark", "CellFlow", "read_time_course"):
    assert name in dir(cf), name
assert callable(cf.pl.velocity) and callable(cf.datasets.simulate) and callable(cf.benchmark.leave_one_out)
assert callable(cf.model.CellFlow) and callable(cf.training.train)
from cellflow.pl import velocity
assert velocity is cf.pl.velocity
try:
    cf.no_such_thing
except AttributeError:
    pass
else:
    raise AssertionError("an unknown attribute must raise AttributeError")
"""
    _loaded_after(code)  # raises CalledProcessError (with the traceback) when an assertion fails

"""Sphinx configuration of cellflow's documentation.

Build (warnings are errors), from the repository root::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The notebooks in ``tutorials/`` are rendered with their committed outputs (never executed): they are
copied into ``docs/tutorials/`` (git-ignored) at the start of every build, since Sphinx reads only
files under ``docs/``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document this checkout's cellflow, installed or not

from sphinx.pycode import ModuleAnalyzer  # noqa: E402

import cellflow  # noqa: E402


def _copy_tutorials() -> None:
    """Mirror ``tutorials/*.ipynb`` into ``docs/tutorials/``, rewriting only the notebooks that changed.

    The copies name IPython's highlighter, so that the ``!cellflow ...`` shell lines of the notebooks
    are highlighted as IPython rather than failing as Python.
    """
    target = DOCS / "tutorials"
    target.mkdir(exist_ok=True)
    sources = sorted((ROOT / "tutorials").glob("*.ipynb"))
    names = {path.name for path in sources}
    for stale in target.glob("*.ipynb"):
        if stale.name not in names:
            stale.unlink()
    for source in sources:
        notebook = json.loads(source.read_text(encoding="utf-8"))
        notebook.setdefault("metadata", {}).setdefault("language_info", {}).setdefault("pygments_lexer", "ipython3")
        text = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
        copy = target / source.name
        if not copy.exists() or copy.read_text(encoding="utf-8") != text:
            copy.write_text(text, encoding="utf-8")


_copy_tutorials()

project = "cellflow"
author = "the cellflow authors"
copyright = "the cellflow authors"  # noqa: A001 (Sphinx's name)
release = cellflow.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}  # .rst first: autosummary's stubs
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# notebooks: rendered with the outputs committed in tutorials/, never run here
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath", "deflist"]
myst_heading_anchors = 3

# API pages: autosummary from the numpydoc docstrings
autosummary_generate = True
autosummary_imported_members = True
autosummary_ignore_module_all = False  # a package's page lists its __all__, the public face
autodoc_default_options = {"members": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = True

html_theme = "furo"
html_title = f"cellflow {release}"
html_static_path = []


def _constant_doc(app, what, name, obj, options, lines) -> None:
    """A constant re-exported by a package face is documented by the ``#:`` comment where it is defined.

    autodoc finds ``#:`` comments only in the module it documents (the package's ``__init__``), and
    otherwise shows the docstring of the constant's type (``dict``'s, say).
    """
    if what != "data":
        return
    package, _, attribute = name.rpartition(".")
    own = inspect.getdoc(type(obj)) or ""
    if lines and own and lines[0].strip() != own.splitlines()[0].strip():
        return  # a docstring of its own
    lines[:] = []
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        analyzer = ModuleAnalyzer.for_module(f"{package}.{module.name}")
        analyzer.analyze()
        comment = analyzer.attr_docs.get(("", attribute))
        if comment:
            lines.extend(comment)
            return


def setup(app) -> None:
    """Sphinx extension hook: show the ``#:`` comment of a package's constants on the API pages."""
    app.connect("autodoc-process-docstring", _constant_doc, priority=400)  # before napoleon's handler

"""Small helpers shared by the modules: devices, random generators, progress bars, ``copy=``, renamed keywords."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import numpy as np
import torch

#: Lowest ``scanpy.settings.verbosity`` at which ``progress=None`` draws bars: 1, "warning", scanpy's
#: default; ``scanpy.settings.verbosity = 0`` ("error": print errors only) hides them.
PROGRESS_VERBOSITY = 1

F = TypeVar("F", bound=Callable[..., Any])


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return a torch device; ``"auto"`` picks CUDA when present, else CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a torch device; use 'auto', 'cpu' or 'cuda'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for, but this torch ({torch.__version__}) sees no CUDA "
                         "GPU; use device='auto' or 'cpu', or install a CUDA build of torch")
    return device


def show_progress(progress: bool | None) -> bool:
    """Whether to draw progress bars: ``progress`` when it is a bool, else (``None``) whether
    ``scanpy.settings.verbosity`` is at least :data:`PROGRESS_VERBOSITY` (yes when scanpy was
    never imported, so its verbosity was never changed).
    """
    if progress is not None:
        return bool(progress)
    scanpy = sys.modules.get("scanpy")
    settings = getattr(scanpy, "settings", None)
    if settings is None:
        return True
    return int(settings.verbosity) >= PROGRESS_VERBOSITY


def _bar_class() -> type:
    """The notebook bar of tqdm in a Jupyter kernel that can draw it (ipywidgets importable, not a Qt
    console or Spyder), else the plain text bar; chosen at each call, never at import, and
    without tqdm.auto's warning when ipywidgets is missing.
    """
    in_kernel = "ipykernel.zmqshell" in sys.modules
    if in_kernel and not any(name == "QT_API" or name.startswith("SPYDER") for name in os.environ):
        try:
            import ipywidgets  # noqa: F401  (the widgets the notebook bar draws with)
        except ImportError:
            pass
        else:
            from tqdm.notebook import tqdm as notebook_bar

            return notebook_bar
    from tqdm.std import tqdm as text_bar

    return text_bar


def progress_bar(total: int, desc: str, enabled: bool | None) -> Any:
    """A tqdm bar over ``total`` items, silent unless :func:`show_progress` of ``enabled`` is true."""
    if not show_progress(enabled):
        from tqdm.std import tqdm as text_bar

        return text_bar(total=total, disable=True)
    return _bar_class()(total=total, desc=desc, leave=False, dynamic_ncols=True)


def finish_early(bar: Any, note: str) -> None:
    """Close ``bar`` of :func:`progress_bar` complete at the items done, and leave it on screen with ``note``
    (why it ended early), so that a stop before ``total`` does not read as a crash (a notebook bar short of its
    total turns red).
    """
    if not bar.disable:
        bar.total = bar.n
        bar.leave = True
        container = getattr(bar, "container", None)  # the notebook bar's widget: its length is its own
        if container is not None:
            container.children[1].max = bar.n
        bar.set_postfix_str(", ".join(part for part in (bar.postfix, note) if part), refresh=False)
    bar.close()  # draws the final state once, and keeps it


def copy_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``func(adata, ...)``, a function that writes into ``adata``, scanpy's ``copy=`` keyword.

    ``copy=False`` (default) runs ``func`` on ``adata`` and returns what it returns;
    ``copy=True`` runs it on ``adata.copy()`` and returns that copy, leaving ``adata`` as it
    was. The keyword joins ``func``'s signature (keyword-only); ``func``'s docstring describes it.
    """

    @functools.wraps(func)
    def with_copy(adata: Any, *args: Any, copy: bool = False, **kwargs: Any) -> Any:
        if not isinstance(copy, (bool, np.bool_)):
            raise ValueError(f"copy={copy!r} must be True (work on a copy of adata and return it) or False "
                             "(write into adata)")
        if not copy:
            return func(adata, *args, **kwargs)
        if getattr(adata, "isbacked", False):
            raise ValueError(
                f"copy=True needs an AnnData in memory, but adata is backed by {str(adata.filename)!r}; "
                "pass copy=False to write into it, or load it first with adata.to_memory()"
            )
        duplicate = adata.copy()
        func(duplicate, *args, **kwargs)
        return duplicate

    signature = inspect.signature(func)
    parameters = list(signature.parameters.values())
    at = next((i for i, p in enumerate(parameters) if p.kind is p.VAR_KEYWORD), len(parameters))
    parameters.insert(at, inspect.Parameter("copy", inspect.Parameter.KEYWORD_ONLY, default=False, annotation="bool"))
    with_copy.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return with_copy


def renamed_arguments(**renames: str) -> Callable[[F], F]:
    """Keep the old names of renamed keyword arguments working for one release.

    ``@renamed_arguments(old="new", ...)`` maps each keyword ``old=`` given by a caller to
    ``new=`` with a ``FutureWarning`` that names both; passing both is a ``TypeError``. The
    signature shown (``inspect.signature``, ``help``) is that of the function, with the new names
    only; the map is kept in the wrapper's ``renamed_arguments`` attribute. Put it above
    :func:`copy_option` (outermost), so that the warning points at the caller's line.
    """

    def decorate(func: F) -> F:
        name = f"{func.__module__.split('._')[0]}.{func.__name__}" if func.__module__ else func.__name__

        @functools.wraps(func)
        def with_old_names(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(f"{name}() got both {old}= and {new}=; {old}= is the old name of {new}=, pass "
                                    f"{new}= only")
                warnings.warn(f"{name}(): the keyword {old}= is renamed {new}=; {old}= still works in this release "
                              "but will be removed in the next one", FutureWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        renamed = {**getattr(func, "renamed_arguments", {}), **renames}
        with_old_names.renamed_arguments = renamed  # type: ignore[attr-defined]  # not an attribute functions declare
        return cast(F, with_old_names)

    return decorate


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch's global generator and return a numpy generator with the same seed."""
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _runnable_elsewhere() -> float:
    """Threads of other processes ready to run now: the median of five readings of the kernel's
    count of runnable threads (``/proc/stat``), less this one; the one-minute load average
    where there is no ``/proc/stat``.
    """
    readings = []
    try:
        for _ in range(5):
            with open("/proc/stat") as stat:
                line = next(row for row in stat if row.startswith("procs_running"))
            readings.append(int(line.split()[1]) - 1)
            time.sleep(0.002)
    except (OSError, StopIteration, ValueError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return float(np.median(readings))


def cpu_threads() -> int:
    """Compute threads that fit on the cores this process may use beside the work already running.

    Busy-waiting compute threads on a core that another process also needs slow each other
    down far more than a fair share of the cores would (a fit that takes 10 s idle took minutes
    beside two other busy processes). So cellflow uses ``cores - runnable threads of other
    processes`` threads, at least one and at most torch's own setting (which a user can lower
    with ``torch.set_num_threads``).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    free = int(round(cores - _runnable_elsewhere()))
    return max(1, min(torch.get_num_threads(), free))


@contextlib.contextmanager
def compute_threads(device: torch.device) -> Iterator[None]:
    """Run the block with :func:`cpu_threads` torch threads on a CPU device (unchanged on a GPU)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(cpu_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)

"""Small helpers shared by the modules: devices, random generators, progress bars."""

from __future__ import annotations

import contextlib
import os
import time

import numpy as np
import torch
from tqdm.auto import tqdm


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


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar that stays silent when ``enabled`` is false."""
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch's global generator and return a numpy generator with the same seed."""
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _runnable_elsewhere() -> float:
    """Threads of other processes ready to run now: the median of five readings of the kernel's
    count of runnable threads (``/proc/stat``), less this one; the one-minute load average
    where there is no ``/proc/stat``."""
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
def compute_threads(device: torch.device):
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

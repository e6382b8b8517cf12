"""Fitting on several processes (GPUs or machines) with PyTorch's own distributed engine.

Launch any script or the command line with ``torchrun`` and call :func:`cellflow.tl.fit` (or
:meth:`cellflow.CellFlow.fit`) as usual::

    torchrun --nproc_per_node 4 my_script.py
    torchrun --nproc_per_node 4 -m cellflow fit data.h5ad --out fitted.h5ad

The fit joins the process group that ``torchrun`` describes (NCCL on GPUs, gloo on CPUs),
each process solves its share of the coupling blocks and draws its own pairs, gradients are
averaged by :class:`torch.nn.parallel.DistributedDataParallel`, and every process ends with the
same weights. Files (the command line's output, :meth:`cellflow.CellFlow.save`) are written by
rank 0 only.
"""

from __future__ import annotations

import os

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist


def launched() -> bool:
    """Whether ``torchrun`` started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether this process belongs to an initialised process group of several processes."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def join(device: torch.device) -> None:
    """Join the process group ``torchrun`` set up, once (NCCL for CUDA devices, else gloo).

    Nothing happens outside ``torchrun`` or when the group already exists.
    """
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run without torchrun")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def part() -> tuple[int, int]:
    """``(rank, number of processes)`` of this process; ``(0, 1)`` when not distributed."""
    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def is_main() -> bool:
    """Whether this process writes the outputs: rank 0 (``RANK`` from ``torchrun`` before the
    group is joined), or the only process.
    """
    return part()[0] == 0 if active() else int(os.environ.get("RANK", "0")) == 0


def mean(values: npt.ArrayLike) -> np.ndarray:
    """The mean over all processes of a float array (``all_reduce``); the array itself when not distributed."""
    values = np.asarray(values, dtype=np.float64)
    if not active():
        return values
    total = torch.as_tensor(values)
    if dist.get_backend() == "nccl":
        total = total.cuda()
    dist.all_reduce(total)
    return total.cpu().numpy() / dist.get_world_size()


def local_device(device: torch.device) -> torch.device:
    """The GPU of this process under ``torchrun`` (``cuda:LOCAL_RANK``) for a bare ``cuda`` device."""
    if device.type == "cuda" and device.index is None and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device

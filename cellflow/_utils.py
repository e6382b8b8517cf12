"""Small helpers shared by the modules: devices, random generators, progress bars."""

from __future__ import annotations

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

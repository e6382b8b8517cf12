"""Measuring one process of ``scale.py``: peak resident memory per stage, hooks that count a function's calls
to a stage, and the step of a bare network to compare cellflow's training step with (Linux: ``/proc/self``).
"""

from __future__ import annotations

import contextlib
import functools
import time

GB = 1e9
BARE_WARMUP, BARE_STEPS = 20, 300


def status_bytes(field: str) -> int:
    """A ``kB`` line of ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in bytes."""
    with open("/proc/self/status") as status:
        line = next(row for row in status if row.startswith(field + ":"))
    return int(line.split()[1]) * 1024


class StageMemory:
    """Peak resident memory of each stage of a run: the high-water mark is read and reset whenever
    the stage changes (Linux: ``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``).
    """

    def __init__(self, stage: str = "start"):
        self.stage, self.peaks = stage, {}
        self.enter(stage)

    def enter(self, stage: str) -> None:
        """Close the current stage (keep its peak) and start ``stage``."""
        peak = status_bytes("VmHWM")
        self.peaks[self.stage] = max(self.peaks.get(self.stage, 0), peak)
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        self.stage = stage

    @contextlib.contextmanager
    def during(self, stage: str):
        """Count the block's memory to ``stage``, then return to the stage it interrupted."""
        outer = self.stage
        self.enter(stage)
        try:
            yield
        finally:
            self.enter(outer)


def instrument(owner, name: str, stage: str, memory: StageMemory, seconds: dict, cpu: dict) -> None:
    """Wrap ``owner.name`` so that its calls count to ``stage``: their memory, wall time and CPU time."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        start, start_cpu = time.perf_counter(), time.process_time()
        with memory.during(stage):
            try:
                return original(*args, **kwargs)
            finally:
                seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start
                cpu[stage] = cpu.get(stage, 0.0) + time.process_time() - start_cpu

    setattr(owner, name, wrapped)


def bare_step_seconds(dim: int, hidden, batch: int, threads: int, n_steps: int = BARE_STEPS) -> tuple[float, float]:
    """Wall and CPU seconds per forward + backward + Adam step of a bare ``TimeMLP`` on one fixed random batch,
    over ``n_steps`` steps after ``BARE_WARMUP``.
    """
    import torch

    from cellflow.fields import TimeMLP

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        net = TimeMLP(dim, tuple(hidden))
        optimiser = torch.optim.Adam(net.parameters(), lr=1e-3, foreach=True)
        x, u = torch.randn(batch, dim, generator=generator), torch.randn(batch, dim, generator=generator)
        t = torch.rand(batch, generator=generator)
        for step in range(BARE_WARMUP + n_steps):
            if step == BARE_WARMUP:
                start, start_cpu = time.perf_counter(), time.process_time()
            loss = ((net(x, t) - u) ** 2).sum(dim=1).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        return (time.perf_counter() - start) / n_steps, (time.process_time() - start_cpu) / n_steps
    finally:
        torch.set_num_threads(before)

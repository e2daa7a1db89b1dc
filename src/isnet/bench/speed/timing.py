"""Timing and memory tools of the speed benchmark.

Timing: after warm-up calls, the contenders of one setting run in turn (round-robin) for
``repeats`` rounds, so a change of machine load hits them alike; each time is the median of
its rounds. Ratios are ratios of those medians. Each call is timed in wall-clock seconds and
in process CPU seconds (all threads of this process); on CUDA the device is synchronised
around every call.

Peak memory per step: on CUDA ``torch.cuda.max_memory_allocated`` minus the memory allocated
before the step; on CPU the running total of the CPU allocator's allocations and frees
during one step, recorded by ``torch.profiler`` (``profile_memory=True``), and its maximum.
Both count tensor storages (activations, saved tensors, gradients, temporaries) made during
the step over what existed before it (parameters, optimiser state), not allocator caching or
oneDNN scratch space.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

Progress = Callable[[str], None]
"""Receives one line of progress text (``print`` by default)."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_robin(fns: dict[str, Callable[[], Any]], *, repeats: int, warmup: int,
                device: torch.device = torch.device("cpu")) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and process CPU seconds per call of each function.

    All functions run once per round, ``repeats`` rounds. The CPU time (all threads of this
    process) barely moves when other processes load the machine, the wall time does.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def peak_memory(fn: Callable[[], Any], device: torch.device = torch.device("cpu")) -> int | None:
    """Peak bytes allocated by ``fn`` above what was allocated when it started (see module doc)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # no "gpuGetDeviceCount failed" on CPU-only machines
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        return None
    cpu = torch._C._autograd.DeviceType.CPU
    events = sorted((e for e in results.events() if e.name() == "[memory]" and e.device_type() == cpu),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return int(peak)


def memory_method(device: torch.device) -> str:
    """How :func:`peak_memory` measures on ``device``, in words (for the report)."""
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated above the memory allocated before the step."
    return ("maximum of the running total of CPU allocator allocations minus frees during one step, "
            "recorded by torch.profiler (profile_memory=True); counts tensors made during the step "
            "(activations, saved tensors, gradients, temporaries), not parameters or optimiser state "
            "that existed before it, nor allocator caching or oneDNN scratch space.")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's C++ start/stop lines (file descriptor 2) for the duration."""
    try:
        saved = os.dup(2)
    except OSError:  # pragma: no cover - no usable stderr
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages of the machine (None where the platform has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - platform without getloadavg
        return None

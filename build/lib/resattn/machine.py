"""What a result was measured on: the device, in words, for results and benchmarks."""

from __future__ import annotations

import os
import platform

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def describe_device(device: torch.device | str = "cpu") -> str:
    """E.g. ``cuda: NVIDIA H100 80GB HBM3`` or ``cpu: AMD EPYC, 2 cores, 2 torch threads, AVX2``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return (
        f"cpu: {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )

"""A readable name of the machine a result was measured on (kept in records and benchmarks)."""
from __future__ import annotations

import os
import platform

import torch


def hardware_name(device: torch.device | str, threads: bool = False) -> str:
    """The GPU's name, or ``cpu (<processor>, <n> cores)``; ``threads``: the CPU name also gives
    torch's thread count (``..., <n> cores, <t> threads)``), for timings that depend on it."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    extra = f", {torch.get_num_threads()} threads" if threads else ""
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores{extra})"


def resolve_device(name: str) -> torch.device:
    """``auto``: the first GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def peak_memory_gb() -> float:
    """This process's peak resident memory so far, in GiB (Linux and macOS; 0 where unknown)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if platform.system() == "Darwin" else peak / 2**20  # bytes on macOS, KiB elsewhere

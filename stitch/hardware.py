"""A readable name of the machine a result was measured on (kept in records and benchmarks)."""
from __future__ import annotations

import os
import platform

import torch

from .errors import ConfigError


def hardware_name(device: torch.device | str, threads: bool = False) -> str:
    """The GPU's name, or ``cpu (<processor>, <n> cores)``; ``threads``: the CPU name also gives
    torch's thread count (``..., <n> cores, <t> threads)``), for timings that depend on it."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    extra = f", {torch.get_num_threads()} threads" if threads else ""
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores{extra})"


def available_devices() -> list[str]:
    """What this machine offers torch: ``cpu``, ``cuda:0`` ... ``cuda:<n-1>``, ``mps``."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def resolve_device(name: str, key: str = "device") -> torch.device:
    """``auto``: the first GPU when there is one, else the CPU. A device this machine lacks is a
    :class:`ConfigError` naming what it has (checked before any data is read or network built)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    check_device(str(device), key, "device=auto or device=cpu")
    return device


def check_device(name: str, key: str, hint: str) -> None:
    """Raise a one-line :class:`ConfigError` naming ``key`` and ``hint`` when device ``name`` (``cpu``,
    ``cuda``, ``cuda:1``, ``gpu``, ``mps``, ``auto``) is not on this machine."""
    have = available_devices()
    kind = "cuda" if name in ("gpu", "cuda") else name
    if kind in ("cpu", "auto") or kind in have or (kind == "cuda" and any(d.startswith("cuda:") for d in have)):
        return
    n_gpus = sum(d.startswith("cuda:") for d in have)
    what = {"cuda": "no CUDA GPU", "mps": "no Apple MPS device"}.get(kind, f"no {kind} ({n_gpus} CUDA GPUs)")
    raise ConfigError(f"{key}={name}: this machine has {what} (torch sees: {', '.join(have)}); use {hint}")


def peak_memory_gb() -> float:
    """This process's peak resident memory so far, in GiB (Linux and macOS; 0 where unknown)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if platform.system() == "Darwin" else peak / 2**20  # bytes on macOS, KiB elsewhere

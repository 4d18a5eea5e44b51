"""A readable name of the machine a result was measured on (kept in records and benchmarks)."""
from __future__ import annotations

import os
import platform

import torch


def hardware_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"

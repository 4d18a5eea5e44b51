"""One GPU per parallel Hydra job (joblib launcher).

joblib runs a multirun's jobs in ``n_jobs`` long-lived worker processes. CUDA reads
``CUDA_VISIBLE_DEVICES`` once, when a process first touches the GPU, so the only safe
unit of assignment is the worker process: on its first job each worker takes an
exclusive lock on one GPU (``fcntl.flock`` on ``<lock_dir>/gpu<i>.lock``), sets
``CUDA_VISIBLE_DEVICES`` to it and keeps the lock until it exits (the kernel drops it
then, even after a crash). Two jobs can therefore never share a GPU, also across
sweeps running at the same time on one machine. A worker that finds every GPU taken
(``n_jobs`` > number of GPUs) fails its job with a message instead of doubling up.

GPUs: ``gpus`` (a list), else ``$STITCH_GPUS`` ("0,1,2"), else the inherited
``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi``; none found (a CPU machine): no-op.
Wired in by ``conf/hydra/launcher/joblib.yaml`` as a Hydra callback.
"""
from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)

_HELD: Any = None  # the open lock file of this process's GPU: alive as long as the process


def visible_gpus(gpus=None) -> list[str]:
    if gpus not in (None, "", "auto"):
        return [str(g) for g in (gpus if isinstance(gpus, (list, tuple)) else str(gpus).split(","))]
    for var in ("STITCH_GPUS", "CUDA_VISIBLE_DEVICES"):
        v = os.environ.get(var)
        if v is not None and v.strip() not in ("", "-1"):
            return [g.strip() for g in v.split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return []


def claim_gpu(gpus: list[str], lock_dir: str | Path) -> str:
    """Lock one free GPU for this process; return its id."""
    import fcntl

    global _HELD
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    for g in gpus:
        f = open(lock_dir / f"gpu{g}.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        _HELD = f
        return g
    raise RuntimeError(f"all GPUs {gpus} are taken by other jobs (locks in {lock_dir}); set "
                       f"hydra.launcher.n_jobs to at most {len(gpus)} so that no two jobs share a GPU")


class GpuPerJob(Callback):
    """Hydra callback: pin the job's process to a GPU of its own before the job runs."""

    def __init__(self, gpus=None, lock_dir: str | None = None) -> None:
        self.gpus = gpus
        self.lock_dir = lock_dir or os.path.join(tempfile.gettempdir(), "stitch-gpu-locks")

    def on_job_start(self, config, **kwargs) -> None:
        if os.environ.get("STITCH_GPU_SLOT") is not None:  # this worker holds a GPU from an earlier job
            log.info("job on GPU %s (CUDA_VISIBLE_DEVICES, pid %d)", os.environ.get("CUDA_VISIBLE_DEVICES"),
                     os.getpid())
            return
        gpus = visible_gpus(self.gpus)
        if not gpus:
            return
        g = claim_gpu(gpus, self.lock_dir)
        os.environ["CUDA_VISIBLE_DEVICES"] = g
        os.environ["STITCH_GPU_SLOT"] = g
        log.info("job on GPU %s (CUDA_VISIBLE_DEVICES, pid %d)", g, os.getpid())

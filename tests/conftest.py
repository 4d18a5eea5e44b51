"""Shared fixtures: a small model store trained on the synthetic data set.

Tests never touch the network: W&B is disabled (or offline where a test needs the
client) and no data set is downloaded.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
# decoded data sets are cached outside the data folders; tests keep theirs out of the user's cache too
if "STITCH_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["STITCH_CACHE"] = tempfile.mkdtemp(prefix="stitch-test-cache-")
    atexit.register(shutil.rmtree, os.environ["STITCH_CACHE"], True)
# one intra-op thread: OpenMP barriers spin badly when the 2 CI cores are shared with subprocesses
torch.set_num_threads(1)

SYNTH = {"name": "synthetic", "num_classes": 10, "train_size": 384, "test_size": 192, "batch_size": 64,
         "num_workers": 0, "normalize": False, "augment": False, "train_subset": None, "test_subset": None}
TRAINER = {"accelerator": "cpu", "devices": 1, "precision": "32-true", "strategy": "auto", "num_nodes": 1,
           "enable_progress_bar": False, "log_every_n_steps": 10, "deterministic": False}
OPTIM = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine"}

# the same overrides for CLI runs on the synthetic set
# donor.allow_chance: tests that train donors for seconds stitch them whatever their accuracy (the refusal
# of near-chance donors has its own tests)
SYNTH_OVERRIDES = ["data=synthetic", "data.train_size=384", "data.test_size=192", "donor.epochs=8",
                   "donor.trainer.accelerator=cpu", "donor.allow_chance=true"]


@pytest.fixture(scope="session")
def donor_store(tmp_path_factory) -> Path:
    """Two Tiny-10 donors (seeds 0 and 1) on the synthetic set, trained once per session."""
    from stitch.donors import train_donor

    root = tmp_path_factory.mktemp("store")
    for seed in (0, 1):
        train_donor(donor_training(seed, root))
    return root


def donor_training(seed: int, store_root, epochs: int = 8):
    """The typed settings (``TrainSettings``) of a Tiny-10 donor on the synthetic set, as train_models.py builds
    them from its config."""
    from stitch.settings import train_settings

    return train_settings({"data": SYNTH, "model": {"name": "tiny10", "options": {"padding": "kornblith"}},
                           "optim": OPTIM, "trainer": TRAINER, "logger": {"name": "none"}, "epochs": epochs,
                           "seed": seed, "store": str(store_root)})


def run_script(*args: str, cwd: Path = ROOT, timeout: int = 600, env: dict | None = None):
    import subprocess

    full_env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=full_env)

"""The model store: trained donors keyed by data set / model / seed.

Layout::

    <root>/<data>/<model tag>/seed<seed>/model.pt    # state dict only (tensors)
    <root>/<data>/<model tag>/seed<seed>/meta.json   # config, metrics, code version, sha256

``model.pt`` holds tensors only and is always read with ``torch.load(...,
weights_only=True)``: a checkpoint can never execute code. Writes are atomic.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import models
from .errors import CheckpointError
from .fileio import read_json, save_torch, sha256, write_json
from .version import code_version

DEFAULT_ROOT = "models"


def store_root(root: str | Path | None = None) -> Path:
    return Path(root or os.environ.get("STITCH_STORE", DEFAULT_ROOT)).expanduser()


@dataclass(frozen=True)
class DonorKey:
    data: str
    model: str
    options: tuple[tuple[str, Any], ...] = ()
    seed: int = 0

    @classmethod
    def make(cls, data: str, model: str, seed: int, options: dict | None = None) -> "DonorKey":
        return cls(data, model, tuple(sorted((options or {}).items())), int(seed))

    @property
    def tag(self) -> str:
        return models.model_tag(self.model, **dict(self.options))

    def directory(self, root: str | Path | None = None) -> Path:
        return store_root(root) / self.data / self.tag / f"seed{self.seed}"

    def train_command(self) -> str:
        opts = " ".join(f"model.options.{k}={v}" for k, v in self.options)
        return f"python train_models.py data={self.data} model={self.model} seed={self.seed} {opts}".strip()

    def __str__(self) -> str:
        return f"{self.data}/{self.tag}/seed{self.seed}"


def save(key: DonorKey, model: torch.nn.Module, meta: dict, root: str | Path | None = None) -> Path:
    d = key.directory(root)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    save_torch(d / "model.pt", state)
    meta = dict(meta, key=str(key), model=key.model, options=dict(key.options), data=key.data, seed=key.seed,
                code_version=code_version(), sha256=sha256(d / "model.pt"))
    write_json(d / "meta.json", meta)  # written last: its presence marks a complete checkpoint
    return d


def exists(key: DonorKey, root: str | Path | None = None) -> bool:
    d = key.directory(root)
    return (d / "meta.json").is_file() and (d / "model.pt").is_file()


def load_meta(key: DonorKey, root: str | Path | None = None) -> dict:
    d = key.directory(root)
    if not exists(key, root):
        raise CheckpointError(f"no trained donor {key} in the model store {store_root(root).resolve()}; "
                              f"train it with:\n  {key.train_command()}")
    return read_json(d / "meta.json")


def load(key: DonorKey, root: str | Path | None = None, device: str | torch.device = "cpu"
         ) -> tuple[models.StitchableNetwork, dict]:
    """Build the donor's network, load its weights (tensors only) and return (model in eval mode, meta)."""
    meta = load_meta(key, root)
    path = key.directory(root) / "model.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or a pickle with code in it
        raise CheckpointError(f"checkpoint {path} is corrupt or unsafe to load ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); delete it and retrain with:\n  "
                              f"{key.train_command()}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict; retrain with:\n  {key.train_command()}")
    net = models.build(key.model, num_classes=meta["num_classes"], in_channels=meta.get("in_channels", 3),
                       **dict(key.options))
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        detail = "; ".join(s for s in (
            f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
            f"shape mismatch at {shapes[:5]}" if shapes else "") if s)
        raise CheckpointError(f"checkpoint {path} does not match model {key.tag} ({detail}); it was made by "
                              f"other code or options. Retrain with:\n  {key.train_command()}")
    net.load_state_dict(state)
    return net.to(device).eval(), meta

"""Experiment loggers. wandb is imported only when the W&B logger is chosen.

W&B mode: ``online`` only when asked for or when an API key is configured;
otherwise ``offline`` (sync later with ``wandb sync``). The API key is never
written to configs, logs or results.
"""
from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any


def wandb_mode(requested: str | None) -> str:
    if requested:
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        rc = netrc.netrc(os.path.expanduser("~/.netrc"))
        if rc.authenticators("api.wandb.ai"):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


def lightning_logger(cfg: dict[str, Any] | None, name: str, config: dict | None = None):
    """A Lightning logger from a ``conf/logger/*.yaml`` dict (False for none)."""
    kind = (cfg or {}).get("name", "none")
    if kind == "none":
        return False
    save_dir = Path(cfg.get("save_dir") or "outputs")
    if kind == "csv":
        from pytorch_lightning.loggers import CSVLogger

        return CSVLogger(save_dir=str(save_dir), name=name, version="")
    if kind == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        os.environ.setdefault("WANDB_INIT_TIMEOUT", "30")
        return WandbLogger(project=cfg.get("project", "model-stitching"), entity=cfg.get("entity"),
                           group=cfg.get("group"), name=name, save_dir=str(save_dir), tags=list(cfg.get("tags") or []),
                           mode=wandb_mode(cfg.get("mode")), config=config)
    raise ValueError(f"unknown logger {kind!r}; use csv, wandb or none")


class WandbRun:
    """A plain W&B run for non-Lightning code (stitching runs, sweep reports)."""

    def __init__(self, cfg: dict[str, Any], name: str, config: dict | None = None, job_type: str = "stitch"):
        import wandb

        os.environ.setdefault("WANDB_INIT_TIMEOUT", "30")
        self.wandb = wandb
        self.run = wandb.init(project=cfg.get("project", "model-stitching"), entity=cfg.get("entity"),
                              group=cfg.get("group"), name=name, dir=str(cfg.get("save_dir") or "outputs"),
                              tags=list(cfg.get("tags") or []), mode=wandb_mode(cfg.get("mode")),
                              config=config, job_type=job_type, reinit="finish_previous")

    def log(self, metrics: dict, step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    def summary(self, metrics: dict) -> None:
        for k, v in metrics.items():
            self.run.summary[k] = v

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)

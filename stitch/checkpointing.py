"""Resumable donor training: a Lightning checkpoint after every epoch, outside the donor.

``train_donor`` keeps ``<store>/.train-ckpt/<data>/<model tag>/<seed>/last.ckpt`` (next to
a ``config.json`` with the training config) while it trains, and removes it once the donor
is stored. A training that was killed resumes from it when started again with the same
config (``trainer.fit(ckpt_path=...)``): optimizer, LR schedule and epoch counter included,
so it ends after the same number of epochs. A checkpoint of another config, or one that
cannot be read, is discarded and training starts over. The checkpoint is written aside and
renamed into place, so a kill never leaves a torn ``last.ckpt``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)

DIR_NAME = ".train-ckpt"
LAST = "last.ckpt"


def checkpoint_dir(store_root: Path, key) -> Path:
    """Where donor ``key``'s training checkpoint lives (never inside the donor's own directory)."""
    return Path(store_root) / DIR_NAME / key.data / key.tag / key.leaf


class LastCheckpoint(pl.callbacks.Checkpoint):
    """Writes ``<dir>/last.ckpt`` at the end of every training epoch (after validation), atomically."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / LAST

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a name of its own: two processes training the same missing donor must not mix their files
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(str(tmp), weights_only=False)  # every rank takes part; rank 0 writes
        if trainer.is_global_zero:
            try:
                os.replace(tmp, self.path)
            except OSError as e:  # e.g. removed by a concurrent training of the same donor that finished
                log.warning("could not keep the training checkpoint %s (%s); training goes on", self.path, e)


def resume_point(directory: Path, config: dict) -> tuple[str | None, int]:
    """``(ckpt_path, epochs done)`` of an interrupted training with this config, else ``(None, 0)``.

    Starts the directory over (recording ``config``) when there is nothing to resume."""
    directory = Path(directory)
    ckpt, cfg_file = directory / LAST, directory / "config.json"
    want = json.loads(json.dumps(config, sort_keys=True, default=str))
    if ckpt.is_file():
        try:
            same = json.loads(cfg_file.read_text()) == want
            epoch = int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"]) + 1 if same else None
        except Exception as e:  # noqa: BLE001 - unreadable: train from scratch
            log.warning("training checkpoint %s is unreadable (%s): training from scratch", ckpt, type(e).__name__)
            epoch = None
        if epoch is not None:
            return str(ckpt), epoch
        log.info("training checkpoint %s belongs to another config: training from scratch", ckpt)
    if os.environ.get("LOCAL_RANK", "0") != "0":  # a DDP worker: rank 0 prepares the directory
        return None, 0
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    cfg_file.write_text(json.dumps(want, sort_keys=True, indent=1))
    return None, 0


def remove(directory: Path) -> None:
    """Drop a finished training's checkpoint directory, and its parents up to ``.train-ckpt`` when empty."""
    directory = Path(directory)
    shutil.rmtree(directory, ignore_errors=True)
    for parent in directory.parents:
        try:
            parent.rmdir()  # only if empty
        except OSError:
            break
        if parent.name == DIR_NAME:
            break

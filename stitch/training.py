"""Donor training: a LightningModule around any stitchable network.

Batches from in-memory data sets arrive as uint8; they are augmented and
normalised on the device in ``on_after_batch_transfer`` (see ``data.base``).
"""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import nn

from .data.base import ImageDataModule
from .losses import label_loss
from .settings import OptimSettings, Problems, _raise


def accuracy_metric(num_classes: int, multilabel: bool, sync: bool = True) -> torchmetrics.Metric:
    """Top-1 accuracy, or for multi-label tasks the mean per-attribute accuracy at sigmoid > 0.5.

    ``sync=False`` for evaluations that run on one process only (e.g. rank 0 after DDP).
    """
    if multilabel:
        return torchmetrics.classification.MultilabelAccuracy(num_labels=num_classes, average="macro",
                                                              sync_on_compute=sync)
    return torchmetrics.classification.MulticlassAccuracy(num_classes=num_classes, average="micro",
                                                          sync_on_compute=sync)


def optim_settings(cfg: dict[str, Any] | OptimSettings) -> OptimSettings:
    """The typed optimiser settings of a preset dict (checked; a missing key takes ``OptimSettings``' default,
    the only place defaults live)."""
    if isinstance(cfg, OptimSettings):
        return cfg
    problems = Problems()
    settings = OptimSettings.parse(dict(cfg), "optim.", problems)
    _raise(problems)
    return settings


def build_optimizer(params, cfg: dict[str, Any] | OptimSettings, steps_per_epoch: int, epochs: int):
    """Optimiser + per-step LR schedule from a preset (``conf/optim/*.yaml``)."""
    o = optim_settings(cfg)
    if o.name == "sgd":
        opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)
    elif o.name == "adam":
        opt = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    else:  # adamw (the settings allow nothing else)
        opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    total = max(1, steps_per_epoch * epochs)
    warmup = int(o.warmup_epochs * steps_per_epoch)
    schedule = o.schedule
    if schedule == "cosine":
        f = lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + torch.cos(  # noqa: E731
            torch.tensor(torch.pi * (s - warmup) / max(1, total - warmup))).item())
    elif schedule == "step":  # x0.1 at 1/3 and 2/3 of training (paper 1's stitching schedule)
        f = lambda s: 0.1 ** sum(s >= total * m for m in (1 / 3, 2 / 3))  # noqa: E731
    elif schedule == "constant":
        f = lambda s: 1.0  # noqa: E731
    else:
        raise ValueError(f"unknown LR schedule {schedule!r}; use cosine, step or constant")
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, f)


class DonorModule(pl.LightningModule):
    def __init__(self, model: nn.Module, datamodule: ImageDataModule, optim: OptimSettings | dict[str, Any], epochs: int,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.model = model
        self.datamodule = datamodule
        self.optim = optim_settings(optim)
        self.epochs = epochs
        self.multilabel = datamodule.multilabel
        self.train_acc = accuracy_metric(datamodule.num_classes, self.multilabel)
        self.val_acc = accuracy_metric(datamodule.num_classes, self.multilabel)
        self.test_acc = accuracy_metric(datamodule.num_classes, self.multilabel)

    def forward(self, x):
        return self.model(x)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        return self.datamodule.preprocess(x, augment=self.training), y

    def _step(self, batch, metric: torchmetrics.Metric, stage: str):
        x, y = batch
        logits = self.model(x)
        loss = label_loss(logits, y, self.multilabel)
        metric(logits, y)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", on_step=False, on_epoch=True, sync_dist=True)
        self.log(f"{stage}/acc", metric, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, self.train_acc, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, self.val_acc, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, self.test_acc, "test")

    def configure_optimizers(self):
        steps = self.trainer.estimated_stepping_batches // max(1, self.epochs)
        opt, sched = build_optimizer(self.model.parameters(), self.optim, steps, self.epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def as_lightning(datamodule: ImageDataModule) -> pl.LightningDataModule:
    """A LightningDataModule serving ``dm``'s dataloaders (the data modules themselves stay Lightning-free)."""

    class _Adapter(pl.LightningDataModule):
        def setup(self, stage: str | None = None) -> None:
            datamodule.setup(stage)

        def train_dataloader(self):
            return datamodule.train_dataloader()

        def val_dataloader(self):
            return datamodule.val_dataloader()

        def test_dataloader(self):
            return datamodule.test_dataloader()

    return _Adapter()

"""Train donor networks and keep them in the model store (``train_models.py``)."""
from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
import torch

from . import data as data_lib
from . import models, store
from .loggers import lightning_logger
from .training import DonorModule, accuracy_metric

log = logging.getLogger(__name__)


# keys of conf/data/*.yaml read by other parts of the config (e.g. the TLM recipe)
_NOT_DATAMODULE_OPTIONS = {"name", "tlm_lr"}


def datamodule_from_cfg(data_cfg: dict[str, Any], **overrides) -> data_lib.ImageDataModule:
    opts = {k: v for k, v in dict(data_cfg).items() if k not in _NOT_DATAMODULE_OPTIONS}
    opts.update(overrides)
    return data_lib.build(data_cfg["name"], **opts)


def donor_key(data_cfg: dict, model_cfg: dict, seed: int) -> store.DonorKey:
    return store.DonorKey.make(data_cfg["name"], model_cfg["name"], seed, dict(model_cfg.get("options") or {}))


@torch.no_grad()
def evaluate(model: torch.nn.Module, dm: data_lib.ImageDataModule, split: str = "test",
             device: str | torch.device = "cpu", batch_size: int = 512) -> float:
    """Exact accuracy over a split (top-1, or mean per-attribute accuracy for multi-label sets)."""
    model.eval()
    metric = accuracy_metric(dm.num_classes, dm.multilabel, sync=False).to(device)
    for x, y in dm.batches(split, batch_size, device=device):
        metric.update(model(x), y)
    return float(metric.compute())


def train_donor(data_cfg: dict, model_cfg: dict, optim_cfg: dict, trainer_cfg: dict, epochs: int, seed: int,
                store_root: str, logger_cfg: dict | None = None, force: bool = False) -> dict:
    """Train one donor (or find it in the store) and return its metadata."""
    key = donor_key(data_cfg, model_cfg, seed)
    if store.exists(key, store_root) and not force:
        meta = store.load_meta(key, store_root)
        log.info("donor %s already in the store (test acc %.4f); skipping (force=true retrains)", key,
                 meta["metrics"]["test_acc"])
        return meta
    pl.seed_everything(seed, workers=True)
    dm = datamodule_from_cfg(data_cfg, seed=seed)
    dm.setup()
    net = models.build(key.model, num_classes=dm.num_classes, in_channels=dm.input_shape[0],
                       **dict(key.options))
    module = DonorModule(net, dm, optim_cfg, epochs)
    config = {"data": dict(data_cfg), "model": dict(model_cfg), "optim": dict(optim_cfg), "epochs": epochs,
              "seed": seed, "trainer": dict(trainer_cfg)}
    trainer_kwargs = {k: v for k, v in dict(trainer_cfg).items()}
    if trainer_kwargs.get("sync_batchnorm") and (trainer_kwargs.get("accelerator") == "cpu"
                                                 or not torch.cuda.is_available()):
        log.info("sync_batchnorm needs GPUs: off for this CPU run (gloo)")
        trainer_kwargs["sync_batchnorm"] = False
    trainer = pl.Trainer(max_epochs=epochs, logger=lightning_logger(logger_cfg, name=str(key).replace("/", "_"),
                                                                   config=config),
                         enable_checkpointing=False, enable_model_summary=False, **trainer_kwargs)
    start = time.time()
    trainer.fit(module, datamodule=dm)
    seconds = time.time() - start
    meta: dict = {}
    if trainer.is_global_zero:
        device = next(net.parameters()).device
        metrics = {"test_acc": evaluate(net, dm, "test", device), "val_acc": evaluate(net, dm, "val", device),
                   "train_seconds": seconds, "epochs": epochs}
        meta = {"num_classes": dm.num_classes, "in_channels": dm.input_shape[0], "input_shape": list(dm.input_shape),
                "multilabel": dm.multilabel, "normalize": dm.normalize, "metrics": metrics, "config": config,
                "hardware": hardware_name(device)}
        path = store.save(key, net, meta, store_root)
        log.info("donor %s: test acc %.4f after %d epochs (%.1f s) -> %s", key, metrics["test_acc"], epochs,
                 seconds, path)
    if trainer.world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return meta


def hardware_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"

"""Train donor networks and keep them in the model store (``train_models.py``)."""
from __future__ import annotations

import logging
import sys
import time

import pytorch_lightning as pl
import torch

from . import data as data_lib
from . import checkpointing, models, store
from .loggers import lightning_logger
from .evaluation import model_accuracy, multilabel_metrics
from .hardware import hardware_name
from .settings import TrainSettings
from .training import DonorModule, as_lightning

log = logging.getLogger(__name__)


class EpochLines(pl.Callback):
    """One log line per training epoch (loss and accuracy, train and val, elapsed time): what a log file
    gets where a terminal would show Lightning's progress bar."""

    def __init__(self, name: str, epochs: int):
        self.name, self.epochs, self.start = name, epochs, time.time()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 2)() == 1}
        parts = [f"{k} {m[k]:.4f}" for k in ("train/loss", "train/acc", "val/loss", "val/acc") if k in m]
        log.info("donor %s epoch %d/%d: %s, %.0f s", self.name, trainer.current_epoch + 1, self.epochs,
                 ", ".join(parts), time.time() - self.start)


class _NoTips(logging.Filter):
    """Lightning's advertisement for its cloud logger, printed on every training: not ours to show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _quiet_lightning() -> None:
    """Drop what Lightning says on every training that is not about this training: the cloud-logger tip, the
    note that our LightningModule's on_after_batch_transfer is used (it is meant to be: the data modules
    preprocess whole batches there) and torch's pytree deprecation inside Lightning."""
    import warnings

    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoTips())
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoTips())
    warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def train_donor(t: TrainSettings) -> dict:
    """Train one donor (or find it in the store) and return its metadata."""
    key = store.DonorKey.of(t.model, t.data.name, seed=t.seed)
    store_root, epochs, seed = t.store, t.epochs, t.seed
    if store.exists(key, store_root) and not t.force:
        meta = store.load_meta(key, store_root)
        log.info("donor %s already in the store (test acc %.4f); skipping (force=true retrains)", key,
                 meta["metrics"]["test_acc"])
        return meta
    _quiet_lightning()
    pl.seed_everything(seed, workers=True)
    datamodule = data_lib.from_config(t.data.as_dict(), seed=seed)  # unset keys: the data set's own defaults
    datamodule.setup()
    net = models.build(key.model, num_classes=datamodule.num_classes, in_channels=datamodule.input_shape[0],
                       **dict(key.options))
    module = DonorModule(net, datamodule, t.optim, epochs)
    # what the donor's meta records (and a resumed training must match): as the config set it, as before
    config = {"data": t.data.as_dict(), "model": {k: v for k, v in t.model.as_dict().items() if k != "seed"},
              "optim": t.optim.as_dict(), "epochs": epochs, "seed": seed, "trainer": t.trainer_args}
    trainer_kwargs = t.trainer_args
    if trainer_kwargs.get("sync_batchnorm") and (trainer_kwargs.get("accelerator") == "cpu"
                                                 or not torch.cuda.is_available()):
        log.info("sync_batchnorm needs GPUs: off for this CPU run (gloo)")
        trainer_kwargs["sync_batchnorm"] = False
    if trainer_kwargs.get("enable_progress_bar", "auto") in ("auto", None):  # a bar on terminals, not in logs
        trainer_kwargs["enable_progress_bar"] = sys.stderr.isatty()
    # a checkpoint after every epoch, outside the donor's directory: a killed training resumes from it
    ckpt_dir = checkpointing.checkpoint_dir(store.store_root(store_root), key)
    ckpt_path, epochs_done = checkpointing.resume_point(ckpt_dir, config)
    if ckpt_path:
        log.info("donor %s: resuming the interrupted training after epoch %d of %d (%s)", key, epochs_done, epochs,
                 ckpt_path)
    callbacks: list = [checkpointing.LastCheckpoint(ckpt_dir)]
    if not trainer_kwargs["enable_progress_bar"]:  # output goes to a file: a line per epoch instead of the bar
        callbacks.append(EpochLines(str(key), epochs))
    trainer = pl.Trainer(max_epochs=epochs, logger=lightning_logger(t.logger, name=str(key).replace("/", "_"),
                                                                   config=config),
                         enable_checkpointing=True, callbacks=callbacks,
                         enable_model_summary=False, **trainer_kwargs)
    start = time.time()
    trainer.fit(module, datamodule=as_lightning(datamodule), ckpt_path=ckpt_path)
    seconds = time.time() - start
    meta: dict = {}
    if trainer.is_global_zero:
        device = next(net.parameters()).device
        metrics = {"test_acc": model_accuracy(net, datamodule, "test", device), "val_acc": model_accuracy(net, datamodule, "val", device),
                   "train_seconds": seconds, "epochs": epochs, "epochs_done": int(trainer.current_epoch)}
        if datamodule.multilabel:  # per-attribute accuracy means little without what always predicting the majority gets
            ml = multilabel_metrics(net, datamodule, "test", device)
            metrics.update(test_majority_acc=ml["majority_acc"], test_mean_ap=ml["mean_ap"],
                           test_per_attribute_acc=ml["per_attribute_acc"],
                           test_per_attribute_majority_acc=ml["per_attribute_majority_acc"])
        meta = {"num_classes": datamodule.num_classes, "in_channels": datamodule.input_shape[0], "input_shape": list(datamodule.input_shape),
                "multilabel": datamodule.multilabel, "normalize": datamodule.normalize, "metrics": metrics, "config": config,
                "hardware": hardware_name(device)}
        if ckpt_path:
            meta["resumed_from_epoch"] = epochs_done  # epochs done before the interruption
        floor = store.sanity_floor(datamodule.num_classes, datamodule.multilabel, metrics.get("test_majority_acc"))
        meta["near_chance"] = metrics["test_acc"] < floor
        path = store.save(key, net, meta, store_root)
        checkpointing.remove(ckpt_dir)
        log.info("donor %s: test acc %.4f after %d epochs (%.1f s) -> %s", key, metrics["test_acc"], epochs,
                 seconds, path)
        if meta["near_chance"]:
            log.warning("DONOR NEAR CHANCE: %s reached test accuracy %.4f, below %.4f (1.5x chance, or the majority "
                        "baseline of a multi-label task; %d outputs) after %d epochs. Stitching studies refuse it (donor.allow_chance=true overrides); "
                        "train it longer: %s epochs=<more> force=true", key, metrics["test_acc"], floor,
                        datamodule.num_classes, epochs, key.train_command(store_root))
    if trainer.world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return meta

"""Task loss matching (TLM): train only the stitching layer by backpropagating a task
loss through model 2's frozen back half.

A plain PyTorch loop rather than a Lightning Trainer: a stitching run is small and
runs thousands of times in a sweep, and the Trainer's per-run set-up (seconds)
would dominate. Losses:

* ``hard``: cross-entropy to the labels (paper 2), BCE for multi-label tasks;
* ``soft``: cross-entropy to model 2's output distribution at temperature T
  (paper 1; scaled by T^2 so gradients keep their size), BCE to its sigmoids.

Optional terms: an L1 penalty on the stitching matrix (paper 1 Sec. 8) and a
linear-CKA penalty between the stitched and model 2's representation, which
pushes CKA down while the task loss holds accuracy (paper 1 Fig. 5).
"""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Callable

import torch

from ..errors import StitchError
from ..features import FeatureSource, autocast
from ..losses import label_loss, soft_cross_entropy
from ..similarity import linear_cka_torch
from ..stitching import StitchedNetwork

if TYPE_CHECKING:
    from ..settings import TLMSettings


class TrainingDiverged(StitchError):
    """The task loss became NaN or infinite, or ended far above where it started."""


# a run whose last epoch averages this many times its first step's loss, and more than a guess
# (chance level), has blown up even if every loss stayed finite
DIVERGED_FACTOR = 10.0


def chance_loss(num_outputs: int, cfg: TLMSettings, multilabel: bool) -> float:
    """The task loss of a uniform guess: log C (BCE per attribute: log 2), x T^2 for the soft loss."""
    t2 = cfg.temperature ** 2 if cfg.loss == "soft" else 1.0
    return (math.log(2) if multilabel else math.log(num_outputs)) * t2


def task_loss(logits, y, z2, cfg: TLMSettings, multilabel: bool) -> torch.Tensor:
    if cfg.loss == "soft":
        return soft_cross_entropy(logits.float(), z2.float(), cfg.temperature, multilabel)
    return label_loss(logits.float(), y, multilabel)


def lr_factor(schedule: str, step: int, total: int) -> float:
    if schedule == "constant":
        return 1.0
    if schedule == "step":  # x0.1 at 1/3 and 2/3 of training (paper 1's released code)
        return 0.1 ** sum(step >= total * m for m in (1 / 3, 2 / 3))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
    raise ValueError(f"unknown TLM lr schedule {schedule!r}; use constant, step or cosine")


def train_task_loss(net: StitchedNetwork, source: FeatureSource, cfg: TLMSettings, multilabel: bool,
                    seed: int = 0, on_track: Callable[[int, StitchedNetwork], dict] | None = None,
                    on_epoch: Callable[[int, int, dict], None] | None = None,
                    on_step: Callable[[int, int, int, int], None] | None = None) -> dict:
    """Train ``net.stitch`` in place; returns {"steps", "final_loss", "history", "seconds"}.

    ``on_epoch(epoch, epochs, {"loss": mean loss of the epoch, "lr": ...})`` is called after each
    epoch (1-based), e.g. for progress lines or an experiment logger; it reads the loss once per
    epoch, which the finiteness check below does anyway. ``on_step(step, steps, epoch, epochs)``
    after every step (cheap: e.g. a heartbeat line inside long epochs); it reads nothing."""
    device = source.device
    params = [p for p in net.stitch.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    epochs = int(cfg.epochs)
    bs = int(cfg.batch_size)
    augment = bool(cfg.augment)
    need_target = cfg.loss == "soft" or cfg.cka_penalty > 0
    total = epochs * source.num_batches("train", bs)
    l1 = float(cfg.l1)
    cka_w = float(cfg.cka_penalty)
    track_every = int(cfg.track_every or 0)
    history: list[dict] = []
    torch.manual_seed(seed)
    net.train()
    step, start, loss_value = 0, time.time(), float("nan")
    first_loss = None  # it and the epoch's loss sum stay on the device: reading them syncs the GPU
    if on_track is not None and track_every:
        history.append({"step": 0, **on_track(0, net)})
    for epoch in range(epochs):
        epoch_sum, epoch_steps = 0.0, 0
        for batch in source.batches("train", shuffle=True, augment=augment, seed=seed * 100003 + epoch,
                                    batch_size=bs, need_target=need_target):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(cfg.schedule, step, total)
            with autocast(device, source.precision):
                s = net.stitch(batch.a)
                logits = net.head(s)
            loss = task_loss(logits, batch.y, batch.z2, cfg, multilabel)
            if l1:
                loss = loss + l1 * net.stitch.matrix.abs().sum()
            if cka_w:
                loss = loss + cka_w * linear_cka_torch(s, batch.b)
            # checking finiteness syncs the GPU: do it every 50 steps (and at the end of each epoch)
            if step % 50 == 0 and not torch.isfinite(loss):
                raise TrainingDiverged(f"TLM loss became {loss.item()} at step {step} (epoch {epoch}); "
                                       f"try a lower tlm.lr or tlm.init=dm")
            if first_loss is None:
                first_loss = loss.detach()
            epoch_sum, epoch_steps = epoch_sum + loss.detach(), epoch_steps + 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if on_step is not None:
                on_step(step, total, epoch + 1, epochs)
            if on_track is not None and track_every and step % track_every == 0:
                net.eval()
                history.append({"step": step, "train_loss": float(loss), **on_track(step, net)})
                net.train()
        loss_value = float(loss.detach()) if step else float("nan")
        if not math.isfinite(loss_value):
            raise TrainingDiverged(f"TLM loss became {loss_value} in epoch {epoch}; try a lower tlm.lr or tlm.init=dm")
        if on_epoch is not None and epoch_steps:
            on_epoch(epoch + 1, epochs, {"loss": float(epoch_sum) / epoch_steps, "lr": opt.param_groups[0]["lr"]})
    if step:
        final, begin = float(epoch_sum) / epoch_steps, float(first_loss)
        chance = chance_loss(logits.shape[1], cfg, multilabel)
        if not math.isfinite(final) or (final > DIVERGED_FACTOR * begin and final > chance):
            raise TrainingDiverged(f"TLM loss diverged: the last epoch's mean loss is {final:.4g}, up from {begin:.4g} "
                                   f"at the first step (chance level {chance:.3g}); try a lower tlm.lr or tlm.init=dm")
    net.eval()
    out = {"steps": step, "final_loss": loss_value, "history": history, "seconds": time.time() - start}
    if step:  # a last epoch above a uniform guess's loss: trained, but not to a working stitch
        out.update(final_epoch_loss=final, chance_loss=chance, above_chance=bool(final > chance))
    return out

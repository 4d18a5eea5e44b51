"""Training a detector: cross-entropy on model 2's own layer activations, then the energy
fine-tuning of Liu et al. (2020) against model 2's activations on auxiliary outlier images
(:mod:`stitch.ood.outliers`); and its held-out evaluation."""
from __future__ import annotations

import logging
import math
import time

import torch

from .. import models
from ..data.base import ImageDataModule
from ..errors import ConfigError, StitchError
from ..losses import label_loss
from .energy import energy_loss
from .networks import ActivationDetector, detector_outputs, layer_activations, prediction_accuracy
from .outliers import OutlierSampler
from .scoring import ood_scores_metrics
from .settings import DetectorConfig

log = logging.getLogger(__name__)


def _cosine(step: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * step / max(1, total)))


def _grayscale_option(value: str) -> bool | str:
    return {"auto": "auto", "true": True, "false": False}[value]


def train_detector(model2: models.StitchableNetwork, layer: str, datamodule: ImageDataModule, cfg: DetectorConfig,
                   device: torch.device | str = "cpu") -> tuple[ActivationDetector, dict]:
    """Train a detector on model 2's ``layer`` activations; returns (detector in eval mode, info).

    Phase 1 (``epochs``): cross-entropy on in-distribution activations (Adam, cosine
    LR). Phase 2 (``energy_epochs``): Liu et al.'s objective on batches half
    in-distribution, half outliers (:func:`stitch.ood.energy.energy_loss`). Model 2
    stays frozen in eval mode throughout.
    """
    device = torch.device(device)
    model2.eval()
    layer = model2.check_layer(layer)
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    shape = model2.layer_shapes(datamodule.input_shape)[layer]
    multilabel = bool(datamodule.multilabel)
    if multilabel and cfg.epochs == 0:
        raise ConfigError("ood.detector.epochs=0: a multi-label detector is trained by its classification epochs "
                          "only (joint energy needs no energy fine-tuning); expected an integer >= 1")
    det = ActivationDetector(shape, datamodule.num_classes, cfg, datamodule.input_shape[1:], multilabel=multilabel).to(device)
    sample = torch.cat([layer_activations(model2, layer, x)
                        for x, _ in datamodule.batches("train", 256, device=device, limit=1024)])
    det.set_standardization(sample)
    del sample
    bs, lim = cfg.batch_size, cfg.train_limit
    history: list[dict] = []

    def run_phase(epochs: int, lr: float, energy_phase: bool, sampler: OutlierSampler | None) -> None:
        if epochs == 0:
            return
        opt = torch.optim.Adam(det.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        total = epochs * datamodule.num_batches("train", bs, lim)
        step = 0
        det.train()
        for epoch in range(epochs):
            sums = {"loss": 0.0, "ce": 0.0, "reg": 0.0, "energy_in": 0.0, "energy_out": 0.0, "acc": 0.0}
            n_b = 0
            for x, y in datamodule.batches("train", bs, shuffle=True, augment=cfg.augment, device=device,
                                   seed=cfg.seed * 1009 + epoch + (500 if energy_phase else 0), limit=lim):
                for group in opt.param_groups:
                    group["lr"] = lr * _cosine(step, total)
                if energy_phase:
                    x_out = sampler.sample(len(x), x, g, device)
                    h = layer_activations(model2, layer, torch.cat([x, x_out]))
                    logits = det(h)
                    loss, parts = energy_loss(logits[:len(x)], y, logits[len(x):], cfg.energy_weight, cfg.m_in,
                                              cfg.m_out)
                    logits_in = logits[:len(x)]
                else:
                    logits_in = det(layer_activations(model2, layer, x))
                    loss = label_loss(logits_in, y, multilabel)  # cross-entropy, or BCE per label
                    parts = {"ce": float(loss.detach())}
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"OOD detector loss became {float(loss)} (layer {layer}, "
                                             f"{'energy' if energy_phase else 'classification'} phase, epoch "
                                             f"{epoch}); lower ood.detector.lr / ood.energy.lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                n_b += 1
                sums["loss"] += float(loss.detach())
                sums["acc"] += prediction_accuracy(det.predict(logits_in.detach()), y)
                for k, v in parts.items():
                    sums[k] += v
            history.append({"phase": "energy" if energy_phase else "classify", "epoch": epoch,
                            **{k: v / max(1, n_b) for k, v in sums.items()}})
            h = history[-1]
            log.info("detector %s %s epoch %d/%d: loss %.3f, acc %.3f, %.0f s", layer, h["phase"], epoch + 1, epochs,
                     h["loss"], h["acc"], time.time() - t0)

    run_phase(cfg.epochs, cfg.lr, False, None)
    t1 = time.time()
    sampler = None
    if multilabel and cfg.energy_epochs:
        log.info("detector %s: multi-label head, scored by its joint energy (post hoc, Wang et al. 2021): "
                 "no energy fine-tuning (ood.energy.epochs=%d unused)", layer, cfg.energy_epochs)
    if cfg.energy_epochs and not multilabel:
        sampler = OutlierSampler(datamodule, cfg.outlier_sources, [dict(s) for s in cfg.outlier_datasets],
                                 _grayscale_option(cfg.grayscale))
        run_phase(cfg.energy_epochs, cfg.energy_lr, True, sampler)
    det.eval()
    info = {"history": history, "classify_s": t1 - t0, "energy_s": time.time() - t1, "train_s": time.time() - t0,
            "act_shape": list(shape), "multilabel": multilabel,
            "score": "joint energy (Wang et al. 2021)" if multilabel else "free energy (Liu et al. 2020)"}
    if sampler is None and multilabel:  # held-out outliers scored for the detector's record all the same
        try:
            sampler = OutlierSampler(datamodule, cfg.outlier_sources, [dict(s) for s in cfg.outlier_datasets],
                                     _grayscale_option(cfg.grayscale))
        except StitchError as e:
            log.warning("detector %s: no held-out outliers to score (%s)", layer, e)
    info["eval"] = evaluate_detector(det, model2, layer, datamodule, device, sampler, seed=cfg.seed + 1)
    return det, info


@torch.no_grad()
def evaluate_detector(det: ActivationDetector, model2, layer: str, datamodule: ImageDataModule, device,
                      sampler: OutlierSampler | None = None, seed: int = 1, split: str = "test",
                      limit: int | None = 2000) -> dict:
    """Detector accuracy and energies on ``split``; AUROC against freshly drawn (held-out) outliers."""
    ys, feats = [], []
    for x, y in datamodule.batches(split, 256, device=device, limit=limit):
        feats.append(layer_activations(model2, layer, x))
        ys.append(y.cpu())
    e_in, pred = detector_outputs(det, feats)
    y = torch.cat(ys)
    out = {"split": split, "acc": prediction_accuracy(pred, y), "energy_in_mean": float(e_in.mean()),
           "energy_in_std": float(e_in.std()) if len(e_in) > 1 else 0.0, "samples": len(y)}
    if sampler is not None:
        g = torch.Generator().manual_seed(10_000 + seed)  # a different draw from any training batch
        acts = [layer_activations(model2, layer, sampler.sample(len(x), x, g, device))
                for x, _ in datamodule.batches(split, 256, device=device, limit=limit)]
        e_out, _ = detector_outputs(det, acts)
        m = ood_scores_metrics(-e_in, -e_out)
        out.update({f"outlier_{k}": v for k, v in m.items()}, energy_outlier_mean=float(e_out.mean()))
    return out

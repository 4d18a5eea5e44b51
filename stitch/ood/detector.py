"""Per-layer OOD detectors for stitched representations (paper 2, Balogh & Jelasity 2025).

For every (model 2, target layer M) a separate classifier is trained to predict the
task labels from model 2's own layer-M activations, then fine-tuned with the
energy objective of Liu et al. (2020) against model 2's activations on auxiliary
outlier images (:mod:`stitch.ood.outliers`). Its energy ``E = -logsumexp(logits)``
then tells whether an activation looks like one model 2 produces on real data.

Architectures (both configurable under ``ood.detector``):

* conv layers (C x H x W): a CIFAR-style ResNet from the model zoo built with
  ``in_channels=C``, fed the activation resized bilinearly to the input size
  (paper 2: ResNet-18 at 32x32; the offline default is a half-width ResNet-20,
  which trains in well under a minute on CPU for Tiny-10 on digits);
* token layers (T x D): a few timm ViT blocks on the tokens, classifying from CLS
  (paper 2: ViT-Tiny blocks).

Both see per-channel standardised activations (statistics of the training split,
stored as buffers): layers differ in scale by orders of magnitude, and a fixed
affine map changes nothing about what is detectable.

Detectors are trained once per (model-2 donor, layer, detector config) and cached in
the model store next to the donor::

    <store>/<data>/<model tag>/seed<seed>/ood/<layer>-<hash>.pt    # state dict (tensors only)
    <store>/<data>/<model tag>/seed<seed>/ood/<layer>-<hash>.json  # config, metrics, sanity check

The hash covers the detector config, the donor's checkpoint sha256 and the data
settings, so retraining the donor or changing a setting never reuses a stale
detector. The ``.pt`` file is read with ``weights_only=True``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from .. import models, store
from ..data.base import ImageDataModule
from ..errors import ConfigError
from ..fileio import read_json, save_torch, sha256, write_json
from ..version import code_version
from .energy import DEFAULT_M_IN, DEFAULT_M_OUT, DEFAULT_WEIGHT, energy, energy_loss
from .outliers import BUILTIN_SOURCES, OutlierSampler, _resize_raw, looks_grayscale
from .scoring import ood_scores_metrics

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the checkpoint layout changes


# --------------------------------------------------------------------------- config
# conv-detector options used when ood.detector.conv.options is null
DEFAULT_CONV_OPTIONS: dict[str, dict[str, Any]] = {"resnet20": {"width": 0.5}}


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that determines a trained detector (its cache identity).

    Built from the ``ood:`` config block with :func:`detector_config`, which checks
    every value and rejects unknown keys.
    """

    conv_arch: str = "resnet20"
    conv_options: tuple[tuple[str, Any], ...] = (("width", 0.5),)
    input_size: int | None = None          # None: the data's input size (32 for CIFAR/digits)
    token_depth: int = 2
    token_heads: int | None = None         # None: D // 64 when that divides D (ViT-Ti: 3), else 1
    token_mlp_ratio: float = 4.0
    batch_size: int = 128
    epochs: int = 10                       # classification pre-training
    lr: float = 2e-3
    weight_decay: float = 5e-4
    augment: bool = True
    train_limit: int | None = None         # cap on training images (None: the whole split)
    seed: int = 0
    energy_epochs: int = 6                 # Liu et al. energy fine-tuning
    energy_lr: float = 2e-3
    energy_weight: float = DEFAULT_WEIGHT
    m_in: float = DEFAULT_M_IN
    m_out: float = DEFAULT_M_OUT
    outlier_sources: tuple[str, ...] = ("photos", "noise", "shuffle")
    outlier_datasets: tuple[tuple[tuple[str, Any], ...], ...] = ()
    grayscale: str = "auto"                # auto | true | false: grey outliers for grey data (digits)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["conv_options"] = dict(self.conv_options)
        d["outlier_datasets"] = [dict(s) for s in self.outlier_datasets]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DetectorConfig":
        d = dict(d)
        d["conv_options"] = tuple(sorted(dict(d.get("conv_options") or {}).items()))
        d["outlier_sources"] = tuple(d.get("outlier_sources") or ())
        d["outlier_datasets"] = tuple(tuple(sorted(dict(s).items())) for s in d.get("outlier_datasets") or ())
        return cls(**d)


_OOD_KEYS = {"enabled", "split", "detector", "energy", "outliers", "sanity"}
_DETECTOR_KEYS = {"conv", "tokens", "batch_size", "epochs", "lr", "weight_decay", "augment", "train_limit", "seed"}
_CONV_KEYS = {"arch", "options", "input_size"}
_TOKEN_KEYS = {"depth", "heads", "mlp_ratio"}
_ENERGY_KEYS = {"epochs", "lr", "weight", "m_in", "m_out"}
_OUTLIER_KEYS = {"sources", "datasets", "grayscale"}
_SANITY_KEYS = {"data", "options", "samples"}


def _check_keys(block: Any, valid: set[str], where: str) -> dict:
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise ConfigError(f"{where} must be a mapping, got {block!r}")
    bad = sorted(set(block) - valid)
    if bad:
        raise ConfigError(f"unknown key(s) {bad} in {where}; valid keys: {', '.join(sorted(valid))}")
    return block


def _int(v, where: str, lo: int, allow_none: bool = False) -> int | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or int(v) < lo:
        raise ConfigError(f"{where} must be an integer >= {lo}{' or null' if allow_none else ''}, got {v!r}")
    return int(v)


def _float(v, where: str, positive: bool = False, nonneg: bool = False) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a number, got {v!r}") from None
    if isinstance(v, bool) or not math.isfinite(f) or (positive and f <= 0) or (nonneg and f < 0):
        cond = " > 0" if positive else (" >= 0" if nonneg else "")
        raise ConfigError(f"{where} must be a finite number{cond}, got {v!r}")
    return f


def detector_config(ood_cfg: dict | None) -> DetectorConfig:
    """Validate the ``ood:`` block and return the detector's :class:`DetectorConfig`.

    Raises :class:`~stitch.errors.ConfigError` naming the offending key for unknown
    keys and out-of-range values.
    """
    o = _check_keys(ood_cfg or {}, _OOD_KEYS, "ood")
    d = _check_keys(o.get("detector"), _DETECTOR_KEYS, "ood.detector")
    conv = _check_keys(d.get("conv"), _CONV_KEYS, "ood.detector.conv")
    tok = _check_keys(d.get("tokens"), _TOKEN_KEYS, "ood.detector.tokens")
    e = _check_keys(o.get("energy"), _ENERGY_KEYS, "ood.energy")
    out = _check_keys(o.get("outliers"), _OUTLIER_KEYS, "ood.outliers")
    _check_keys(o.get("sanity"), _SANITY_KEYS, "ood.sanity")
    base = DetectorConfig()

    arch = conv.get("arch", base.conv_arch)
    if arch not in models.list_models():
        raise ConfigError(f"ood.detector.conv.arch={arch!r} is not a model; available: "
                          f"{', '.join(models.list_models())}")
    options = conv.get("options")
    # null: the preset of the architecture (half-width ResNet-20 for speed), so arch=resnet18 needs no
    # options override (Hydra merges dicts: options={} would not remove a preset key)
    options = dict(DEFAULT_CONV_OPTIONS.get(arch, {}) if options is None else options)
    valid_opts = models.options_of(arch)
    bad = sorted(set(options) - set(valid_opts))
    if bad:
        raise ConfigError(f"ood.detector.conv.options {bad} are not options of {arch!r} (valid: "
                          f"{sorted(valid_opts)})")
    heads = tok.get("heads", "auto")
    heads = None if heads in (None, "auto") else _int(heads, "ood.detector.tokens.heads", 1)
    grayscale = out.get("grayscale", "auto")
    if grayscale not in ("auto", True, False):
        raise ConfigError(f"ood.outliers.grayscale must be auto, true or false, got {grayscale!r}")
    sources = out.get("sources", list(base.outlier_sources)) or []
    if isinstance(sources, str):
        sources = [sources]
    bad = [s for s in sources if s not in BUILTIN_SOURCES]
    if bad:
        raise ConfigError(f"unknown ood.outliers.sources {bad}; valid: {', '.join(BUILTIN_SOURCES)} "
                          f"(data sets such as svhn go in ood.outliers.datasets)")
    datasets = out.get("datasets") or []
    for spec in datasets:
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(f"ood.outliers.datasets entries must be mappings with a name, e.g. "
                              f"{{name: svhn, root: data/svhn}}; got {spec!r}")
    if not sources and not datasets:
        raise ConfigError("ood.outliers needs at least one source or data set for energy fine-tuning")
    cfg = DetectorConfig(
        conv_arch=arch, conv_options=tuple(sorted(options.items())),
        input_size=_int(conv.get("input_size", base.input_size), "ood.detector.conv.input_size", 4, True),
        token_depth=_int(tok.get("depth", base.token_depth), "ood.detector.tokens.depth", 1),
        token_heads=heads,
        token_mlp_ratio=_float(tok.get("mlp_ratio", base.token_mlp_ratio), "ood.detector.tokens.mlp_ratio", True),
        batch_size=_int(d.get("batch_size", base.batch_size), "ood.detector.batch_size", 2),
        epochs=_int(d.get("epochs", base.epochs), "ood.detector.epochs", 0),
        lr=_float(d.get("lr", base.lr), "ood.detector.lr", positive=True),
        weight_decay=_float(d.get("weight_decay", base.weight_decay), "ood.detector.weight_decay", nonneg=True),
        augment=bool(d.get("augment", base.augment)),
        train_limit=_int(d.get("train_limit", base.train_limit), "ood.detector.train_limit", 1, True),
        seed=_int(d.get("seed", base.seed), "ood.detector.seed", 0),
        energy_epochs=_int(e.get("epochs", base.energy_epochs), "ood.energy.epochs", 0),
        energy_lr=_float(e.get("lr", base.energy_lr), "ood.energy.lr", positive=True),
        energy_weight=_float(e.get("weight", base.energy_weight), "ood.energy.weight", nonneg=True),
        m_in=_float(e.get("m_in", base.m_in), "ood.energy.m_in"),
        m_out=_float(e.get("m_out", base.m_out), "ood.energy.m_out"),
        outlier_sources=tuple(sources),
        outlier_datasets=tuple(tuple(sorted(s.items())) for s in datasets),
        grayscale=str(grayscale).lower() if isinstance(grayscale, bool) else grayscale,
    )
    if cfg.epochs + cfg.energy_epochs == 0:
        raise ConfigError("ood.detector.epochs and ood.energy.epochs are both 0: the detector would be untrained")
    if not cfg.m_in < cfg.m_out:
        raise ConfigError(f"ood.energy.m_in ({cfg.m_in}) must be below ood.energy.m_out ({cfg.m_out}): "
                          f"in-distribution energies are pushed low, outliers high")
    split = o.get("split", "test")
    if split not in ("train", "val", "test"):
        raise ConfigError(f"ood.split must be train, val or test, got {split!r}")
    return cfg


def sanity_config(ood_cfg: dict | None) -> dict:
    """The ``ood.sanity`` block with defaults: ``{"data": "auto", "options": {}, "samples": 1000}``."""
    s = _check_keys((ood_cfg or {}).get("sanity"), _SANITY_KEYS, "ood.sanity")
    data = s.get("data", "auto")
    if data is not None and not isinstance(data, str):
        raise ConfigError(f"ood.sanity.data must be a data-set name, auto or null, got {data!r}")
    options = s.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"ood.sanity.options must be a mapping, got {options!r}")
    return {"data": data, "options": dict(options),
            "samples": _int(s.get("samples", 1000), "ood.sanity.samples", 2)}


# ---------------------------------------------------------------------- networks
class TokenClassifier(nn.Module):
    """A few pre-norm ViT blocks (timm) on the token sequence, classifying from the CLS token."""

    def __init__(self, dim: int, num_classes: int, depth: int = 2, heads: int | None = None,
                 mlp_ratio: float = 4.0):
        super().__init__()
        from timm.models.vision_transformer import Block

        if heads is None:
            heads = dim // 64 if dim % 64 == 0 and dim >= 64 else 1
        if dim % heads:
            raise ConfigError(f"ood.detector.tokens.heads={heads} must divide the token width {dim}")
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(h))[:, 0])


class ActivationDetector(nn.Module):
    """Classifier on a layer's activations: standardise -> (resize) -> backbone -> logits."""

    def __init__(self, act_shape: tuple[int, ...], num_classes: int, cfg: DetectorConfig,
                 image_size: tuple[int, int] = (32, 32)):
        super().__init__()
        self.act_shape = tuple(int(s) for s in act_shape)
        if len(self.act_shape) == 3:
            self.kind = "conv"
            c = self.act_shape[0]
            self.size = (cfg.input_size,) * 2 if cfg.input_size else tuple(image_size)
            try:
                self.backbone: nn.Module = models.build(cfg.conv_arch, num_classes, in_channels=c,
                                                        **dict(cfg.conv_options))
            except ValueError as e:
                raise ConfigError(f"cannot build the OOD detector {cfg.conv_arch}: {e}") from None
        elif len(self.act_shape) == 2:
            self.kind = "tokens"
            c = self.act_shape[1]
            self.backbone = TokenClassifier(c, num_classes, cfg.token_depth, cfg.token_heads, cfg.token_mlp_ratio)
        else:
            raise ConfigError(f"no OOD detector for activations of shape {self.act_shape}: expected "
                              f"C x H x W (conv) or T x D (tokens)")
        self.register_buffer("mean", torch.zeros(c))
        self.register_buffer("std", torch.ones(c))

    @torch.no_grad()
    def set_standardization(self, acts: torch.Tensor) -> None:
        """Per-channel mean/std from a sample of activations (N x C x H x W or N x T x D)."""
        rows = acts.float().transpose(0, 1).reshape(acts.shape[1], -1) if self.kind == "conv" \
            else acts.float().reshape(-1, acts.shape[-1]).T
        self.mean.copy_(rows.mean(1))
        # dead (constant) channels: unit scale, so they stay 0 instead of blowing up
        std = rows.std(1)
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h.float()
        if self.kind == "conv":
            h = (h - self.mean[:, None, None]) / self.std[:, None, None]
            if tuple(h.shape[-2:]) != self.size:  # paper 2: bilinear resize to the input size
                h = nn.functional.interpolate(h, size=self.size, mode="bilinear", align_corners=False)
        else:
            h = (h - self.mean) / self.std
        return self.backbone(h)


# ------------------------------------------------------------------------ helpers
@torch.no_grad()
def _features(model2: models.StitchableNetwork, layer: str, x: torch.Tensor) -> torch.Tensor:
    return model2.forward_to(x, layer).float()


@torch.no_grad()
def detector_outputs(detector: ActivationDetector, acts: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies and predicted classes of the detector over batches of activations (CPU tensors)."""
    detector.eval()
    es, preds = [], []
    for h in acts:
        logits = detector(h)
        es.append(energy(logits).cpu())
        preds.append(logits.argmax(1).cpu())
    return torch.cat(es), torch.cat(preds)


def _cosine(step: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * step / max(1, total)))


def _grayscale_option(value: str) -> bool | str:
    return {"auto": "auto", "true": True, "false": False}[value]


# ----------------------------------------------------------------------- training
def train_detector(model2: models.StitchableNetwork, layer: str, dm: ImageDataModule, cfg: DetectorConfig,
                   device: torch.device | str = "cpu") -> tuple[ActivationDetector, dict]:
    """Train a detector on model 2's ``layer`` activations; returns (detector in eval mode, info).

    Phase 1 (``epochs``): cross-entropy on in-distribution activations (Adam, cosine
    LR). Phase 2 (``energy_epochs``): Liu et al.'s objective on batches half
    in-distribution, half outliers (:func:`stitch.ood.energy.energy_loss`). Model 2
    stays frozen in eval mode throughout.
    """
    if dm.multilabel:
        raise ConfigError(f"OOD detection needs a single-label task (the energy score is defined for a softmax "
                          f"classifier); {dm.name} is multi-label")
    device = torch.device(device)
    model2.eval()
    layer = model2.check_layer(layer)
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    shape = model2.layer_shapes(dm.input_shape)[layer]
    det = ActivationDetector(shape, dm.num_classes, cfg, dm.input_shape[1:]).to(device)
    sample = torch.cat([_features(model2, layer, x) for x, _ in dm.batches("train", 256, device=device, limit=1024)])
    det.set_standardization(sample)
    del sample
    bs, lim = cfg.batch_size, cfg.train_limit
    history: list[dict] = []

    def run_phase(epochs: int, lr: float, energy_phase: bool, sampler: OutlierSampler | None) -> None:
        if epochs == 0:
            return
        opt = torch.optim.Adam(det.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        total = epochs * dm.num_batches("train", bs, lim)
        step = 0
        det.train()
        for epoch in range(epochs):
            sums = {"loss": 0.0, "ce": 0.0, "reg": 0.0, "energy_in": 0.0, "energy_out": 0.0, "acc": 0.0}
            n_b = 0
            for x, y in dm.batches("train", bs, shuffle=True, augment=cfg.augment, device=device,
                                   seed=cfg.seed * 1009 + epoch + (500 if energy_phase else 0), limit=lim):
                for group in opt.param_groups:
                    group["lr"] = lr * _cosine(step, total)
                if energy_phase:
                    x_out = sampler.sample(len(x), x, g, device)
                    h = _features(model2, layer, torch.cat([x, x_out]))
                    logits = det(h)
                    loss, parts = energy_loss(logits[:len(x)], y, logits[len(x):], cfg.energy_weight, cfg.m_in,
                                              cfg.m_out)
                    logits_in = logits[:len(x)]
                else:
                    logits_in = det(_features(model2, layer, x))
                    loss = nn.functional.cross_entropy(logits_in, y)
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
                sums["acc"] += float((logits_in.argmax(1) == y).float().mean())
                for k, v in parts.items():
                    sums[k] += v
            history.append({"phase": "energy" if energy_phase else "classify", "epoch": epoch,
                            **{k: v / max(1, n_b) for k, v in sums.items()}})
            log.debug("detector %s %s epoch %d: %s", layer, history[-1]["phase"], epoch, history[-1])

    run_phase(cfg.epochs, cfg.lr, False, None)
    t1 = time.time()
    sampler = None
    if cfg.energy_epochs:
        sampler = OutlierSampler(dm, cfg.outlier_sources, [dict(s) for s in cfg.outlier_datasets],
                                 _grayscale_option(cfg.grayscale))
        run_phase(cfg.energy_epochs, cfg.energy_lr, True, sampler)
    det.eval()
    info = {"history": history, "classify_s": t1 - t0, "energy_s": time.time() - t1, "train_s": time.time() - t0,
            "act_shape": list(shape)}
    info["eval"] = evaluate_detector(det, model2, layer, dm, device, sampler, seed=cfg.seed + 1)
    return det, info


@torch.no_grad()
def evaluate_detector(det: ActivationDetector, model2, layer: str, dm: ImageDataModule, device,
                      sampler: OutlierSampler | None = None, seed: int = 1, split: str = "test",
                      limit: int | None = 2000) -> dict:
    """Detector accuracy and energies on ``split``; AUROC against freshly drawn (held-out) outliers."""
    ys, feats = [], []
    for x, y in dm.batches(split, 256, device=device, limit=limit):
        feats.append(_features(model2, layer, x))
        ys.append(y.cpu())
    e_in, pred = detector_outputs(det, feats)
    y = torch.cat(ys)
    out = {"split": split, "acc": float((pred == y).float().mean()), "energy_in_mean": float(e_in.mean()),
           "energy_in_std": float(e_in.std()) if len(e_in) > 1 else 0.0, "samples": len(y)}
    if sampler is not None:
        g = torch.Generator().manual_seed(10_000 + seed)  # a different draw from any training batch
        acts = [_features(model2, layer, sampler.sample(len(x), x, g, device))
                for x, _ in dm.batches(split, 256, device=device, limit=limit)]
        e_out, _ = detector_outputs(det, acts)
        m = ood_scores_metrics(-e_in, -e_out)
        out.update({f"outlier_{k}": v for k, v in m.items()}, energy_outlier_mean=float(e_out.mean()))
    return out


# ------------------------------------------------------------------ sanity check
def _available(name: str, options: dict) -> bool:
    from .. import data as data_lib
    from ..errors import DataNotFoundError

    try:
        data_lib.build(name, **options).setup()
        return True
    except (DataNotFoundError, OSError, ValueError):
        return False


def resolve_sanity_data(in_name: str, spec: dict) -> dict | None:
    """Which "truly OOD" data set the sanity check uses, as ``{"name": ..., **options}`` (None: skip).

    ``auto``: SVHN against CIFAR-10 (and CIFAR-10 against SVHN) when their files are
    present (roots from ``ood.sanity.options.root`` or ``SVHN_ROOT``/``CIFAR10_ROOT``);
    the bundled digits against the synthetic set; otherwise the procedural
    ``synthetic`` set (smooth colour patterns: offline, always available).
    """
    data = spec.get("data", "auto")
    options = dict(spec.get("options") or {})
    if data in (None, "none", "null", False):
        return None
    if data != "auto":
        return {"name": data, **options}
    if in_name == "cifar10":
        root = options.get("root") or os.environ.get("SVHN_ROOT", "data/svhn")
        if _available("svhn", {"root": root}):
            return {"name": "svhn", "root": root}
    if in_name == "svhn":
        from ..data.cifar10 import SHARED_JPEG

        for root in [options.get("root"), os.environ.get("CIFAR10_ROOT"), "data/cifar10", str(SHARED_JPEG)]:
            if root and _available("cifar10", {"root": root}):
                return {"name": "cifar10", "root": root}
    if in_name == "synthetic":
        return {"name": "digits"}
    return {"name": "synthetic"}


def sanity_images(spec: dict, dm: ImageDataModule, samples: int) -> torch.Tensor:
    """Raw uint8 test images of the sanity data set, in the in-distribution geometry (size, channels)."""
    from .. import data as data_lib

    opts = {k: v for k, v in spec.items() if k != "name"}
    if spec["name"] == "synthetic":
        opts.setdefault("test_size", samples)
    opts["normalize"] = False  # raw pixels: the in-distribution normalisation is applied later
    other = data_lib.build(spec["name"], **opts)
    try:
        x = other.tensors("test")[0][:samples]
    except NotImplementedError:  # streaming set: its batches arrive as floats in [0, 1]
        x = torch.cat([b for b, _ in other.batches("test", 256, limit=samples, device="cpu")])
    channels, *size = dm.input_shape
    return _resize_raw(x, tuple(size), channels, looks_grayscale(dm))


@torch.no_grad()
def sanity_check(det: ActivationDetector, model2: models.StitchableNetwork, layer: str, dm: ImageDataModule,
                 spec: dict | None = None, samples: int = 1000, device: torch.device | str = "cpu") -> dict:
    """AUROC of the detector for a genuinely different data set against the in-distribution test split.

    Paper 2's sanity check (SVHN against CIFAR-10 should score high). ``spec`` is a
    resolved data spec (see :func:`resolve_sanity_data`); the other images get the
    in-distribution preprocessing (and grey channels for grey data), then go
    through model 2 up to ``layer``. Returns ``{"data", "auroc", "aupr", "fpr95",
    "samples"}``.
    """
    spec = spec or resolve_sanity_data(dm.name, {"data": "auto"})
    device = torch.device(device)
    model2.eval()
    raw = sanity_images(spec, dm, samples)
    acts_out = (_features(model2, layer, dm.preprocess(raw[i:i + 256].to(device))) for i in range(0, len(raw), 256))
    e_out, _ = detector_outputs(det, acts_out)
    acts_in = (_features(model2, layer, x) for x, _ in dm.batches("test", 256, device=device, limit=samples))
    e_in, _ = detector_outputs(det, acts_in)
    m = ood_scores_metrics(-e_in, -e_out)
    return {"data": spec["name"], **m, "samples_in": len(e_in), "samples_out": len(e_out),
            "energy_in_mean": float(e_in.mean()), "energy_out_mean": float(e_out.mean())}


# ----------------------------------------------------------------------- caching
_DATA_NON_SEMANTIC = {"batch_size", "num_workers", "root", "download", "cache", "layout", "tlm_lr"}
_MEMO: dict[str, tuple[ActivationDetector, dict]] = {}


def detector_identity(cfg: DetectorConfig, key2: store.DonorKey, donor_sha256: str | None, layer: str,
                      data_cfg: dict | None, input_shape: tuple[int, ...]) -> tuple[str, dict]:
    """(hash, the dict it hashes): what makes two trained detectors interchangeable."""
    data = {k: v for k, v in (data_cfg or {}).items() if k not in _DATA_NON_SEMANTIC}
    ident = {"format": FORMAT, "detector": cfg.to_dict(), "donor": str(key2), "donor_sha256": donor_sha256,
             "layer": layer, "data": data, "input_shape": list(input_shape)}
    h = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return h, ident


def detector_path(key2: store.DonorKey, layer: str, digest: str, root: str | Path | None = None) -> Path:
    """``<store>/<donor dir>/ood/<layer>-<hash>.pt`` (the meta json sits next to it)."""
    return key2.directory(root) / "ood" / f"{layer}-{digest}.pt"


def _load(path: Path, meta: dict, device) -> ActivationDetector | None:
    cfg = DetectorConfig.from_dict(meta["config"])
    det = ActivationDetector(tuple(meta["act_shape"]), meta["num_classes"], cfg, tuple(meta["image_size"]))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        det.load_state_dict(state)
    except Exception as e:  # truncated / foreign file: it is only a cache, so retrain
        log.warning("OOD detector %s unreadable (%s: %s); retraining it", path, type(e).__name__,
                    str(e).splitlines()[0][:200])
        return None
    return det.to(device).eval()


def get_detector(model2: models.StitchableNetwork, key2: store.DonorKey, layer: str, dm: ImageDataModule,
                 ood_cfg: dict | None, store_root: str | Path | None = None, device: torch.device | str = "cpu",
                 data_cfg: dict | None = None, retrain: bool = False) -> tuple[ActivationDetector, dict]:
    """The detector for (model 2, ``layer``): from this process's memo, the model store, or trained now.

    A freshly trained detector is saved atomically (state dict, then the meta json,
    whose presence marks a complete entry) together with its sanity check. Returns
    (detector in eval mode on ``device``, meta dict with ``path``, ``trained_now``).
    """
    layer = model2.check_layer(layer)  # an alias (layer3) and its canonical name (relu3) share one detector
    cfg = detector_config(ood_cfg)
    sanity_spec = sanity_config(ood_cfg)
    device = torch.device(device)
    donor_sha = store.load_meta(key2, store_root).get("sha256") if store.exists(key2, store_root) else None
    digest, ident = detector_identity(cfg, key2, donor_sha, layer, data_cfg, dm.input_shape)
    path = detector_path(key2, layer, digest, store_root)
    meta_path = path.with_suffix(".json")
    memo_key = f"{path.resolve()}@{device}"
    det = None
    if not retrain and memo_key in _MEMO:
        det, meta = _MEMO[memo_key]
        meta = {**meta, "trained_now": False}
    elif not retrain and meta_path.is_file() and path.is_file():
        meta = read_json(meta_path)
        det = _load(path, meta, device)
        if det is not None:
            meta["trained_now"] = False
            log.info("OOD detector for %s %s loaded from %s", key2, layer, path)
    if det is None:
        log.info("training the OOD detector for %s layer %s (%s)", key2, layer, path)
        det, info = train_detector(model2, layer, dm, cfg, device)
        meta = {"format": FORMAT, "identity": ident, "hash": digest, "config": cfg.to_dict(), "layer": layer,
                "donor": str(key2), "donor_sha256": donor_sha, "act_shape": info["act_shape"],
                "num_classes": dm.num_classes, "image_size": list(dm.input_shape[1:]), "data": dm.name,
                "history": info["history"], "metrics": info["eval"],
                "timings": {k: info[k] for k in ("classify_s", "energy_s", "train_s")},
                "code_version": code_version(), "hardware": _hardware(device)}
        save_torch(path, {k: v.detach().cpu().clone() for k, v in det.state_dict().items()})
        meta["sha256"] = sha256(path)
        meta["trained_now"] = True
        log.info("OOD detector %s %s: acc %.4f, held-out outlier AUROC %s, %.1f s", key2, layer,
                 info["eval"]["acc"], f"{info['eval'].get('outlier_auroc', float('nan')):.4f}", info["train_s"])
    meta["path"] = str(path)
    # the sanity check is not part of the detector's identity: a new sanity setting adds a result
    sanity = ensure_sanity(det, meta, model2, layer, dm, sanity_spec, device)
    if meta.get("trained_now") or sanity.get("computed_now"):
        write_json(meta_path, {k: v for k, v in meta.items() if k not in ("trained_now", "path")})
    _MEMO[memo_key] = (det, meta)
    return det, dict(meta)


def ensure_sanity(det: ActivationDetector, meta: dict, model2, layer: str, dm: ImageDataModule, spec: dict,
                  device) -> dict:
    """Run (or reuse from ``meta["sanity"]``) the sanity check for ``spec``; stores it in ``meta``."""
    resolved = resolve_sanity_data(dm.name, spec)
    meta.setdefault("sanity", {})
    if resolved is None:
        return {}
    skey = json.dumps({**resolved, "samples": spec["samples"]}, sort_keys=True)
    if skey in meta["sanity"]:
        meta["sanity_auroc"] = meta["sanity"][skey]["auroc"]
        return meta["sanity"][skey]
    t = time.time()
    res = sanity_check(det, model2, layer, dm, resolved, spec["samples"], device)
    res["seconds"] = time.time() - t
    meta["sanity"][skey] = res
    meta["sanity_auroc"] = res["auroc"]
    log.info("OOD detector %s sanity check: %s vs %s AUROC %.4f", layer, res["data"], dm.name, res["auroc"])
    return {**res, "computed_now": True}


def clear_memo() -> None:
    """Forget detectors loaded in this process (tests; after retraining donors)."""
    _MEMO.clear()


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
           f"{torch.get_num_threads()} threads)"

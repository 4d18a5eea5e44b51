"""The detector's sanity check (paper 2): its AUROC for a genuinely different data set against
the in-distribution test split (SVHN against CIFAR-10 should score high), stored in the
detector's meta json."""
from __future__ import annotations

import json
import logging
import os
import time

import torch

from .. import models
from ..data.base import ImageDataModule
from .networks import ActivationDetector, detector_outputs, layer_activations
from .outliers import _resize_raw, looks_grayscale
from .scoring import energy_percentiles, ood_scores_metrics

log = logging.getLogger(__name__)


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

    ``auto``: SVHN against CIFAR-10 (and CIFAR-10 against SVHN or CelebA) when their files are
    present (roots from ``ood.sanity.options.root``, ``SVHN_ROOT``/``CIFAR10_ROOT``, ``data/<name>``, or the
    workplace's ``shared/data`` copies; SVHN needs only its test split here);
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
        from ..data.svhn import SHARED_SVHN

        for root in [options.get("root"), os.environ.get("SVHN_ROOT"), "data/svhn", str(SHARED_SVHN)]:
            if root and _available("svhn", {"root": root}):
                return {"name": "svhn", "root": root}
    if in_name in ("svhn", "celeba"):  # faces against natural images of anything else
        from ..data.cifar10 import SHARED_JPEG

        for root in [options.get("root"), os.environ.get("CIFAR10_ROOT"), "data/cifar10", str(SHARED_JPEG)]:
            if root and _available("cifar10", {"root": root}):
                return {"name": "cifar10", "root": root}
    if in_name == "synthetic":
        return {"name": "digits"}
    return {"name": "synthetic"}


def sanity_images(spec: dict, datamodule: ImageDataModule, samples: int) -> torch.Tensor:
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
    channels, *size = datamodule.input_shape
    return _resize_raw(x, tuple(size), channels, looks_grayscale(datamodule))


@torch.no_grad()
def sanity_check(det: ActivationDetector, model2: models.StitchableNetwork, layer: str, datamodule: ImageDataModule,
                 spec: dict | None = None, samples: int = 1000, device: torch.device | str = "cpu") -> dict:
    """AUROC of the detector for a genuinely different data set against the in-distribution test split.

    Paper 2's sanity check (SVHN against CIFAR-10 should score high). ``spec`` is a
    resolved data spec (see :func:`resolve_sanity_data`); the other images get the
    in-distribution preprocessing (and grey channels for grey data), then go
    through model 2 up to ``layer``. Returns ``{"data", "auroc", "aupr", "fpr95",
    "samples"}``.
    """
    spec = spec or resolve_sanity_data(datamodule.name, {"data": "auto"})
    device = torch.device(device)
    model2.eval()
    raw = sanity_images(spec, datamodule, samples)
    acts_out = (layer_activations(model2, layer, datamodule.preprocess(raw[i:i + 256].to(device)))
                for i in range(0, len(raw), 256))
    e_out, _ = detector_outputs(det, acts_out)
    acts_in = (layer_activations(model2, layer, x) for x, _ in datamodule.batches("test", 256, device=device, limit=samples))
    e_in, _ = detector_outputs(det, acts_in)
    m = ood_scores_metrics(-e_in, -e_out)
    return {"data": spec["name"], **m, "samples_in": len(e_in), "samples_out": len(e_out),
            "energy_in_mean": float(e_in.mean()), "energy_out_mean": float(e_out.mean()),
            "energy_out_percentiles": energy_percentiles(e_out)}


def ensure_sanity(det: ActivationDetector, meta: dict, model2, layer: str, datamodule: ImageDataModule, spec: dict,
                  device) -> dict:
    """Run (or reuse from ``meta["sanity"]``) the sanity check for ``spec``; stores it in ``meta``."""
    resolved = resolve_sanity_data(datamodule.name, spec)
    meta.setdefault("sanity", {})
    if resolved is None:
        return {}
    skey = json.dumps({**resolved, "samples": spec["samples"]}, sort_keys=True)
    meta["sanity_key"] = skey  # which of meta["sanity"] is this study's check
    if skey in meta["sanity"] and "energy_out_percentiles" in meta["sanity"][skey]:
        meta["sanity_auroc"] = meta["sanity"][skey]["auroc"]
        return meta["sanity"][skey]
    t = time.time()
    res = sanity_check(det, model2, layer, datamodule, resolved, spec["samples"], device)
    res["seconds"] = time.time() - t
    meta["sanity"][skey] = res
    meta["sanity_auroc"] = res["auroc"]
    log.info("OOD detector %s sanity check: %s vs %s AUROC %.4f", layer, res["data"], datamodule.name, res["auroc"])
    return {**res, "computed_now": True}

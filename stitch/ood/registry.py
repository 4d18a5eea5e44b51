"""Finding, training and storing detectors in the model store.

One detector per (model-2 donor, layer, detector config), stored next to the donor::

    <store>/<data>/<model tag>/seed<seed>/ood/<layer>-<hash>.pt    # state dict (tensors only)
    <store>/<data>/<model tag>/seed<seed>/ood/<layer>-<hash>.json  # config, metrics, sanity check

The hash covers the detector config, the donor's checkpoint sha256 and the data
settings, so retraining the donor or changing a setting never reuses a stale
detector. The ``.pt`` file is read with ``weights_only=True``.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import models, store
from ..data.base import ImageDataModule
from ..fileio import read_json, save_torch, sha256, write_json
from ..provenance import provenance
from ..settings import DataSpec, OODSettings, Problems, _raise
from .cache import OODCache
from .networks import ActivationDetector
from .sanity import ensure_sanity
from .settings import DetectorConfig, detector_config, ood_settings, sanity_config
from .training import train_detector

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the checkpoint layout changes

def data_spec(data: DataSpec | dict | None) -> DataSpec | None:
    """A ``data:`` block typed (a dict is checked in full; ``ConfigError`` lists every problem)."""
    if isinstance(data, dict):
        problems = Problems()
        data = DataSpec.parse(data, "data.", problems)
        _raise(problems)
    return data


def data_identity(data: DataSpec | dict | None) -> dict:
    """What of the study's data settings a detector depends on: ``DataSpec.content_identity`` (where the files
    are, batch sizes and the TLM learning rate leave it out). A dict is read as a ``data:`` block."""
    data = data_spec(data)
    return {} if data is None else data.content_identity()


def detector_identity(cfg: DetectorConfig, key2: store.DonorKey, donor_sha256: str | None, layer: str,
                      data_cfg: DataSpec | dict | None, input_shape: tuple[int, ...]) -> tuple[str, dict]:
    """(hash, the dict it hashes): what makes two trained detectors interchangeable."""
    data = data_identity(data_cfg)
    ident = {"format": FORMAT, "detector": cfg.to_dict(), "donor": str(key2), "donor_sha256": donor_sha256,
             "layer": layer, "data": data, "input_shape": list(input_shape)}
    h = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return h, ident


def detector_path(key2: store.DonorKey, layer: str, digest: str, root: str | Path | None = None) -> Path:
    """``<store>/<donor dir>/ood/<layer>-<hash>.pt`` (the meta json sits next to it)."""
    return key2.directory(root) / "ood" / f"{layer}-{digest}.pt"


@dataclass(frozen=True)
class DetectorSupply:
    """Where the detectors of model 2's layers come from, for one study (every run shares one).

    ``donor`` is model 2's key in the model store ``store_root``; ``ood`` (the ``ood:`` block) and ``data``
    (the ``data:`` block) are part of each detector's identity; ``datamodule`` is what a missing detector
    trains on; ``cache`` keeps loaded detectors and in-distribution energies in memory (None: every call
    reads the store). A dict for ``ood`` or ``data`` is checked and typed once, here.
    """
    donor: store.DonorKey
    datamodule: ImageDataModule
    ood: OODSettings | dict | None  # typed in __post_init__: always OODSettings afterwards
    data: DataSpec | dict | None = None  # typed in __post_init__
    store_root: str | Path | None = None
    cache: OODCache | None = None

    def __post_init__(self):
        object.__setattr__(self, "ood", ood_settings(self.ood))
        object.__setattr__(self, "data", data_spec(self.data))


def _load(path: Path, meta: dict, device) -> ActivationDetector | None:
    cfg = DetectorConfig.from_dict(meta["config"])
    det = ActivationDetector(tuple(meta["act_shape"]), meta["num_classes"], cfg, tuple(meta["image_size"]),
                             multilabel=bool(meta.get("multilabel", False)))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        det.load_state_dict(state)
    except Exception as e:  # truncated / foreign file: it is only a cache, so retrain
        log.warning("OOD detector %s unreadable (%s: %s); retraining it", path, type(e).__name__,
                    str(e).splitlines()[0][:200])
        return None
    return det.to(device).eval()


def get_detector(detectors: DetectorSupply, model2: models.StitchableNetwork, layer: str,
                 device: torch.device | str = "cpu", retrain: bool = False) -> tuple[ActivationDetector, dict]:
    """The detector for (model 2, ``layer``): from the supply's cache, its model store, or trained now.

    A freshly trained detector is saved atomically (state dict, then the meta json,
    whose presence marks a complete entry) together with its sanity check, and kept
    in the cache. Returns (detector in eval mode on ``device``, meta dict with ``path``, ``trained_now``).
    """
    key2, store_root, datamodule, cache = detectors.donor, detectors.store_root, detectors.datamodule, detectors.cache
    layer = model2.check_layer(layer)  # an alias (layer3) and its canonical name (relu3) share one detector
    cfg = detector_config(detectors.ood)
    sanity_spec = sanity_config(detectors.ood)
    device = torch.device(device)
    donor_sha = store.load_meta(key2, store_root).get("sha256") if store.exists(key2, store_root) else None
    digest, ident = detector_identity(cfg, key2, donor_sha, layer, detectors.data, datamodule.input_shape)
    path = detector_path(key2, layer, digest, store_root)
    meta_path = path.with_suffix(".json")
    det = None
    cached = cache.detector(path, device) if cache is not None and not retrain else None
    if cached is not None:
        det, meta = cached
        meta = {**meta, "trained_now": False}
    elif not retrain and meta_path.is_file() and path.is_file():
        try:
            meta = read_json(meta_path)
            det = _load(path, meta, device)
        except (OSError, ValueError, KeyError, TypeError) as e:  # a damaged meta json: only a cache, so retrain
            log.warning("OOD detector metadata %s is damaged (%s: %s); retraining the detector", meta_path,
                        type(e).__name__, str(e)[:200])
            det = None
        if det is not None:
            meta["trained_now"] = False
            log.info("OOD detector for %s %s loaded from %s", key2, layer, path)
    if det is None:
        log.info("training the OOD detector for %s layer %s (%s)", key2, layer, path)
        det, info = train_detector(model2, layer, datamodule, cfg, device)
        meta = {"format": FORMAT, "identity": ident, "hash": digest, "config": cfg.to_dict(), "layer": layer,
                "donor": str(key2), "donor_sha256": donor_sha, "act_shape": info["act_shape"],
                "num_classes": datamodule.num_classes, "image_size": list(datamodule.input_shape[1:]), "data": datamodule.name,
                "multilabel": info["multilabel"], "score": info["score"],
                "history": info["history"], "metrics": info["eval"],
                "timings": {k: info[k] for k in ("classify_s", "energy_s", "train_s")},
                **provenance(device)}
        save_torch(path, {k: v.detach().cpu().clone() for k, v in det.state_dict().items()})
        meta["sha256"] = sha256(path)
        meta["trained_now"] = True
        log.info("OOD detector %s %s: acc %.4f, held-out outlier AUROC %s, %.1f s", key2, layer,
                 info["eval"]["acc"], f"{info['eval'].get('outlier_auroc', float('nan')):.4f}", info["train_s"])
    meta["path"] = str(path)
    # the sanity check is not part of the detector's identity: a new sanity setting adds a result
    sanity = ensure_sanity(det, meta, model2, layer, datamodule, sanity_spec, device)
    if meta.get("trained_now") or sanity.get("computed_now"):
        write_json(meta_path, {k: v for k, v in meta.items() if k not in ("trained_now", "path")})
    if cache is not None:
        cache.keep_detector(path, device, det, meta)
    return det, dict(meta)

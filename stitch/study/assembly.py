"""The study assembly: everything the runs of one study share, built once from its settings.

``Study.assemble(settings)`` checks the layer names on untrained networks, then builds the
device and precision, the data module, the two donors (one network when model 1 is model 2:
self-stitching), the layer pairs, the frozen donors' fast path (BatchNorm folded, channels-last),
the activation cache and, with ``ood.enabled``, the OOD detectors' cache. ``study.pairs()`` yields
one :class:`~stitch.matching.fitting.PairContext` per layer pair, which is all a method needs to
fit and evaluate a stitching layer. The runner (``stitch/study/runner.py``), the LMC step
(``stitch/study/lmc.py``) and ``bench/`` build their networks through it, so donors, caches and the
self-stitch dedupe are wired in one place.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from .. import store
from ..data import from_config as datamodule_from_config
from ..data.base import ImageDataModule
from ..errors import CheckpointError, ConfigError
from ..features import ActivationCache, FeatureSource, resolve_cache_dtype, resolve_precision
from ..hardware import resolve_device
from ..matching.fitting import PairContext
from ..models import StitchableNetwork
from ..settings import CacheSettings, DataSpec, DonorSettings, ModelSpec, StudySettings, TrainSettings
from ..stitching import build_stitching_layer
from .layer_checks import check_layers, layer_pairs

log = logging.getLogger(__name__)


@dataclass
class Donor:
    """A frozen network from the model store, with its store key and metadata (sha256, accuracy)."""
    net: StitchableNetwork
    meta: dict
    key: store.DonorKey

    def summary(self) -> dict:
        """What a record keeps of the donor: which file it was, and how good it is."""
        return {"key": str(self.key), "tag": self.key.tag, "sha256": self.meta.get("sha256"),
                "test_acc": (self.meta.get("metrics") or {}).get("test_acc")}


def check_available(spec: ModelSpec, which: str, data: DataSpec, donor: DonorSettings, store_root: str) -> None:
    """Raise ``CheckpointError`` (saying which command makes it) when the donor is neither in the store, nor
    importable from ``spec.weights``, nor to be trained here: checked for both donors before either is trained."""
    key = store.DonorKey.of(spec, data.name)
    if spec.weights:
        if not Path(spec.weights).is_file():
            raise CheckpointError(f"{which}.weights={spec.weights!r}: no such file")
        return
    if store.exists(key, store_root):
        return
    where = store.store_root(store_root).resolve()
    given = {k: v for k, v in data.as_dict().items() if k in _DATA_IDENTITY and v is not None}
    if key.imported:
        extra = "".join(f" --data-root {v}" if k == "root" else f" --data-option {k}={v}" for k, v in given.items())
        raise CheckpointError(f"no donor {key} for {which} in the model store {where}; import it with:\n  "
                              f"{key.train_command(store_root)}{extra}\n(or pass {which}.weights=<file>)")
    if not donor.train_missing:
        extra = "".join(f" data.{k}={v}" for k, v in given.items())
        raise CheckpointError(f"no trained donor {key} for {which} in the model store {where}; train it with:\n"
                              f"  {key.train_command(store_root)}{extra}\n(or run with donor.train_missing=true)")


# the data options a donor's training or import needs repeated (where the files are, what size they are read at)
_DATA_IDENTITY = ("root", "image_size", "layout")


def load_donor(spec: ModelSpec, which: str, data: DataSpec, donor: DonorSettings, store_root: str,
               device: torch.device, num_classes: int | None = None,
               input_shape: tuple[int, ...] | None = None) -> Donor:
    """Model ``which`` from the store: imported from ``spec.weights`` or trained on demand when missing.

    ``num_classes``: the data's class count, checked against the donor's."""
    key = store.DonorKey.of(spec, data.name)
    if spec.weights:  # a local state-dict file: imported once (a different file under that name: an error)
        from ..store.importing import import_checkpoint

        import_checkpoint(spec.weights, data_cfg=data.as_dict(), model_cfg=spec.as_dict(), name=str(spec.seed),
                          store_root=store_root, device=device)
    elif not store.exists(key, store_root):
        check_available(spec, which, data, donor, store_root)
        from ..donors import train_donor  # Lightning: imported only when a donor is trained

        log.info("donor %s missing: training it now (donor.train_missing=true)", key)
        train_donor(TrainSettings.for_donor(spec, data, donor, store_root))
    net, meta = store.load(key, store_root, device)
    if num_classes is not None and meta.get("num_classes") not in (None, num_classes):
        raise ConfigError(f"donor {key} ({which}) has {meta['num_classes']} classes but {data.name} has "
                          f"{num_classes}: a stitched network would be scored against the wrong labels")
    trained_on = meta.get("input_shape")
    if input_shape is not None and trained_on and tuple(trained_on) != tuple(input_shape):
        from ..data import options_of

        fix = (f"set data.image_size={trained_on[-1]} (or keep donors of another input size in another store=)"
               if "image_size" in options_of(data.name) else "use the data the donor was trained on")
        raise ConfigError(f"donor {key} ({which}) was trained on {data.name} images of shape {tuple(trained_on)}, "
                          f"but this study's are {tuple(input_shape)}: {fix}")
    check_not_at_chance(key, which, meta, donor.allow_chance, store_root)
    normalize = data.normalize
    if bool(meta.get("normalize", True)) != bool(normalize):
        raise ConfigError(f"donor {key} was trained with data.normalize={meta.get('normalize')} but this run uses "
                          f"data.normalize={normalize}; use the same preprocessing")
    return Donor(net, meta, key)


def check_not_at_chance(key: store.DonorKey, which: str, meta: dict, allowed: bool, store_root: str) -> None:
    """A donor near chance accuracy (untrained, or broken by its import) makes every stitch meaningless:
    refuse it unless ``donor.allow_chance=true``."""
    acc = (meta.get("metrics") or {}).get("test_acc")
    if acc is None or allowed:
        return
    floor = store.sanity_floor(int(meta.get("num_classes") or 2), bool(meta.get("multilabel")),
                               (meta.get("metrics") or {}).get("test_majority_acc"))
    if acc < floor:
        remake = ("check the imported file and its import options" if key.imported else
                  f"retrain it longer:\n  {key.train_command(store_root)} epochs=<more> force=true\n ")
        raise ConfigError(f"donor {key} ({which}) has test accuracy {acc:.3f}, near chance (below {floor:.3f}): "
                          f"stitching it measures nothing; {remake} or pass donor.allow_chance=true to stitch it "
                          f"anyway")


def cache_budget_bytes(cache: CacheSettings, device: torch.device) -> int:
    budget = cache.budget_gb
    if budget == "auto":
        # CPU: a third of the RAM, at least 4 GiB (paper 1's Tiny-10 at bn1 needs 5.8 GB for A and B: streaming
        # it costs 4x)
        budget = (0.5 * torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda"
                  else max(4.0, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 3 / 2**30))
    return int(float(budget) * 2**30)


@dataclass
class Study:
    """What the runs of one study share (see the module docstring)."""
    settings: StudySettings
    device: torch.device
    precision: str
    data: ImageDataModule
    model1: Donor
    model2: Donor
    layer_pairs: list[tuple[str, str]]
    cache: ActivationCache | None
    cache_dtype: torch.dtype
    load_s: float = 0.0
    detectors: Any = None  # stitch.ood.DetectorSupply (ood.enabled): model 2's detectors, kept in memory for the study
    shared: dict = field(default_factory=dict)  # scalars measured once per study (FeatureSource.shared)

    @classmethod
    def assemble(cls, s: StudySettings, *, pairs: list[tuple[str, str]] | None = None) -> Study:
        """Build the study; ``pairs`` replaces the layer selection (e.g. the pairs of finished records)."""
        t0 = time.time()
        data = datamodule_from_config(s.data.as_dict(), augment=True)  # constructing it reads no data
        size = getattr(data, "image_size", 32)  # in-memory sets are 32 px unless they say otherwise
        if pairs is None:  # layer typos fail here, before any data is read or donor trained
            check_layers(s, data.num_classes, getattr(data, "input_shape", None) or (3, size, size))
        device = resolve_device(s.device)
        precision = resolve_precision(str(s.precision), device)
        for which in ("model1", "model2"):  # a missing donor that cannot be trained: say so before training the other
            check_available(getattr(s, which), which, s.data, s.donor, s.store)
        data.setup()
        d1 = load_donor(s.model1, "model1", s.data, s.donor, s.store, device, data.num_classes,
                        getattr(data, "input_shape", None))
        if store.DonorKey.of(s.model2, s.data.name) == d1.key:
            d2 = d1  # self-stitching: one network
        else:
            d2 = load_donor(s.model2, "model2", s.data, s.donor, s.store, device, data.num_classes,
                            getattr(data, "input_shape", None))
        if pairs is None:
            pairs = layer_pairs(s.layer, s.target_layer, d1.net, d2.net)
        for L, M in pairs:  # incompatible layers are a configuration error: reject before running anything
            build_stitching_layer(d1.net.layer_shapes(data.input_shape)[L], d2.net.layer_shapes(data.input_shape)[M])
        _fast_path(d1, d2, pairs, fold=s.fold_batchnorm, channels_last=s.channels_last)
        cache = ActivationCache(cache_budget_bytes(s.cache, device)) if s.cache.enabled else None
        detectors = None
        if s.ood.enabled:
            from ..ood import DetectorSupply, OODCache

            detectors = DetectorSupply(d2.key, data, s.ood, s.data, s.store, OODCache())
        return cls(s, device, precision, data, d1, d2, list(pairs), cache, resolve_cache_dtype(s.cache.dtype, device),
                   load_s=time.time() - t0, detectors=detectors)

    @property
    def self_stitch(self) -> bool:
        return self.model1.key == self.model2.key

    def pair(self, L: str, M: str) -> PairContext:
        s = self.settings
        source = FeatureSource(self.model1.net, self.model2.net, L, M, self.data, self.device, self.precision,
                               self.cache, self.cache_dtype, batch_size=s.batch_size,
                               limits={"train": s.train_limit, "test": s.test_limit}, shared=self.shared)
        return PairContext(self.model1.net, self.model2.net, L, M, source, self.data.input_shape)

    def pairs(self) -> Iterator[PairContext]:
        """One context per layer pair, in order; cached activations are dropped when no later pair needs them."""
        m1, m2 = id(self.model1.net), id(self.model2.net)
        for i, (L, M) in enumerate(self.layer_pairs):
            yield self.pair(L, M)
            if self.cache is not None:
                later = self.layer_pairs[i + 1:]
                self.cache.drop_layers_except({(m1, a) for a, _ in later} | {(m2, b) for _, b in later})


def _fast_path(d1: Donor, d2: Donor, pairs: list[tuple[str, str]], *, fold: bool, channels_last: bool) -> None:
    """The frozen donors' fast path, in place: BatchNorm folded into the convs, channels-last."""
    if fold:  # float32-equal, faster
        from ..models.fold import fold_batchnorm

        if d2 is d1:
            d1.net = fold_batchnorm(d1.net, {L for L, _ in pairs} | {M for _, M in pairs})
        else:
            d1.net = fold_batchnorm(d1.net, {L for L, _ in pairs})
            d2.net = fold_batchnorm(d2.net, {M for _, M in pairs})
    if channels_last:  # NHWC convolutions: faster on CPUs (oneDNN) and GPUs with AMP
        from ..models.fold import to_channels_last

        for d in {id(d1): d1, id(d2): d2}.values():
            to_channels_last(d.net)

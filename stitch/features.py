"""Frozen-half activations, computed once and cached on the device.

A stitching run is mostly frozen computation: model 1 up to layer L (A), model 2
up to layer M (B) and model 2's logits (z2). ``FeatureSource`` serves batches of
them either from a cache (the fast path: each front runs once per split, not once
per epoch) or computed on the fly (the paper-faithful path with augmentation, or
when a cache would not fit the memory budget). Without augmentation both paths
give the same tensors: donors are in eval mode, so their outputs are deterministic.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator

import torch

from .data.base import ImageDataModule
from .models import StitchableNetwork
from .models.fold import as_input_for, memory_format_of

log = logging.getLogger(__name__)


def autocast(device: torch.device, precision: str):
    """Autocast context for the frozen forwards: ``32`` (none), ``bf16`` or ``16``."""
    if precision in ("32", "fp32", "32-true", None):
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "16": torch.float16, "fp16": torch.float16}[str(precision)]
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "32"
    if precision not in ("32", "bf16", "16"):
        raise ValueError(f"precision must be auto, 32, bf16 or 16, got {precision!r}")
    return precision


def resolve_cache_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":  # half the memory on GPUs; activations are post-ReLU/LayerNorm-scale values
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


@dataclass
class Batch:
    a: torch.Tensor | None  # model 1 at the source layer
    b: torch.Tensor | None  # model 2 at the target layer
    y: torch.Tensor         # labels
    z2: torch.Tensor | None  # model 2's logits
    x: torch.Tensor | None = None  # inputs (only on the on-the-fly path)


def _numel(shape) -> int:
    return int(torch.Size(shape).numel())


class ActivationCache:
    """Cached activations keyed by (model id, layer, split), evicted oldest-first past a byte budget."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self._items: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()

    def nbytes(self) -> int:
        unique = {t.data_ptr(): t for t in self._items.values()}  # B may be A (self-stitching diagonal)
        return sum(t.numel() * t.element_size() for t in unique.values())

    def __contains__(self, key) -> bool:  # no recency touch: asking is not using
        return key in self._items

    def get(self, key):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return None

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.budget

    def reserve(self, nbytes: int, keep: set = frozenset()) -> None:
        """Evict oldest-first (sparing ``keep``) until ``nbytes`` more fit the budget."""
        for key in [k for k in self._items if k not in keep]:
            if self.nbytes() + nbytes <= self.budget:
                break
            del self._items[key]

    def put(self, key, value: torch.Tensor) -> None:
        self.reserve(value.numel() * value.element_size(), keep={key})
        self._items[key] = value

    def clear(self) -> None:
        self._items.clear()

    def drop_layers_except(self, needed: set) -> None:
        """Drop the layer activations whose (network id, layer) is not in ``needed``; keep logits and labels.

        Called between a study's layer pairs with what the later pairs use. Oldest-first eviction alone
        keeps a finished source layer (used by every run of its row, so the most recent) and evicts the
        target layers the next row needs again: a ResNet-20 row into layer3.x recomputed two of them per
        new source, 45–70 s a run."""
        for key in [k for k in self._items if len(k) == 4 and k[1] != "logits" and (k[0], k[1]) not in needed]:
            del self._items[key]


class FeatureSource:
    """Batches of (A, B, y, z2) for one (model1, L, model2, M) pair."""

    def __init__(self, model1: StitchableNetwork, model2: StitchableNetwork, layer: str, target_layer: str,
                 datamodule: ImageDataModule, device: torch.device, precision: str = "32", cache: ActivationCache | None = None,
                 cache_dtype: torch.dtype = torch.float32, batch_size: int = 256, limits: dict | None = None,
                 shared: dict | None = None):
        self.m1, self.m2 = model1, model2
        self.layer, self.target_layer = layer, target_layer
        self.datamodule = datamodule
        self.device = device
        self.precision = precision
        self.cache = cache
        self.cache_dtype = cache_dtype
        self.batch_size = batch_size
        self.limits = limits or {}
        # what evaluation computes once per pair, not per run: paper 1's no-transformation baseline and
        # the indices between the raw A and B
        self.identity_ce: float | None = None
        self.raw_similarity: dict = {}
        # what it computes once per study (every pair of the study passes the same dict): model 1's
        # own accuracy, which does not depend on the layers (a 9 x 9 ResNet-20 matrix ran model 1's back
        # half 81 times for it)
        self.shared = {} if shared is None else shared

    def _model1_key(self, split: str) -> tuple:
        return ("model1_acc", id(self.m1), split, self.limits.get(split), self.precision)

    def model1_accuracy(self, split: str) -> float | None:
        """Model 1's accuracy on ``split`` if a run of this study has measured it, else None."""
        return self.shared.get(self._model1_key(split))

    def keep_model1_accuracy(self, split: str, value: float) -> None:
        self.shared[self._model1_key(split)] = value

    # --------------------------------------------------------------- frozen parts
    @torch.no_grad()
    def front(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.m1.forward_to(as_input_for(self.m1, x), self.layer)

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.precision):
            b = self.m2.forward_to(as_input_for(self.m2, x), self.target_layer)
            z2 = self.m2.forward_from(b, self.target_layer)
        return b, z2.float()

    @functools.cached_property
    def _shapes(self) -> tuple[tuple, tuple]:
        # computed once: batches() asks for the cache size every epoch, and this costs two forward passes
        shape = self.datamodule.input_shape
        return self.m1.layer_shapes(shape)[self.layer], self.m2.layer_shapes(shape)[self.target_layer]

    def _n(self, split: str) -> int:
        lim = self.limits.get(split)
        return self.datamodule.size(split) if lim is None else min(lim, self.datamodule.size(split))

    def cache_bytes(self, split: str) -> int:
        sa, sb = self._shapes
        el = torch.finfo(self.cache_dtype).bits // 8
        same = self.m1 is self.m2 and self.layer == self.target_layer  # self-stitching diagonal: B is A
        return self._n(split) * (_numel(sa) + (0 if same else _numel(sb))) * el

    # ------------------------------------------------------------------- caching
    def _keys(self, split: str) -> tuple[tuple, tuple, tuple, tuple]:
        """Cache keys of A, B, model 2's logits and the labels. Keyed by network and layer, not by
        role: in self-stitching, A at L is B at L (and model 2's logits and the labels do not depend
        on M), so a layer x layer matrix computes each once."""
        lim = self.limits.get(split)
        return ((id(self.m1), self.layer, split, lim), (id(self.m2), self.target_layer, split, lim),
                (id(self.m2), "logits", split, lim), ("labels", split, lim))

    def holds(self, split: str) -> bool:
        """Whether the cache already holds the split's A, B, model 2's logits and the labels."""
        return self.cache is not None and all(k in self.cache for k in self._keys(split))

    @torch.no_grad()
    def _cached(self, split: str) -> tuple[torch.Tensor, ...] | None:
        if self.cache is None or not self.cache.fits(self.cache_bytes(split)):
            return None
        lim = self.limits.get(split)
        ka, kb, kz, ky = self._keys(split)
        a, b, z2, y = (self.cache.get(k) for k in (ka, kb, kz, ky))
        if a is None or b is None or z2 is None or y is None:
            n = self._n(split)
            sa, sb = self._shapes
            want = [(ka, sa, self.cache_dtype, a is None), (kb, sb, self.cache_dtype, b is None and kb != ka),
                    (kz, (self.datamodule.num_classes,), torch.float32, z2 is None), (ky, (), None, y is None)]
            # room first, then fill preallocated tensors in place: the peak is the budget, not the
            # budget plus the new tensors plus their batches before a concatenation
            new_bytes = sum(n * _numel(shape) * torch.finfo(dt).bits // 8 for _, shape, dt, need in want
                            if need and dt is not None)
            self.cache.reserve(new_bytes, keep={k for k, _, _, need in want if not need})
            out: dict = {}
            start = 0
            for x, yy in self.datamodule.batches(split, self.batch_size, device=self.device, limit=lim):
                x = as_input_for(self.m1, x)  # once for both networks
                parts = {}
                if a is None:
                    parts[ka] = self.front(x)
                if (b is None and kb != ka) or z2 is None:
                    bb, zz = self.target(x)
                    parts[kb], parts[kz] = bb, zz
                parts[ky] = yy
                for k, shape, dt, need in want:
                    if not need:
                        continue
                    v = parts[k]
                    if k not in out:
                        out[k] = torch.empty((n, *v.shape[1:]), dtype=dt or v.dtype, device=self.device,
                                             memory_format=memory_format_of(v))
                    out[k][start:start + len(v)] = v
                start += len(yy)
            for k, t in out.items():
                self.cache.put(k, t)
            a, b, z2, y = (self.cache.get(k) for k in (ka, kb, kz, ky))
            if a is None or b is None:  # larger together than the budget allows: stream instead
                return None
        return a, b, y, z2

    # ------------------------------------------------------------------ batches
    def batches(self, split: str, shuffle: bool = False, augment: bool = False, seed: int = 0,
                batch_size: int | None = None, need_target: bool = True,
                first: int | None = None) -> Iterator[Batch]:
        """Batches of the split, from the cache when it holds (or can hold) the split.

        ``first``: the caller reads only the split's first ``first`` images, in order (paper 2's
        direct matching on K = 100): unless the cache holds the split already, they are computed
        alone rather than caching all of it (50,000 images for 100).
        """
        bs = batch_size or self.batch_size
        only_first = first is not None and not shuffle and first < self._n(split) and not self.holds(split)
        cached = None if augment or only_first else self._cached(split)
        if cached is not None:
            a, b, y, z2 = cached
            n = len(y)
            g = torch.Generator().manual_seed(seed)
            order = torch.randperm(n, generator=g).to(self.device) if shuffle else None
            for start in range(0, n, bs):
                idx = order[start:start + bs] if shuffle else slice(start, start + bs)
                yield Batch(a[idx], b[idx] if need_target else None, y[idx], z2[idx])
            return
        # the first K alone are rounded like the cache would serve them (fp16 on CUDA): a DM cell must
        # not depend on whether a TLM run cached the pair's split first
        round_to = self.cache_dtype if only_first and self.cache is not None else None
        for x, y in self.datamodule.batches(split, bs, shuffle=shuffle, augment=augment, device=self.device, seed=seed,
                                            limit=first if only_first else self.limits.get(split)):
            x = as_input_for(self.m1, x)  # once for both networks (a no-op for the second when they agree)
            a = self.front(x)
            b, z2 = self.target(x) if need_target else (None, None)
            if round_to is not None:
                a, b = a.to(round_to), (b.to(round_to) if b is not None else None)
            yield Batch(a, b, y, z2, x)

    def num_batches(self, split: str, batch_size: int | None = None) -> int:
        bs = batch_size or self.batch_size
        return (self._n(split) + bs - 1) // bs

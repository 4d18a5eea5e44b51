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
from .models.fold import as_input_for

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


class ActivationCache:
    """Cached activations keyed by (model id, layer, split), evicted oldest-first past a byte budget."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self._items: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()

    def nbytes(self) -> int:
        unique = {t.data_ptr(): t for t in self._items.values()}  # B may be A (self-stitching diagonal)
        return sum(t.numel() * t.element_size() for t in unique.values())

    def get(self, key):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return None

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.budget

    def put(self, key, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        while self._items and self.nbytes() + size > self.budget:
            self._items.popitem(last=False)
        self._items[key] = value

    def clear(self) -> None:
        self._items.clear()


class FeatureSource:
    """Batches of (A, B, y, z2) for one (model1, L, model2, M) pair."""

    def __init__(self, model1: StitchableNetwork, model2: StitchableNetwork, layer: str, target_layer: str,
                 dm: ImageDataModule, device: torch.device, precision: str = "32", cache: ActivationCache | None = None,
                 cache_dtype: torch.dtype = torch.float32, batch_size: int = 256, limits: dict | None = None):
        self.m1, self.m2 = model1, model2
        self.layer, self.target_layer = layer, target_layer
        self.dm = dm
        self.device = device
        self.precision = precision
        self.cache = cache
        self.cache_dtype = cache_dtype
        self.batch_size = batch_size
        self.limits = limits or {}
        self.identity_ce: float | None = None  # paper 1's no-transformation baseline, set by evaluation

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
        shape = self.dm.input_shape
        return self.m1.layer_shapes(shape)[self.layer], self.m2.layer_shapes(shape)[self.target_layer]

    def _n(self, split: str) -> int:
        lim = self.limits.get(split)
        return self.dm.size(split) if lim is None else min(lim, self.dm.size(split))

    def cache_bytes(self, split: str) -> int:
        sa, sb = self._shapes
        el = torch.finfo(self.cache_dtype).bits // 8
        num = lambda s: int(torch.tensor(s).prod())  # noqa: E731
        return self._n(split) * (num(sa) + num(sb)) * el

    # ------------------------------------------------------------------- caching
    @torch.no_grad()
    def _cached(self, split: str) -> tuple[torch.Tensor, ...] | None:
        if self.cache is None or not self.cache.fits(self.cache_bytes(split)):
            return None
        lim = self.limits.get(split)
        ka = ("A", id(self.m1), self.layer, split, lim)
        kb = ("B", id(self.m2), self.target_layer, split, lim)
        a, b = self.cache.get(ka), self.cache.get(kb)
        same = self.m1 is self.m2 and self.layer == self.target_layer  # self-stitching diagonal: B is A
        if a is None or b is None:
            parts_a, parts_b, parts_y, parts_z = [], [], [], []
            for x, y in self.dm.batches(split, self.batch_size, device=self.device, limit=lim):
                if a is None:
                    parts_a.append(self.front(x).to(self.cache_dtype))
                if b is None:
                    bb, zz = self.target(x)
                    if not same:
                        parts_b.append(bb.to(self.cache_dtype))
                    parts_z.append(zz)
                parts_y.append(y)
            if a is None:
                a = torch.cat(parts_a)
                self.cache.put(ka, a)
            if b is None:
                b = a if same else torch.cat(parts_b)
                self.cache.put(kb, b)
                self.cache.put(("Z", id(self.m2), self.target_layer, split, lim), torch.cat(parts_z))
                self.cache.put(("Y", id(self.m2), split, lim), torch.cat(parts_y))
        z2 = self.cache.get(("Z", id(self.m2), self.target_layer, split, lim))
        y = self.cache.get(("Y", id(self.m2), split, lim))
        if z2 is None or y is None:  # evicted meanwhile: recompute B's companions
            self.cache._items.pop(kb, None)
            return self._cached(split)
        return a, b, y, z2

    # ------------------------------------------------------------------ batches
    def batches(self, split: str, shuffle: bool = False, augment: bool = False, seed: int = 0,
                batch_size: int | None = None, need_target: bool = True) -> Iterator[Batch]:
        bs = batch_size or self.batch_size
        cached = None if augment else self._cached(split)
        if cached is not None:
            a, b, y, z2 = cached
            n = len(y)
            g = torch.Generator().manual_seed(seed)
            order = torch.randperm(n, generator=g).to(self.device) if shuffle else None
            for start in range(0, n, bs):
                idx = order[start:start + bs] if shuffle else slice(start, start + bs)
                yield Batch(a[idx], b[idx] if need_target else None, y[idx], z2[idx])
            return
        for x, y in self.dm.batches(split, bs, shuffle=shuffle, augment=augment, device=self.device, seed=seed,
                                    limit=self.limits.get(split)):
            a = self.front(x)
            b, z2 = self.target(x) if need_target else (None, None)
            yield Batch(a, b, y, z2, x)

    def num_batches(self, split: str, batch_size: int | None = None) -> int:
        bs = batch_size or self.batch_size
        return (self._n(split) + bs - 1) // bs

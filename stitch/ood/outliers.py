"""Auxiliary outliers for energy fine-tuning (Outlier Exposure, Hendrycks et al. 2019;
Liu et al. 2020), with an offline default.

Paper 2 fine-tuned its detectors with CIFAR-5M and the 300K Random Images set,
neither of which is available offline. The detector sees *model 2's activations*
on outlier images, so what matters is that the images are off the data manifold
in varied ways. The built-in sources need no download:

``photos``
    random crops (random size and position, flipped) of the two photographs bundled
    with scikit-learn (``sklearn.datasets.load_sample_images``), resized to the input
    size; natural-image statistics, no task content;
``noise``
    uniform and Gaussian pixel noise, low-frequency (upsampled) colour noise and
    flat colours;
``shuffle``
    in-distribution images with their 4x4 grid of patches permuted: local statistics
    intact, global structure destroyed (near-distribution outliers);
``corrupt``
    in-distribution images with every pixel permuted, or negated about the mean
    (after normalisation).

and any in-memory data set of the registry (``cifar10``, ``svhn``, ``digits``,
``synthetic``) via ``ood.outliers.datasets`` (e.g. ``[{name: svhn, root: data/svhn}]``)
when its files are present.

A :class:`OutlierSampler` returns batches already *preprocessed* exactly like the
in-distribution data (same normalisation, same channel count and size), ready for
model 2's front half.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import nn

from ..data.base import ImageDataModule
from ..errors import ConfigError
from ..settings import OUTLIER_SOURCES

BUILTIN_SOURCES = OUTLIER_SOURCES  # their names live with the settings that choose them


@functools.lru_cache(maxsize=1)
def sample_photos() -> tuple[torch.Tensor, ...]:
    """scikit-learn's bundled photographs (china.jpg, flower.jpg) as uint8 3 x H x W tensors."""
    from sklearn.datasets import load_sample_images

    return tuple(torch.from_numpy(img.copy()).permute(2, 0, 1).contiguous() for img in load_sample_images().images)


def _to_channels(x: torch.Tensor, channels: int, grayscale: bool) -> torch.Tensor:
    """Float N x c x H x W in [0, 1] -> N x ``channels`` (grey replicated when ``grayscale``)."""
    if grayscale or x.shape[1] != channels:
        g = x.mean(1, keepdim=True) if x.shape[1] != 1 else x
        return g.expand(-1, channels, -1, -1) if channels != 1 else g
    return x


def photo_crops(n: int, size: tuple[int, int], channels: int = 3, grayscale: bool = False,
                generator: torch.Generator | None = None, min_side: int = 16) -> torch.Tensor:
    """``n`` random crops of the bundled photos as uint8 N x C x H x W.

    The crop side is log-uniform between ``min_side`` and the photo's short side, so
    both textures (small crops, upsampled) and scenes (large crops) appear.
    """
    photos = sample_photos()
    out = []
    for _ in range(n):
        img = photos[int(torch.randint(len(photos), (1,), generator=generator))]
        h, w = img.shape[1:]
        lo, hi = torch.log(torch.tensor(float(min_side))), torch.log(torch.tensor(float(min(h, w))))
        side = int(torch.exp(lo + (hi - lo) * torch.rand(1, generator=generator)))
        i = int(torch.randint(h - side + 1, (1,), generator=generator))
        j = int(torch.randint(w - side + 1, (1,), generator=generator))
        crop = img[None, :, i:i + side, j:j + side].float() / 255
        crop = nn.functional.interpolate(crop, size=size, mode="bilinear", align_corners=False,
                                         antialias=side > max(size))
        if torch.rand(1, generator=generator) < 0.5:
            crop = crop.flip(3)
        out.append(crop)
    x = _to_channels(torch.cat(out), channels, grayscale)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def noise_images(n: int, size: tuple[int, int], channels: int = 3, grayscale: bool = False,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` noise images as uint8 N x C x H x W: a mix of four kinds (see the module docstring)."""
    h, w = size
    kind = torch.randint(4, (n,), generator=generator)
    c = 1 if grayscale else channels
    uniform = torch.rand(n, c, h, w, generator=generator)
    gauss = (0.5 + 0.25 * torch.randn(n, c, h, w, generator=generator)).clamp(0, 1)
    low = torch.rand(n, c, 4, 4, generator=generator)
    smooth = nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)
    flat = torch.rand(n, c, 1, 1, generator=generator).expand(n, c, h, w)
    k = kind.view(-1, 1, 1, 1)
    x = torch.where(k == 0, uniform, torch.where(k == 1, gauss, torch.where(k == 2, smooth, flat)))
    x = _to_channels(x, channels, grayscale)
    return (x * 255).round().to(torch.uint8)


def shuffle_patches(x: torch.Tensor, grid: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Permute a ``grid`` x ``grid`` tiling of every image (each image its own permutation).

    Works on raw or normalised batches alike (a spatial permutation commutes with
    per-channel normalisation). Sizes not divisible by ``grid`` keep the remainder
    border unshuffled.
    """
    n, c, h, w = x.shape
    ph, pw = h // grid, w // grid
    if ph == 0 or pw == 0:
        raise ValueError(f"cannot cut {h}x{w} images into a {grid}x{grid} grid")
    core = x[:, :, :ph * grid, :pw * grid]
    tiles = core.reshape(n, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, ph, pw)
    perm = torch.stack([torch.randperm(grid * grid, generator=generator) for _ in range(n)]).to(x.device)
    tiles = tiles[torch.arange(n, device=x.device)[:, None], perm]
    core = tiles.reshape(n, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, ph * grid, pw * grid)
    out = x.clone()
    out[:, :, :ph * grid, :pw * grid] = core
    return out


def corrupt(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per image, either permute every pixel position (same permutation for all channels)
    or negate the image about the per-channel mean of the batch (normalised inputs: about 0)."""
    n, c, h, w = x.shape
    which = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    perm = torch.randperm(h * w, generator=generator).to(x.device)
    scrambled = x.reshape(n, c, h * w)[:, :, perm].reshape(n, c, h, w)
    centre = x.mean((0, 2, 3), keepdim=True)
    negated = 2 * centre - x
    return torch.where(which[:, None, None, None], scrambled, negated)


def _resize_raw(x: torch.Tensor, size: tuple[int, int], channels: int, grayscale: bool) -> torch.Tensor:
    f = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    if tuple(f.shape[-2:]) != tuple(size):
        f = nn.functional.interpolate(f, size=size, mode="bilinear", align_corners=False,
                                      antialias=f.shape[-1] > size[-1])
    f = _to_channels(f, channels, grayscale)
    return (f.clamp(0, 1) * 255).round().to(torch.uint8)


def looks_grayscale(datamodule: ImageDataModule, samples: int = 64) -> bool:
    """True when the in-distribution images have identical channels (e.g. digits repeated to RGB)."""
    try:
        x = datamodule.tensors("train")[0][:samples]
    except NotImplementedError:  # streaming sets (ImageNet, CelebA) are colour
        return False
    return x.shape[1] == 1 or bool((x == x[:, :1]).all())


def dataset_images(spec: dict, size: tuple[int, int], channels: int, grayscale: bool,
                   limit: int | None = None) -> torch.Tensor:
    """Raw uint8 training images of a registry data set, resized to the in-distribution geometry."""
    from .. import data as data_lib

    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"ood.outliers.datasets entries must be mappings with a name, e.g. "
                          f"{{name: svhn, root: data/svhn}}; got {spec!r}")
    opts = {k: v for k, v in spec.items() if k not in ("name", "split", "tlm_lr")}
    datamodule = data_lib.build(spec["name"], **opts)
    try:
        x = datamodule.tensors(spec.get("split", "train"))[0]
    except NotImplementedError:
        raise ConfigError(f"outlier data set {spec['name']!r} streams from disk; only in-memory sets "
                          f"(cifar10, svhn, digits, synthetic) can serve as outliers") from None
    if limit is not None:
        x = x[:limit]
    return torch.cat([_resize_raw(x[i:i + 1024], size, channels, grayscale) for i in range(0, len(x), 1024)])


class OutlierSampler:
    """Draws batches of auxiliary outliers, preprocessed like ``dm``'s inputs.

    ``sources``: built-in source names (see :data:`BUILTIN_SOURCES`); ``datasets``:
    data-set specs. Each sample picks a source uniformly at random, so the mix is
    balanced whatever the data-set sizes.
    """

    def __init__(self, datamodule: ImageDataModule, sources: Sequence[str] = ("photos", "noise", "shuffle"),
                 datasets: Sequence[dict] = (), grayscale: bool | str = "auto", dataset_limit: int | None = 50000):
        bad = [s for s in sources if s not in BUILTIN_SOURCES]
        if bad:
            raise ConfigError(f"unknown outlier source(s) {bad}; valid: {', '.join(BUILTIN_SOURCES)} "
                              f"(data sets go in ood.outliers.datasets)")
        if not sources and not datasets:
            raise ConfigError("ood.outliers needs at least one source or data set")
        self.datamodule = datamodule
        datamodule.setup()
        self.channels, *size = datamodule.input_shape
        self.size = tuple(size)
        self.grayscale = looks_grayscale(datamodule) if grayscale == "auto" else bool(grayscale)
        self.sources = list(sources)
        self.pools = [dataset_images(spec, self.size, self.channels, self.grayscale, dataset_limit)
                      for spec in datasets]
        self.names = self.sources + [f"dataset:{spec['name']}" for spec in datasets]

    def sample(self, n: int, in_batch: torch.Tensor | None, generator: torch.Generator,
               device: torch.device | str = "cpu") -> torch.Tensor:
        """``n`` outliers as network input on ``device``.

        ``in_batch`` (preprocessed in-distribution images) feeds the ``shuffle`` and
        ``corrupt`` sources; without it those draw from the training split.
        """
        choice = torch.randint(len(self.names), (n,), generator=generator)
        parts = []
        for k, name in enumerate(self.names):
            m = int((choice == k).sum())
            if m == 0:
                continue
            if name in ("shuffle", "corrupt"):
                base = self._in_images(m, in_batch, generator, device)
                parts.append(shuffle_patches(base, 4, generator) if name == "shuffle" else corrupt(base, generator))
                continue
            if name == "photos":
                raw = photo_crops(m, self.size, self.channels, self.grayscale, generator)
            elif name == "noise":
                raw = noise_images(m, self.size, self.channels, self.grayscale, generator)
            else:
                pool = self.pools[k - len(self.sources)]
                raw = pool[torch.randint(len(pool), (m,), generator=generator)]
            parts.append(self.datamodule.preprocess(raw.to(device)))
        x = torch.cat(parts)
        return x[torch.randperm(len(x), generator=generator).to(x.device)]

    def _in_images(self, m: int, in_batch: torch.Tensor | None, generator: torch.Generator,
                   device) -> torch.Tensor:
        if in_batch is not None and len(in_batch):
            idx = torch.randint(len(in_batch), (m,), generator=generator).to(in_batch.device)
            return in_batch[idx].to(device)
        images = self.datamodule.tensors("train")[0]
        idx = torch.randint(len(images), (m,), generator=generator)
        return self.datamodule.preprocess(images[idx].to(device))

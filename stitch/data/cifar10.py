"""CIFAR-10 from local files, in any of three layouts under ``root``:

* torchvision's official files (``cifar-10-batches-py/``; ``download=true`` fetches them),
* an image folder ``train/<class>/*`` and ``test/<class>/*`` (how
  ``shared/data/cifar10-jpeg/to_folder.py`` unpacks the JPEG copy),
* the packed JPEG arrays ``train.npz``/``test.npz`` of that copy (read directly).

Images are decoded once; the decoded uint8 tensors are cached in the user's cache
(``$STITCH_CACHE`` or ``~/.cache/stitch/cifar10-<hash of the folder>/decoded-<layout>.v2.pt``,
loaded with ``weights_only=True``) so later runs start in a second. Nothing is written into
the data folder.
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataNotFoundError
from .base import CIFAR_MEAN, CIFAR_STD, ImageDataModule, set_normalization
from .download import fetching

log = logging.getLogger(__name__)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# v2: class-sorted layouts are stored in their mixed order (mix_classes)
CACHE_VERSION = "v2"
SHARED_JPEG = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10-jpeg"


def decode_images(files_or_bytes, size: int | None = None) -> torch.Tensor:
    from PIL import Image

    out = []
    for item in files_or_bytes:
        img = Image.open(io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else item).convert("RGB")
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        out.append(np.asarray(img, dtype=np.uint8))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def read_image_folder(split_dir: Path, classes: tuple[str, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    classes = classes or tuple(sorted(d.name for d in split_dir.iterdir() if d.is_dir()))
    files, labels = [], []
    for c, name in enumerate(classes):
        for f in sorted((split_dir / name).iterdir()):
            if f.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"):
                files.append(f)
                labels.append(c)
    return decode_images(files), torch.tensor(labels, dtype=torch.int64)


def read_packed_jpeg(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    z = np.load(path)
    jpeg, offsets = z["jpeg"], z["offsets"]
    blobs = (jpeg[offsets[i]:offsets[i + 1]].tobytes() for i in range(len(offsets) - 1))
    return decode_images(blobs), torch.from_numpy(z["labels"].astype(np.int64))


def mix_classes(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A split stored class by class (an image folder, the packed JPEG copy), in one fixed shuffled order.

    The code takes "the first n images" of a split in many places (``train_limit``, similarity
    samples, detector statistics and sanity checks); on a class-sorted split those would be one or
    two classes. torchvision's official files are already in this kind of mixed order. The
    permutation is fixed (seed 0), so every run sees the same order."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    return images[order].contiguous(), labels[order]


def cache_dir() -> Path:
    """Where decoded data sets are cached: ``$STITCH_CACHE``, else ``$XDG_CACHE_HOME/stitch``, else ``~/.cache/stitch``."""
    if os.environ.get("STITCH_CACHE"):
        return Path(os.environ["STITCH_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stitch"


def _read_decode_cache(path: Path) -> dict | None:
    """The decoded images of an earlier run, or None (and the file removed) when it is damaged: it is
    only a cache, rebuilt from the data, never trusted half-read."""
    try:
        blob = torch.load(path, weights_only=True)
        out = {k: (v["x"], v["y"]) for k, v in blob.items()}
        if set(out) != {"train", "test"} or not all(
                isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dim() == 4 and len(x) == len(y)
                for x, y in out.values()):
            raise ValueError("not the decoded train and test images")
        return out
    except Exception as e:  # noqa: BLE001 - truncated, not a torch file, foreign content: all rebuilt
        log.warning("discarding the damaged decode cache %s (%s: %s); rebuilding it from the images", path,
                    type(e).__name__, str(e).splitlines()[0][:160] if str(e) else "")
        try:
            path.unlink()
        except OSError:
            pass
        return None


class CIFAR10DataModule(ImageDataModule):
    name = "cifar10"
    num_classes = 10

    def __init__(self, root: str = "data/cifar10", download: bool = False, layout: str = "auto",
                 cache: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.root = Path(os.path.expanduser(str(root)))
        self.download = download
        self.layout = layout
        self.cache = cache
        set_normalization(self, CIFAR_MEAN, CIFAR_STD)

    def _detect(self) -> str:
        if self.layout != "auto":
            return self.layout
        if (self.root / "cifar-10-batches-py").is_dir():
            return "torchvision"
        if (self.root / "train").is_dir() and (self.root / "test").is_dir():
            return "folder"
        if (self.root / "train.npz").is_file() and (self.root / "test.npz").is_file():
            return "npz"
        if self.download:
            return "torchvision"
        hint = ""
        if SHARED_JPEG.is_dir():
            hint = (f"\n  In this workplace the JPEG copy is at {SHARED_JPEG}: pass data.root={SHARED_JPEG} "
                    f"(read directly) or unpack it with `python {SHARED_JPEG}/to_folder.py {self.root}`.")
        raise DataNotFoundError(
            f"CIFAR-10 not found under {self.root.resolve()}. Put one of these there:\n"
            f"  - torchvision's files (cifar-10-batches-py/), or run with data.download=true to fetch them;\n"
            f"  - an image folder train/<class>/*.jpg and test/<class>/*.jpg;\n"
            f"  - the packed train.npz and test.npz.\n"
            f"  Or point data.root=<dir> at them.{hint}")

    def _cache_file(self, layout: str) -> Path:
        """In the user's cache (``$STITCH_CACHE``, else ``$XDG_CACHE_HOME/stitch`` or ``~/.cache/stitch``),
        keyed by the data folder: nothing is ever written into a data folder (it may be shared, read-only,
        or under version control)."""
        import hashlib

        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
        return cache_dir() / f"cifar10-{digest}" / f"decoded-{layout}.{CACHE_VERSION}.pt"

    def load(self):
        layout = self._detect()
        cache = self._cache_file(layout)
        if self.cache and cache.is_file():
            cached = _read_decode_cache(cache)
            if cached is not None:
                return cached
        if layout == "torchvision":
            from torchvision.datasets import CIFAR10

            out = {}
            for split in ("train", "test"):
                with fetching("CIFAR-10", self.root, "torchvision's cifar-10-batches-py/ (or train/ and test/ "
                                                     "image folders)"):
                    ds = CIFAR10(str(self.root), train=split == "train", download=self.download)
                out[split] = (torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
                              torch.tensor(ds.targets, dtype=torch.int64))
        elif layout == "folder":
            out = {s: mix_classes(*read_image_folder(self.root / s, CLASSES if (self.root / s / CLASSES[0]).is_dir()
                                                     else None)) for s in ("train", "test")}
        elif layout == "npz":
            out = {s: mix_classes(*read_packed_jpeg(self.root / f"{s}.npz")) for s in ("train", "test")}
        else:
            raise DataNotFoundError(f"unknown CIFAR-10 layout {layout!r}; use auto, torchvision, folder or npz")
        if self.cache:
            try:  # an unwritable cache only costs time
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(f".tmp{os.getpid()}")
                torch.save({k: {"x": x, "y": y} for k, (x, y) in out.items()}, tmp)
                os.replace(tmp, cache)
            except OSError:
                pass
        return out

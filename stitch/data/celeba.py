"""CelebA, 40 binary attributes (multi-label): paper 1's task for Inception V1.

Two layouts under ``root`` (``layout=auto`` finds either):

* ``packed``: ``celeba.npz`` (or ``celeba-10k/celeba.npz``) as in ``shared/data/celeba-10k``:
  ``jpeg`` (all JPEG files concatenated, uint8), ``offsets`` (n+1 int64: image i is
  ``jpeg[offsets[i]:offsets[i+1]]``), ``attributes`` (n x 40 int8, +1/-1 as in the official file)
  and ``attribute_names``. Those 10,000 faces all lie in CelebA's official *train* partition, so
  the split is ours, fixed and in file order: the first 80 % train, the next 10 % val, the last
  10 % test (8,000 / 1,000 / 1,000).
* ``torchvision``: the official files under ``root/celeba`` (``img_align_celeba/``,
  ``list_attr_celeba.txt``, ``list_eval_partition.txt``; ``download=true`` fetches them through
  torchvision), split by the official partition.

Faces are decoded once into memory at ``image_size`` px: the central square of the aligned
face (178 x 218, or 89 x 109 in the packed copy) resized with antialiasing -- what paper 1's
Resize + CenterCrop does at 224 px. Paper 1 used 224 px; on a CPU a smaller size is the honest
choice (``data=celeba`` defaults to 224 as published; the CPU experiments use 64: Inception V1's
five stride-2 stages still leave its last mixed blocks a 2 x 2 map). Memory: n x 3 x s x s bytes
(the 10k packed faces at 64 px: 123 MB; the full 202,599 at 224 px: 30 GB, too much for most
machines: use a smaller ``image_size`` or ``train_subset``). Targets are float 0/1 vectors
of 40; accuracy is per attribute at sigmoid > 0.5 (``stitch.evaluation``).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataNotFoundError
from .base import ImageDataModule, set_normalization
from .download import fetching

CELEBA_MEAN = (0.5063, 0.4258, 0.3832)
CELEBA_STD = (0.3106, 0.2904, 0.2897)
NUM_ATTRIBUTES = 40
PACKED_SPLIT = (0.8, 0.1, 0.1)  # train / val / test fractions of the packed file, in file order
SHARED_CELEBA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "celeba-10k"


def decode_faces(blobs, size: int) -> torch.Tensor:
    """JPEG bytes or files -> uint8 N x 3 x size x size: the central square, resized (antialiased)."""
    from PIL import Image

    rows = []
    for item in blobs:
        img = Image.open(io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else item).convert("RGB")
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
        if side != size:
            img = img.resize((size, size), Image.BILINEAR, reducing_gap=None)
        rows.append(np.asarray(img, dtype=np.uint8))
    out = np.stack(rows) if rows else np.empty((0, size, size, 3), dtype=np.uint8)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def split_ranges(n: int, fractions=PACKED_SPLIT) -> dict[str, range]:
    """The packed file's fixed split, in file order: {split: range of image indices}."""
    n_train = int(round(n * fractions[0]))
    n_val = int(round(n * fractions[1]))
    return {"train": range(0, n_train), "val": range(n_train, n_train + n_val), "test": range(n_train + n_val, n)}


def read_packed(path: Path, size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{split: (uint8 faces, float 0/1 attributes)} of a packed ``celeba.npz``."""
    try:
        with np.load(path) as z:
            jpeg, offsets, attrs = z["jpeg"], z["offsets"], z["attributes"]
    except (OSError, ValueError, KeyError) as e:
        raise DataNotFoundError(f"{path} is not a packed CelebA file (needs jpeg, offsets and attributes: "
                                f"{type(e).__name__}: {e}); put shared/data/celeba-10k/celeba.npz there") from None
    n = len(offsets) - 1
    if attrs.shape != (n, NUM_ATTRIBUTES):
        raise DataNotFoundError(f"{path}: attributes have shape {attrs.shape}, expected ({n}, {NUM_ATTRIBUTES}) "
                                f"(one row of 40 per image)")
    x = decode_faces((jpeg[offsets[i]:offsets[i + 1]].tobytes() for i in range(n)), size)
    y = torch.from_numpy((attrs > 0).astype(np.float32))
    return {s: (x[r.start:r.stop], y[r.start:r.stop]) for s, r in split_ranges(n).items()}


def read_official(folder: Path, size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{split: (faces, attributes)} of torchvision's files under ``folder`` (= root/celeba), official split."""
    lines = (folder / "list_attr_celeba.txt").read_text().splitlines()
    attrs = {}
    for line in lines[2:]:  # a count, the 40 names, then "<file> +1 -1 ..."
        parts = line.split()
        if len(parts) == NUM_ATTRIBUTES + 1:
            attrs[parts[0]] = [int(v) > 0 for v in parts[1:]]
    partition = {}
    for line in (folder / "list_eval_partition.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            partition[parts[0]] = int(parts[1])
    out = {}
    for split, code in (("train", 0), ("val", 1), ("test", 2)):
        files = sorted(f for f, p in partition.items() if p == code)
        x = decode_faces((folder / "img_align_celeba" / f for f in files), size)
        out[split] = (x, torch.tensor([attrs[f] for f in files], dtype=torch.float32))
    return out


class CelebADataModule(ImageDataModule):
    name = "celeba"
    num_classes = NUM_ATTRIBUTES
    multilabel = True

    def __init__(self, root: str = "data", download: bool = False, image_size: int = 224, layout: str = "auto",
                 **kwargs):
        super().__init__(**kwargs)
        if layout not in ("auto", "packed", "torchvision"):
            raise ConfigError(f"data.layout={layout!r}: expected auto, packed or torchvision for CelebA")
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 16:
            raise ConfigError(f"data.image_size={image_size!r}: expected an integer >= 16 (pixels)")
        self.root = Path(os.path.expanduser(str(root)))
        self.download = download
        self.image_size = image_size
        self.layout = layout
        self.input_shape = (3, image_size, image_size)
        set_normalization(self, CELEBA_MEAN, CELEBA_STD)
        self.transform.crop_padding = 0  # paper 1's CelebA augmentation: horizontal flips only

    def _packed_file(self) -> Path | None:
        for p in (self.root / "celeba.npz", self.root / "celeba-10k" / "celeba.npz"):
            if p.is_file():
                return p
        return None

    def _official(self) -> Path:
        return self.root / "celeba"

    def _detect(self) -> str:
        packed = self._packed_file()
        official = (self._official() / "list_attr_celeba.txt").is_file()
        if packed is not None and self.layout in ("auto", "packed"):
            return "packed"
        if self.layout == "packed":
            raise DataNotFoundError(f"data.layout=packed: no celeba.npz under {self.root.resolve()} (nor in its "
                                    f"celeba-10k/); put the packed file there or use data.layout=auto")
        if official or (self.download and self.layout != "packed"):
            return "torchvision"
        hint = (f"\n  In this workplace 10,000 real faces are at {SHARED_CELEBA}: pass data.root={SHARED_CELEBA} "
                f"(or CELEBA_ROOT=...).") if SHARED_CELEBA.is_dir() else ""
        partial = ""
        if self._official().is_dir():
            have = sorted(p.name for p in self._official().iterdir())[:6]
            partial = f" ({self._official()} exists but holds only: {', '.join(have) or 'nothing'})"
        raise DataNotFoundError(
            f"CelebA not found under {self.root.resolve()}{partial}. Put one of these there:\n"
            f"  - a packed celeba.npz (jpeg, offsets, attributes: the format of shared/data/celeba-10k);\n"
            f"  - torchvision's files in celeba/: img_align_celeba/, list_attr_celeba.txt, "
            f"list_eval_partition.txt (or run with data.download=true);\n"
            f"  Or point data.root=<dir> at them.{hint}")

    def load(self):
        if self._detect() == "packed":
            return read_packed(self._packed_file(), self.image_size)
        folder = self._official()
        if self.download and not (folder / "list_attr_celeba.txt").is_file():
            with fetching("CelebA", folder, "img_align_celeba/, list_attr_celeba.txt and list_eval_partition.txt"):
                from torchvision.datasets import CelebA

                CelebA(str(self.root), split="all", target_type="attr", download=True)
        missing = [n for n in ("img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt")
                   if not (folder / n).exists()]
        if missing:
            raise DataNotFoundError(f"CelebA under {folder.resolve()} is incomplete: {', '.join(missing)} missing; "
                                    f"put torchvision's CelebA files there (or a packed celeba.npz in "
                                    f"{self.root.resolve()})")
        return read_official(folder, self.image_size)

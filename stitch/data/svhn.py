"""SVHN (cropped digits, 32x32), held in memory as uint8 like CIFAR-10, in either layout under ``root``:

* torchvision's files ``train_32x32.mat`` / ``test_32x32.mat`` (``download=true`` fetches them);
* a packed ``test.npz`` (and optionally ``train.npz``): ``x`` uint8 N x 32 x 32 x 3 (HWC RGB),
  ``y`` int64 digits 0..9 (the workplace's ``shared/data/svhn-test`` holds the first 10,000
  real test digits this way, with no training split).

Also the classic "truly OOD" set against CIFAR-10 (paper 2's detector sanity check), which
needs only the test split. A study that trains or fits on SVHN asks for the train split and,
where only a test split exists, gets a :class:`DataNotFoundError` saying what is missing.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataNotFoundError
from .base import ImageDataModule, set_normalization
from .download import fetching

SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)
SHARED_SVHN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "svhn-test"


def read_packed(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 N x 3 x 32 x 32, int64 labels) from a packed ``.npz`` with ``x`` (HWC) and ``y``."""
    try:
        with np.load(path) as z:
            x, y = z["x"], z["y"]
    except (OSError, ValueError, KeyError) as e:
        raise DataNotFoundError(f"{path} is not a readable SVHN .npz with arrays x (N x 32 x 32 x 3 uint8) and "
                                f"y (labels 0..9): {type(e).__name__}: {e}") from None
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8 or len(x) != len(y):
        raise DataNotFoundError(f"{path}: expected x uint8 N x H x W x 3 and y of the same length; got x "
                                f"{x.dtype} {tuple(x.shape)}, y {tuple(y.shape)}")
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y.astype(np.int64))


class SVHNDataModule(ImageDataModule):
    name = "svhn"
    num_classes = 10

    def __init__(self, root: str = "data/svhn", download: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.root = Path(os.path.expanduser(str(root)))
        self.download = download
        set_normalization(self, SVHN_MEAN, SVHN_STD)

    def _layout(self) -> str:
        if all((self.root / f"{s}_32x32.mat").is_file() for s in ("train", "test")) or self.download:
            return "torchvision"
        if (self.root / "test.npz").is_file():
            return "npz"
        hint = (f"\n  In this workplace 10,000 real SVHN test digits are at {SHARED_SVHN}: pass "
                f"data.root={SHARED_SVHN} (or SVHN_ROOT=...).") if SHARED_SVHN.is_dir() else ""
        raise DataNotFoundError(
            f"SVHN not found under {self.root.resolve()}. Put one of these there:\n"
            f"  - torchvision's files train_32x32.mat and test_32x32.mat (or run with data.download=true);\n"
            f"  - a packed test.npz (x: N x 32 x 32 x 3 uint8, y: labels 0..9), and train.npz for training.\n"
            f"  Or point data.root=<dir> at them.{hint}")

    def load(self):
        if self._layout() == "npz":
            return {s: read_packed(self.root / f"{s}.npz") for s in ("train", "test")
                    if (self.root / f"{s}.npz").is_file()}
        from torchvision.datasets import SVHN

        out = {}
        for split in ("train", "test"):
            with fetching("SVHN", self.root, "train_32x32.mat and test_32x32.mat (or a packed test.npz)"):
                ds = SVHN(str(self.root), split=split, download=self.download)
            out[split] = (torch.from_numpy(ds.data).contiguous(), torch.from_numpy(ds.labels).long())
        return out

    def missing_split(self, split: str) -> DataNotFoundError:
        return DataNotFoundError(
            f"SVHN under {self.root.resolve()} has no {split} split (only test.npz): it serves as an OOD or "
            f"sanity-check set as it is; to train or fit on SVHN put train.npz (or torchvision's "
            f"train_32x32.mat and test_32x32.mat) there")

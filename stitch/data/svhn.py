"""SVHN (cropped digits, 32x32) via torchvision's files ``train_32x32.mat``/``test_32x32.mat``.

Held in memory as uint8 like CIFAR-10. Also the classic "truly OOD" set against CIFAR-10.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import DataNotFoundError
from .base import ImageDataModule, set_normalization

SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)


class SVHNDataModule(ImageDataModule):
    name = "svhn"
    num_classes = 10

    def __init__(self, root: str = "data/svhn", download: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.root = Path(os.path.expanduser(str(root)))
        self.download = download
        set_normalization(self, SVHN_MEAN, SVHN_STD)

    def load(self):
        missing = [f for f in ("train_32x32.mat", "test_32x32.mat") if not (self.root / f).is_file()]
        if missing and not self.download:
            raise DataNotFoundError(
                f"SVHN not found: {', '.join(missing)} missing under {self.root.resolve()}. Put torchvision's "
                f"SVHN files there, point data.root=<dir> at them, or run with data.download=true.")
        from torchvision.datasets import SVHN

        out = {}
        for split in ("train", "test"):
            ds = SVHN(str(self.root), split=split, download=self.download)
            out[split] = (torch.from_numpy(ds.data).contiguous(), torch.from_numpy(ds.labels).long())
        return out

"""ImageNet (ILSVRC-2012) from local files: an image folder ``root/train/<wnid>/*``,
``root/val/<wnid>/*`` (the usual layout after sorting the validation images).

Standard preprocessing: random-resized crop 224 + flip for training, resize 256 +
centre crop 224 for evaluation; the validation set serves as the test split.
"""
from __future__ import annotations

import os
from pathlib import Path


from ..errors import DataNotFoundError
from .base import StreamingDataModule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNetDataModule(StreamingDataModule):
    name = "imagenet"
    num_classes = 1000

    def __init__(self, root: str = "data/imagenet", image_size: int = 224, **kwargs):
        super().__init__(**kwargs)
        self.root = Path(os.path.expanduser(str(root)))
        self.image_size = image_size
        self.input_shape = (3, image_size, image_size)

    def _tf(self, train: bool):
        from torchvision import transforms  # here, not at import: torchvision costs a second of start-up

        s = self.image_size
        tf = ([transforms.RandomResizedCrop(s), transforms.RandomHorizontalFlip()] if train
              else [transforms.Resize(int(s * 256 / 224)), transforms.CenterCrop(s)])
        tf.append(transforms.ToTensor())
        if self.normalize:
            tf.append(transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD))
        return transforms.Compose(tf)

    def datasets(self):
        for split in ("train", "val"):
            if not (self.root / split).is_dir():
                raise DataNotFoundError(
                    f"ImageNet not found: {(self.root / split).resolve()} is missing. Put the ILSVRC-2012 images "
                    f"in an image folder root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG, and point "
                    f"data.root=<dir> at it (ImageNet cannot be downloaded automatically).")
        from torchvision import datasets

        return {"train": datasets.ImageFolder(self.root / "train", self._tf(False)),
                "train_aug": datasets.ImageFolder(self.root / "train", self._tf(True)),
                "test": datasets.ImageFolder(self.root / "val", self._tf(False))}

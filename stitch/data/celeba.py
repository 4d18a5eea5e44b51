"""CelebA, 40 binary attributes (multi-label), via torchvision's files under ``root/celeba``.

Streams from disk (202,599 images). Paper 1 trains Inception V1 at 224 px with BCE
and reports accuracy per attribute at sigmoid > 0.5.
"""
from __future__ import annotations

import os
from pathlib import Path


from ..errors import DataNotFoundError
from .base import StreamingDataModule
from .download import fetching

CELEBA_MEAN = (0.5063, 0.4258, 0.3832)
CELEBA_STD = (0.3106, 0.2904, 0.2897)


class CelebADataModule(StreamingDataModule):
    name = "celeba"
    num_classes = 40
    multilabel = True

    def __init__(self, root: str = "data", download: bool = False, image_size: int = 224, **kwargs):
        super().__init__(**kwargs)
        self.root = Path(os.path.expanduser(str(root)))
        self.download = download
        self.image_size = image_size
        self.input_shape = (3, image_size, image_size)

    def _tf(self, train: bool):
        from torchvision import transforms  # here, not at import: torchvision costs a second of start-up

        tf = [transforms.Resize(self.image_size), transforms.CenterCrop(self.image_size)]
        if train:
            tf.append(transforms.RandomHorizontalFlip())
        tf.append(transforms.ToTensor())
        if self.normalize:
            tf.append(transforms.Normalize(CELEBA_MEAN, CELEBA_STD))
        return transforms.Compose(tf)

    def datasets(self):
        if not (self.root / "celeba" / "list_attr_celeba.txt").is_file() and not self.download:
            raise DataNotFoundError(
                f"CelebA not found under {(self.root / 'celeba').resolve()} (needs img_align_celeba/, "
                f"list_attr_celeba.txt, list_eval_partition.txt). Put torchvision's CelebA files there "
                f"or point data.root=<dir containing celeba/>.")
        from torchvision.datasets import CelebA

        mk = lambda split, train: CelebA(str(self.root), split=split, target_type="attr",  # noqa: E731
                                         transform=self._tf(train), target_transform=lambda t: t.float(),
                                         download=self.download)
        with fetching("CelebA", self.root / "celeba", "img_align_celeba/, list_attr_celeba.txt and "
                                                      "list_eval_partition.txt"):
            train = mk("train", False)  # the first one downloads (when asked); the others only read
        return {"train": train, "train_aug": mk("train", True), "val": mk("valid", False),
                "test": mk("test", False)}

"""The embedded offline default: scikit-learn's bundled 8x8 handwritten digits.

1,797 real scans (UCI optdigits), upsampled to 32x32 and repeated to 3 channels so
the CIFAR architectures run unchanged. The split is fixed, seeded and stratified:
1,257 train / 90 val / 450 test. Nothing is downloaded.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import ImageDataModule, set_normalization

# per-channel statistics of the upsampled training images (channels are identical)
DIGITS_MEAN = (0.1920,) * 3
DIGITS_STD = (0.3256,) * 3


class DigitsDataModule(ImageDataModule):
    name = "digits"
    num_classes = 10

    def __init__(self, image_size: int = 32, split_seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.image_size = image_size
        self.split_seed = split_seed
        set_normalization(self, DIGITS_MEAN, DIGITS_STD)
        self.transform.flip = False  # a mirrored digit is another glyph

    def load(self):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]  # N,1,8,8 in [0,1]
        images = torch.nn.functional.interpolate(images, size=(self.image_size,) * 2, mode="bilinear",
                                                 align_corners=False)
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
        labels = torch.from_numpy(digits.target.astype(np.int64))
        idx = np.arange(len(labels))
        rest, test = train_test_split(idx, test_size=450, stratify=labels.numpy(), random_state=self.split_seed)
        train, val = train_test_split(rest, test_size=90, stratify=labels.numpy()[rest], random_state=self.split_seed)
        pick = lambda i: (images[torch.from_numpy(np.sort(i))], labels[torch.from_numpy(np.sort(i))])  # noqa: E731
        return {"train": pick(train), "val": pick(val), "test": pick(test)}

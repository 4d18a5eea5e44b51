"""A procedurally generated image set for tests: learnable, deterministic, tiny.

Each class has a fixed random low-frequency colour pattern; an image is its class
pattern plus per-image noise and a random shift. No files are read or written.
"""
from __future__ import annotations

import torch

from .base import ImageDataModule


class SyntheticDataModule(ImageDataModule):
    name = "synthetic"

    def __init__(self, num_classes: int = 10, image_size: int = 32, train_size: int = 512, test_size: int = 256,
                 noise: float = 0.25, pattern_seed: int = 1234, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.image_size = image_size
        self.train_size, self.test_size = train_size, test_size
        self.noise = noise
        self.pattern_seed = pattern_seed

    def _make(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pg = torch.Generator().manual_seed(self.pattern_seed)
        s = self.image_size
        low = torch.rand(self.num_classes, 3, 4, 4, generator=pg)
        patterns = torch.nn.functional.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)
        labels = torch.randint(0, self.num_classes, (n,), generator=g)
        x = patterns[labels] + self.noise * torch.randn(n, 3, s, s, generator=g)
        shifts = torch.randint(-2, 3, (n, 2), generator=g)
        x = torch.stack([torch.roll(img, (int(a), int(b)), (1, 2)) for img, (a, b) in zip(x, shifts)])
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels

    def load(self):
        g = torch.Generator().manual_seed(self.seed + 1)
        return {"train": self._make(self.train_size, g), "val": self._make(self.test_size // 2, g),
                "test": self._make(self.test_size, g)}

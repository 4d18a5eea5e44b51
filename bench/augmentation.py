"""The augmented TLM loop's data phase: paper 1's flip + pad-4 crop + normalisation of a CIFAR-10 batch,
the previous implementation (float gather, flip by select, two-step normalisation, then a channels-last copy
per network) against the current one (crop and flip on the uint8 images, one copy per image, one multiply-add,
one channels-last copy), best of ``--repeats``, ms per batch.

    python bench/augmentation.py --threads 1
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stitch.data.base import CIFAR_MEAN, CIFAR_STD, BatchTransform  # noqa: E402
from stitch.hardware import hardware_name  # noqa: E402


def previous(x: torch.Tensor, g: torch.Generator, networks: int = 2, p: int = 4) -> torch.Tensor:
    """The batch transform before the uint8 path, and a channels-last copy for each of the two networks."""
    x = x.float().div_(255.0)
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    di = torch.randint(0, 2 * p + 1, (n,), generator=g)
    dj = torch.randint(0, 2 * p + 1, (n,), generator=g)
    rows, cols = di[:, None] + torch.arange(h)[None, :], dj[:, None] + torch.arange(w)[None, :]
    x = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None],
               rows[:, None, :, None], cols[:, None, None, :]]
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    x = (x - torch.tensor(CIFAR_MEAN).view(1, -1, 1, 1)) / torch.tensor(CIFAR_STD).view(1, -1, 1, 1)
    return [x.contiguous(memory_format=torch.channels_last) for _ in range(networks)][-1]


def current(x: torch.Tensor, g: torch.Generator, t=BatchTransform(CIFAR_MEAN, CIFAR_STD)) -> torch.Tensor:
    return t(x, augment=True, generator=g).contiguous(memory_format=torch.channels_last)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    diff = (previous(x, torch.Generator().manual_seed(1)) - current(x, torch.Generator().manual_seed(1))).abs().max()
    best = {}
    for _ in range(args.repeats):
        for name, fn in (("previous", previous), ("current", current)):
            g = torch.Generator().manual_seed(0)
            t = time.perf_counter()
            for _ in range(args.steps):
                fn(x, g)
            best[name] = min(best.get(name, float("inf")), (time.perf_counter() - t) / args.steps * 1000)
    print(f"{hardware_name('cpu', threads=True)}; torch {torch.__version__}; batch {args.batch} x 3 x 32 x 32; "
          f"max |difference| {float(diff):.1e}")
    print("\n| implementation | ms per batch | per 50,000-image epoch, s |\n|---|---|---|")
    for name, ms in best.items():
        print(f"| {name} | {ms:.2f} | {ms * 50000 / args.batch / 1000:.1f} |")
    print(f"| speed-up | {best['previous'] / best['current']:.2f}x | |")


if __name__ == "__main__":
    main()

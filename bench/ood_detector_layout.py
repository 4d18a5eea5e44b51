"""Training and scoring time of an OOD detector in NCHW vs channels-last, per activation shape.

A paper-2 study trains one detector per target layer (half-width ResNet-20 on activations resized
to 32x32) and scores every stitch with it over the whole test split. This times a training step
(forward, backward, optimizer step; batch 128) and the scoring forward pass (standardise, bilinear
resize, backbone) on the shapes of Tiny-10's block outputs, in both memory layouts, and prints a
table (ms per 1,000 activations; best of 3):

    python bench/ood_detector_layout.py [--threads N]

Detectors train and score in channels-last (ActivationDetector), with narrow 1x1 strided
convolutions kept NCHW (NCHWStridedPointwiseConv: oneDNN's channels-last kernel corrupts the heap).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stitch.ood.networks import ActivationDetector  # noqa: E402
from stitch.ood.settings import DetectorConfig  # noqa: E402

SHAPES = [(32, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4)]


@torch.no_grad()
def score_ms(det: ActivationDetector, acts: torch.Tensor, layout: torch.memory_format, batch: int = 250) -> float:
    det.backbone.to(memory_format=layout)
    det.layout = layout
    best = float("inf")
    for _ in range(4):  # the first is a warm-up
        t = time.perf_counter()
        for i in range(0, len(acts), batch):
            det(acts[i:i + batch])
        best = min(best, time.perf_counter() - t)
    return 1000 * best * 1000 / len(acts)


def train_ms(det: ActivationDetector, acts: torch.Tensor, layout: torch.memory_format, batch: int = 128) -> float:
    det.backbone.to(memory_format=layout)
    det.layout = layout
    det.train()
    opt = torch.optim.SGD(det.parameters(), lr=1e-3, momentum=0.9)
    y = torch.randint(0, 10, (len(acts),))
    best = float("inf")
    for _ in range(4):  # the first is a warm-up
        t = time.perf_counter()
        for i in range(0, len(acts), batch):
            loss = torch.nn.functional.cross_entropy(det(acts[i:i + batch]), y[i:i + batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        best = min(best, time.perf_counter() - t)
    det.eval()
    return 1000 * best * 1000 / len(acts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--n", type=int, default=1000, help="activations per timing")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"# {platform.processor() or platform.machine()}, {a.threads} threads, torch {torch.__version__}")
    print("| activation C x H x W | train NCHW ms / 1k | train channels-last | speed-up "
          "| score NCHW ms / 1k | score channels-last | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for shape in SHAPES:
        det = ActivationDetector(shape, 10, DetectorConfig()).eval()
        acts = torch.randn(a.n, *shape)
        t_nchw = train_ms(det, acts, torch.contiguous_format)
        t_cl = train_ms(det, acts, torch.channels_last)
        nchw = score_ms(det, acts, torch.contiguous_format)
        cl = score_ms(det, acts, torch.channels_last)
        print(f"| {' x '.join(map(str, shape))} | {t_nchw:.0f} | {t_cl:.0f} | {t_nchw / t_cl:.2f}x "
              f"| {nchw:.0f} | {cl:.0f} | {nchw / cl:.2f}x |")


if __name__ == "__main__":
    main()

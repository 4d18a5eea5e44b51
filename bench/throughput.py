"""Throughput of every architecture: images/s for training steps and evaluation.

    python bench/throughput.py                       # CPU, 32x32, all models
    python bench/throughput.py --device cuda --batch-size 256 --precision bf16

Prints a table; record results with the hardware in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import time

import torch

from stitch import models
from stitch.hardware import hardware_name

MODELS = [
    ("tiny10", {}, 32, 10),
    ("resnet20", {}, 32, 10),
    ("resnet20", {"width": 4}, 32, 10),
    ("resnet18", {}, 32, 10),
    ("resnet18", {"variant": "same_size"}, 32, 10),
    ("inception_v1", {}, 224, 40),
    ("vit_tiny", {"img_size": 32, "patch_size": 4}, 32, 10),
    ("vit_tiny", {}, 224, 1000),
]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(net, x, y, device, precision, train: bool, seconds: float) -> float:
    ctx = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
           else torch.autocast(device.type, enabled=False))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9) if train else None
    net.train(train)
    n, start, warm = 0, None, 2
    while True:
        with ctx, torch.set_grad_enabled(train):
            out = net(x)
            if train:
                loss = torch.nn.functional.cross_entropy(out.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        if warm:
            warm -= 1
            if not warm:
                _sync(device)
                start = time.perf_counter()
            continue
        n += len(x)
        if n % (len(x) * 2) == 0:
            _sync(device)
            if time.perf_counter() - start > seconds:
                return n / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", choices=["32", "bf16"], default="32")
    p.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    p.add_argument("--models", nargs="*", default=None, help="subset of model names")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    hw = hardware_name(device, threads=True)
    print(f"# throughput, images/s — {hw}, torch {torch.__version__}, batch {args.batch_size}, "
          f"precision {args.precision}")
    print(f"| {'model':<34} | {'input':>5} | {'train img/s':>11} | {'eval img/s':>10} |")
    print(f"|{'-' * 36}|{'-' * 7}|{'-' * 13}|{'-' * 12}|")
    for name, opts, size, classes in MODELS:
        if args.models and name not in args.models:
            continue
        torch.manual_seed(0)
        net = models.build(name, classes, **opts).to(device)
        bs = args.batch_size if size <= 64 or device.type == "cuda" else max(4, args.batch_size // 8)
        x = torch.randn(bs, 3, size, size, device=device)
        y = torch.randint(0, classes, (bs,), device=device)
        tr = measure(net, x, y, device, args.precision, True, args.seconds)
        ev = measure(net, x, y, device, args.precision, False, args.seconds)
        label = f"{name} {models.model_tag(name, **opts).removeprefix(name).lstrip('-')}".strip()
        print(f"| {label:<34} | {size:>5} | {tr:>11.1f} | {ev:>10.1f} |")


if __name__ == "__main__":
    main()

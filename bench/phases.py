"""Where the time of one TLM epoch and one least-squares pass goes, before and after the speed-ups.

Paper 1's recipe on one pair of its released networks (Tiny-10 in0 -> in1 at bn6 by default),
real CIFAR-10, the augmented ("faithful") TLM path: every step augments a batch, runs model 1
to the cut (front), runs model 2 whole for its soft labels (target), then the stitching layer
and model 2's back half forward and backward, and an Adam step. The least-squares pass runs
the front and model 2 to the target layer over the training split and accumulates float64
sufficient statistics. Every variant runs in the same process, interleaved batch by batch, so
a busy machine slows them alike; times are extrapolated from ``--batches`` batches to a full
epoch / pass.

    python bench/phases.py                                 # needs: make released-donors
    python bench/phases.py --layer bn3 --batches 60 --store models/released --data-root data/cifar10
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stitch import store  # noqa: E402
from stitch.data import build as build_data  # noqa: E402
from stitch.matching import MatchingStatistics  # noqa: E402
from stitch.activations import to_rows  # noqa: E402
from stitch.hardware import hardware_name  # noqa: E402
from stitch.losses import soft_cross_entropy  # noqa: E402
from stitch.models.fold import as_input_for, fold_batchnorm, to_channels_last  # noqa: E402
from stitch.stitching import build_stitching_layer  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


class Phases:
    def __init__(self):
        self.t = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name):
        s = time.perf_counter()
        yield
        self.t[name] += time.perf_counter() - s


def variants(m1, m2, layer):
    fast1, fast2 = fold_batchnorm(m1, [layer]), fold_batchnorm(m2, [layer])
    nhwc = lambda m: to_channels_last(copy.deepcopy(m))  # noqa: E731 - what stitch.py runs by default
    return {
        "before (fp32, BatchNorm)": (m1, m2, None),
        "fold BatchNorm": (fast1, fast2, None),
        "fold + channels-last": (nhwc(fast1), nhwc(fast2), None),
        "fold + bf16 autocast": (fast1, fast2, torch.bfloat16),
    }


def autocast(dtype):
    return torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()


def inputs(ph, phase, dm, x_raw, net, **augment):
    """A preprocessed batch in the memory format ``net`` runs on, timed as ``phase``."""
    with ph(phase):
        return as_input_for(net, dm.preprocess(x_raw, **augment))


def tlm_step(ph, dm, x_raw, m1, m2, stitch, opt, layer, dtype, g):
    x = inputs(ph, "data (augment, normalise)", dm, x_raw, m1, augment=True, generator=g)
    with torch.no_grad(), autocast(dtype):
        with ph("front: model 1 to the cut"):
            a = m1.forward_to(x, layer)
        with ph("target: model 2 soft labels"):
            z2 = m2(x).float()
    with autocast(dtype):
        with ph("stitch + back half forward"):
            logits = m2.forward_from(stitch(a), layer).float()
            loss = soft_cross_entropy(logits, z2)
    with ph("backward"):
        opt.zero_grad(set_to_none=True)
        loss.backward()
    with ph("optimizer step"):
        opt.step()


def ls_step(ph, dm, x_raw, m1, m2, stitch, stats, layer, dtype):
    x = inputs(ph, "data (normalise)", dm, x_raw, m1)
    with torch.no_grad(), autocast(dtype):
        with ph("front: model 1 to the cut"):
            a = m1.forward_to(x, layer)
        with ph("target: model 2 to the cut"):
            b = m2.forward_to(x, layer)
    with torch.no_grad(), ph("rows + float64 statistics"):
        stats.update(to_rows(stitch.prepare(a.float())), to_rows(b.float()), check_finite=False)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny10", help="tiny10 (released, unpadded) or resnet20")
    p.add_argument("--layer", default="bn6")
    p.add_argument("--pair", default="in0,in1")
    p.add_argument("--store", default="models/released")
    p.add_argument("--data-root", default=str(SHARED if SHARED.is_dir() else "data/cifar10"))
    p.add_argument("--batches", type=int, default=40, help="batches timed per variant (then extrapolated)")
    p.add_argument("--ls-batch", type=int, default=256, help="batch size of the least-squares pass")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    options = {"padding": "none"} if args.model == "tiny10" else {"width": 1}
    nets = []
    for seed in args.pair.split(","):
        key = store.DonorKey.make("cifar10", args.model, seed, options)
        if not store.exists(key, args.store):
            sys.exit(f"donor {key} is not in {args.store}: run `make released-donors` first")
        nets.append(store.load(key, args.store)[0])
    m1, m2 = nets
    dm = build_data("cifar10", root=args.data_root, normalize=True)
    dm.setup()
    images, _ = dm.tensors("train")
    layer = m1.check_layer(args.layer)
    shape = m1.layer_shapes(dm.input_shape)[layer]
    runs = variants(m1, m2, layer)
    tlm = {k: Phases() for k in runs}
    ls = {k: Phases() for k in runs}
    state = {}
    for k in runs:
        torch.manual_seed(0)
        s = build_stitching_layer(shape, shape)
        state[k] = (s, torch.optim.Adam(s.parameters(), lr=1e-3), MatchingStatistics(), torch.Generator().manual_seed(0))
    for i in range(args.batches + 2):  # the first 2 batches warm up oneDNN's kernels and are not counted
        xb = images[i * 128:(i + 1) * 128]
        xl = images[i * args.ls_batch:(i + 1) * args.ls_batch]
        for k, (f1, f2, dt) in runs.items():
            s, opt, stats, g = state[k]
            ph_t, ph_l = (tlm[k], ls[k]) if i >= 2 else (Phases(), Phases())
            tlm_step(ph_t, dm, xb, f1, f2, s, opt, layer, dt, g)
            ls_step(ph_l, dm, xl, f1, f2, s, stats, layer, dt)
    n_tlm, n_ls = dm.size("train") / 128 / args.batches, dm.size("train") / args.ls_batch / args.batches
    cpu = hardware_name("cpu", threads=True)  # torch runs args.threads threads
    print(f"{args.model} {args.pair} at {layer} {tuple(shape)}, CIFAR-10 train {dm.size('train')}; {cpu}; "
          f"torch {torch.__version__}; {args.batches} batches per variant, extrapolated")
    for title, table, scale in (("one TLM epoch (batch 128, augmented, soft labels)", tlm, n_tlm),
                                (f"one least-squares pass (batch {args.ls_batch})", ls, n_ls)):
        names = list(dict.fromkeys(n for ph in table.values() for n in ph.t))
        print(f"\n{title}: seconds per epoch")
        print(f"  {'phase':<32}" + "".join(f"{k:>26}" for k in table))
        for n in names:
            print(f"  {n:<32}" + "".join(f"{table[k].t.get(n, 0) * scale:>26.1f}" for k in table))
        totals = {k: sum(ph.t.values()) * scale for k, ph in table.items()}
        base = totals[next(iter(totals))]
        print(f"  {'total':<32}" + "".join(f"{v:>26.1f}" for v in totals.values()))
        print(f"  {'speed-up':<32}" + "".join(f"{base / v:>25.2f}x" for v in totals.values()))


if __name__ == "__main__":
    main()

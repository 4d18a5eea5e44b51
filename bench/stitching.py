"""Per-pair stitching speed: our TLM and DM against a straightforward baseline, same data.

* TLM baseline: the front half is recomputed for every batch of every epoch
  (what a plain training loop does); ours caches the frozen activations once.
  Both see identical batches (no augmentation), so their results must agree.
  The paper-faithful path (augmentation, fronts recomputed) is timed too, and its
  result is reported to show how much augmentation changes the outcome.
* DM baseline: materialise every activation row in float64 and take the
  pseudo-inverse of [A, 1]; ours accumulates float64 sufficient statistics in one
  streaming pass and solves a C x C system.

    python bench/stitching.py                                    # Tiny-10 / digits, CPU
    python bench/stitching.py data=cifar10 data.root=... model@model1=resnet18 model@model2=resnet18 \
        layer=layer1.0 device=cuda tlm.epochs=30

Arguments are stitch.py's Hydra overrides. Prints a table of times, ratios and results.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataclasses  # noqa: E402

from stitch.cli import to_dict  # noqa: E402
from stitch.evaluation import evaluate  # noqa: E402
from stitch.features import ActivationCache  # noqa: E402
from stitch.hardware import hardware_name  # noqa: E402
from stitch.matching.fitting import PairContext, fit_direct, fit_task_loss  # noqa: E402
from stitch.settings import DMSettings, study_settings  # noqa: E402
from stitch.study import Study  # noqa: E402
from stitch.activations import to_rows  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t


def baseline_dm(ctx: PairContext, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Materialise all rows in float64 and solve with the pseudo-inverse of [A, 1]."""
    net = ctx.new_network()
    rows_a, rows_b = [], []
    with torch.no_grad():
        for batch in ctx.source.batches("train"):
            rows_a.append(to_rows(net.stitch.prepare(batch.a)).double())
            rows_b.append(to_rows(batch.b).double())
    A = torch.cat(rows_a)
    B = torch.cat(rows_b)
    A1 = torch.cat([A, torch.ones(len(A), 1, dtype=A.dtype, device=A.device)], 1)
    M = torch.linalg.pinv(A1) @ B
    return M[:-1], M[-1]


def main(overrides: list[str]) -> None:
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = to_dict(compose("stitch", overrides=["layer=layer3", "method=[tlm,dm]", "hydra.job.chdir=false", *overrides],
                              return_hydra_config=False))
    settings = study_settings(cfg)
    study = Study.assemble(settings)  # the product's wiring: donors, fast path, precision
    device, precision, dm = study.device, study.precision, study.data
    L, M = study.layer_pairs[0]
    tlm = settings.method["tlm"]

    def ctx(cached: bool) -> PairContext:
        return dataclasses.replace(study, cache=ActivationCache(64 * 2**30) if cached else None).pair(L, M)

    rows = []

    def run_tlm(label, c, augment):
        (net, info), sec = timed(lambda: fit_task_loss(c, dataclasses.replace(tlm, augment=augment), 0, dm.multilabel), device)
        acc = evaluate(net, c.source, dm.multilabel)["relative_acc"]
        rows.append((label, sec, acc))
        return sec

    base_tlm = run_tlm("TLM baseline (front recomputed each step)", ctx(False), False)
    c = ctx(True)
    fast_tlm = run_tlm("TLM fast path (cached fronts, incl. caching)", c, False)
    faithful = run_tlm("TLM paper-faithful (augmentation, recomputed)", ctx(False), True)

    cb = ctx(False)
    (Wb, bb), base_dm = timed(lambda: baseline_dm(cb, device), device)
    cd = ctx(False)
    (net, info), our_dm = timed(lambda: fit_direct(cd, DMSettings(solver="ls")), device)
    rel = float((net.stitch.matrix.detach().double() - Wb).norm() / Wb.norm())
    acc_dm = evaluate(net, cd.source, dm.multilabel)["relative_acc"]
    rows.append(("DM baseline (materialised rows, float64 pinv)", base_dm, None))
    rows.append(("DM ours (streaming float64 statistics)", our_dm, acc_dm))
    hw = hardware_name(device, threads=True)
    print(f"# {study.model1.key} {L} -> {study.model2.key} {M}; {dm.size('train')} train images; TLM {tlm.epochs} "
          f"epochs, batch {tlm.batch_size}; {hw}; precision {precision}")
    print(f"| {'run':<48} | {'seconds':>8} | {'rel. acc':>8} |")
    print(f"|{'-' * 50}|{'-' * 10}|{'-' * 10}|")
    for label, sec, acc in rows:
        print(f"| {label:<48} | {sec:>8.2f} | {'-' if acc is None else f'{acc:.4f}':>8} |")
    print(f"\nTLM speed-up (baseline / fast): {base_tlm / fast_tlm:.1f}x; faithful / fast: {faithful / fast_tlm:.1f}x")
    print(f"DM speed-up (baseline / ours): {base_dm / our_dm:.1f}x; rows: {info['rows']}; "
          f"relative difference of the solutions: {rel:.2e}")


if __name__ == "__main__":
    main(sys.argv[1:])

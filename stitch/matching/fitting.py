"""Fitting a stitching layer for one layer pair, by direct matching or task loss matching.

A :class:`PairContext` (built by the study assembly, ``stitch/study/assembly.py``) holds the
two frozen donors, the layer pair and the activations' :class:`~stitch.features.FeatureSource`;
:func:`fit_direct` and :func:`fit_task_loss` each return the stitched network and what the fit
reports (rows used, seconds, sparsity, TLM history) for the run's record.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..features import FeatureSource
from ..models import StitchableNetwork
from ..activations import to_rows
from ..losses import soft_cross_entropy
from ..similarity import linear_cka_torch
from ..stitching import StitchedNetwork, build_stitching_layer
from .direct import MatchingStatistics, relative_squared_error, solve
from .task_loss import train_task_loss

if TYPE_CHECKING:
    from ..settings import DMSettings, TLMSettings


@dataclass
class PairContext:
    m1: StitchableNetwork
    m2: StitchableNetwork
    L: str
    M: str
    source: FeatureSource
    input_shape: tuple[int, ...]
    _stats: MatchingStatistics | None = None
    _stats_samples: tuple | None = None

    def new_network(self, rank: int | None = None) -> StitchedNetwork:
        src = self.m1.layer_shapes(self.input_shape)[self.L]
        dst = self.m2.layer_shapes(self.input_shape)[self.M]
        layer = build_stitching_layer(src, dst, rank).to(self.source.device)
        return StitchedNetwork(self.m1, self.m2, self.L, self.M, layer)

    def statistics(self, net: StitchedNetwork, samples: int | None, split: str = "train") -> MatchingStatistics:
        """Sufficient statistics of (resized A rows, B rows) over a split (training by default), one pass.

        ``split="test"`` reproduces paper 1's released code, which solves least squares on the test
        images it then evaluates on (a like-for-like check, not a fair score)."""
        if self._stats is not None and self._stats_samples == (samples, split):
            return self._stats
        stats = MatchingStatistics(device=self.source.device)
        seen = 0
        with torch.no_grad():
            for batch in self.source.batches(split, first=samples):
                a, b = batch.a, batch.b
                if samples is not None:
                    take = min(len(a), samples - seen)
                    a, b = a[:take], b[:take]
                stats.update(to_rows(net.stitch.prepare(a)), to_rows(b), check_finite=False)
                seen += len(a)
                if samples is not None and seen >= samples:
                    break
        self._stats, self._stats_samples = stats, (samples, split)
        return stats


def fit_direct(ctx: PairContext, m: DMSettings) -> tuple[StitchedNetwork, dict]:
    net = ctx.new_network()
    t = time.time()
    stats = ctx.statistics(net, m.samples, m.split)
    W, b = solve(stats, kind=m.solver, rank=m.rank, alpha=m.alpha, bias=m.bias)
    net.stitch.set_affine(W.float(), b.float())
    info = {"rows": int(stats.n), "fit_s": time.time() - t}
    if m.solver == "lasso":
        info["sparsity"] = float((W.abs() < m.zero_threshold).float().mean())
    return net, info


def fit_task_loss(ctx: PairContext, m: TLMSettings, seed: int, multilabel: bool, on_epoch=None, on_step=None
                  ) -> tuple[StitchedNetwork, dict]:
    torch.manual_seed(seed)
    net = ctx.new_network(m.rank)
    if m.init == "identity":
        net.stitch.set_identity()
    elif m.init in ("dm", "ls"):
        W, b = solve(ctx.statistics(net, m.init_samples), kind="ls")
        net.stitch.set_affine(W.float(), b.float())
    track = None
    if m.track_every:
        probe = next(ctx.source.batches("test", batch_size=m.track_samples))

        @torch.no_grad()
        def track(step, n):
            s = n.stitch(probe.a)
            logits = n.head(s).float()
            ce = soft_cross_entropy(logits, probe.z2.float())
            r2 = 1 - relative_squared_error(s, probe.b)  # paper 1's R² of S(A) vs B, on the probe batch
            acc = (logits.argmax(1) == probe.y).float().mean() if not multilabel else None
            return {"cka": float(linear_cka_torch(s, probe.b)), "r2": float(r2), "cross_entropy": float(ce),
                    "stitched_acc": None if acc is None else float(acc)}
    info = train_task_loss(net, ctx.source, m, multilabel, seed=seed, on_track=track, on_epoch=on_epoch,
                           on_step=on_step)
    info["fit_s"] = info.pop("seconds")
    if m.l1:
        info["sparsity"] = float((net.stitch.matrix.abs() < m.zero_threshold).float().mean())
    return net, info


def fit(ctx: PairContext, m: DMSettings | TLMSettings, seed: int, multilabel: bool, on_epoch=None, on_step=None
        ) -> tuple[StitchedNetwork, dict]:
    """Fit one stitching layer with ``m``'s method: what ``stitch.py``'s runs and ``stitch.api`` both call."""
    if m.kind == "dm":
        return fit_direct(ctx, m)
    return fit_task_loss(ctx, m, seed, multilabel, on_epoch=on_epoch, on_step=on_step)

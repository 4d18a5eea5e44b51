"""Metrics of a stitched network on a split (test by default).

* accuracy of the stitched network, of model 2 and of model 1, relative accuracy
  (stitched / model 2);
* cross-entropy of the stitched network to model 2's output distribution, H(p2, q) per
  sample (``cross_entropy``, nats), and in paper 1's unit, the mean over samples *and
  classes* of -p2 log q (``cross_entropy_paper1`` = H(p2, q) / C; BCE per attribute for
  multi-label sets, where both are the same), and the agreement of their predictions;
* paper 1's "no transformation" baseline where the shapes allow it: the same two
  cross-entropies for model 1's activation fed to model 2 as it is (``identity_*``);
* paper 2's DM "structural" score: mean over batches of ||S(A) - B||^2 / ||B||^2;
* similarity indices between the stitched and model 2's representation (and the
  raw A and B), on the first ``samples`` images.
"""
from __future__ import annotations

import logging
from typing import Iterable

import torch

from . import similarity
from .activations import pool_activations, to_rows
from .features import FeatureSource, autocast
from .losses import soft_cross_entropy
from .matching.direct import relative_squared_error
from .stitching import StitchedNetwork

log = logging.getLogger(__name__)


def _predictions(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    return (logits > 0) if multilabel else logits.argmax(1)


def _correct(logits: torch.Tensor, y: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Per-sample accuracy: 0/1, or the fraction of attributes right for multi-label tasks."""
    pred = _predictions(logits, multilabel)
    return (pred == y.bool()).float().mean(1) if multilabel else (pred == y).float()


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-column average precision (N x K scores, 0/1 targets): the mean over each positive of the
    precision at its rank (scores sorted high to low; ties in input order). NaN for a column without
    positives."""
    order = torch.sort(scores, dim=0, descending=True, stable=True).indices
    t = targets.gather(0, order).double()
    hits = t.cumsum(0)
    ranks = torch.arange(1, len(t) + 1, dtype=torch.float64)[:, None]
    n_pos = t.sum(0)
    return torch.where(n_pos > 0, (t * hits / ranks).sum(0) / n_pos.clamp(min=1), torch.full_like(n_pos, float("nan")))


@torch.no_grad()
def multilabel_metrics(model: torch.nn.Module, datamodule, split: str = "test", device: str | torch.device = "cpu",
                       batch_size: int = 512) -> dict:
    """A multi-label network measured against what predicting the majority gets:

    ``acc`` (mean per-attribute accuracy at sigmoid > 0.5), ``majority_acc`` (each attribute's
    majority value in the train split, predicted for every image: the floor a trained network must
    clear), ``mean_ap`` (macro average precision over attributes with a positive in ``split``),
    ``positive_rate`` and ``per_attribute_acc`` / ``per_attribute_majority_acc`` (lists of K)."""
    model.eval()
    logits, ys = [], []
    for x, y in datamodule.batches(split, batch_size, device=device):
        logits.append(model(x).float().cpu())
        ys.append(y.float().cpu())
    z, y = torch.cat(logits), torch.cat(ys)
    per_attr = ((z > 0).float() == y).double().mean(0)
    majority = (datamodule.tensors("train")[1].float().mean(0) > 0.5).float()
    per_major = (majority[None, :] == y).double().mean(0)
    ap = average_precision(z, y)
    return {"acc": float(per_attr.mean()), "majority_acc": float(per_major.mean()),
            "mean_ap": float(ap[~ap.isnan()].mean()), "positive_rate": float(y.mean()),
            "per_attribute_acc": [round(float(v), 4) for v in per_attr],
            "per_attribute_majority_acc": [round(float(v), 4) for v in per_major]}


@torch.no_grad()
def model_accuracy(model: torch.nn.Module, datamodule, split: str = "test", device: str | torch.device = "cpu",
                   batch_size: int = 512) -> float:
    """Exact accuracy of a network over a split (top-1, or mean per-attribute accuracy for multi-label sets)."""
    model.eval()
    total, n = torch.zeros((), dtype=torch.float64), 0
    for x, y in datamodule.batches(split, batch_size, device=device):
        total += _correct(model(x).float(), y, datamodule.multilabel).sum().double().cpu()
        n += len(y)
    return float(total / max(n, 1))


def representation_pair(x: torch.Tensor, y: torch.Tensor, mode: str = "rows") -> tuple[torch.Tensor, torch.Tensor]:
    """Two activations as 2-D matrices with matching rows.

    ``rows``: one row per spatial position/token when the layouts match, else
    spatially pooled (N x C; tokens: the mean token); ``pooled``; ``flatten``: N x (C*H*W).
    """
    if mode == "flatten":
        return similarity.flatten(x), similarity.flatten(y)
    if mode == "rows" and x.shape[2:] == y.shape[2:]:
        return to_rows(x), to_rows(y)
    return pool_activations(x, tokens="mean"), pool_activations(y, tokens="mean")


def similarities(x: torch.Tensor, y: torch.Tensor, names: Iterable[str], mode: str = "rows") -> dict[str, float | None]:
    """Each requested index, or None with a logged reason when it is undefined for these inputs."""
    X, Y = representation_pair(x.float(), y.float(), mode)
    out: dict[str, float | None] = {}
    for name in names:
        try:
            out[name] = similarity.get(name)(X, Y)
        except ValueError as e:
            log.warning("similarity %s undefined here: %s", name, e)
            out[name] = None
    return out


@torch.no_grad()
def evaluate(net: StitchedNetwork, source: FeatureSource, multilabel: bool, split: str = "test",
             similarity_names: Iterable[str] = (), similarity_samples: int = 500, similarity_mode: str = "rows",
             raw_similarity: bool = True) -> dict[str, float | None]:
    net.eval()
    device = source.device
    n = 0
    sums = {k: torch.zeros((), dtype=torch.float64, device=device)
            for k in ("stitched", "model1", "model2", "ce", "ce_identity", "agree", "structural")}
    identity_ok = need_identity = need_model1 = None
    batches = 0
    keep_s, keep_a, keep_b = [], [], []
    kept = 0
    for batch in source.batches(split):
        with autocast(device, source.precision):
            s = net.stitch(batch.a)
            logits = net.head(s).float()
        z2, y, b = batch.z2.float(), batch.y, batch.b
        if identity_ok is None:
            identity_ok = tuple(batch.a.shape[1:]) == tuple(b.shape[1:])
            # neither the baseline nor model 1's accuracy depends on the stitch: computed once per pair
            # (the baseline) or per study (model 1's accuracy), reused by the runs
            need_identity = identity_ok and getattr(source, "identity_ce", None) is None
            # model 1's accuracy depends on neither layer: once per study; in self-stitching it is model 2's
            need_model1 = source.model1_accuracy(split) is None and source.m1 is not source.m2
        if need_model1:
            with autocast(device, source.precision):
                a1 = batch.a if torch.is_autocast_enabled(device.type) else batch.a.float()
                logits1 = net.front.forward_from(a1, net.layer).float()
            sums["model1"] += _correct(logits1, y, multilabel).sum()
        if need_identity:
            with autocast(device, source.precision):
                logits_id = net.head(batch.a if torch.is_autocast_enabled(device.type) else batch.a.float()).float()
            sums["ce_identity"] += soft_cross_entropy(logits_id, z2, multilabel=multilabel, reduction="none").sum()
        sums["stitched"] += _correct(logits, y, multilabel).sum()
        sums["model2"] += _correct(z2, y, multilabel).sum()
        sums["ce"] += soft_cross_entropy(logits, z2, multilabel=multilabel, reduction="none").sum()
        pred_s, pred_2 = _predictions(logits, multilabel), _predictions(z2, multilabel)
        sums["agree"] += ((pred_s == pred_2).float().mean(1) if multilabel else (pred_s == pred_2).float()).sum()
        sums["structural"] += relative_squared_error(s, b)  # paper 2: its mean over the test batches
        batches += 1
        n += len(y)
        if kept < similarity_samples:
            take = min(similarity_samples - kept, len(y))
            keep_s.append(s[:take].float().cpu())
            keep_b.append(b[:take].float().cpu())
            keep_a.append(batch.a[:take].float().cpu())
            kept += take
    acc2 = float(sums["model2"] / n)
    classes = 1 if multilabel else int(z2.shape[1])  # BCE is already a mean over attributes
    acc_s = float(sums["stitched"] / n)
    if identity_ok and need_identity:
        source.identity_ce = float(sums["ce_identity"] / n)
    if need_model1:
        source.keep_model1_accuracy(split, float(sums["model1"] / n))
    model1_acc = acc2 if source.m1 is source.m2 else source.model1_accuracy(split)
    metrics: dict[str, float | None] = {
        "stitched_acc": acc_s, "model1_acc": model1_acc, "model2_acc": acc2,
        "relative_acc": acc_s / acc2 if acc2 > 0 else None,
        "cross_entropy": float(sums["ce"] / n), "cross_entropy_paper1": float(sums["ce"] / n) / classes,
        "identity_cross_entropy": source.identity_ce if identity_ok else None,
        "identity_cross_entropy_paper1": source.identity_ce / classes if identity_ok else None,
        "agreement": float(sums["agree"] / n),
        "dm_structural": float(sums["structural"] / batches), "eval_samples": n,
    }
    names = list(similarity_names)
    if names and kept >= 2:
        S, A, B = torch.cat(keep_s), torch.cat(keep_a), torch.cat(keep_b)
        for k, v in similarities(S, B, names, similarity_mode).items():
            metrics[f"sim/{k}"] = v
        if raw_similarity:  # A vs B: the same for every run of the pair (TLM and DM), computed once
            key = (tuple(names), similarity_mode, kept)
            known = source.raw_similarity
            if key not in known:
                known[key] = similarities(A, B, names, similarity_mode)
            for k, v in known[key].items():
                metrics[f"sim_raw/{k}"] = v
    return metrics

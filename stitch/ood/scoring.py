"""Threshold-free OOD metrics: AUROC, AUPR and FPR at 95% TPR (torchmetrics).

Convention (paper 2; Liu et al. 2020): the *in-distribution* samples are the
positive class and the score is ``-energy`` (higher = more in-distribution).

* AUROC 0.5: the detector cannot tell the two sets apart (the stitched
  representation looks like a real one); 1.0: perfectly separated (clearly OOD);
  below 0.5: the "OOD" set looks *more* in-distribution than the real one.
* AUPR: average precision with in-distribution positive ("AUPR-In").
* FPR95: the fraction of OOD samples accepted when the threshold keeps 95% of
  the in-distribution samples (lower is better for a detector).
"""
from __future__ import annotations

import math

import torch


def _as_1d(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().reshape(-1).to("cpu", torch.float64)
    if t.numel() == 0:
        raise ValueError(f"{name} is empty: need at least one score on each side")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite scores")
    return t


def _ranks01(scores: torch.Tensor) -> torch.Tensor:
    """Order-preserving map of scores to [0, 1] with ties kept.

    torchmetrics passes scores outside [0, 1] through a sigmoid, which saturates
    for energies of tens (every in-distribution score would become exactly 1.0 and
    tie). All three metrics depend on the order of the scores only, so dense ranks
    give exactly the same values without that loss.
    """
    uniq, inv = torch.unique(scores, sorted=True, return_inverse=True)
    if len(uniq) == 1:
        return torch.full_like(scores, 0.5, dtype=torch.float32)
    return (inv.to(torch.float64) / (len(uniq) - 1)).to(torch.float32)


def ood_scores_metrics(score_in, score_out) -> dict[str, float]:
    """AUROC, AUPR(-In) and FPR@95%TPR for in-distribution scores vs OOD scores.

    Scores are "higher = more in-distribution" (use ``-energy``). Returns
    ``{"auroc", "aupr", "fpr95"}`` as floats.
    """
    # imported here: torchmetrics takes seconds to import, and a config check reaches this package
    from torchmetrics.functional.classification import binary_auroc, binary_average_precision, binary_roc

    s_in, s_out = _as_1d(score_in, "in-distribution scores"), _as_1d(score_out, "OOD scores")
    scores = _ranks01(torch.cat([s_in, s_out]))
    target = torch.cat([torch.ones(len(s_in), dtype=torch.long), torch.zeros(len(s_out), dtype=torch.long)])
    auroc = float(binary_auroc(scores, target))
    aupr = float(binary_average_precision(scores, target))
    fpr, tpr, _ = binary_roc(scores, target)
    # first ROC point (thresholds descending) that keeps at least 95% of the in-distribution set
    ok = torch.nonzero(tpr >= 0.95 - 1e-12)
    fpr95 = float(fpr[ok[0, 0]]) if len(ok) else 1.0
    return {"auroc": auroc, "aupr": aupr, "fpr95": fpr95}


def energy_summary(e: torch.Tensor, prefix: str) -> dict[str, float]:
    """Mean, std and 5/50/95% quantiles of energies (enough to draw paper 2's Fig. 1c as box plots)."""
    e = _as_1d(e, prefix)
    q = torch.quantile(e, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
    std = float(e.std()) if len(e) > 1 else 0.0
    out = {f"{prefix}_mean": float(e.mean()), f"{prefix}_std": std, f"{prefix}_q05": float(q[0]),
           f"{prefix}_q50": float(q[1]), f"{prefix}_q95": float(q[2])}
    assert all(math.isfinite(v) for v in out.values())
    return out


PERCENTILES = tuple(range(0, 101))  # 0, 1, ..., 100 %


def energy_percentiles(e: torch.Tensor) -> list[float]:
    """The 0, 1, ..., 100th percentiles of energies: a distribution small enough for a record (paper 2
    Fig. 1c is drawn from these, never by re-running a network)."""
    e = _as_1d(e, "energies")
    q = torch.quantile(e, torch.tensor(PERCENTILES, dtype=torch.float64) / 100)
    return [round(float(v), 4) for v in q]

"""OOD detection of stitched representations (paper 2: Balogh & Jelasity 2025).

Task loss matching can reach high accuracy by producing stitched activations S(A)
that model 2 never produces itself. Paper 2 measures this with a per-layer OOD
detector (:mod:`.detector`, energy score of Liu et al. 2020, :mod:`.energy`):
in-distribution = the detector's score on model 2's own layer-M activations of the
test images, "OOD" = its score on S(A) for the same images; AUROC near 0.5 means
the stitched representation is indistinguishable from a real one.

Entry points:

* :func:`ood_metrics` -- what ``stitch/experiment.py`` calls per run when
  ``ood.enabled=true``; returns ``ood/*`` metrics for the record;
* :func:`stitch_energies` -- the raw energies behind them (for histograms, paper 2
  Fig. 1c);
* :func:`get_detector` / :func:`sanity_check` -- the cached detector and its "truly
  OOD data set" check.
"""
from __future__ import annotations

import torch

from ..features import FeatureSource, autocast
from ..stitching import StitchedNetwork
from .detector import (ActivationDetector, DetectorConfig, detector_config, detector_path, get_detector,
                       resolve_sanity_data, sanity_check, sanity_config, train_detector)
from .energy import energy, energy_loss, energy_regularizer, energy_score
from .outliers import OutlierSampler
from .scoring import energy_summary, ood_scores_metrics

__all__ = ["ActivationDetector", "DetectorConfig", "OutlierSampler", "detector_config", "detector_path", "energy",
           "energy_loss", "energy_regularizer", "energy_score", "energy_summary", "get_detector", "ood_metrics",
           "ood_scores_metrics", "resolve_sanity_data", "sanity_check", "sanity_config", "stitch_energies",
           "train_detector"]

# in-distribution energies depend only on (detector, model 2, layer, split): reuse them across the
# source layers of a study (a full matrix scores each target layer once per source layer)
_IN_MEMO: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


@torch.no_grad()
def stitch_energies(net: StitchedNetwork, source: FeatureSource, detector: ActivationDetector, split: str = "test",
                    memo_key: tuple | None = None) -> dict[str, torch.Tensor]:
    """Detector energies on model 2's own activations (``in``) and on the stitched ones (``stitched``).

    Also the detector's predicted classes for both and the labels, all CPU tensors
    over the same images (``source``'s ``split``, honouring its test limit).
    """
    net.eval()
    detector.eval()
    device = source.device
    cached = _IN_MEMO.get(memo_key) if memo_key is not None else None
    e_in, p_in, e_out, p_out, ys = [], [], [], [], []
    for batch in source.batches(split):
        with autocast(device, source.precision):
            s = net.stitch(batch.a)
        logits_out = detector(s.float())
        e_out.append(energy(logits_out).cpu())
        p_out.append(logits_out.argmax(1).cpu())
        ys.append(batch.y.cpu())
        if cached is None:
            logits_in = detector(batch.b.float())
            e_in.append(energy(logits_in).cpu())
            p_in.append(logits_in.argmax(1).cpu())
    if cached is None:
        cached = (torch.cat(e_in), torch.cat(p_in))
        if memo_key is not None:
            _IN_MEMO[memo_key] = cached
    return {"in": cached[0], "pred_in": cached[1], "stitched": torch.cat(e_out), "pred_stitched": torch.cat(p_out),
            "y": torch.cat(ys)}


def ood_metrics(net: StitchedNetwork, source: FeatureSource, key2, cfg: dict, dm) -> dict[str, float | None]:
    """Paper 2's OOD score of one stitched network, for its result record.

    ``cfg`` is the study config (``cfg["ood"]`` block, ``cfg["store"]``,
    ``cfg["data"]``), ``key2`` model 2's :class:`~stitch.store.DonorKey` and ``dm``
    the study's data module. The detector for (model 2, target layer) is loaded
    from the model store or trained there once. Keys:

    * ``ood/auroc``, ``ood/aupr``, ``ood/fpr95``: in-distribution (model 2's own
      activations) positive, score = -energy;
    * ``ood/energy_in_*``, ``ood/energy_stitched_*``: mean, std, 5/50/95% quantiles;
    * ``ood/detector_acc``: the detector's label accuracy on model 2's activations,
      ``ood/detector_acc_stitched`` on the stitched ones;
    * ``ood/sanity_auroc``: the detector's AUROC for a genuinely different data set
      (see :func:`sanity_check`), ``ood/outlier_auroc`` for held-out auxiliary outliers.
    """
    ocfg = cfg.get("ood") or {}
    split = ocfg.get("split", "test")
    detector, meta = get_detector(net.back, key2, net.target_layer, dm, ocfg, cfg.get("store"), source.device,
                                  data_cfg=cfg.get("data"))
    memo_key = (meta["path"], id(source.m2), net.target_layer, split, source.limits.get(split), str(source.device))
    r = stitch_energies(net, source, detector, split, memo_key)
    m = ood_scores_metrics(-r["in"], -r["stitched"])
    out: dict[str, float | None] = {f"ood/{k}": v for k, v in m.items()}
    for name, e in (("energy_in", r["in"]), ("energy_stitched", r["stitched"])):
        out.update({f"ood/{k}": v for k, v in energy_summary(e, name).items()})
    out["ood/detector_acc"] = float((r["pred_in"] == r["y"]).float().mean())
    out["ood/detector_acc_stitched"] = float((r["pred_stitched"] == r["y"]).float().mean())
    out["ood/sanity_auroc"] = meta.get("sanity_auroc")
    out["ood/outlier_auroc"] = (meta.get("metrics") or {}).get("outlier_auroc")
    out["ood/samples"] = len(r["y"])
    return out

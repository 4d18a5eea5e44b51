"""The OOD score of a stitched network (paper 2): the detector's energies on model 2's own
layer-M activations B against those on the stitched ones S(A), for the same images."""
from __future__ import annotations

import time

import torch

from ..features import FeatureSource, autocast
from ..stitching import StitchedNetwork
from .cache import OODCache
from .networks import ActivationDetector, prediction_accuracy
from .registry import DetectorSupply, get_detector
from .scoring import PERCENTILES, energy_percentiles, energy_summary, ood_scores_metrics


@torch.no_grad()
def stitch_energies(net: StitchedNetwork, source: FeatureSource, detector: ActivationDetector, split: str = "test",
                    cache: OODCache | None = None) -> dict[str, torch.Tensor]:
    """Detector energies on model 2's own activations (``in``) and on the stitched ones (``stitched``).

    Also the detector's predicted classes for both and the labels, all CPU tensors
    over the same images (``source``'s ``split``, honouring its test limit). The
    ``in`` side depends only on (detector, model 2, layer, split), not on the
    stitch: with a ``cache`` it is computed once and reused for every source layer.
    """
    net.eval()
    detector.eval()
    device = source.device
    cached = cache.energies_in(detector, source, split) if cache is not None else None
    e_in, p_in, e_out, p_out, ys = [], [], [], [], []
    for batch in source.batches(split):
        with autocast(device, source.precision):
            s = net.stitch(batch.a)
        logits_out = detector(s.float())
        e_out.append(detector.energy(logits_out).cpu())
        p_out.append(detector.predict(logits_out).cpu())
        ys.append(batch.y.cpu())
        if cached is None:
            logits_in = detector(batch.b.float())
            e_in.append(detector.energy(logits_in).cpu())
            p_in.append(detector.predict(logits_in).cpu())
    if cached is None:
        cached = (torch.cat(e_in), torch.cat(p_in))
        if cache is not None:
            cache.keep_energies_in(detector, source, split, *cached)
    return {"in": cached[0], "pred_in": cached[1], "stitched": torch.cat(e_out), "pred_stitched": torch.cat(p_out),
            "y": torch.cat(ys)}


def ood_metrics(net: StitchedNetwork, source: FeatureSource, detectors: DetectorSupply) -> dict[str, float | None]:
    """The ``ood/*`` metrics of :func:`ood_scores` (scalars only)."""
    return ood_scores(net, source, detectors)["metrics"]


def ood_scores(net: StitchedNetwork, source: FeatureSource, detectors: DetectorSupply) -> dict:
    """Paper 2's OOD score of one stitched network, for its result record: ``{"metrics", "energies"}``.

    The detector for (model 2, target layer) comes from ``detectors`` (the study's: its cache, its
    model store, or trained there once). ``metrics`` (scalars, the record's ``metrics``):

    * ``ood/auroc``, ``ood/aupr``, ``ood/fpr95``: in-distribution (model 2's own
      activations) positive, score = -energy;
    * ``ood/energy_in_*``, ``ood/energy_stitched_*``: mean, std, 5/50/95% quantiles;
    * ``ood/detector_acc``: the detector's label accuracy on model 2's activations,
      ``ood/detector_acc_stitched`` on the stitched ones;
    * ``ood/sanity_auroc``: the detector's AUROC for a genuinely different data set
      (see :func:`~stitch.ood.sanity.sanity_check`), ``ood/outlier_auroc`` for
      held-out auxiliary outliers; ``ood/detector_trusted``: 1 when the sanity AUROC
      reaches ``ood.sanity.min_auroc`` (0: this detector's AUROC cannot call a stitch
      in-distribution), None without a sanity check.

    ``energies`` (the record's ``ood_energies``, paper 2 Fig. 1c): the 0..100th percentiles
    of the detector's energies on model 2's own activations (``in``), on the stitched ones
    (``stitched``) and on the sanity set (``sanity``, named by ``sanity_data``).
    """
    ood_cfg = detectors.ood
    t0 = time.time()
    detector, meta = get_detector(detectors, net.back, net.target_layer, source.device)
    setup_s = time.time() - t0  # training (and checking) the detector when this run is the first to need it
    r = stitch_energies(net, source, detector, ood_cfg.split, detectors.cache)
    m = ood_scores_metrics(-r["in"], -r["stitched"])
    out: dict[str, float | None] = {f"ood/{k}": v for k, v in m.items()}
    for name, e in (("energy_in", r["in"]), ("energy_stitched", r["stitched"])):
        out.update({f"ood/{k}": v for k, v in energy_summary(e, name).items()})
    out["ood/detector_acc"] = prediction_accuracy(r["pred_in"], r["y"])
    out["ood/detector_acc_stitched"] = prediction_accuracy(r["pred_stitched"], r["y"])
    sanity_auroc = meta.get("sanity_auroc")
    out["ood/sanity_auroc"] = sanity_auroc
    out["ood/detector_trusted"] = None if sanity_auroc is None else \
        float(sanity_auroc >= ood_cfg.sanity.min_auroc)
    out["ood/outlier_auroc"] = (meta.get("metrics") or {}).get("outlier_auroc")
    out["ood/samples"] = len(r["y"])
    sanity = (meta.get("sanity") or {}).get(meta.get("sanity_key"), {})
    energies = {"percentiles": list(PERCENTILES), "in": energy_percentiles(r["in"]),
                "stitched": energy_percentiles(r["stitched"]), "sanity_data": sanity.get("data"),
                "sanity": sanity.get("energy_out_percentiles"), "detector": meta.get("path")}
    return {"metrics": out, "energies": energies, "detector_trained_s": setup_s if meta.get("trained_now") else 0.0}

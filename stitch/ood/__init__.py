"""OOD detection of stitched representations (paper 2: Balogh & Jelasity 2025).

Task loss matching can reach high accuracy by producing stitched activations S(A)
that model 2 never produces itself. Paper 2 measures this with a per-layer OOD
detector (energy score of Liu et al. 2020): in-distribution = the detector's score
on model 2's own layer-M activations of the test images, "OOD" = its score on S(A)
for the same images; AUROC near 0.5 means the stitched representation is
indistinguishable from a real one.

Modules, one job each:

* :mod:`.settings` -- the ``ood:`` config block, :class:`DetectorConfig`;
* :mod:`.networks` -- the detector networks (conv and token layers);
* :mod:`.training` -- classification, then energy fine-tuning against outliers;
* :mod:`.outliers` -- the auxiliary outlier images; :mod:`.energy` -- energy and its loss;
* :mod:`.sanity` -- the "truly OOD data set" check of a detector;
* :mod:`.registry` -- detectors in the model store (:func:`get_detector`);
* :mod:`.cache` -- :class:`OODCache`, the caller-owned in-process reuse;
* :mod:`.stitched` -- :func:`ood_scores` (what ``stitch/study/runner.py`` calls per run
  when ``ood.enabled=true``) and :func:`stitch_energies` (the raw energies behind it);
* :mod:`.scoring` -- AUROC, AUPR, FPR95 of two score sets.
"""
from __future__ import annotations

from .cache import OODCache
from .energy import energy, energy_loss, energy_regularizer, energy_score
from .networks import ActivationDetector
from .outliers import OutlierSampler
from .registry import DetectorSupply, detector_path, get_detector
from .sanity import resolve_sanity_data, sanity_check
from .scoring import energy_summary, ood_scores_metrics
from .settings import DetectorConfig, detector_config, sanity_config
from .stitched import ood_metrics, ood_scores, stitch_energies
from .training import train_detector

__all__ = ["ActivationDetector", "DetectorConfig", "DetectorSupply", "OODCache", "OutlierSampler", "detector_config", "detector_path",
           "energy", "energy_loss", "energy_regularizer", "energy_score", "energy_summary", "get_detector",
           "ood_metrics", "ood_scores", "ood_scores_metrics", "resolve_sanity_data", "sanity_check", "sanity_config",
           "stitch_energies", "train_detector"]

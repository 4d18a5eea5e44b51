"""In-process reuse of OOD work, owned by the caller (the study) and passed in explicitly.

A full layer x layer matrix scores each target layer once per source layer; with one
:class:`OODCache` for the study, each (model 2, target layer) costs one detector load (or
training) and one pass of the detector over model 2's own activations B. ``cache=None``
means no reuse; a fresh ``OODCache()`` is the empty state, so nothing is shared between
studies (or tests) that do not share the object.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..features import FeatureSource
from .networks import ActivationDetector


class OODCache:
    """Detectors by (store path, device) and model 2's in-distribution energies per detector."""

    def __init__(self) -> None:
        self._detectors: dict[str, tuple[ActivationDetector, dict]] = {}
        # keyed by the module objects themselves (identity hash): unlike id(), a live key cannot be
        # confused with a freed object, and a retrained detector is a new object, so no stale energies
        self._energies_in: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def _detector_key(path: str | Path, device: torch.device | str) -> str:
        return f"{Path(path).resolve()}@{torch.device(device)}"

    def detector(self, path: str | Path, device: torch.device | str) -> tuple[ActivationDetector, dict] | None:
        """The (detector, meta) kept for the detector stored at ``path``, on ``device``; None if absent."""
        return self._detectors.get(self._detector_key(path, device))

    def keep_detector(self, path: str | Path, device: torch.device | str, detector: ActivationDetector,
                      meta: dict) -> None:
        self._detectors[self._detector_key(path, device)] = (detector, meta)

    @staticmethod
    def _energies_key(detector: ActivationDetector, source: FeatureSource, split: str) -> tuple:
        return (detector, source.m2, source.target_layer, split, source.limits.get(split), str(source.device),
                source.precision)

    def energies_in(self, detector: ActivationDetector, source: FeatureSource,
                    split: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(energies, predicted classes) of ``detector`` on ``source``'s B over ``split``; None if absent."""
        return self._energies_in.get(self._energies_key(detector, source, split))

    def keep_energies_in(self, detector: ActivationDetector, source: FeatureSource, split: str,
                         energies: torch.Tensor, predictions: torch.Tensor) -> None:
        self._energies_in[self._energies_key(detector, source, split)] = (energies, predictions)

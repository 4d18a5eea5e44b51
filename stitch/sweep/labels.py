"""Readable names of methods and donors, shared by the figures and the LMC table (no plotting, no networks)."""
from __future__ import annotations

import math

# (method, recipe) -> label; the recipe is the record's ``variant`` (conf/tlm/*.yaml, conf/dm/*.yaml)
_METHOD_LABELS = {
    ("tlm", None): "TLM", ("tlm", "paper1"): "TLM (paper 1 recipe)", ("tlm", "paper2"): "TLM (paper 2 recipe)",
    ("dm", None): "DM", ("dm", "least_squares"): "DM (least squares)",
    ("dm", "paper2"): "DM (least squares, 100 images)",
    ("dm", "reduced_rank"): "DM (reduced rank)", ("dm", "lasso"): "DM (lasso)", ("dm", "procrustes"): "DM (Procrustes)",
}


def method_label(method: str, variant: str | None = None) -> str:
    variant = None if variant is None or (isinstance(variant, float) and math.isnan(variant)) else str(variant)
    if (method, variant) in _METHOD_LABELS:
        return _METHOD_LABELS[(method, variant)]
    base = _METHOD_LABELS.get((method, None), str(method))
    return f"{base} ({variant})" if variant else base


def model_tag(model: dict) -> str | None:
    """The architecture tag of a record's donor (``tiny10-padding=none``, ``store.DonorKey.tag``): recorded
    with the donor; records written before it was are read from their store key ``<data>/<tag>/<seed or
    name>``; the family name when neither is there."""
    if model.get("tag"):
        return model["tag"]
    key = model.get("key")
    return key.split("/")[1] if isinstance(key, str) and key.count("/") == 2 else model.get("name")

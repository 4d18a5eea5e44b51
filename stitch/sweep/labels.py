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


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def method_label(method: str, variant: str | None = None, samples: int | float | None = None, *,
                 samples_recorded: bool = False) -> str:
    """'TLM (paper 2 recipe)', 'DM (least squares, 100 images)', ...

    ``samples``: a DM fit's training images, the record's ``method_config.samples`` (None: the whole
    split), used when ``samples_recorded``. The label then states the count the records were fitted on
    rather than the recipe's default, so ``dm=paper2 dm.samples=250`` is never drawn as '100 images',
    nor ``dm.samples=null`` (the whole split) as any count."""
    variant = None if _missing(variant) else str(variant)
    if (method, variant) in _METHOD_LABELS:
        label = _METHOD_LABELS[(method, variant)]
    else:
        base = _METHOD_LABELS.get((method, None), str(method))
        label = f"{base} ({variant})" if variant else base
    if method == "dm" and samples_recorded:
        inner = label[label.index("(") + 1:-1] if label.endswith(")") else ""
        parts = [p for p in inner.split(", ") if p and not p.endswith(" images")]
        if not _missing(samples):
            parts.append(f"{int(samples)} images")
        label = f"DM ({', '.join(parts)})" if parts else "DM"
    return label


def model_tag(model: dict) -> str | None:
    """The architecture tag of a record's donor (``tiny10-padding=none``, ``store.DonorKey.tag``): recorded
    with the donor; records written before it was are read from their store key ``<data>/<tag>/<seed or
    name>``; the family name when neither is there."""
    if model.get("tag"):
        return model["tag"]
    key = model.get("key")
    return key.split("/")[1] if isinstance(key, str) and key.count("/") == 2 else model.get("name")

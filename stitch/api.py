"""Model stitching from Python: your own networks and data, no model store, no Hydra.

    import torch
    from stitch import api

    data = api.tensor_data(train=(x_train, y_train), test=(x_test, y_test))    # float N x C x H x W, int labels
    net1, net2 = api.network(my_resnet_a), api.network(my_resnet_b)           # any nn.Module (traced with torch.fx)
    print(net1.layers)                                                          # its cut points
    r = api.stitch(net1, net2, "layer2.1", "layer2.1", data, method="dm")      # a dict of metrics
    r["relative_acc"], r["cross_entropy"], r["sim/cka"]
    table = api.stitch_matrix(net1, net2, data, ["layer1.1", "layer2.1"], ["layer1.1", "layer2.1"],
                              methods=("dm", "tlm"), tlm={"epochs": 5})      # a pandas DataFrame, one row per run

Networks: a model-zoo network (``stitch.models.build``), or any ``nn.Module`` wrapped by
:class:`~stitch.models.external.TracedNetwork` (torchvision, timm or your own; cut points are the
outputs of its blocks, or ``layers=[...]``). Data: :func:`tensor_data` from tensors (or DataLoaders),
or any ``stitch.data`` module. Methods: ``"dm"`` (direct matching, least squares unless
``dm={"solver": "procrustes"}`` etc.) and ``"tlm"`` (task loss matching; the project's defaults,
override with ``tlm={...}`` using the keys of ``conf/tlm``).

This is the code path of ``stitch.py``: the same feature source (activations computed once per layer
and cached), the same fitting (:func:`stitch.matching.fitting.fit`) and the same evaluation
(:func:`stitch.evaluation.evaluate`); results carry the same metric names as a study's records.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .data.base import ImageDataModule
from .errors import ConfigError
from .evaluation import evaluate
from .features import ActivationCache, FeatureSource
from .matching.fitting import PairContext, fit
from .models import StitchableNetwork
from .settings import CacheSettings, DMSettings, Problems, TLMSettings, _raise

log = logging.getLogger(__name__)

__all__ = ["TensorData", "network", "stitch", "stitch_matrix", "tensor_data"]


class TensorData(ImageDataModule):
    """A data module over tensors already in memory: float inputs (preprocessed as the networks expect,
    used as they are) or uint8 images (scaled to [0, 1]); integer class labels, or 0/1 label vectors
    for a multi-label task."""

    name = "tensors"

    def __init__(self, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                 multilabel: bool = False, batch_size: int = 256):
        super().__init__(batch_size=batch_size, normalize=False, augment=False)
        self._given = splits
        self.num_classes = num_classes
        self.multilabel = multilabel

    def load(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return dict(self._given)


def _as_tensors(split: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(split, torch.utils.data.DataLoader):  # materialised once: every layer reuses the same images
        xs, ys = zip(*((x, y) for x, y in split))
        return torch.cat(xs), torch.cat(ys)
    try:
        x, y = split
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected (inputs, labels) tensors or a DataLoader of (x, y) batches") from None
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if len(x) != len(y):
        raise ConfigError(f"{name}: {len(x)} inputs but {len(y)} labels")
    return x, y


def tensor_data(train: Any, test: Any, *, num_classes: int | None = None, multilabel: bool = False,
                batch_size: int = 256) -> TensorData:
    """A data module from ``(inputs, labels)`` tensors (or DataLoaders) for the training split (fitting)
    and the test split (scoring). ``num_classes``: inferred from the labels when not given."""
    tr, te = _as_tensors(train, "train"), _as_tensors(test, "test")
    if num_classes is None:
        num_classes = int(tr[1].shape[1]) if multilabel else int(max(tr[1].max(), te[1].max())) + 1
    return TensorData({"train": tr, "test": te}, num_classes, multilabel, batch_size)


def network(module: nn.Module, layers: Sequence[str] | str | None = None) -> StitchableNetwork:
    """A stitchable view of ``module``: a zoo network as it is, any other module traced with ``torch.fx``
    (no forward hooks); ``layers`` names its cut points (default: the outputs of its blocks)."""
    if isinstance(module, StitchableNetwork):
        return module.eval()
    from .models.external import TracedNetwork

    return TracedNetwork(module.eval(), layers=layers).eval()


def _method(method: str, dm: dict | DMSettings | None, tlm: dict | TLMSettings | None) -> DMSettings | TLMSettings:
    if method not in ("dm", "tlm"):
        raise ConfigError(f"method={method!r}: expected dm or tlm")
    given = dm if method == "dm" else tlm
    kind = DMSettings if method == "dm" else TLMSettings
    if isinstance(given, kind):
        return given
    problems = Problems()
    settings = kind.parse(dict(given or {}), f"{method}.", problems)  # the checks of stitch.py's config
    _raise(problems)
    return settings


class _Session:
    """What a matrix of runs shares: the data set up once, one activation cache, the device."""

    def __init__(self, data: ImageDataModule, device: str | torch.device, cache_gb: float | None,
                 batch_size: int):
        data.setup()
        self.data = data
        self.device = torch.device(device)
        from .study.assembly import cache_budget_bytes

        budget = int(cache_gb * 2**30) if cache_gb is not None else cache_budget_bytes(CacheSettings(), self.device)
        self.cache = ActivationCache(budget)
        self.shared: dict = {}  # scalars measured once per session (FeatureSource.shared)
        self.batch_size = batch_size

    def pair(self, m1: StitchableNetwork, m2: StitchableNetwork, L: str, M: str) -> PairContext:
        m1.to(self.device), m2.to(self.device)
        L, M = m1.check_layer(L), m2.check_layer(M)
        source = FeatureSource(m1, m2, L, M, self.data, self.device, "32", self.cache, batch_size=self.batch_size,
                               shared=self.shared)
        return PairContext(m1, m2, L, M, source, tuple(self.data.input_shape))


def _run(session: _Session, m1, m2, L: str, M: str, method: str, settings, seed: int, indices: Iterable[str],
         samples: int) -> dict:
    ctx = session.pair(m1, m2, L, M)
    net, info = fit(ctx, settings, seed, session.data.multilabel)
    metrics = evaluate(net, ctx.source, session.data.multilabel, "test", list(indices), samples)
    history = info.pop("history", None)
    return {"layer": ctx.L, "target_layer": ctx.M, "method": method, **metrics, "fit": info, "history": history,
            "stitched": net}


def stitch(model1: nn.Module, model2: nn.Module, layer1: str, layer2: str, data: ImageDataModule,
           method: str = "dm", *, dm: dict | DMSettings | None = None, tlm: dict | TLMSettings | None = None,
           indices: Iterable[str] = ("cka",), samples: int = 500, device: str | torch.device = "cpu", seed: int = 0,
           batch_size: int = 256, cache_gb: float | None = None) -> dict:
    """Stitch ``model1`` up to ``layer1`` into ``model2`` from ``layer2`` with ``method`` (``dm`` or ``tlm``) and
    score it on the test split: ``relative_acc``, ``stitched_acc``, ``model2_acc``, ``cross_entropy`` (nats)
    and ``cross_entropy_paper1``, ``agreement``, ``dm_structural``, ``sim/<index>`` between the stitched
    and model 2's representation (``sim_raw/<index>`` between the two networks' own), plus ``fit`` (what the
    fit reports) and ``stitched`` (the :class:`~stitch.stitching.StitchedNetwork`, in eval mode)."""
    m1, m2 = network(model1), network(model2)
    session = _Session(data, device, cache_gb, batch_size)
    return _run(session, m1, m2, layer1, layer2, method, _method(method, dm, tlm), seed, indices, samples)


def stitch_matrix(model1: nn.Module, model2: nn.Module, data: ImageDataModule,
                  layers1: Sequence[str] | None = None, layers2: Sequence[str] | None = None,
                  methods: Sequence[str] = ("dm",), *, dm: dict | DMSettings | None = None,
                  tlm: dict | TLMSettings | None = None, indices: Iterable[str] = ("cka",), samples: int = 500,
                  device: str | torch.device = "cpu", seed: int = 0, batch_size: int = 256,
                  cache_gb: float | None = None, progress: bool = True):
    """Every (source layer, target layer, method) of ``layers1`` x ``layers2`` (default: each network's
    block outputs), as a pandas DataFrame with one row per run (the metrics of :func:`stitch`, without the
    stitched networks). Activations are computed once per layer and shared by all runs."""
    import pandas as pd

    m1, m2 = network(model1), network(model2)
    layers1 = list(layers1) if layers1 is not None else m1.select_layers("all")
    layers2 = list(layers2) if layers2 is not None else m2.select_layers("all")
    settings = {m: _method(m, dm, tlm) for m in methods}
    session = _Session(data, device, cache_gb, batch_size)
    runs = [(L, M, m) for L in layers1 for M in layers2 for m in methods]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(runs), desc="stitching", unit="run")
    rows = []
    try:
        for L, M, m in runs:
            r = _run(session, m1, m2, L, M, m, settings[m], seed, indices, samples)
            r.pop("stitched")
            r.pop("history")
            fit_info = r.pop("fit")
            rows.append({**r, **{f"fit/{k}": v for k, v in fit_info.items() if not isinstance(v, (list, dict))}})
            if bar is not None:
                bar.set_postfix_str(f"{L} -> {M} {m}: {r.get('relative_acc', float('nan')):.3f}")
                bar.update()
    finally:
        if bar is not None:
            bar.close()
    return pd.DataFrame(rows)

"""Import a state-dict file (a paper's released checkpoint, a torchvision/timm file) into the store.

The imported donor is then used by ``stitch.py`` exactly like a trained one
(``model1.seed=<name>``). On import the file is read with ``weights_only=True``, keys are
optionally renamed, the shapes are checked strictly (every missing, unexpected or misshapen key
is named), the test accuracy is measured, and provenance (source file, its sha256, date) is
kept in the metadata.
"""
from __future__ import annotations

import datetime as _dt
import logging
import re
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import OmegaConf

from .. import models
from ..errors import CheckpointError, ConfigError
from ..fileio import sha256
from . import DonorKey, exists, load_meta, load_state, match_state, sanity_floor, save

log = logging.getLogger(__name__)

CONF = Path(__file__).resolve().parents[1] / "conf"  # the packaged configs (stitch/conf)

#: one command per released network of paper 1 (shared/data/released-drfrankenstein)
PRESETS: dict[str, dict[str, Any]] = {
    "drfrankenstein-tiny10": {"model": "tiny10_unpadded", "data": "cifar10",
                              "about": "paper 1's released Tiny-10 (no padding, convs with bias)"},
    "drfrankenstein-resnet20": {"model": "resnet20", "data": "cifar10",
                                "about": "paper 1's released ResNet-20, width 1 (files saved on a GPU)"},
}


def group_config(group: str, name: str) -> dict:
    """``conf/<group>/<name>.yaml`` as a plain dict (interpolations such as ``oc.env`` resolved)."""
    path = CONF / group / f"{name}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        raise ConfigError(f"unknown {group} config {name!r}; valid: {', '.join(valid)}")
    cfg = OmegaConf.load(path)
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def model_config(name: str, options: dict | None = None) -> dict:
    """A conf/model entry (``tiny10_unpadded``) or a bare family name (``resnet20``), plus option overrides."""
    if (CONF / "model" / f"{name}.yaml").is_file():
        cfg = group_config("model", name)
    elif name in models.list_models():
        cfg = {"name": name, "options": {}}
    else:
        valid = sorted({p.stem for p in (CONF / "model").glob("*.yaml")} | set(models.list_models()))
        raise ConfigError(f"unknown model {name!r}; valid: {', '.join(valid)}")
    cfg["options"] = {**(cfg.get("options") or {}), **(options or {})}
    return cfg


def key_values(items: Sequence[str], what: str) -> dict:
    """``["k=v", ...]`` command-line options as a dict, each value read as YAML (numbers, booleans, lists)."""
    import yaml

    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ValueError(f"{what} must look like KEY=VALUE, got {item!r}")
        out[k] = yaml.safe_load(v)
    return out


def rename_keys(state: dict, strip_prefix: Sequence[str] = (), add_prefix: str = "",
                renames: Sequence[tuple[str, str]] = ()) -> dict:
    """Strip any of ``strip_prefix`` (e.g. ``module.`` of DataParallel), apply regex renames, add a prefix."""
    out = {}
    for k, v in state.items():
        for p in strip_prefix:
            if k.startswith(p):
                k = k[len(p):]
                break
        for pattern, repl in renames:
            k = re.sub(pattern, repl, k)
        k = add_prefix + k
        if k in out:
            raise CheckpointError(f"key renaming maps two keys to {k!r}; check --rename/--strip-prefix")
        out[k] = v
    return out


def import_checkpoint(file: str | Path, *, data_cfg: dict, model_cfg: dict, name: str, store_root: str | Path,
                      device: str | torch.device = "cpu", strip_prefix: Sequence[str] = (), add_prefix: str = "",
                      renames: Sequence[tuple[str, str]] = (), force: bool = False, evaluate: bool = True,
                      batch_size: int = 500) -> dict:
    """Import one checkpoint as donor ``<data>/<model tag>/<name>``; returns its metadata."""
    from ..data import from_config as datamodule_from_cfg
    from ..evaluation import model_accuracy as accuracy
    from ..hardware import hardware_name

    file = Path(file).expanduser()
    key = DonorKey.of(model_cfg, data_cfg["name"], seed=name)
    if not file.is_file():
        raise CheckpointError(f"checkpoint file {file} does not exist")
    if exists(key, store_root) and not force:
        meta = load_meta(key, store_root)
        prov = meta.get("provenance") or {}
        if prov.get("source_sha256") == sha256(file):  # the same file again: nothing to do
            log.info("donor %s already in the store (imported from %s); --force re-imports", key, prov.get("source"))
            return meta
        held = f"was imported from {prov.get('source')}" if prov else "was trained here"
        raise CheckpointError(f"the store already has a donor {key} that {held}, not from {file} (another file: "
                              f"different sha256); choose another name (--name / model.seed), or replace it "
                              f"with --force")
    redo = "check the file, or the key renaming options (--strip-prefix, --add-prefix, --rename)"
    state = rename_keys(load_state(file, redo), strip_prefix, add_prefix, renames)
    device = torch.device(device)
    datamodule = datamodule_from_cfg(data_cfg)  # a missing data set says where to put it, before any work is kept
    datamodule.setup()
    net = models.build(key.model, num_classes=datamodule.num_classes, in_channels=datamodule.input_shape[0],
                       **dict(key.options))
    match_state(net, state, file, redo)
    net = net.to(device).eval()
    metrics: dict[str, Any] = {"test_acc": None}
    if evaluate:
        t = time.time()
        metrics = {"test_acc": accuracy(net, datamodule, "test", device, batch_size), "eval_seconds": time.time() - t}
        floor = sanity_floor(datamodule.num_classes, datamodule.multilabel)
        if metrics["test_acc"] < floor and not force:
            raise CheckpointError(
                f"{file} scores {metrics['test_acc']:.3f} test accuracy on {datamodule.name}, below the sanity floor "
                f"{floor:.3f} (chance level): wrong architecture options, preprocessing (data.normalize) or key "
                f"mapping? --force imports it anyway")
    meta = {"num_classes": datamodule.num_classes, "in_channels": datamodule.input_shape[0], "input_shape": list(datamodule.input_shape),
            "multilabel": datamodule.multilabel, "normalize": datamodule.normalize, "metrics": metrics,
            "config": {"data": data_cfg, "model": model_cfg},
            "provenance": {"kind": "imported", "source": str(file.resolve()), "source_sha256": sha256(file),
                           "imported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                           "strip_prefix": list(strip_prefix), "add_prefix": add_prefix,
                           "renames": [list(r) for r in renames]},
            "hardware": hardware_name(device)}
    path = save(key, net, meta, store_root)
    log.info("imported %s -> %s (test acc %s)", file, path, metrics["test_acc"])
    return load_meta(key, store_root)

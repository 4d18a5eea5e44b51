"""What determines a trained detector (:class:`DetectorConfig`, its cache identity), built once from the
typed ``ood:`` settings (``stitch.settings.OODSettings``, checked with every other section), and the checks
of the OOD block that need the model and data registries: the conv detector's options (by building the
architecture once, untrained), outlier data sets (in-memory sets, options they take) and the sanity set's
options. Problems are lines in the project's format ``<key>=<value>: expected <what is allowed>``."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from .. import data as data_lib
from .. import models
from ..errors import ConfigError
from ..settings import (ENERGY_M_IN, ENERGY_M_OUT, ENERGY_WEIGHT, OODSettings, Problems, _raise, shown)

@dataclass(frozen=True)
class DetectorConfig:
    """Everything that determines a trained detector (its cache identity).

    Built once per study from its typed ``ood:`` settings (:meth:`of`; :func:`detector_config` for a dict).
    """

    conv_arch: str = "resnet20"
    conv_options: tuple[tuple[str, Any], ...] = (("width", 0.5),)
    input_size: int | None = None          # None: the data's input size (32 for CIFAR/digits)
    token_depth: int = 2
    token_heads: int | None = None         # None: D // 64 when that divides D (ViT-Ti: 3), else 1
    token_mlp_ratio: float = 4.0
    batch_size: int = 128
    epochs: int = 10                       # classification pre-training
    lr: float = 2e-3
    weight_decay: float = 5e-4
    augment: bool = True
    train_limit: int | None = None         # cap on training images (None: the whole split)
    seed: int = 0
    energy_epochs: int = 6                 # Liu et al. energy fine-tuning
    energy_lr: float = 2e-3
    energy_weight: float = ENERGY_WEIGHT
    m_in: float = ENERGY_M_IN
    m_out: float = ENERGY_M_OUT
    outlier_sources: tuple[str, ...] = ("photos", "noise", "shuffle")
    outlier_datasets: tuple[tuple[tuple[str, Any], ...], ...] = ()
    grayscale: str = "auto"                # auto | true | false: grey outliers for grey data (digits)

    @classmethod
    def of(cls, ood: OODSettings) -> DetectorConfig:
        d, conv, tok, e, out = ood.detector, ood.detector.conv, ood.detector.tokens, ood.energy, ood.outliers
        options = DEFAULT_CONV_OPTIONS.get(conv.arch, {}) if conv.options is None else conv.options
        return cls(conv_arch=conv.arch, conv_options=tuple(sorted(dict(options).items())), input_size=conv.input_size,
                   token_depth=tok.depth, token_heads=None if tok.heads in (None, "auto") else int(tok.heads),
                   token_mlp_ratio=float(tok.mlp_ratio), batch_size=d.batch_size, epochs=d.epochs, lr=float(d.lr),
                   weight_decay=float(d.weight_decay), augment=d.augment, train_limit=d.train_limit, seed=d.seed,
                   energy_epochs=e.epochs, energy_lr=float(e.lr), energy_weight=float(e.weight),
                   m_in=float(e.m_in), m_out=float(e.m_out), outlier_sources=tuple(out.source_list),
                   outlier_datasets=tuple(tuple(sorted(spec.items())) for spec in out.datasets or []),
                   grayscale=str(out.grayscale).lower() if isinstance(out.grayscale, bool) else out.grayscale)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["conv_options"] = dict(self.conv_options)
        d["outlier_datasets"] = [dict(s) for s in self.outlier_datasets]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DetectorConfig:
        d = dict(d)
        d["conv_options"] = tuple(sorted(dict(d.get("conv_options") or {}).items()))
        d["outlier_sources"] = tuple(d.get("outlier_sources") or ())
        d["outlier_datasets"] = tuple(tuple(sorted(dict(s).items())) for s in d.get("outlier_datasets") or ())
        return cls(**d)


# conv-detector options used when ood.detector.conv.options is null: half-width ResNet-20 for speed, so
# arch=resnet18 needs no options override (Hydra merges dicts: options={} would not remove a preset key)
DEFAULT_CONV_OPTIONS: dict[str, dict[str, Any]] = {"resnet20": {"width": 0.5}}


def data_option_problems(name: str, options: dict, where: str) -> list[str]:
    """Construct (not load) data set ``name`` with ``options``: unknown option names are problems."""
    try:
        data_lib.build(name, **options)
    except (TypeError, ValueError) as e:
        return [f"{where}={shown(options)}: expected options of data set {name} ({e})"]
    return []


def outlier_dataset_problems(spec: Any, where: str) -> list[str]:
    """One ``ood.outliers.datasets`` entry: ``{name: <in-memory set>, split: train|val|test, **options}``."""
    if not isinstance(spec, dict) or "name" not in spec:
        return [f"{where}={shown(spec)}: expected a mapping with a name, e.g. {{name: svhn, root: data/svhn}}"]
    name, ok = spec["name"], data_lib.in_memory_datasets()  # outliers are drawn from tensors
    if name not in ok:
        streams = " (it streams from disk)" if name in data_lib.list_datasets() else ""
        return [f"{where}.name={shown(name)}: expected an in-memory data set, one of {', '.join(ok)}{streams}"]
    split = spec.get("split", "train")
    if split not in ("train", "val", "test"):
        return [f"{where}.split={shown(split)}: expected one of train, val, test"]
    # what outliers.dataset_images passes to the data set
    return data_option_problems(name, {k: v for k, v in spec.items() if k not in ("name", "split", "tlm_lr")}, where)


def conv_option_problems(arch: str, options: dict | None, prefix: str = "ood.detector.conv.") -> list[str]:
    """The conv detector's architecture and its option names and values, before any training."""
    if arch not in models.list_models():
        return [f"{prefix}arch={shown(arch)}: expected a model of the zoo, one of {', '.join(models.list_models())}"]
    options = dict(DEFAULT_CONV_OPTIONS.get(arch, {}) if options is None else options)
    where = f"{prefix}options"
    defaults = models.options_of(arch)
    problems = []
    for k, v in options.items():
        if k not in defaults:
            problems.append(f"{where}.{k}={shown(v)}: unknown option of {arch}; its options are: "
                            f"{', '.join(sorted(defaults)) or '(none)'}")
            continue
        d = defaults[k]
        if isinstance(d, bool):
            ok, what = isinstance(v, bool), "true or false"
        elif isinstance(d, (int, float)):
            ok, what = isinstance(v, (int, float)) and not isinstance(v, bool), "a number"
        elif isinstance(d, str):
            ok, what = isinstance(v, str), "a string"
        else:  # default None: any type; the build below checks it
            ok, what = True, ""
        if not ok:
            problems.append(f"{where}.{k}={shown(v)}: expected {what} (option of {arch}, default {shown(d)})")
    if problems:
        return problems
    error = _build_error(arch, repr(sorted(options.items())), options)
    return [f"{where}={shown(options)}: expected options that build {arch} ({error})"] if error else []


_BUILD_ERRORS: dict[tuple[str, str], str] = {}


def _build_error(arch: str, key: str, options: dict) -> str:
    """The error of building ``arch`` (untrained, 10 classes) with ``options``, '' if none; cached per process."""
    if (arch, key) not in _BUILD_ERRORS:
        try:
            with torch.random.fork_rng(devices=[]):  # validation must not move the global RNG
                models.build(arch, 10, **options)
            _BUILD_ERRORS[arch, key] = ""
        except Exception as e:  # noqa: BLE001 -- any failure is a config problem of these options
            _BUILD_ERRORS[arch, key] = f"{type(e).__name__}: {e}"
    return _BUILD_ERRORS[arch, key]


def ood_settings(ood: dict | OODSettings | None) -> OODSettings:
    """The typed settings of an ``ood:`` block (a dict is checked in full, as if enabled; ``ConfigError`` lists
    every problem, and its ``problems`` attribute holds them)."""
    if isinstance(ood, OODSettings):
        return ood
    if ood is not None and not isinstance(ood, dict):
        raise ConfigError(f"ood={shown(ood)}: expected the group of OOD settings")
    problems = Problems()
    parsed = OODSettings.parse({**(ood or {}), "enabled": True}, "ood.", problems)
    if parsed is not None and not problems:
        object.__setattr__(parsed, "enabled", bool((ood or {}).get("enabled", False)))
    try:
        _raise(problems)
    except ConfigError as e:
        e.problems = list(problems)
        raise
    return parsed


def detector_config(ood: dict | OODSettings | None) -> DetectorConfig:
    """The :class:`DetectorConfig` of an ``ood:`` block (checked: ``ConfigError`` names every bad key)."""
    return DetectorConfig.of(ood_settings(ood))


def sanity_config(ood: dict | OODSettings | None) -> dict:
    """The ``ood.sanity`` block with defaults: ``{"data": "auto", "options": {}, "samples": 1000, "min_auroc": 0.9}``
    (see ``stitch.settings.SanitySettings``)."""
    return ood_settings(ood).sanity.spec()

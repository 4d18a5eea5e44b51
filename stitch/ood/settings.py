"""The ``ood:`` config block: :class:`DetectorConfig` (what determines a trained detector) and
the checks that reject unknown keys and out-of-range values with a :class:`~stitch.errors.ConfigError`
naming the key, one line per problem in the project's format ``<key>=<value>: expected <what is allowed>``
(as ``stitch/settings.py``), e.g. ``ood.sanity.data='nosuch': expected a data-set name (...), auto or null``.

Everything that would otherwise fail only once the detector is trained (after the donors) is checked
here: data-set names and options (outlier sets must be in-memory ones), the conv detector's option
values (by building the architecture once, untrained) and the types of every value."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from .. import data as data_lib
from .. import models
from ..errors import ConfigError
from .energy import DEFAULT_M_IN, DEFAULT_M_OUT, DEFAULT_WEIGHT
from .outliers import BUILTIN_SOURCES

# conv-detector options used when ood.detector.conv.options is null
DEFAULT_CONV_OPTIONS: dict[str, dict[str, Any]] = {"resnet20": {"width": 0.5}}


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that determines a trained detector (its cache identity).

    Built from the ``ood:`` config block with :func:`detector_config`, which checks
    every value and rejects unknown keys.
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
    energy_weight: float = DEFAULT_WEIGHT
    m_in: float = DEFAULT_M_IN
    m_out: float = DEFAULT_M_OUT
    outlier_sources: tuple[str, ...] = ("photos", "noise", "shuffle")
    outlier_datasets: tuple[tuple[tuple[str, Any], ...], ...] = ()
    grayscale: str = "auto"                # auto | true | false: grey outliers for grey data (digits)

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


_OOD_KEYS = {"enabled", "split", "detector", "energy", "outliers", "sanity"}
_DETECTOR_KEYS = {"conv", "tokens", "batch_size", "epochs", "lr", "weight_decay", "augment", "train_limit", "seed"}
_CONV_KEYS = {"arch", "options", "input_size"}
_TOKEN_KEYS = {"depth", "heads", "mlp_ratio"}
_ENERGY_KEYS = {"epochs", "lr", "weight", "m_in", "m_out"}
_OUTLIER_KEYS = {"sources", "datasets", "grayscale"}
_SANITY_KEYS = {"data", "options", "samples", "min_auroc"}


def _check_keys(block: Any, valid: set[str], where: str) -> dict:
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise ConfigError(f"{where}={block!r}: expected a mapping (key: value) of {', '.join(sorted(valid))} or null")
    bad = [k for k in block if k not in valid]
    if bad:  # one line per key, like stitch/settings.py
        from ..settings import did_you_mean

        raise ConfigError("\n  ".join(f"{where}.{k}={block[k]!r}: unknown key{did_you_mean(k, valid)}; {where} "
                                       f"keys are: {', '.join(sorted(valid))}" for k in bad))
    return block


def _bool(v, where: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{where}={v!r}: expected true or false")
    return v


def _check_data_options(name: str, options: dict, where: str) -> None:
    """Construct (not load) data set ``name`` with ``options``: unknown option names fail here."""
    try:
        data_lib.build(name, **options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}={options!r}: expected options of data set {name} ({e})") from None


def _check_outlier_dataset(spec: Any, where: str) -> None:
    """One ``ood.outliers.datasets`` entry: ``{name: <in-memory set>, split: train|val|test, **options}``."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{where}={spec!r}: expected a mapping with a name, e.g. {{name: svhn, root: data/svhn}}")
    name, ok = spec["name"], data_lib.in_memory_datasets()  # outliers are drawn from tensors
    if name not in ok:
        streams = " (it streams from disk)" if name in data_lib.list_datasets() else ""
        raise ConfigError(f"{where}.name={name!r}: expected an in-memory data set, one of {', '.join(ok)}{streams}")
    split = spec.get("split", "train")
    if split not in ("train", "val", "test"):
        raise ConfigError(f"{where}.split={split!r}: expected one of train, val, test")
    # what outliers.dataset_images passes to the data set
    _check_data_options(name, {k: v for k, v in spec.items() if k not in ("name", "split", "tlm_lr")}, where)


def _check_conv_options(arch: str, options: dict) -> None:
    """Option names and values of the conv detector's architecture, before any training."""
    where = "ood.detector.conv.options"
    defaults = models.options_of(arch)
    for k, v in options.items():
        if k not in defaults:
            raise ConfigError(f"{where}.{k}={v!r}: unknown option of {arch}; its options are: "
                              f"{', '.join(sorted(defaults)) or '(none)'}")
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
            raise ConfigError(f"{where}.{k}={v!r}: expected {what} (option of {arch}, default {d!r})")
    error = _build_error(arch, repr(sorted(options.items())), options)
    if error:
        raise ConfigError(f"{where}={options!r}: expected options that build {arch} ({error})")


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


def _int(v, where: str, lo: int, allow_none: bool = False) -> int | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or int(v) < lo:
        raise ConfigError(f"{where}={v!r}: expected an integer >= {lo}{' or null' if allow_none else ''}")
    return int(v)


def _float(v, where: str, positive: bool = False, nonneg: bool = False) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}={v!r}: expected a number") from None
    if isinstance(v, bool) or not math.isfinite(f) or (positive and f <= 0) or (nonneg and f < 0):
        cond = " > 0" if positive else (" >= 0" if nonneg else "")
        raise ConfigError(f"{where}={v!r}: expected a finite number{cond}")
    return f


def detector_config(ood_cfg: dict | None) -> DetectorConfig:
    """Validate the ``ood:`` block and return the detector's :class:`DetectorConfig`.

    Raises :class:`~stitch.errors.ConfigError` naming the offending key for unknown
    keys and out-of-range values.
    """
    problems: list[str] = []  # every problem of the block at once, like stitch/settings.py

    def chk(fn, *args, default=None, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as err:
            problems.extend(getattr(err, "problems", None) or [str(err)])
            return default

    o = chk(_check_keys, ood_cfg or {}, _OOD_KEYS, "ood", default={})
    d = chk(_check_keys, o.get("detector"), _DETECTOR_KEYS, "ood.detector", default={})
    conv = chk(_check_keys, d.get("conv"), _CONV_KEYS, "ood.detector.conv", default={})
    tok = chk(_check_keys, d.get("tokens"), _TOKEN_KEYS, "ood.detector.tokens", default={})
    e = chk(_check_keys, o.get("energy"), _ENERGY_KEYS, "ood.energy", default={})
    out = chk(_check_keys, o.get("outliers"), _OUTLIER_KEYS, "ood.outliers", default={})
    chk(_check_keys, o.get("sanity"), _SANITY_KEYS, "ood.sanity")
    base = DetectorConfig()

    arch = conv.get("arch", base.conv_arch)
    if not isinstance(arch, str) or arch not in models.list_models():
        raise ConfigError(f"ood.detector.conv.arch={arch!r}: expected a model of the zoo, one of "
                          f"{', '.join(models.list_models())}")
    options = conv.get("options")
    # null: the preset of the architecture (half-width ResNet-20 for speed), so arch=resnet18 needs no
    # options override (Hydra merges dicts: options={} would not remove a preset key)
    if options is not None and not isinstance(options, dict):
        raise ConfigError(f"ood.detector.conv.options={options!r}: expected a mapping of {arch} options "
                          f"({', '.join(sorted(models.options_of(arch))) or 'none'}) or null (the preset)")
    options = dict(DEFAULT_CONV_OPTIONS.get(arch, {}) if options is None else options)
    _check_conv_options(arch, options)
    heads = tok.get("heads", "auto")
    if heads not in (None, "auto") and (isinstance(heads, bool) or not isinstance(heads, int) or heads < 1):
        raise ConfigError(f"ood.detector.tokens.heads={heads!r}: expected auto or an integer >= 1")
    heads = None if heads in (None, "auto") else int(heads)
    grayscale = out.get("grayscale", "auto")
    if grayscale not in ("auto", True, False):
        raise ConfigError(f"ood.outliers.grayscale={grayscale!r}: expected auto, true or false")
    sources = out.get("sources", list(base.outlier_sources))
    sources = [] if sources is None else [sources] if isinstance(sources, str) else sources
    if not isinstance(sources, (list, tuple)) or any(s not in BUILTIN_SOURCES for s in sources):
        raise ConfigError(f"ood.outliers.sources={sources!r}: expected a list of {', '.join(BUILTIN_SOURCES)} "
                          f"(data sets such as svhn go in ood.outliers.datasets)")
    datasets = out.get("datasets")
    datasets = [] if datasets is None else datasets
    if not isinstance(datasets, (list, tuple)):
        raise ConfigError(f"ood.outliers.datasets={datasets!r}: expected a list of data-set mappings, e.g. "
                          f"[{{name: svhn, root: data/svhn}}]")
    for i, spec in enumerate(datasets):
        _check_outlier_dataset(spec, f"ood.outliers.datasets[{i}]")
    if not sources and not datasets:
        raise ConfigError(f"ood.outliers.sources={sources!r}: expected at least one source (or a data set in "
                          f"ood.outliers.datasets) for energy fine-tuning")
    cfg = DetectorConfig(
        conv_arch=arch, conv_options=tuple(sorted(options.items())),
        input_size=chk(_int, conv.get("input_size", base.input_size), "ood.detector.conv.input_size", 4, True),
        token_depth=chk(_int, tok.get("depth", base.token_depth), "ood.detector.tokens.depth", 1),
        token_heads=heads,
        token_mlp_ratio=chk(_float, tok.get("mlp_ratio", base.token_mlp_ratio), "ood.detector.tokens.mlp_ratio", True),
        batch_size=chk(_int, d.get("batch_size", base.batch_size), "ood.detector.batch_size", 2),
        epochs=chk(_int, d.get("epochs", base.epochs), "ood.detector.epochs", 0),
        lr=chk(_float, d.get("lr", base.lr), "ood.detector.lr", positive=True),
        weight_decay=chk(_float, d.get("weight_decay", base.weight_decay), "ood.detector.weight_decay", nonneg=True),
        augment=chk(_bool, d.get("augment", base.augment), "ood.detector.augment"),
        train_limit=chk(_int, d.get("train_limit", base.train_limit), "ood.detector.train_limit", 1, True),
        seed=chk(_int, d.get("seed", base.seed), "ood.detector.seed", 0),
        energy_epochs=chk(_int, e.get("epochs", base.energy_epochs), "ood.energy.epochs", 0),
        energy_lr=chk(_float, e.get("lr", base.energy_lr), "ood.energy.lr", positive=True),
        energy_weight=chk(_float, e.get("weight", base.energy_weight), "ood.energy.weight", nonneg=True),
        m_in=chk(_float, e.get("m_in", base.m_in), "ood.energy.m_in"),
        m_out=chk(_float, e.get("m_out", base.m_out), "ood.energy.m_out"),
        outlier_sources=tuple(sources),
        outlier_datasets=tuple(tuple(sorted(s.items())) for s in datasets),
        grayscale=str(grayscale).lower() if isinstance(grayscale, bool) else grayscale,
    )
    split = o.get("split", "test")
    if split not in ("train", "val", "test"):
        problems.append(f"ood.split={split!r}: expected one of train, val, test")
    _raise_all(problems)
    if cfg.epochs + cfg.energy_epochs == 0:
        raise ConfigError("ood.energy.epochs=0: expected an integer >= 1 when ood.detector.epochs=0 "
                          "(with both 0 the detector would be untrained)")
    if not cfg.m_in < cfg.m_out:
        raise ConfigError(f"ood.energy.m_in={cfg.m_in!r}: expected a number below ood.energy.m_out={cfg.m_out!r} "
                          f"(in-distribution energies are pushed low, outliers high)")
    return cfg


def _raise_all(problems: list[str]) -> None:
    """One ConfigError for all ``problems`` (its ``problems`` attribute lists them, for the study's count)."""
    if not problems:
        return
    err = ConfigError("\n  ".join(problems) if len(problems) == 1 else
                      f"{len(problems)} configuration problems:\n  " + "\n  ".join(problems))
    err.problems = list(problems)
    raise err


def sanity_config(ood_cfg: dict | None) -> dict:
    """The ``ood.sanity`` block with defaults: ``{"data": "auto", "options": {}, "samples": 1000, "min_auroc": 0.9}``.

    ``min_auroc``: a detector whose sanity AUROC is below it cannot tell a genuinely different data set
    from the real one, so its AUROC of a stitch is not evidence that the stitch is in-distribution
    (records flag it: ``ood/detector_trusted`` 0)."""
    s = _check_keys((ood_cfg or {}).get("sanity"), _SANITY_KEYS, "ood.sanity")
    data = s.get("data", "auto")
    # "none"/"null" (strings): skip, as resolve_sanity_data reads them
    if data is not None and data not in ("auto", "none", "null") and data not in data_lib.list_datasets():
        raise ConfigError(f"ood.sanity.data={data!r}: expected a data-set name "
                          f"({', '.join(data_lib.list_datasets())}), auto or null")
    options = s.get("options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise ConfigError(f"ood.sanity.options={options!r}: expected a mapping (key: value) of data-set options")
    if data in data_lib.list_datasets():  # auto: the options are roots for the chosen set
        _check_data_options(data, dict(options), "ood.sanity.options")
    min_auroc = _float(s.get("min_auroc", 0.9), "ood.sanity.min_auroc", nonneg=True)
    if min_auroc > 1:
        raise ConfigError(f"ood.sanity.min_auroc={min_auroc!r}: expected an AUROC between 0 and 1")
    return {"data": data, "options": dict(options),
            "samples": _int(s.get("samples", 1000), "ood.sanity.samples", 2), "min_auroc": min_auroc}

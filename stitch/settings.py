"""Typed study settings, validated before any work is done.

``study_settings(cfg)`` turns the resolved ``conf/stitch.yaml`` dict into a frozen
:class:`StudySettings` (sections: :class:`ModelSpec`, :class:`DataSpec`, :class:`TLMSettings`,
:class:`DMSettings`, :class:`CacheSettings`, :class:`SimilaritySettings`, :class:`OODSettings`,
:class:`DonorSettings`), or raises one ``ConfigError`` that lists every problem, one line
each: the key, the value given and what is allowed, e.g. ``tlm.loss='sofft': expected one of
hard, soft``. Every section is closed: an unknown key (``+tlm.epoch=5``) is reported with the
section's keys. Layer names need built networks and are checked by the study
(``stitch/study/layer_checks.py``) before any donor is trained. ``train_settings`` checks
``conf/train.yaml``.

Each field declares whether it changes a run's result (``results=False``: where things are,
how fast they run). A run's identity (``stitch/study/records.py``) is built from the fields
that do, as the config sets them: a new option with a code default cannot re-hash finished
runs, and an option that does not change results never enters the hash. A field added after
records existed declares ``identity_default``: at that value it stays out of the identity.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar

from .errors import ConfigError
from .method_names import DIRECT_MATCHING_KINDS, SIMILARITY_INDICES, is_similarity_index


def did_you_mean(name: str, valid) -> str:
    """`` (did you mean epochs?)`` for a near miss among ``valid`` (``tlm.epoch``), else ``""``."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


@dataclass(frozen=True)
class Rule:
    ok: Callable[[Any], bool]
    allowed: str  # completes "expected ..."


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def one_of(*choices: str) -> Rule:
    return Rule(lambda v: isinstance(v, str) and v in choices, f"one of {', '.join(choices)}")


def or_null(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.ok(v), f"{rule.allowed} or null")


def _layer_names(v: Any) -> bool:
    name = lambda x: isinstance(x, str) and x != ""  # noqa: E731
    return name(v) or (isinstance(v, list) and len(v) > 0 and all(name(x) for x in v))


def _similarity_names(v: Any) -> bool:
    # the lookup rule evaluation.py's similarity.get uses, without importing the compute code
    return isinstance(v, list) and all(is_similarity_index(name) for name in v)


INT = Rule(_int, "an integer")
# donors trained here have integer seeds; imported ones are named (python -m stitch.store import ... --name in0)
DONOR = Rule(lambda v: (_int(v) and v >= 0) or (isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", v) is not None),
             "an integer seed >= 0 or an imported donor's name (letters, digits, . _ -)")
POS_INT = Rule(lambda v: _int(v) and v > 0, "a positive integer")
NONNEG_INT = Rule(lambda v: _int(v) and v >= 0, "an integer >= 0")
BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
POSITIVE = Rule(lambda v: _number(v) and v > 0, "a finite number > 0")
NONNEG = Rule(lambda v: _number(v) and v >= 0, "a finite number >= 0")
TEXT = Rule(lambda v: v is None or isinstance(v, str), "a string or null")
NAME = Rule(lambda v: isinstance(v, str) and v != "", "a name")
PATH = Rule(lambda v: isinstance(v, str) and v != "", "a path")
MAPPING = Rule(lambda v: v is None or isinstance(v, dict), "a group of settings (key: value) or null")
LAYERS = Rule(_layer_names, "a layer name, all, or a non-empty list of layer names")
DEVICE = Rule(lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v) is not None,
              "auto, cpu, cuda, cuda:N or mps")
# Hydra parses precision=32 as an int, hence str()
PRECISION = Rule(lambda v: not isinstance(v, bool) and str(v) in ("auto", "32", "bf16", "16"),
                 "one of auto, 32, bf16, 16")
ANY = Rule(lambda v: True, "anything")


def _ok(rule: Rule, value: Any) -> bool:
    try:
        return bool(rule.ok(value))
    except Exception:  # noqa: BLE001 - a value a rule cannot even inspect (e.g. a list where a name goes) is wrong
        return False


class _Absent:
    """A key the config does not set: the code's default applies, and the key is not in the identity."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


def setting(rule: Rule, default: Any = ABSENT, *, results: bool = True, identity_default: Any = ABSENT,
            id_only: bool = False):
    """A field of a settings section: its rule, its default, and whether it changes results. ``id_only``: it
    changes no result but stays in run ids, as earlier versions hashed it (finished runs keep their ids); what
    identifies the content (``Section.content_identity``: a detector's data) leaves it out."""
    return field(default=default, metadata={"rule": rule, "results": results or id_only,
                                            "identity_default": identity_default, "id_only": id_only})


def shown(value: Any) -> str:
    """A value as the user writes it in an override: true, null, 'text', [a, b], {k: v}."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {shown(v)}" for k, v in value.items()) + "}"
    return repr(value)


class Problems(list):
    def add(self, key: str, value: Any, allowed: str) -> None:
        self.append(f"{key}={shown(value)}: expected {allowed}")


@dataclass(frozen=True)
class Section:
    """A closed group of settings. ``given``: the keys the config set (what the identity holds)."""

    given: frozenset = field(default=frozenset(), repr=False, compare=False, metadata={"internal": True})
    title: ClassVar[str] = "settings"

    def __post_init__(self) -> None:
        # a nested section the config does not set holds its defaults (and stays out of ``given``)
        for f in fields(self):
            sub = f.metadata.get("section")
            if sub is not None and getattr(self, f.name) is None:
                object.__setattr__(self, f.name, sub())

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls) if not f.metadata.get("internal")]

    @classmethod
    def parse(cls, raw: Any, prefix: str, problems: Problems):
        """``raw`` (a config dict) as this section; problems are appended, never raised."""
        where = prefix.rstrip(".")
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            problems.add(where, raw, f"a group of {cls.title} ({', '.join(cls.keys())})")
            return None
        names = cls.keys()
        before = len(problems)
        problems += [f"{prefix}{k}={shown(raw[k])}: unknown key{did_you_mean(k, names)}; {where} keys are: "
                     f"{', '.join(names)}" for k in raw if k not in names]
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.metadata.get("internal") or f.name not in raw:
                continue
            v = raw[f.name]
            sub = f.metadata.get("section")
            if sub is not None:
                v = sub.parse(v, f"{prefix}{f.name}.", problems)
                if v is None:
                    continue
            elif not _ok(f.metadata["rule"], v):
                problems.add(prefix + f.name, v, f.metadata["rule"].allowed)
                continue
            values[f.name] = v
        obj = cls(given=frozenset(k for k in raw if k in names), **values)
        if len(problems) == before:  # cross-checks of values that passed their own rules only
            obj.cross_check(prefix, problems)
        return obj

    def cross_check(self, prefix: str, problems: Problems) -> None:
        """Checks that involve several fields (a solver and its parameter)."""

    def identity(self) -> dict:
        """The result-changing settings the config sets (see the module docstring)."""
        out = {}
        for f in fields(self):
            if f.metadata.get("internal") or f.name not in self.given or not f.metadata.get("results", True):
                continue
            v = getattr(self, f.name)
            if f.metadata.get("identity_default", ABSENT) is not ABSENT and v == f.metadata["identity_default"]:
                continue
            out[f.name] = v.identity() if isinstance(v, Section) else v
        return out

    def content_identity(self) -> dict:
        """The set settings that change what is computed, without those kept in run ids only (``id_only``)."""
        drop = {f.name for f in fields(self) if f.metadata.get("id_only")}
        return {k: v for k, v in self.identity().items() if k not in drop}

    def as_dict(self) -> dict:
        """The settings the config sets, as a plain dict (for the data and store factories)."""
        return {f.name: (getattr(self, f.name).as_dict() if isinstance(getattr(self, f.name), Section)
                         else getattr(self, f.name))
                for f in fields(self) if not f.metadata.get("internal") and f.name in self.given}


def section(cls: type[Section], *, results: bool = True):
    """A field holding a nested section."""
    return field(default=None, metadata={"section": cls, "results": results})


# ------------------------------------------------------------------------ sections
@dataclass(frozen=True)
class ModelSpec(Section):
    title: ClassVar[str] = "model settings"
    name: str = setting(NAME, "tiny10")
    seed: int | str = setting(DONOR, 0)
    options: dict | None = setting(MAPPING, None)
    # where the weights are read from, not what they are (the donor's sha256 is in every record)
    weights: str | None = setting(or_null(Rule(lambda v: isinstance(v, str) and v != "", "a state-dict file path")),
                                  None, results=False)

    def identity(self) -> dict:
        out = super().identity()
        if out.get("options"):  # where the network may be cut does not change a run at a given layer pair
            from .models import CUT_POINT_OPTIONS

            out["options"] = {k: v for k, v in out["options"].items() if k not in CUT_POINT_OPTIONS}
        return out

    def cross_check(self, prefix: str, problems: Problems) -> None:
        from . import models  # the registry (cheap: no network is built)

        if self.name not in models.list_models():
            problems.add(f"{prefix}name", self.name, f"one of {', '.join(models.list_models())}")
            return
        valid = models.options_of(self.name)
        problems += [f"{prefix}options.{k}={shown(v)}: unknown option of {self.name}; its options are: "
                     f"{', '.join(valid) or 'none'}" for k, v in (self.options or {}).items() if k not in valid]


_SUBSET = or_null(POS_INT)


@dataclass(frozen=True)
class DataSpec(Section):
    """Keys of ``conf/data/*.yaml``; each data set uses its own subset (``stitch/data``)."""
    title: ClassVar[str] = "data settings"
    name: str = setting(NAME)
    # where the images are and how they are read: moving the data keeps a run's identity
    root: str = setting(PATH, results=False)
    download: bool = setting(BOOL, results=False)
    cache: bool = setting(BOOL, results=False)
    num_workers: int = setting(NONNEG_INT, results=False)
    layout: str = setting(one_of("auto", "torchvision", "folder", "npz", "packed"), results=False)
    # batch_size, augment (donor training) and tlm_lr (it reaches TLM runs as tlm.lr) do not change a stitching
    # result; they stay in the identity as earlier versions hashed them, so finished runs keep their ids. A
    # detector's identity (content_identity) has always held augment, never batch_size or tlm_lr.
    batch_size: int = setting(POS_INT, id_only=True)
    normalize: bool = setting(BOOL, True)
    augment: bool = setting(BOOL)
    train_subset: int | None = setting(_SUBSET)
    test_subset: int | None = setting(_SUBSET)
    tlm_lr: float = setting(POSITIVE, id_only=True)
    image_size: int = setting(POS_INT)
    num_classes: int = setting(POS_INT)
    train_size: int = setting(POS_INT)
    test_size: int = setting(POS_INT)
    split_seed: int = setting(NONNEG_INT)  # digits: its fixed stratified train/test split
    seed: int = setting(INT)  # subsets and shuffling
    noise: float = setting(NONNEG)  # synthetic
    pattern_seed: int = setting(INT)  # synthetic

    def cross_check(self, prefix: str, problems: Problems) -> None:
        from . import data  # the registry (cheap: nothing is read)

        if self.name not in data.list_datasets():
            problems.add(f"{prefix}name", self.name, f"one of {', '.join(data.list_datasets())}")
            return
        takes = data.options_of(self.name) | data.NOT_DATAMODULE_OPTIONS
        problems += [f"{prefix}{k}={shown(getattr(self, k))}: {self.name} does not take {k}; its keys are: "
                     f"{', '.join(sorted(takes))}" for k in sorted(self.given) if k not in takes]


@dataclass(frozen=True)
class TLMSettings(Section):
    title: ClassVar[str] = "TLM settings"
    kind: str = setting(one_of("tlm"), "tlm")
    name: str | None = setting(TEXT, None)  # a label; hashed as earlier versions did (finished runs keep their ids)
    loss: str = setting(one_of("hard", "soft"), "hard")
    temperature: float = setting(POSITIVE, 1.0)
    init: str = setting(one_of("random", "identity", "dm", "ls"), "random")
    init_samples: int | None = setting(or_null(POS_INT), None)
    lr: float = setting(POSITIVE, 1e-3)
    weight_decay: float = setting(NONNEG, 0.0)
    batch_size: int = setting(POS_INT, 256)
    epochs: int = setting(POS_INT, 30)
    schedule: str = setting(one_of("constant", "step", "cosine"), "constant")
    augment: bool = setting(BOOL, False)
    rank: int | None = setting(or_null(POS_INT), None)
    l1: float = setting(NONNEG, 0.0)
    cka_penalty: float = setting(NONNEG, 0.0)
    track_every: int = setting(NONNEG_INT, 0)
    track_samples: int = setting(POS_INT, 256)
    zero_threshold: float = setting(NONNEG, 1e-4)


@dataclass(frozen=True)
class DMSettings(Section):
    title: ClassVar[str] = "DM settings"
    kind: str = setting(one_of("dm"), "dm")
    name: str | None = setting(TEXT, None)
    solver: str = setting(one_of(*DIRECT_MATCHING_KINDS), "ls")
    # added after records existed: solving on the training split stays out of the identity
    split: str = setting(one_of("train", "test"), "train", identity_default="train")
    samples: int | None = setting(or_null(POS_INT), None)
    rank: int | None = setting(or_null(POS_INT), None)
    alpha: float | None = setting(or_null(POSITIVE), None)
    bias: bool = setting(BOOL, True)
    zero_threshold: float = setting(NONNEG, 1e-4)

    def cross_check(self, prefix: str, problems: Problems) -> None:
        # the solver's own parameter must be set (its type is checked by its rule)
        for solver, param, allowed in (("rank", "rank", "a positive integer"), ("lasso", "alpha", "a number > 0")):
            if self.solver == solver and getattr(self, param) is None:
                problems.add(f"{prefix}{param}", None, f"{allowed} with solver={solver}")


@dataclass(frozen=True)
class CacheSettings(Section):
    title: ClassVar[str] = "cache settings"
    enabled: bool = setting(BOOL, True)
    budget_gb: float | str = setting(Rule(lambda v: v == "auto" or POSITIVE.ok(v), "auto or a number > 0"), "auto")
    dtype: str = setting(one_of("auto", "float32", "float16", "bfloat16"), "auto")


@dataclass(frozen=True)
class SimilaritySettings(Section):
    title: ClassVar[str] = "similarity settings"
    indices: list = setting(Rule(_similarity_names, f"a list of: {', '.join(sorted(SIMILARITY_INDICES))}"), ())
    samples: int = setting(Rule(lambda v: _int(v) and v >= 4, "an integer >= 4"), 500)
    mode: str = setting(one_of("rows", "pooled", "flatten"), "rows")
    raw: bool = setting(BOOL, True)


# ------------------------------------------------------------ paper 2's OOD detector (stitch/ood)
# Liu et al. 2020's energy fine-tuning: loss weight and the margins of the in-distribution / outlier energies
ENERGY_WEIGHT, ENERGY_M_IN, ENERGY_M_OUT = 0.1, -25.0, -7.0
OUTLIER_SOURCES = ("photos", "noise", "shuffle", "corrupt")  # generated offline (stitch/ood/outliers.py)
_FINITE = Rule(_number, "a finite number")


@dataclass(frozen=True)
class ConvDetectorSettings(Section):
    """The detector of conv layers: a zoo CNN fed the activation resized to ``input_size``."""
    title: ClassVar[str] = "conv detector settings"
    arch: str = setting(NAME, "resnet20")  # paper 2: resnet18
    # null: the architecture's preset (stitch/ood/settings.py: resnet20 at width 0.5), else its own options
    options: dict | None = setting(MAPPING, None)
    input_size: int | None = setting(or_null(Rule(lambda v: _int(v) and v >= 4, "an integer >= 4")), None)


@dataclass(frozen=True)
class TokenDetectorSettings(Section):
    """The detector of token layers: timm ViT blocks classifying from the CLS token."""
    title: ClassVar[str] = "token detector settings"
    depth: int = setting(POS_INT, 2)
    heads: int | str = setting(Rule(lambda v: v in (None, "auto") or (_int(v) and v >= 1),
                                    "auto or an integer >= 1"), "auto")  # auto: D // 64 (ViT-Ti: 3)
    mlp_ratio: float = setting(POSITIVE, 4.0)


@dataclass(frozen=True)
class DetectorSettings(Section):
    """How a detector is trained (classification pre-training, Adam, cosine)."""
    title: ClassVar[str] = "detector settings"
    conv: ConvDetectorSettings = section(ConvDetectorSettings)
    tokens: TokenDetectorSettings = section(TokenDetectorSettings)
    batch_size: int = setting(Rule(lambda v: _int(v) and v >= 2, "an integer >= 2"), 128)
    epochs: int = setting(NONNEG_INT, 10)
    lr: float = setting(POSITIVE, 2e-3)
    weight_decay: float = setting(NONNEG, 5e-4)
    augment: bool = setting(BOOL, True)
    train_limit: int | None = setting(or_null(POS_INT), None)  # training images (null: the whole split)
    seed: int = setting(NONNEG_INT, 0)


@dataclass(frozen=True)
class EnergySettings(Section):
    """Liu et al. 2020's energy fine-tuning, batches half in-distribution, half outliers."""
    title: ClassVar[str] = "energy settings"
    epochs: int = setting(NONNEG_INT, 6)
    lr: float = setting(POSITIVE, 2e-3)
    weight: float = setting(NONNEG, ENERGY_WEIGHT)
    m_in: float = setting(_FINITE, ENERGY_M_IN)
    m_out: float = setting(_FINITE, ENERGY_M_OUT)

    def cross_check(self, prefix: str, problems: Problems) -> None:
        if not self.m_in < self.m_out:
            problems.add(f"{prefix}m_in", float(self.m_in), f"a number below {prefix}m_out={float(self.m_out)!r} "
                                                             f"(in-distribution energies are pushed low, outliers high)")


def _sources(v: Any) -> bool:
    return v is None or v in OUTLIER_SOURCES or (isinstance(v, list) and all(s in OUTLIER_SOURCES for s in v))


@dataclass(frozen=True)
class OutlierSettings(Section):
    """The auxiliary outliers of the energy fine-tuning."""
    title: ClassVar[str] = "outlier settings"
    sources: list = setting(Rule(_sources, f"a list of {', '.join(OUTLIER_SOURCES)} (data sets such as svhn go "
                                           f"in ood.outliers.datasets)"), ("photos", "noise", "shuffle"))
    datasets: list | None = setting(Rule(lambda v: v is None or isinstance(v, list),
                                         "a list of data-set mappings, e.g. [{name: svhn, root: data/svhn}]"), None)
    grayscale: str | bool = setting(Rule(lambda v: v in ("auto", True, False), "auto, true or false"), "auto")

    @property
    def source_list(self) -> list[str]:
        v = self.sources
        return [] if v is None else [v] if isinstance(v, str) else list(v)

    def cross_check(self, prefix: str, problems: Problems) -> None:
        from .ood.settings import outlier_dataset_problems  # reads the data registry

        for i, spec in enumerate(self.datasets or []):
            problems += outlier_dataset_problems(spec, f"{prefix}datasets[{i}]")
        if not self.source_list and not self.datasets:
            problems.add(f"{prefix}sources", self.source_list, "at least one source (or a data set in "
                                                               f"{prefix}datasets) for energy fine-tuning")


@dataclass(frozen=True)
class SanitySettings(Section):
    """The detector's sanity check: its AUROC for a genuinely different data set, stored with the detector.
    ``min_auroc``: below it the detector cannot tell that set from the real one, so its AUROC of a stitch is
    no evidence that the stitch is in-distribution (records flag it: ``ood/detector_trusted`` 0)."""
    title: ClassVar[str] = "sanity-check settings"
    # auto: SVHN vs CIFAR-10 when present, else a fitting offline set | a data set's name | null (none)
    data: str | None = setting(Rule(lambda v: v is None or isinstance(v, str), "a data-set name, auto or null"),
                               "auto")
    options: dict | None = setting(MAPPING, None)
    samples: int = setting(Rule(lambda v: _int(v) and v >= 2, "an integer >= 2"), 1000)
    min_auroc: float = setting(Rule(lambda v: _number(v) and 0 <= v <= 1, "an AUROC between 0 and 1"), 0.9)

    def cross_check(self, prefix: str, problems: Problems) -> None:
        from . import data as data_lib  # the registry (cheap: nothing is read)

        names = data_lib.list_datasets()
        if self.data not in (None, "auto", "none", "null") and self.data not in names:
            problems.add(f"{prefix}data", self.data, f"a data-set name ({', '.join(names)}), auto or null")
        elif self.data in names and self.options:
            from .ood.settings import data_option_problems

            problems += data_option_problems(self.data, dict(self.options), f"{prefix}options")

    def spec(self) -> dict:
        """``{"data", "options", "samples", "min_auroc"}`` with defaults (``stitch.ood.sanity`` reads it)."""
        return {"data": self.data, "options": dict(self.options or {}), "samples": self.samples,
                "min_auroc": float(self.min_auroc)}


@dataclass(frozen=True)
class OODSettings(Section):
    """Paper 2's OOD score (``stitch/ood``); part of a run's identity only when ``enabled``. Checks that build
    things (the detector's architecture, outlier data sets) run only when it is."""
    title: ClassVar[str] = "OOD settings (switch them on with ood.enabled=true)"
    enabled: bool = setting(BOOL, False)
    split: str = setting(one_of("train", "val", "test"), "test")  # images the stitch is scored on
    detector: DetectorSettings = section(DetectorSettings)
    energy: EnergySettings = section(EnergySettings)
    outliers: OutlierSettings = section(OutlierSettings)
    sanity: SanitySettings = section(SanitySettings)

    def cross_check(self, prefix: str, problems: Problems) -> None:
        if self.enabled:
            problems += self.detector_problems(prefix)

    def detector_problems(self, prefix: str = "ood.") -> list[str]:
        """What would fail only once the detector is trained: its architecture's options (built once,
        untrained) and a detector with no training at all."""
        from .ood.settings import conv_option_problems

        problems = Problems()
        conv = self.detector.conv
        problems += conv_option_problems(conv.arch, conv.options, f"{prefix}detector.conv.")
        if self.detector.epochs + self.energy.epochs == 0:
            problems.add(f"{prefix}energy.epochs", 0, f"an integer >= 1 when {prefix}detector.epochs=0 (with both 0 "
                                                      f"the detector would be untrained)")
        return problems


@dataclass(frozen=True)
class OptimSettings(Section):
    """A donor's optimiser (``conf/optim/*.yaml``, ``stitch/training.py``)."""
    title: ClassVar[str] = "optimiser settings"
    name: str = setting(one_of("sgd", "adam", "adamw"), "sgd")
    lr: float = setting(POSITIVE, 0.05)
    momentum: float = setting(NONNEG, 0.9)
    weight_decay: float = setting(NONNEG, 5e-4)
    nesterov: bool = setting(BOOL, False)
    schedule: str = setting(one_of("cosine", "step", "constant"), "cosine")
    warmup_epochs: int = setting(NONNEG_INT, 0)


@dataclass(frozen=True)
class LoggerSettings(Section):
    """Where runs are logged (``conf/logger/*.yaml``): none, csv (donor training) or wandb."""
    title: ClassVar[str] = "logger settings"
    name: str = setting(one_of("none", "csv", "wandb"), "none")
    project: str = setting(TEXT, "model-stitching")
    entity: str | None = setting(TEXT, None)
    group: str | None = setting(TEXT, None)
    mode: str | None = setting(or_null(one_of("online", "offline", "disabled")), None)
    check_host: str = setting(TEXT, "auto")
    check_timeout_s: float = setting(POSITIVE, 2.0)
    save_dir: str = setting(TEXT, None)
    tags: list = setting(Rule(lambda v: isinstance(v, (list, tuple)) and all(isinstance(t, str) for t in v),
                              "a list of strings"), ())


@dataclass(frozen=True)
class DonorSettings(Section):
    """How missing donors are trained; a donor's identity is its store key and sha256, not these."""
    title: ClassVar[str] = "donor settings"
    train_missing: bool = setting(BOOL, True)
    allow_chance: bool = setting(BOOL, False)  # stitch donors whose test accuracy is near chance (refused by default)
    epochs: int = setting(POS_INT, 30)
    optim: OptimSettings = section(OptimSettings)
    trainer: dict = setting(MAPPING, None)


@dataclass(frozen=True)
class LMCSettings(Section):
    """Linear mode connectivity of saved stitching layers (``step=lmc``, ``stitch/study/lmc.py``)."""
    title: ClassVar[str] = "LMC settings"
    lambdas: int = setting(Rule(lambda v: _int(v) and v >= 2, "an integer >= 2"), 11)  # points on [0, 1]
    pairs: list = setting(Rule(lambda v: isinstance(v, list) and len(v) > 0 and set(v) <= {"seeds", "methods"},
                               "a non-empty list of: seeds, methods"), ("seeds", "methods"))
    min_relative_acc: float = setting(NONNEG, 0.8)  # paper 1: both ends at >= 80 % relative accuracy
    max_pairs: int = setting(POS_INT, 4)  # per layer pair and pair type


@dataclass(frozen=True)
class ProbingSettings(Section):
    """Ding et al.'s specificity and sensitivity tests of the study's indices (``step=probing``,
    ``stitch/study/probing.py``)."""
    title: ClassVar[str] = "probing settings"
    train_limit: int | None = setting(or_null(POS_INT), 10000)  # images for probes, DM and TLM (a mixed sample)
    test_limit: int | None = setting(or_null(POS_INT), None)
    layers: list | None = setting(or_null(LAYERS), None)  # sensitivity layers; null: the study's source layers
    levels: int = setting(Rule(lambda v: _int(v) and v >= 3, "an integer >= 3"), 6)  # deletion levels
    order: str = setting(one_of("lowest", "highest"), "lowest")  # which principal components go first
    tlm_epochs: int = setting(NONNEG_INT, 1)  # 0: no TLM in the sensitivity test
    tlm_lr: float = setting(POSITIVE, 1e-3)


_METHODS = {"tlm": TLMSettings, "dm": DMSettings}


@dataclass(frozen=True)
class StudySettings(Section):
    """One stitching study (``conf/stitch.yaml``)."""
    title: ClassVar[str] = "study settings"
    study: str = setting(TEXT, "default", results=False)
    results_dir: str = setting(PATH, "results/default", results=False)
    store: str = setting(PATH, "models", results=False)
    seed: int = setting(INT, 0)
    # the layer pair of a run enters its identity as (layer, target_layer) names, not these selections
    layer: str | list = setting(LAYERS, "all", results=False)
    target_layer: str | list | None = setting(or_null(LAYERS), None, results=False)
    data: DataSpec = section(DataSpec)
    model1: ModelSpec = section(ModelSpec)
    model2: ModelSpec = section(ModelSpec)
    # name -> TLMSettings | DMSettings; a run's identity holds its own method's settings
    method: dict = field(default=None, metadata={"rule": ANY, "results": False})
    tlm: dict = setting(MAPPING, None, results=False)  # the sources of method.tlm / method.dm
    dm: dict = setting(MAPPING, None, results=False)
    device: str = setting(DEVICE, "auto", results=False)
    # hashed as set (auto, not bf16/32); a finished record is reused only at the same resolved precision
    # (stitch/study/records.py: done_before)
    precision: str | int = setting(PRECISION, "auto")
    batch_size: int = setting(POS_INT, 256, results=False)
    fold_batchnorm: bool = setting(BOOL, True, results=False)  # equal within float32 rounding
    channels_last: bool = setting(BOOL, True, results=False)
    # a variable the rank experiments sweep and interpolate into tlm.rank and dm.rank (conf/experiment/p1_fig7_*)
    rank: int | None = setting(or_null(POS_INT), None)
    train_limit: int | None = setting(or_null(POS_INT), None)
    test_limit: int | None = setting(or_null(POS_INT), None)
    cache: CacheSettings = section(CacheSettings, results=False)
    similarity: SimilaritySettings = section(SimilaritySettings)
    ood: OODSettings = section(OODSettings)
    donor: DonorSettings = section(DonorSettings, results=False)
    logger: LoggerSettings = section(LoggerSettings, results=False)
    # what stitch.py does: stitch (fit and record every run) | lmc (interpolate the saved layers of finished runs)
    step: str = setting(one_of("stitch", "lmc", "probing"), "stitch", results=False)
    lmc: LMCSettings = section(LMCSettings, results=False)
    probing: ProbingSettings = section(ProbingSettings, results=False)
    force: bool = setting(BOOL, False, results=False)
    save_stitch: bool = setting(BOOL, False, results=False)
    print_table: bool = setting(BOOL, True, results=False)
    # optional (+claim_timeout_s=..., +progress_every_s=...; stitch/study/runner.py)
    claim_timeout_s: float = setting(POSITIVE, 6 * 3600.0, results=False)
    progress_every_s: float = setting(NONNEG, 30.0, results=False)

    @classmethod
    def parse(cls, raw: Any, prefix: str, problems: Problems):
        if not isinstance(raw, dict):
            problems.add("config", raw, "a mapping")
            return None
        methods = raw.get("method")
        raw = {k: v for k, v in raw.items() if k != "method"}
        obj = super().parse(raw, prefix, problems)
        parsed: dict[str, Section] = {}
        if not methods or not isinstance(methods, dict):
            problems.add("method", methods, "tlm, dm or [tlm,dm]")
        else:
            for name, m in methods.items():
                # the user writes tlm.lr=..., not method.tlm.lr (conf/method/*.yaml interpolate the tlm/dm nodes)
                key = name if raw.get(name) == m else f"method.{name}"
                kind = m.get("kind") if isinstance(m, dict) else m
                if kind is None and isinstance(m, dict):  # e.g. +method.tlm.foo=1 made a new entry
                    problems.append(f"{key}={shown(m)}: not a method; methods are chosen with method=tlm|dm|[tlm,dm] "
                                    f"and set with tlm.<key>=... / dm.<key>=...")
                    continue
                if kind not in _METHODS:
                    problems.add(f"{key}.kind", kind, "one of tlm, dm")
                    continue
                parsed[name] = _METHODS[kind].parse(m, f"{key}.", problems)
        if obj is None:
            return None
        for which, section_type in _SECTIONS.items():
            if getattr(obj, which) is None:  # not set: the section's defaults
                object.__setattr__(obj, which, section_type())
        object.__setattr__(obj, "method", parsed)
        return obj

    # ------------------------------------------------------------------ derived
    @property
    def self_stitch_possible(self) -> bool:
        return self.model1.name == self.model2.name and self.model1.options == self.model2.options

    def cross_check(self, prefix: str, problems: Problems) -> None:
        if self.logger is not None and self.logger.name == "csv":  # Lightning's CSV logger: donor training only
            problems.add("logger.name", "csv", "none or wandb for stitching studies (csv logs donor training: "
                                               "python train_models.py logger=csv)")

    def identity(self) -> dict:
        out = super().identity()
        if not self.ood.enabled:
            out.pop("ood", None)  # detector settings only matter when OOD scores are computed
        return out


_SECTIONS = {"data": DataSpec, "model1": ModelSpec, "model2": ModelSpec, "cache": CacheSettings,
             "similarity": SimilaritySettings, "ood": OODSettings, "donor": DonorSettings, "lmc": LMCSettings,
             "probing": ProbingSettings,
             "logger": LoggerSettings}


def _raise(problems: list[str]) -> None:
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} configuration problems:\n  " + "\n  ".join(problems))


def study_settings(cfg: dict) -> StudySettings:
    """The typed settings of a resolved ``conf/stitch.yaml`` config; ``ConfigError`` lists every problem."""
    if isinstance(cfg, StudySettings):
        return cfg
    problems = Problems()
    if isinstance(cfg, dict) and not isinstance(cfg.get("ood", {}), (dict, type(None))):
        # ood=true replaces the whole group (detector settings included) with a bool
        problems.add("ood", cfg["ood"], "the group of OOD settings; switch it with ood.enabled=true|false")
        cfg = {k: v for k, v in cfg.items() if k != "ood"}
    s = StudySettings.parse(cfg, "", problems)
    _raise(problems)
    return s


def check_stitch(cfg: dict) -> None:
    """Raise ``ConfigError`` listing every problem of a resolved ``conf/stitch.yaml`` config."""
    study_settings(cfg)


@dataclass(frozen=True)
class TrainSettings(Section):
    """One donor training (``conf/train.yaml``; ``stitch/donors.py``). A study that trains a missing donor
    builds the same object (``for_donor``), so both paths train with one set of defaults."""
    title: ClassVar[str] = "training settings"
    data: DataSpec = section(DataSpec)
    model: ModelSpec = section(ModelSpec)  # its name and options; the donor's seed is ``seed``
    optim: OptimSettings = section(OptimSettings)
    trainer: dict = setting(MAPPING, None)  # Lightning Trainer arguments (conf/trainer/*.yaml), passed through
    logger: LoggerSettings = section(LoggerSettings)
    seed: int | str = setting(Rule(lambda v: _int(v) and v >= 0, "an integer seed >= 0"), 0)
    epochs: int = setting(POS_INT, 30)
    store: str = setting(PATH, "models")
    force: bool = setting(BOOL, False)

    @classmethod
    def parse(cls, raw: Any, prefix: str, problems: Problems):
        obj = super().parse(raw, prefix, problems)
        if obj is not None:
            if obj.data.name is ABSENT:
                problems.add("data.name", None, "a data set name (data=<name>)")
        return obj

    @classmethod
    def for_donor(cls, model: ModelSpec, data: DataSpec, donor: DonorSettings, store: str) -> "TrainSettings":
        """A study's missing donor ``model`` (its seed included), trained as ``donor`` says, no logger."""
        return cls(data=data, model=model, optim=donor.optim or OptimSettings(), trainer=donor.trainer,
                   logger=LoggerSettings(), seed=model.seed, epochs=donor.epochs, store=store,
                   given=frozenset({"data", "model", "optim", "trainer", "seed", "epochs", "store"}))

    @property
    def trainer_args(self) -> dict:
        return dict(self.trainer or {})


def train_settings(cfg: dict) -> TrainSettings:
    """The typed settings of a resolved ``conf/train.yaml`` config; ``ConfigError`` lists every problem."""
    if isinstance(cfg, TrainSettings):
        return cfg
    problems = Problems()
    if not isinstance(cfg, dict):
        problems.add("config", cfg, "a mapping")
        _raise(problems)
    t = TrainSettings.parse({k: v for k, v in cfg.items() if k != "hydra"}, "", problems)
    _raise(problems)
    return t


def check_train(cfg: dict) -> None:
    """Raise ``ConfigError`` listing every problem of a resolved ``conf/train.yaml`` config."""
    train_settings(cfg)

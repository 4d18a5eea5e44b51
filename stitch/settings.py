"""Validation of the composed configurations, before any work is done.

``check_stitch(cfg)`` (``stitch.py``) and ``check_train(cfg)`` (``train_models.py``) take the
resolved config dict and raise one ``ConfigError`` that lists every problem, one line each:
the key, the value given and what is allowed, e.g. ``tlm.loss='sofft': expected one of hard,
soft``. ``check_layers(cfg, num_classes)`` cross-checks layer names against untrained
networks, so a layer typo fails before any donor is trained.

The rules are tables (key -> Rule); the sections with a fixed set of keys (``tlm``, ``dm``,
``cache``, ``similarity``) also report keys they do not know, e.g. ``+tlm.epoch=5``. Hydra
itself rejects ``tlm.epoch=5`` (no ``+``) before this code runs.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from . import similarity
from .errors import ConfigError
from .matching import KINDS


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
    if not isinstance(v, list):
        return False
    try:
        for name in v:
            similarity.get(name)  # what evaluation.py looks the names up with
    except ValueError:
        return False
    return True


INT = Rule(_int, "an integer")
# donors trained here have integer seeds; imported ones are named (python -m stitch.store import ... --name in0)
DONOR = Rule(lambda v: (_int(v) and v >= 0) or (isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", v) is not None),
             "an integer seed >= 0 or an imported donor's name (letters, digits, . _ -)")
POS_INT = Rule(lambda v: _int(v) and v > 0, "a positive integer")
NONNEG_INT = Rule(lambda v: _int(v) and v >= 0, "an integer >= 0")
BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
POSITIVE = Rule(lambda v: _number(v) and v > 0, "a finite number > 0")
NONNEG = Rule(lambda v: _number(v) and v >= 0, "a finite number >= 0")
TEXT = Rule(lambda v: v is None or isinstance(v, str), "a string")
LAYERS = Rule(_layer_names, "a layer name, all, or a non-empty list of layer names")
DEVICE = Rule(lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v) is not None,
              "auto, cpu, cuda, cuda:N or mps")
# Hydra parses precision=32 as an int, hence str()
PRECISION = Rule(lambda v: not isinstance(v, bool) and str(v) in ("auto", "32", "bf16", "16"),
                 "one of auto, 32, bf16, 16")

STITCH_TOP = {
    "seed": INT, "model1.seed": DONOR, "model2.seed": DONOR,
    "model1.weights": or_null(Rule(lambda v: isinstance(v, str) and v != "", "a state-dict file path")),
    "model2.weights": or_null(Rule(lambda v: isinstance(v, str) and v != "", "a state-dict file path")),
    "layer": LAYERS, "target_layer": or_null(LAYERS),
    "device": DEVICE, "precision": PRECISION, "batch_size": POS_INT, "train_limit": or_null(POS_INT),
    "test_limit": or_null(POS_INT), "force": BOOL, "save_stitch": BOOL, "fold_batchnorm": BOOL,
    "channels_last": BOOL, "print_table": BOOL,
    "donor.train_missing": BOOL, "donor.epochs": POS_INT,
    # optional (+claim_timeout_s=..., +progress_every_s=...; stitch/experiment.py)
    "claim_timeout_s": POSITIVE, "progress_every_s": NONNEG,
}
CACHE = {"enabled": BOOL, "budget_gb": Rule(lambda v: v == "auto" or POSITIVE.ok(v), "auto or a number > 0"),
         "dtype": one_of("auto", "float32", "float16", "bfloat16")}
SIMILARITY = {"indices": Rule(_similarity_names, f"a list of: {', '.join(sorted(similarity.INDICES))}"),
              "samples": Rule(lambda v: _int(v) and v >= 4, "an integer >= 4"),
              "mode": one_of("rows", "pooled", "flatten"), "raw": BOOL}
TLM = {"kind": one_of("tlm"), "name": TEXT, "loss": one_of("hard", "soft"), "temperature": POSITIVE,
       "init": one_of("random", "identity", "dm", "ls"), "init_samples": or_null(POS_INT), "lr": POSITIVE,
       "weight_decay": NONNEG, "batch_size": POS_INT, "epochs": POS_INT,
       "schedule": one_of("constant", "step", "cosine"), "augment": BOOL, "rank": or_null(POS_INT), "l1": NONNEG,
       "cka_penalty": NONNEG, "track_every": NONNEG_INT, "track_samples": POS_INT, "zero_threshold": NONNEG}
DM = {"kind": one_of("dm"), "name": TEXT, "solver": one_of(*KINDS), "split": one_of("train", "test"),
      "samples": or_null(POS_INT),
      "rank": or_null(POS_INT), "alpha": or_null(POSITIVE), "bias": BOOL, "zero_threshold": NONNEG}
TRAIN_TOP = {"seed": INT, "epochs": POS_INT, "optim.lr": POSITIVE, "force": BOOL}

_MISSING = object()


def _get(cfg: dict, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return _MISSING
        cfg = cfg[part]
    return cfg


def _line(key: str, value: Any, allowed: str) -> str:
    return f"{key}={value!r}: expected {allowed}"


def _check(cfg: dict, rules: dict[str, Rule], prefix: str = "", closed: bool = False) -> list[str]:
    """Problems of ``cfg`` under ``rules``; keys absent from ``cfg`` take the code's defaults."""
    problems = []
    for key, rule in rules.items():
        value = _get(cfg, key)
        if value is not _MISSING and not rule.ok(value):
            problems.append(_line(prefix + key, value, rule.allowed))
    if closed:
        problems += [f"{prefix}{k}={cfg[k]!r}: unknown key; {prefix.rstrip('.')} keys are: {', '.join(rules)}"
                     for k in cfg if k not in rules]
    return problems


def _section(cfg: dict, key: str, rules: dict[str, Rule]) -> list[str]:
    value = cfg.get(key, {})
    if not isinstance(value, dict):
        return [_line(key, value, f"a group of settings ({', '.join(rules)})")]
    return _check(value, rules, f"{key}.", closed=True)


def _method(cfg: dict, name: str, m: Any) -> list[str]:
    # the user writes tlm.lr=..., not method.tlm.lr (conf/method/*.yaml interpolate the tlm/dm nodes)
    key = name if cfg.get(name) == m else f"method.{name}"
    if not isinstance(m, dict) or m.get("kind") not in ("tlm", "dm"):
        kind = m.get("kind") if isinstance(m, dict) else m
        return [_line(f"{key}.kind", kind, "one of tlm, dm")]
    if m["kind"] == "tlm":
        return _check(m, TLM, f"{key}.", closed=True)
    problems = _check(m, DM, f"{key}.", closed=True)
    # the solver's own parameter must be set (its type is checked above)
    for solver, param, allowed in (("rank", "rank", "a positive integer"), ("lasso", "alpha", "a number > 0")):
        if m.get("solver") == solver and m.get(param) is None:
            problems.append(_line(f"{key}.{param}", None, f"{allowed} with solver={solver}"))
    return problems


def _raise(problems: list[str]) -> None:
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} configuration problems:\n  " + "\n  ".join(problems))


def check_stitch(cfg: dict) -> None:
    """Raise ``ConfigError`` listing every problem of a resolved ``conf/stitch.yaml`` config."""
    problems = _check(cfg, STITCH_TOP)
    problems += _section(cfg, "cache", CACHE)
    problems += _section(cfg, "similarity", SIMILARITY)
    methods = cfg.get("method")
    if not methods or not isinstance(methods, dict):
        problems.append(_line("method", methods, "tlm, dm or [tlm,dm]"))
    else:
        for name, m in methods.items():
            problems += _method(cfg, name, m)
    ood = cfg.get("ood", {})
    if isinstance(ood, dict):
        problems += _check(ood, {"enabled": BOOL}, "ood.")
    else:  # ood=true replaces the whole group (detector settings included) with a bool
        problems.append(_line("ood", ood, "the group of OOD settings; switch it with ood.enabled=true|false"))
    _raise(problems)


def check_train(cfg: dict) -> None:
    """Raise ``ConfigError`` listing every problem of a resolved ``conf/train.yaml`` config."""
    _raise(_check(cfg, TRAIN_TOP))


def check_layers(cfg: dict, num_classes: int, input_shape: tuple[int, ...] | None = None) -> None:
    """Reject layer names the two models do not have, using untrained networks (no donor needed).

    Names are resolved as ``experiment.layer_pairs`` does (aliases, groups, ``all``), by the networks.
    """
    from . import models  # builds networks: imported only when layers are checked

    def build(m: dict):
        return models.build(m["name"], num_classes, **dict(m.get("options") or {}))

    m1 = build(cfg["model1"])
    same = all(cfg["model1"].get(k) == cfg["model2"].get(k) for k in ("name", "options"))
    nets = {"model1": m1, "model2": m1 if same else build(cfg["model2"])}
    problems: list[str] = []
    if input_shape is not None:  # e.g. a 224-px ViT on 32-px images: say so before any donor is trained
        for which, net in nets.items():
            try:
                net.layer_shapes(tuple(input_shape))
            except Exception as e:  # noqa: BLE001 - any failure here means the input does not fit
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                problems.append(f"{which}={cfg[which]['name']} {cfg[which].get('options') or {}} cannot take "
                                f"{cfg['data']['name']} images of shape {tuple(input_shape)} ({first}); pick a "
                                f"matching input size (e.g. model@{which}=vit_tiny_32 or {which}.options.img_size=...)")
        _raise(problems)
    selected = {}
    for key, which in (("layer", "model1"), ("target_layer", "model2")):
        if cfg.get(key) is not None:
            try:
                selected[key] = nets[which].select_layers(cfg[key])
            except models.UnknownLayerError as e:
                problems.append(f"{key}={cfg[key]!r} ({which}): {e}")
    if cfg.get("target_layer") is None and "layer" in selected:  # the target is the source layer
        missing = [n for n in selected["layer"] if n not in nets["model2"].layers]
        if missing:
            problems.append(f"target_layer=None: the target is then the source layer, and model2 "
                            f"({cfg['model2']['name']}) has no layer {missing[0]!r}; pass target_layer=<name> "
                            f"or all (model2 layers: {', '.join(nets['model2'].layers)})")
    _raise(problems)

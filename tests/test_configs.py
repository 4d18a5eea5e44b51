"""Every experiment config composes with the real ``conf/stitch.yaml`` and passes the config checks.

Nothing is trained or loaded: the configs are composed through Hydra's compose API, resolved as
``hydra.main`` would resolve them for a job (the ``hydra:`` resolver set, the ``hydra`` node dropped)
and validated by ``stitch.settings`` (what ``stitch.py`` and ``train_models.py`` run before any work).
A new ``conf/experiment/*.yaml`` is picked up automatically.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict, read_write

from stitch.errors import ConfigError
from stitch.settings import check_stitch, check_train

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
MAX_VALUES = 4  # values tried per swept key (seed ranges run to 50)


def test_there_are_experiments():
    assert EXPERIMENTS, f"no experiment configs in {CONF / 'experiment'}"
    assert {"p1_fig2_smoke", "p2_fig1_smoke"} <= set(EXPERIMENTS)


def _sweep(params) -> dict[str, list[str]]:
    """``hydra.sweeper.params`` -> {key: its values as override strings}, in Hydra's order."""
    parser = OverridesParser.create()
    out = {}
    for key, spec in (params or {}).items():
        override = parser.parse_override(f"{key}={spec}")
        out[key] = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                    else [override.get_value_element_as_str()])
        assert out[key], f"hydra.sweeper.params.{key}={spec!r} sweeps no value"
    return out


def _resolved(config: str, overrides: list[str], output_dir: Path) -> dict:
    """The job config ``hydra.main`` would hand the task function, as the resolved dict the scripts check."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config, overrides=overrides, return_hydra_config=True)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.runtime.output_dir = str(output_dir)  # what run_job sets before the task runs
    HydraConfig.instance().set_config(cfg)
    try:
        task = copy.deepcopy(cfg)
        with read_write(task), open_dict(task):
            del task["hydra"]
        return OmegaConf.to_container(task, resolve=True)  # type: ignore[return-value]
    finally:
        HydraConfig.instance().cfg = None


def _sweeper_params(name: str) -> dict[str, list[str]]:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        composed = compose("stitch", overrides=[f"+experiment={name}"], return_hydra_config=True)
    params = _sweep(OmegaConf.select(composed, "hydra.sweeper.params", default=None))
    # the sweep Hydra runs is the one written in the experiment's yaml (merged into the global package)
    raw = OmegaConf.load(CONF / "experiment" / f"{name}.yaml")
    assert params == _sweep(OmegaConf.select(raw, "hydra.sweeper.params", default=None))
    return params


def _number(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _assert_took(c: dict, key: str, value: str) -> None:
    """The job config really has the swept value (so the configs checked are the sweep's jobs)."""
    if "@" in key or (CONF / key).is_dir():  # a config group choice: model@model1=resnet20, dm=least_squares
        group, _, package = key.partition("@")
        want = OmegaConf.load(CONF / group / f"{value}.yaml").get("name")
        node = c[package or group]
        if want is not None:
            assert node.get("name") == want, f"{key}={value}: got {node.get('name')!r}"
        return
    got = OmegaConf.select(OmegaConf.create(c), key)
    assert str(got) == value or (_number(got) is not None and _number(got) == _number(value)), \
        f"{key}={value}: the composed config has {got!r}"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_resolves_and_passes_the_checks(name, tmp_path):
    params = _sweeper_params(name)
    first = [f"{k}={v[0]}" for k, v in params.items()]
    # the first job of the sweep, then each further value of each swept key with the others at their first
    jobs = [first] + [[o if not o.startswith(f"{k}=") else f"{k}={v}" for o in first]
                      for k, values in params.items() for v in values[1:MAX_VALUES]]
    for job in jobs:
        c = _resolved("stitch", [f"+experiment={name}", *job], tmp_path)
        check_stitch(c)
        assert c["study"] == name, "the study is named after the experiment (its results go to results/<study>)"
        for override in job:
            _assert_took(c, *override.split("=", 1))


def test_an_invalid_experiment_override_is_rejected(tmp_path):
    """The check is not vacuous: the same composition with bad values fails, naming each of them."""
    name = EXPERIMENTS[0]
    first = [f"{k}={v[0]}" for k, v in _sweeper_params(name).items()]
    c = _resolved("stitch", [f"+experiment={name}", *first, "tlm.loss=sofft", "batch_size=0"], tmp_path)
    with pytest.raises(ConfigError, match=r"(?s)batch_size=0.*tlm.loss='sofft'"):
        check_stitch(c)


def test_default_stitch_config_composes_and_passes_the_check(tmp_path):
    check_stitch(_resolved("stitch", [], tmp_path))


def test_train_config_composes_and_passes_the_check(tmp_path):
    c = _resolved("train", [], tmp_path)
    check_train(c)
    assert c["data"]["name"] and c["model"]["name"] and c["optim"]["name"]
    assert c["logger"]["save_dir"] == str(tmp_path)  # the csv logger writes to the job's output directory
    with pytest.raises(ConfigError, match="epochs=0"):
        check_train(_resolved("train", ["epochs=0"], tmp_path))


def test_train_config_checks_every_section_and_lists_all_problems(tmp_path):
    """train_models.py's data, model, optimiser and logger are typed sections like a study's: every problem is
    reported at once, with the keys a section takes."""
    from stitch.settings import TrainSettings, train_settings

    bad = _resolved("train", ["+data.batch_sise=3", "model.name=tiny11", "optim.lr=-1", "+logger.mode=onlin",
                              "seed=-2"], tmp_path)
    with pytest.raises(ConfigError) as e:
        check_train(bad)
    text = str(e.value)
    assert text.startswith("5 configuration problems")
    for part in ("data.batch_sise=3: unknown key (did you mean batch_size?)", "model.name='tiny11': expected one of",
                 "optim.lr=-1: expected a finite number > 0", "logger.mode='onlin'", "seed=-2"):
        assert part in text, (part, text)
    t = train_settings(_resolved("train", ["optim=adam"], tmp_path))
    assert isinstance(t, TrainSettings) and t.optim.name == "adam" and t.data.name == "digits"

"""Typed study settings: validation before any work, and run identity from the result-changing fields.

The configs are the real ones (``conf/stitch.yaml`` composed by Hydra, resolved as ``stitch.py`` does);
nothing is trained. The exit-code tests (``test_exit_codes.py``) drive a few of these cases through
the real CLI; this table covers every section in-process.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from stitch.errors import ConfigError
from stitch.settings import ABSENT, DMSettings, Section, StudySettings, TLMSettings, study_settings
from stitch.study.layer_checks import check_layers
from stitch.study.records import run_identity

from .test_configs import _resolved


def _settings(tmp_path: Path, *overrides: str) -> StudySettings:
    return study_settings(_resolved("stitch", list(overrides), tmp_path))


def _ids(s: StudySettings, layer: str) -> list[str]:
    return [run_identity(s, layer, layer, m)[0] for m in s.method]


# ------------------------------------------------------------------ run identity
# Run ids of earlier versions (records on disk are found by these names): the typed allow-list
# must give exactly the ids the previous deny-list gave, or every finished run would run again.
GOLDEN = [
    ([], "relu3", ["tiny10.s0.relu3--tiny10.s1.relu3--tlm.seed0-7143460b0e",
                   "tiny10.s0.relu3--tiny10.s1.relu3--dm.seed0-d0e283671d"]),
    (["+experiment=p1_fig7_smoke", "rank=4", "dm=reduced_rank"], "layer3",
     ["tiny10.s0.layer3--tiny10.s1.layer3--tlm.seed0-52fe230bb7",
      "tiny10.s0.layer3--tiny10.s1.layer3--dm.seed0-e567ed28ba"]),
    (["ood.enabled=true"], "relu2", ["tiny10.s0.relu2--tiny10.s1.relu2--tlm.seed0-6a2dd18e50",
                                     "tiny10.s0.relu2--tiny10.s1.relu2--dm.seed0-39542ad646"]),
    (["data=cifar10", "model@model1=tiny10_unpadded", "model@model2=tiny10_unpadded", "model1.seed=in0",
      "model2.seed=in1", "dm.split=test"], "bn3",
     ["tiny10-padding=none.sin0.bn3--tiny10-padding=none.sin1.bn3--tlm.seed0-b06a499c22",
      "tiny10-padding=none.sin0.bn3--tiny10-padding=none.sin1.bn3--dm.seed0-b367deb40c"]),
]


@pytest.mark.parametrize("overrides,layer,ids", GOLDEN, ids=["default", "p1_fig7", "ood", "released"])
def test_run_ids_of_earlier_versions_are_kept(tmp_path, overrides, layer, ids):
    assert _ids(_settings(tmp_path, *overrides), layer) == ids


# (override, changes results?): every field of the study declares it; the identity follows the declaration
IDENTITY_CASES = [
    ("device=cpu", False), ("batch_size=32", False), ("cache.enabled=false", False), ("cache.dtype=float16", False),
    ("force=true", False), ("save_stitch=true", False), ("print_table=false", False), ("store=/elsewhere", False),
    ("results_dir=/elsewhere", False), ("study=renamed", False), ("fold_batchnorm=false", False),
    ("channels_last=false", False), ("+claim_timeout_s=60", False), ("+progress_every_s=5", False),
    ("donor.epochs=3", False), ("model1.weights=/some/file.pt", False), ("step=lmc", False),
    ("lmc.lambdas=5", False), ("logger=wandb", False), ("ood.detector.epochs=3", False),  # OOD off: not scored
    ("seed=1", True), ("precision=bf16", True), ("train_limit=100", True), ("test_limit=100", True),
    ("tlm.lr=0.5", True), ("dm.bias=false", True), ("data.normalize=false", True), ("similarity.samples=64", True),
    ("similarity.indices=[cka]", True), ("model1.options.padding=none", True), ("model2.seed=7", True),
    ("ood.enabled=true", True),
]


@pytest.mark.parametrize("override,changes", IDENTITY_CASES, ids=[c[0] for c in IDENTITY_CASES])
def test_run_identity_holds_exactly_the_settings_that_change_results(tmp_path, override, changes):
    base = _ids(_settings(tmp_path), "relu3")
    other = _ids(_settings(tmp_path, override), "relu3")
    if override.startswith("tlm."):
        assert other[1] == base[1] and (other[0] != base[0]) is changes  # only its own method's runs
    elif override.startswith("dm."):
        assert other[0] == base[0] and (other[1] != base[1]) is changes
    else:
        assert [o != b for o, b in zip(other, base)] == [changes, changes]


def test_data_location_is_not_part_of_the_identity(tmp_path):
    a = _settings(tmp_path, "data=cifar10", "data.root=/a", "data.cache=false", "data.num_workers=4")
    b = _settings(tmp_path, "data=cifar10", "data.root=/b")
    assert _ids(a, "relu3") == _ids(b, "relu3")
    assert _ids(a, "relu3") != _ids(_settings(tmp_path, "data=cifar10", "data.augment=false"), "relu3")


def test_an_option_the_config_does_not_set_stays_out_of_the_identity(tmp_path):
    """A new option with a code default (here: DM's split, set to its identity default) re-hashes nothing."""
    s = _settings(tmp_path)
    assert "split" in s.method["dm"].given and s.method["dm"].split == "train"
    without = DMSettings(**{k: getattr(s.method["dm"], k) for k in s.method["dm"].given if k != "split"},
                         given=s.method["dm"].given - {"split"})
    assert without.split == "train"  # the code's default still applies
    s2 = dataclasses.replace(s, method={**s.method, "dm": without})
    assert _ids(s2, "relu3") == _ids(s, "relu3")
    # an option absent from the config takes the code's default and is not hashed
    assert TLMSettings().epochs == 30 and TLMSettings().identity() == {}


def _sections(cls) -> list[type[Section]]:
    out = [cls]
    for f in dataclasses.fields(cls):
        if f.metadata.get("section"):
            out += _sections(f.metadata["section"])
    return out


@pytest.mark.parametrize("cls", sorted(set(_sections(StudySettings)) | {TLMSettings, DMSettings},
                                       key=lambda c: c.__name__))
def test_every_field_declares_a_rule_and_whether_it_changes_results(cls):
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        assert "results" in f.metadata, f"{cls.__name__}.{f.name} does not say whether it changes results"
        assert f.metadata.get("section") or f.metadata.get("rule") is not None, f"{cls.__name__}.{f.name}: no rule"
        if f.default is not ABSENT and f.metadata.get("rule") is not None and f.default is not None:
            ok = f.metadata["rule"].ok(list(f.default) if isinstance(f.default, tuple) else f.default)
            assert ok, f"{cls.__name__}.{f.name}: its default {f.default!r} breaks its own rule"


# -------------------------------------------------------------------- validation
# (overrides, the one-line message must start with): one per section and kind of mistake
BAD = [
    (["tlm.schedule=cos"], "tlm.schedule='cos': expected one of constant, step, cosine"),
    (["tlm.init=zeros"], "tlm.init='zeros': expected one of random, identity, dm, ls"),
    (["tlm.temperature=0"], "tlm.temperature=0: expected a finite number > 0"),
    (["tlm.track_every=-1"], "tlm.track_every=-1: expected an integer >= 0"),
    (["tlm.rank=0"], "tlm.rank=0: expected a positive integer or null"),
    (["dm.samples=0"], "dm.samples=0: expected a positive integer or null"),
    (["dm.split=val"], "dm.split='val': expected one of train, test"),
    (["dm=reduced_rank", "dm.rank=null"], "dm.rank=null: expected a positive integer with solver=rank"),
    (["dm=lasso", "dm.alpha=null"], "dm.alpha=null: expected a number > 0 with solver=lasso"),
    (["cache.budget_gb=-1"], "cache.budget_gb=-1: expected auto or a number > 0"),
    (["similarity.samples=2"], "similarity.samples=2: expected an integer >= 4"),
    (["similarity.mode=grid"], "similarity.mode='grid': expected one of rows, pooled, flatten"),
    (["batch_size=0"], "batch_size=0: expected a positive integer"),
    (["train_limit=0"], "train_limit=0: expected a positive integer or null"),
    (["data.normalize=maybe"], "data.normalize='maybe': expected true or false"),
    (["+data.nrmalize=true"], "data.nrmalize=true: unknown key (did you mean normalize?); data keys are: name, root"),
    (["+foo=1"], "foo=1: unknown key;  keys are: study,"),
    (["+model1.sed=3"], "model1.sed=3: unknown key (did you mean seed?); model1 keys are: name, seed, options, weights"),
    (["donor.epochs=0"], "donor.epochs=0: expected a positive integer"),
    (["step=fit"], "step='fit': expected one of stitch, lmc"),
    (["lmc.lambdas=1"], "lmc.lambdas=1: expected an integer >= 2"),
    (["lmc.pairs=[seed]"], "lmc.pairs=['seed']: expected a non-empty list of: seeds, methods"),
    (["+claim_timeout_s=0"], "claim_timeout_s=0: expected a finite number > 0"),
    (["ood.enabled=true", "ood.detector.batch_size=1"], "ood.detector.batch_size=1: expected an integer >= 2"),
    (["ood.split=valid"], "ood.split='valid': expected one of train, val, test"),
    (["+data.root=/x"], "data.root='/x': digits does not take root; its keys are: augment, batch_size"),
    (["data.name=nosuch"], "data.name='nosuch': expected one of celeba, cifar10, digits"),
    (["model1.name=nosuch"], "model1.name='nosuch': expected one of "),
    (["+model1.options.widht=2"], "model1.options.widht=2: unknown option of tiny10; its options are: padding"),
    (["lmc.pairs=[[seeds]]"], "lmc.pairs=[['seeds']]: expected a non-empty list of: seeds, methods"),
    (["dm=lasso", "dm.alpha=-1"], "dm.alpha=-1: expected a finite number > 0 or null"),  # one line, no cross-check
    (["logger.name=wandbb"], "logger.name='wandbb': expected one of none, csv, wandb"),
    (["donor.optim.lr=-1"], "donor.optim.lr=-1: expected a finite number > 0"),
    (["+method.tlm.foo=1"], "method.tlm="),
    (["logger=csv"], "logger.name='csv': expected none or wandb for stitching studies"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_settings_give_one_line_naming_the_key_and_value(tmp_path, overrides, message):
    cfg = _resolved("stitch", overrides, tmp_path)
    with pytest.raises(ConfigError) as e:
        study_settings(cfg)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_layer_and_rank_cross_checks_use_untrained_networks(tmp_path):
    s = _settings(tmp_path, "layer=relu1", "method=[tlm]", "tlm.rank=64")  # Tiny-10 relu1 has 16 channels
    with pytest.raises(ConfigError, match=r"^tlm.rank=64: expected a positive integer <= 16"):
        check_layers(s, 10, (3, 32, 32))
    check_layers(_settings(tmp_path, "layer=relu1", "method=[tlm]", "tlm.rank=16"), 10, (3, 32, 32))
    with pytest.raises(ConfigError, match=r"^layer='relu99' \(model1\): .*relu1"):
        check_layers(_settings(tmp_path, "layer=relu99"), 10, (3, 32, 32))


def test_model_option_values_a_family_cannot_take_are_config_errors(tmp_path):
    s = _settings(tmp_path, "model@model1=resnet20", "model1.options.width=abc")
    with pytest.raises(ConfigError, match=r"^model1.options=\{width: 'abc'\}: resnet20 cannot be built with them"):
        check_layers(s, 10, (3, 32, 32))


def test_settings_are_typed_and_frozen(tmp_path):
    s = _settings(tmp_path, "tlm.epochs=3", "method=[tlm,dm]")
    assert isinstance(s.method["tlm"], TLMSettings) and s.method["tlm"].epochs == 3
    assert isinstance(s.method["dm"], DMSettings) and s.method["dm"].solver == "ls"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 3  # type: ignore[misc]


def test_cut_point_options_of_external_models_change_neither_the_donor_nor_the_run(tmp_path):
    """``model.options.layers`` of torchvision/timm models only chooses where the network may be cut."""
    from stitch.store import DonorKey

    base = ["model@model1=torchvision", "model@model2=torchvision", "layer=layer2.0"]
    a = _settings(tmp_path, *base)
    b = _settings(tmp_path, *base, "model1.options.layers=[layer2.0,layer3.0]")
    assert DonorKey.of(a.model1, a.data.name) == DonorKey.of(b.model1, b.data.name)
    assert hash(DonorKey.of(b.model1, b.data.name))  # a list-valued option no longer makes the key unhashable
    assert _ids(a, "layer2.0") == _ids(b, "layer2.0")
    assert _ids(a, "layer2.0") != _ids(_settings(tmp_path, *base, "model1.options.arch=resnet34"), "layer2.0")


def test_an_unknown_key_suggests_the_near_miss(tmp_path):
    from stitch.errors import ConfigError
    from stitch.settings import did_you_mean

    assert did_you_mean("epoch", ["lr", "epochs"]) == " (did you mean epochs?)"
    assert did_you_mean("zzz", ["lr", "epochs"]) == ""
    with pytest.raises(ConfigError, match=r"tlm.epoch=5: unknown key \(did you mean epochs\?\)"):
        _settings(tmp_path, "+tlm.epoch=5")


def test_the_ood_block_reports_all_its_problems_with_the_others(tmp_path):
    from stitch.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        _settings(tmp_path, "ood.enabled=true", "ood.detector.epochs=-1", "ood.energy.lr=-3", "tlm.lr=-1",
                  "tlm.loss=sofft")
    msg = str(e.value)
    assert msg.startswith("4 configuration problems:")
    assert all(k in msg for k in ("ood.detector.epochs=-1", "ood.energy.lr=-3", "tlm.lr=-1", "tlm.loss='sofft'"))


def test_settings_is_a_leaf_of_the_study():
    """The settings layer imports nothing of the study, the networks or the data (no import circle: the study
    imports the settings), nor torch (a spelling check costs no torch import: the index and solver names live
    in stitch/method_names.py); layer names are checked by the study (stitch/study/layer_checks.py)."""
    import subprocess
    import sys

    code = ("import sys, stitch.settings; print(sorted(m for m in sys.modules if m.startswith(('stitch.study', "
            "'stitch.models', 'stitch.data', 'stitch.ood', 'torch', 'numpy'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_the_torch_free_name_lists_match_the_implementations():
    """settings checks names against stitch.method_names; a new index or solver must be declared there too
    (similarity.py refuses to import otherwise, and this test says so directly)."""
    import importlib

    from stitch import method_names, similarity

    direct = importlib.import_module("stitch.matching.direct")  # the package exports a function of that name
    assert tuple(similarity.INDICES) == method_names.SIMILARITY_INDICES
    assert tuple(direct._SOLVERS) == method_names.DIRECT_MATCHING_KINDS  # what solve() dispatches on
    assert method_names.is_similarity_index("CKA-debiased") and not method_names.is_similarity_index("ckaa")


def test_a_missing_target_layer_is_reported_once_with_model_2_s_layers(tmp_path):
    """target_layer unset means "the same layer in model 2": a source model 2 lacks is one problem, naming
    model 2's layers (the check and the study share layer_pairs, so they cannot disagree)."""
    s = _settings(tmp_path, "model@model2=resnet20", "layer=relu3")
    with pytest.raises(ConfigError) as e:
        check_layers(s, 10, (3, 32, 32))
    text = str(e.value)
    assert "target is the source layer 'relu3', which model 2 (resnet20) does not have" in text
    assert "layer1.0" in text and text.count("does not have") == 1

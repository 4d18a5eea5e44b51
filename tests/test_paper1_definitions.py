"""Paper 1's definitions: its cross-entropy unit, its "no transformation" baseline, and least squares
solved on the test split as its released code does (a like-for-like option)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from stitch.settings import study_settings
from stitch.study import run_identity, run_study

CONF = str(Path(__file__).resolve().parents[1] / "conf")
SYNTH = ["data=synthetic", "data.train_size=384", "data.test_size=192", "donor.train_missing=false",
         "similarity.indices=[cka]", "similarity.samples=64", "print_table=false", "method=dm"]


def _cfg(tmp_path, donor_store, *overrides) -> dict:
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("stitch", overrides=[f"store={donor_store}", f"results_dir={tmp_path / 'res'}", *SYNTH,
                                           *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def test_cross_entropy_units_and_no_transformation_baseline(tmp_path, donor_store):
    recs = run_study(_cfg(tmp_path, donor_store, "layer=[bn3,relu3]", "target_layer=bn3"))
    for r in recs:
        m = r["metrics"]
        assert r["status"] == "ok"
        # paper 1's unit: the mean over samples and classes of -p2 log q, i.e. per-sample CE / C
        assert m["cross_entropy_paper1"] == pytest.approx(m["cross_entropy"] / 10)
    bn3, relu3 = recs
    # model 1's bn3 activation fed to model 2's bn3 as it is: defined (same shape) and worse than LS
    assert bn3["metrics"]["identity_cross_entropy"] > bn3["metrics"]["cross_entropy"] > 0
    assert bn3["metrics"]["identity_cross_entropy_paper1"] == pytest.approx(
        bn3["metrics"]["identity_cross_entropy"] / 10)
    assert math.isfinite(relu3["metrics"]["identity_cross_entropy"])


def test_least_squares_on_the_test_split_is_a_separate_run(tmp_path, donor_store):
    train = run_study(_cfg(tmp_path, donor_store, "layer=bn6"))[0]
    test = run_study(_cfg(tmp_path, donor_store, "layer=bn6", "dm.split=test"))[0]
    assert train["run"] != test["run"]  # a different computation, a different record
    # rows of the sufficient statistics: every spatial position of every image of the split used
    h = w = 8  # bn6 of the padded Tiny-10 at 32 px
    assert train["fit"]["rows"] == 384 * h * w and test["fit"]["rows"] == 192 * h * w
    # fitted on the images it is scored on: at least as close to model 2 as the fair (training) fit
    assert test["metrics"]["dm_structural"] <= train["metrics"]["dm_structural"] + 1e-6


def test_default_split_leaves_earlier_run_identities_unchanged(tmp_path, donor_store):
    cfg = _cfg(tmp_path, donor_store, "layer=bn6")
    with_key = run_identity(study_settings(cfg), "bn6", "bn6", "dm")[0]
    del cfg["method"]["dm"]["split"]  # a config written before the option existed
    assert run_identity(study_settings(cfg), "bn6", "bn6", "dm")[0] == with_key


def test_no_transformation_baseline_is_one_value_per_pair(tmp_path, donor_store):
    tlm, dm = run_study(_cfg(tmp_path, donor_store, "layer=bn3", "method=[tlm,dm]", "tlm.epochs=1"))
    assert tlm["metrics"]["identity_cross_entropy"] == dm["metrics"]["identity_cross_entropy"] > 0
    assert tlm["metrics"]["cross_entropy"] != dm["metrics"]["cross_entropy"]  # the stitches themselves differ

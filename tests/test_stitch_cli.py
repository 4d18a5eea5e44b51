"""`stitch.py` end to end: records, skipping finished work, failures recorded, clear errors."""
from __future__ import annotations

import pytest

from stitch.results import load_records

from .conftest import SYNTH_OVERRIDES, run_script

pytestmark = pytest.mark.slow

FAST = ["similarity.samples=64"]


def _stitch(tmp_path, store, *args, multirun=False):
    return run_script("stitch.py", *(["-m"] if multirun else []), f"store={store}", f"results_dir={tmp_path}/res",
                      *SYNTH_OVERRIDES, *FAST, "tlm.epochs=2",
                      f"hydra.run.dir={tmp_path}/out", f"hydra.sweep.dir={tmp_path}/multi", *args)


def test_study_writes_records_skips_finished_runs_and_records_failures(tmp_path, donor_store):
    r = _stitch(tmp_path, donor_store, "layer=[layer2,layer6]")
    assert r.returncode == 0, r.stderr[-3000:]
    recs = load_records(tmp_path / "res", status=None)
    assert sorted((x["layer"], x["method"]) for x in recs) == [("relu2", "dm"), ("relu2", "tlm"),
                                                                ("relu6", "dm"), ("relu6", "tlm")]  # aliases resolved
    for rec in recs:
        assert rec["status"] == "ok"
        m = rec["metrics"]
        assert 0 <= m["relative_acc"] <= 1.2 and m["model2_acc"] > 0.9
        assert {"cross_entropy", "agreement", "dm_structural", "sim/cka", "sim/pwcca", "sim_raw/cka"} <= set(m)
        assert rec["model1"]["sha256"] and rec["code_version"] and rec["timings"]["run_s"] > 0
    assert "rel.acc" in r.stdout and "relu6" in r.stdout
    dm = [x for x in recs if x["method"] == "dm"]
    assert all(x["metrics"]["relative_acc"] > 0.9 for x in dm)

    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "res" / "records").glob("*.json")}
    r = _stitch(tmp_path, donor_store, "layer=[layer2,layer6]")
    assert r.returncode == 0 and (r.stdout + r.stderr).count("skip ") == 4
    assert mtimes == {p: p.stat().st_mtime_ns for p in mtimes}  # nothing redone

    r = _stitch(tmp_path, donor_store, "layer=layer2", "method=dm", "force=true")
    assert r.returncode == 0
    changed = [p for p in mtimes if p.stat().st_mtime_ns != mtimes[p]]
    assert len(changed) == 1 and "relu2--" in changed[0].name and "--dm." in changed[0].name

    # a diverging TLM run is recorded as failed, the study goes on to the next run and exits 1
    r = _stitch(tmp_path, donor_store, "layer=[layer3,layer4]", "tlm.lr=1e38", "tlm.epochs=1")
    assert r.returncode == 1, r.stderr[-3000:]
    new = [x for x in load_records(tmp_path / "res", status=None) if x["layer"] in ("relu3", "relu4")]
    assert {(x["layer"], x["method"], x["status"]) for x in new} == {
        ("relu3", "tlm", "failed"), ("relu3", "dm", "ok"), ("relu4", "tlm", "failed"), ("relu4", "dm", "ok")}
    assert all(x["error"] and x["traceback"] for x in new if x["status"] == "failed")


def test_multirun_over_all_layers_and_methods(tmp_path, donor_store):
    r = _stitch(tmp_path, donor_store, "layer=all", "method=tlm,dm", "tlm.epochs=1", multirun=True)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = load_records(tmp_path / "res", status=None)
    assert sorted((x["layer"], x["method"]) for x in recs) == sorted(
        (f"relu{i}", m) for i in range(1, 9) for m in ("tlm", "dm"))  # layer=all: the post-ReLU points
    assert all(x["layer"] == x["target_layer"] for x in recs)


def test_full_matrix_with_target_layer_all(tmp_path, donor_store):
    r = _stitch(tmp_path, donor_store, "layer=[layer1,layer8]", "target_layer=all", "method=dm", "model2.seed=0")
    assert r.returncode == 0, r.stderr[-3000:]
    recs = load_records(tmp_path / "res", status=None)
    assert len(recs) == 16 and all(x["self_stitch"] for x in recs)
    diag = [x for x in recs if x["layer"] == x["target_layer"]]
    assert all(x["metrics"]["relative_acc"] == pytest.approx(1.0) for x in diag)


def test_clear_errors(tmp_path, donor_store):
    r = _stitch(tmp_path, donor_store, "layer=conv33", "method=dm")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown layer 'conv33'" in r.stderr and "relu: relu1, relu2, relu3" in r.stderr
    r = _stitch(tmp_path, donor_store, "layer=layer2", "method=dm", "dm.solver=qr")
    assert r.returncode == 2 and "dm.solver='qr': expected one of ls, procrustes, rank, lasso" in r.stderr
    r = _stitch(tmp_path, donor_store, "layer=layer2", "method=dm", "model2.seed=7", "donor.train_missing=false")
    assert r.returncode == 2 and "python train_models.py data=synthetic model=tiny10 seed=7" in r.stderr
    # another architecture whose layers cannot be joined: an untrained ViT donor is enough to check
    from stitch import models, store

    for seed, patch in ((1, 4), (2, 8)):  # 65 and 17 tokens
        key = store.DonorKey.make("synthetic", "vit_tiny", seed, {"img_size": 32, "patch_size": patch})
        store.save(key, models.build("vit_tiny", 10, img_size=32, patch_size=patch),
                   {"num_classes": 10, "in_channels": 3, "normalize": False, "metrics": {"test_acc": 0.1}}, donor_store)
    r = _stitch(tmp_path, donor_store, "layer=blocks.1", "method=dm", "model@model1=vit_tiny_32", "model1.seed=1",
                "model@model2=vit_tiny_32", "model2.seed=2", "model2.options.patch_size=8")
    assert r.returncode == 2 and "different lengths: 65 -> 17 tokens" in r.stderr
    assert not (tmp_path / "res" / "records").exists()  # rejected before any run

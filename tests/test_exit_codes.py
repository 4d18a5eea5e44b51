"""Exit codes of the entry scripts, through the real CLI: 0 all ok, 1 a run failed, 2 bad configuration.

A bad configuration must be rejected before any work: no record, no donor trained.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from stitch.results import load_records

from .conftest import SYNTH_OVERRIDES, run_script

pytestmark = pytest.mark.slow

FAST = [*SYNTH_OVERRIDES, "similarity.samples=32", "similarity.indices=[cka]", "tlm.epochs=1"]


def _stitch(tmp_path: Path, store: Path, *args: str, multirun: bool = False):
    return run_script("stitch.py", *(["-m"] if multirun else []), f"store={store}", f"results_dir={tmp_path}/res",
                      f"hydra.run.dir={tmp_path}/out", f"hydra.sweep.dir={tmp_path}/multi", *FAST, *args)


# (override, what the one-line message must start with: the key and the value given)
BAD = [
    ("tlm.loss=sofft", "tlm.loss='sofft'"),
    ("tlm.epochs=-1", "tlm.epochs=-1"),
    ("tlm.epochs=0", "tlm.epochs=0"),
    ("tlm.batch_size=0", "tlm.batch_size=0"),
    ("tlm.lr=-1", "tlm.lr=-1"),
    ("layer=[]", "layer=[]"),
    ("seed=abc", "seed='abc'"),
    ("dm.solver=qr", "dm.solver='qr'"),
    ("device=gpu0", "device='gpu0'"),
    ("precision=8", "precision=8"),
    ("similarity.indices=[ckaa]", "similarity.indices=['ckaa']"),
    ("cache.dtype=int8", "cache.dtype='int8'"),
    ("ood=true", "ood=true: expected the group of OOD settings"),  # as typed: true, not True
    ("+tlm.epoch=5", "tlm.epoch=5"),  # a misspelt key (Hydra itself rejects it without the +)
    ("layer=layer33", "layer='layer33'"),  # checked on untrained networks, before any donor is trained
    ("model@model1=vit_tiny", "model1=vit_tiny"),  # 224-px ViT on 32-px images: caught before training
    ("model1.seed=-3", "model1.seed=-3"),
    ("+foo=1", "foo=1: unknown key"),  # a top-level key nobody reads would otherwise be silently ignored
    ("tlm.rank=1000", "tlm.rank=1000: expected a positive integer <= 16"),  # checked against channel counts
    ("similarity.mode=grid", "similarity.mode='grid'"),
    ("step=fit", "step='fit'"),
]


@pytest.mark.parametrize("override,key", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_2_before_any_work(tmp_path, override, key):
    store = tmp_path / "store"  # empty: a donor trained on demand would appear here
    r = _stitch(tmp_path, store, override)
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {key}"), r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "res").exists() and not store.exists()


def test_all_problems_reported_at_once_and_hydra_rejections_exit_2(tmp_path):
    r = _stitch(tmp_path, tmp_path / "store", "tlm.loss=sofft", "seed=abc", "cache.dtype=int8")
    assert r.returncode == 2 and "error: 3 configuration problems:" in r.stderr
    assert all(k in r.stderr for k in ("tlm.loss='sofft'", "seed='abc'", "cache.dtype='int8'"))
    r = _stitch(tmp_path, tmp_path / "store", "tlm.epoch=5")  # Hydra: not in the struct config
    assert r.returncode == 2 and "tlm.epoch" in r.stderr
    assert not (tmp_path / "res").exists()


def test_ok_study_exits_0_and_diverged_study_exits_1(tmp_path, donor_store):
    r = _stitch(tmp_path, donor_store, "layer=layer1")
    assert r.returncode == 0, r.stderr[-3000:]
    recs = load_records(tmp_path / "res", status=None)
    assert {(x["method"], x["status"]) for x in recs} == {("tlm", "ok"), ("dm", "ok")}

    r = _stitch(tmp_path, donor_store, "layer=layer1", "method=tlm", "tlm.lr=1e9")
    assert r.returncode == 1, r.stderr[-3000:]
    (bad,) = [x for x in load_records(tmp_path / "res", status=None) if x["status"] != "ok"]
    assert bad["status"] == "failed" and bad["error"].startswith("TrainingDiverged: TLM loss")


def test_multirun_with_one_diverging_job_exits_1(tmp_path, donor_store):
    r = _stitch(tmp_path, donor_store, "tlm.lr=1e-3,1e9", "method=tlm", "layer=layer1", multirun=True)
    assert r.returncode == 1, r.stderr[-3000:]
    recs = load_records(tmp_path / "res", status=None)
    assert sorted(x["status"] for x in recs) == ["failed", "ok"]  # the good job still ran


def test_joblib_multirun_reports_a_bad_job_at_the_end(tmp_path, donor_store):
    """A parallel launcher: the bad job ends, the good one finishes, the process exits 2."""
    r = _stitch(tmp_path, donor_store, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "method=dm",
                "layer=layer1,layer33", f"hydra.callbacks.gpu_per_job.lock_dir={tmp_path / 'locks'}",
                multirun=True)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "layer33" in r.stderr
    assert [x["status"] for x in load_records(tmp_path / "res", status=None)] == ["ok"]


def test_sweep_exit_codes(tmp_path, donor_store):
    r = _stitch(tmp_path, donor_store, "layer=layer1", "method=dm")
    assert r.returncode == 0, r.stderr[-3000:]
    common = [f"out={tmp_path}/figs", "figures=none", "tables=[csv]", f"hydra.run.dir={tmp_path}/sweep_out"]
    r = run_script("sweep.py", f"inputs=[{tmp_path}/res]", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_script("sweep.py", f"inputs=[{tmp_path}/no_such_dir]", *common)
    assert r.returncode == 2 and "error: inputs=" in r.stderr and "no_such_dir does not exist" in r.stderr


def test_train_models_epochs_0_exits_2(tmp_path):
    r = run_script("train_models.py", f"store={tmp_path}/store", "epochs=0", "logger=none", "data=synthetic",
                   f"hydra.run.dir={tmp_path}/out")
    assert r.returncode == 2 and "error: epochs=0: expected a positive integer" in r.stderr, r.stderr[-3000:]
    assert not (tmp_path / "store").exists()


def test_donor_with_another_class_count_is_a_config_error(tmp_path, donor_store):
    r = _stitch(tmp_path, donor_store, "data.num_classes=7", "layer=layer1", "donor.train_missing=false")
    assert r.returncode == 2, r.stderr[-3000:]
    assert "has 10 classes but synthetic has 7" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "res" / "records").exists()


def test_a_sweep_value_without_multirun_gets_a_hint(tmp_path):
    r = run_script("stitch.py", "method=tlm,dm", f"hydra.run.dir={tmp_path}/out")
    assert r.returncode == 2
    assert "needs -m (python stitch.py -m method=tlm,dm)" in r.stderr and "method=[tlm,dm]" in r.stderr

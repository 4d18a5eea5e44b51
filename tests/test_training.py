"""Donor training: reaches useful accuracy, saves to the store, DDP path on 2 CPU processes (gloo)."""
from __future__ import annotations

import pytest

from stitch import store
from stitch.donors import train_donor

from .conftest import donor_training, run_script


def test_donors_train_and_are_stored(donor_store):
    for seed in (0, 1):
        key = store.DonorKey.make("synthetic", "tiny10", seed, {"padding": "kornblith"})
        meta = store.load_meta(key, donor_store)
        assert meta["metrics"]["test_acc"] > 0.9  # chance is 0.1
        assert meta["config"]["seed"] == seed and meta["config"]["epochs"] == 8
        net, _ = store.load(key, donor_store)
        assert net.layers[0] == "conv1" and net.check_layer("layer1") == "relu1"


def test_existing_donor_is_not_retrained(donor_store, caplog):
    caplog.set_level("INFO")
    meta = train_donor(donor_training(0, donor_store))
    assert "already in the store" in caplog.text
    assert meta["metrics"]["test_acc"] > 0.6


def test_optimizer_presets():
    import torch

    from stitch.training import build_optimizer

    p = [torch.nn.Parameter(torch.zeros(2))]
    opt, sched = build_optimizer(p, {"name": "sgd", "lr": 0.1, "schedule": "step"}, steps_per_epoch=10, epochs=3)
    lrs = []
    for _ in range(30):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[15] == pytest.approx(0.01) and lrs[25] == pytest.approx(0.001)
    from stitch.errors import ConfigError

    with pytest.raises(ConfigError, match=r"optim.name=.lbfgs.: expected one of sgd, adam, adamw"):
        build_optimizer(p, {"name": "lbfgs", "lr": 1}, 1, 1)
    # an unset key takes the one default there is (OptimSettings'), whatever the optimiser
    from stitch.settings import OptimSettings

    for name in ("sgd", "adam", "adamw"):
        opt, _ = build_optimizer(p, {"name": name, "lr": 0.1}, 1, 1)
        assert opt.param_groups[0]["weight_decay"] == OptimSettings().weight_decay


@pytest.mark.slow
def test_train_models_cli_and_ddp_on_two_cpu_processes(tmp_path):
    common = ["train_models.py", f"store={tmp_path}", "epochs=1", "logger=none", f"hydra.run.dir={tmp_path}/run"]
    r = run_script(*common, "data=synthetic", "data.train_size=256", "data.test_size=64", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "seed=5")
    assert r.returncode == 0, r.stderr[-3000:]
    meta = store.load_meta(store.DonorKey.make("synthetic", "tiny10", 5, {"padding": "kornblith"}), tmp_path)
    assert meta["config"]["trainer"]["strategy"] == "ddp" and meta["config"]["trainer"]["devices"] == 2
    # a data set that is not there: one clear message, no traceback
    r = run_script(*common, "data=cifar10", f"data.root={tmp_path}/none")
    assert r.returncode == 2 and "CIFAR-10 not found" in r.stderr and "Traceback" not in r.stderr

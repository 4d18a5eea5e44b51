"""Importing external checkpoints into the model store, and stitching imported donors."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from stitch import models, store
from stitch.errors import CheckpointError
from stitch.store.importing import import_checkpoint, model_config, rename_keys

from .conftest import SYNTH, run_script

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RELEASED = SHARED / "released-drfrankenstein"
CIFAR = SHARED / "cifar10-jpeg"
have_released = pytest.mark.skipif(not (RELEASED / "resnet20-w1-cifar10" / "in0" / "110000.pt").is_file()
                                   or not (CIFAR / "test.npz").is_file(),
                                   reason="paper 1's released networks and CIFAR-10 (shared/data) are not here")


def _trained_file(donor_store, tmp_path, prefix: str = "") -> Path:
    """The weights of a donor trained on the synthetic set, saved as a third party would (optionally prefixed)."""
    key = store.DonorKey.make("synthetic", "tiny10", 0, {"padding": "kornblith"})
    net, _ = store.load(key, donor_store)
    f = tmp_path / "external.pt"
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, f)
    return f


def test_imported_donor_keeps_accuracy_and_provenance(donor_store, tmp_path):
    f = _trained_file(donor_store, tmp_path, prefix="module.")  # a DataParallel checkpoint
    trained = store.load_meta(store.DonorKey.make("synthetic", "tiny10", 0, {"padding": "kornblith"}), donor_store)
    meta = import_checkpoint(f, data_cfg=SYNTH, model_cfg=model_config("tiny10"), name="ext0",
                             store_root=tmp_path / "store", strip_prefix=["module."])
    assert meta["key"] == "synthetic/tiny10/ext0" and meta["seed"] == "ext0"
    assert meta["metrics"]["test_acc"] == pytest.approx(trained["metrics"]["test_acc"], abs=1e-6)
    prov = meta["provenance"]
    assert prov["kind"] == "imported" and prov["source"] == str(f.resolve()) and len(prov["source_sha256"]) == 64
    key = store.DonorKey.make("synthetic", "tiny10", "ext0", {"padding": "kornblith"})
    assert key.directory(tmp_path / "store").name == "ext0"
    store.load(key, tmp_path / "store")  # hash-checked like any donor


def test_mismatched_import_names_the_bad_keys_and_the_fix(donor_store, tmp_path):
    f = _trained_file(donor_store, tmp_path, prefix="module.")
    with pytest.raises(CheckpointError, match=r"missing keys: bn1.bias, .*unexpected keys: module.bn1.bias") as e:
        import_checkpoint(f, data_cfg=SYNTH, model_cfg=model_config("tiny10"), name="x", store_root=tmp_path / "s")
    # a whole-model mismatch lists a few keys and a count, then says which option fixes it
    assert re.search(r"missing keys: (\S+, ){7}\S+, … \(\d+ more\)", str(e.value)), str(e.value)
    assert "carry the prefix 'module.' (a training wrapper's): import with --strip-prefix module." in str(e.value)
    with pytest.raises(CheckpointError, match=r"shape mismatches: conv1.weight \(16, 3, 3, 3\) != \(32, 3, 3, 3\)"):
        import_checkpoint(f, data_cfg=SYNTH, model_cfg=model_config("tiny10", {"width": 2}), name="x",
                          store_root=tmp_path / "s", strip_prefix=["module."])
    assert not (tmp_path / "s").exists()  # nothing stored


def test_untrained_import_is_refused_unless_forced(tmp_path):
    torch.manual_seed(0)
    f = tmp_path / "random.pt"
    net = models.build("tiny10", 10)
    with torch.no_grad():
        net.fc.weight.zero_()
        net.fc.bias.copy_(torch.arange(10.0))  # always predicts one class: chance accuracy
    torch.save(net.state_dict(), f)
    with pytest.raises(CheckpointError, match="below the sanity floor"):
        import_checkpoint(f, data_cfg=SYNTH, model_cfg=model_config("tiny10"), name="r", store_root=tmp_path / "s")
    meta = import_checkpoint(f, data_cfg=SYNTH, model_cfg=model_config("tiny10"), name="r",
                             store_root=tmp_path / "s", force=True)
    assert meta["metrics"]["test_acc"] < 0.15


def test_rename_keys():
    state = {"module.features.0.weight": 1, "module.fc.bias": 2}
    out = rename_keys(state, strip_prefix=["module."], renames=[(r"^features\.0\.", "conv1.")], add_prefix="")
    assert out == {"conv1.weight": 1, "fc.bias": 2}
    with pytest.raises(CheckpointError, match="maps two keys"):
        rename_keys({"a.x": 1, "b.x": 2}, renames=[(r"^[ab]\.", "")])


@pytest.mark.slow
def test_import_cli_and_stitch_imported_donors(donor_store, tmp_path):
    f = _trained_file(donor_store, tmp_path)
    st = tmp_path / "store"
    overrides = ["--data-option", "train_size=384", "--data-option", "test_size=192",
                 "--data-option", "normalize=false"]
    r = run_script("-m", "stitch.store", "--store", str(st), "import", str(f), "--data", "synthetic", "--model",
                   "tiny10", "--name", "ext0", *overrides)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "synthetic/tiny10/ext0: test accuracy" in r.stdout and "model1.seed=ext0" in r.stdout
    r = run_script("-m", "stitch.store", "--store", str(st), "import", str(tmp_path / "nope.pt"), "--data",
                   "synthetic", "--model", "tiny10", "--name", "x")
    assert r.returncode == 2 and "does not exist" in r.stderr
    # an imported name is never trained on demand: the message says how to import it
    r = run_script("stitch.py", "data=synthetic", "data.train_size=384", "data.test_size=192", "data.normalize=false",
                   f"store={st}", f"results_dir={tmp_path / 'res'}", "model1.seed=ext0", "model2.seed=ext1",
                   "layer=bn3", "method=dm")
    assert r.returncode == 2 and "python -m stitch.store import <checkpoint.pt> --data synthetic" in r.stderr
    # model2.weights imports the file on first use; bn3 is a pre-activation cut point
    r = run_script("stitch.py", "data=synthetic", "data.train_size=384", "data.test_size=192", "data.normalize=false",
                   f"store={st}", f"results_dir={tmp_path / 'res'}", "model1.seed=ext0", "model2.seed=ext1",
                   f"model2.weights={f}", "layer=bn3", "method=dm", "similarity.samples=64")
    assert r.returncode == 0, r.stderr[-2000:]
    rec = next((tmp_path / "res" / "records").glob("*.json")).read_text()
    assert '"layer": "bn3"' in rec and '"relative_acc": 1.0' in rec  # the same weights: an exact self-stitch
    assert (st / "synthetic" / "tiny10" / "ext1" / "meta.json").is_file()


class _ReleasedResNet20(nn.Module):
    """Paper 1's released ResNet-20 rebuilt from torchvision's BasicBlock (a plain re-implementation)."""

    def __init__(self):
        from torchvision.models.resnet import BasicBlock

        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin, layers = 16, []
        for w, stride in ((16, 1), (32, 2), (64, 2)):
            down = None if stride == 1 else nn.Sequential(nn.Conv2d(cin, w, 1, stride, bias=False), nn.BatchNorm2d(w))
            layers.append(nn.Sequential(BasicBlock(cin, w, stride, down), BasicBlock(w, w), BasicBlock(w, w)))
            cin = w
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


@have_released
@pytest.mark.slow
def test_released_networks_import_and_match_plain_reimplementations(tmp_path):
    from stitch.store.importing import PRESETS, group_config

    data = dict(group_config("data", "cifar10"), root=str(CIFAR))
    for preset, folder, ref_cls in (("drfrankenstein-resnet20", "resnet20-w1-cifar10", _ReleasedResNet20),
                                    ("drfrankenstein-tiny10", "tiny10-cifar10", None)):
        f = RELEASED / folder / "in0" / "110000.pt"
        meta = import_checkpoint(f, data_cfg=data, model_cfg=model_config(PRESETS[preset]["model"]), name="in0",
                                 store_root=tmp_path)
        assert 0.74 < meta["metrics"]["test_acc"] < 0.86  # ~84.5 % on the official test set, a few points less on JPEG
        if ref_cls is None:
            continue
        key = store.DonorKey.make("cifar10", "resnet20", "in0", {"width": 1})
        net, _ = store.load(key, tmp_path)
        ref = ref_cls()
        ref.load_state_dict(torch.load(f, weights_only=True, map_location="cpu"))
        torch.manual_seed(0)
        x = torch.randn(8, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(net(x), ref.eval()(x), rtol=1e-5, atol=1e-5)


def test_a_name_never_silently_serves_another_file(donor_store, tmp_path):
    f = _trained_file(donor_store, tmp_path)
    st = tmp_path / "store"
    import_checkpoint(f, data_cfg=SYNTH, model_cfg=model_config("tiny10"), name="ext0", store_root=st)
    again = import_checkpoint(f, data_cfg=SYNTH, model_cfg=model_config("tiny10"), name="ext0", store_root=st)
    assert again["provenance"]["source"] == str(f.resolve())  # the same file: nothing to do
    other = tmp_path / "other.pt"
    state = torch.load(f, weights_only=True)
    torch.save({k: v + 1e-3 if v.is_floating_point() else v for k, v in state.items()}, other)
    with pytest.raises(CheckpointError, match="already has a donor synthetic/tiny10/ext0 that was imported from"):
        import_checkpoint(other, data_cfg=SYNTH, model_cfg=model_config("tiny10"), name="ext0", store_root=st)
    # a trained donor's slot (integer seed) is not overwritten by a weights file either
    with pytest.raises(CheckpointError, match="that was trained here"):
        import_checkpoint(other, data_cfg=SYNTH, model_cfg=model_config("tiny10", {"padding": "kornblith"}),
                          name="0", store_root=donor_store)


def test_repair_hint_of_a_damaged_import_is_the_forced_import(donor_store, tmp_path):
    f = _trained_file(donor_store, tmp_path)
    st = tmp_path / "store"
    import_checkpoint(f, data_cfg=SYNTH, model_cfg=model_config("tiny10"), name="ext0", store_root=st)
    key = store.DonorKey.make("synthetic", "tiny10", "ext0", {"padding": "kornblith"})
    (key.directory(st) / "model.pt").write_bytes(b"damaged")
    with pytest.raises(CheckpointError, match=f"import {f.resolve()} --data synthetic --model tiny10 "
                                              f"--option padding=kornblith --name ext0 --force"):
        store.load(key, st)


def test_import_cli_bad_arguments_are_one_line_in_its_own_syntax(tmp_path, capsys):
    """A bad regex names the option; a missing data set's hint speaks the store CLI (--data-root), not Hydra."""
    from stitch.store.__main__ import main

    f = tmp_path / "w.pt"
    torch.save(models.build("tiny10", 10).state_dict(), f)
    base = ["--store", str(tmp_path / "store"), "import", str(f), "--model", "tiny10", "--name", "a"]
    assert main([*base, "--data", "digits", "--rename", "([=x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --rename '([': not a regular expression") and "Traceback" not in err
    assert main([*base, "--data", "cifar10", "--data-root", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "--data-root <dir>" in err and "data.root=" not in err
    assert not (tmp_path / "store").exists()

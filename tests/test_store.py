"""The model store: round trip, safe loading, clear errors for missing/corrupt/mismatched checkpoints."""
from __future__ import annotations

import pickle

import pytest
import torch

from stitch import models, store
from stitch.errors import CheckpointError

KEY = store.DonorKey.make("synthetic", "tiny10", seed=3)


def _save(root, key=KEY, **build):
    net = models.build(key.model, 10, **dict(key.options), **build)
    store.save(key, net, {"num_classes": 10, "in_channels": 3, "metrics": {"test_acc": 0.5}}, root)
    return net


def test_round_trip_and_metadata(tmp_path):
    net = _save(tmp_path)
    loaded, meta = store.load(KEY, tmp_path)
    assert not loaded.training
    for (k, v), (k2, v2) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert meta["key"] == "synthetic/tiny10/seed3" and len(meta["sha256"]) == 64 and meta["code_version"]
    assert KEY.directory(tmp_path) == tmp_path / "synthetic" / "tiny10" / "seed3"


def test_missing_checkpoint_names_the_command_that_makes_it(tmp_path):
    key = store.DonorKey.make("digits", "resnet20", seed=2, options={"width": 2})
    with pytest.raises(CheckpointError, match=r"python train_models.py data=digits model=resnet20 seed=2 "
                                              r"model.options.width=2"):
        store.load(key, tmp_path)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    _save(tmp_path)
    (KEY.directory(tmp_path) / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or unsafe"):
        store.load(KEY, tmp_path)


class _Payload:
    def __reduce__(self):  # would run code if unpickled without weights_only
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickled_code_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _save(tmp_path)
    path = KEY.directory(tmp_path) / "model.pt"
    with open(path, "wb") as f:
        torch.save({"x": _Payload()}, f, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="corrupt or unsafe"):
        store.load(KEY, tmp_path)
    assert not (tmp_path / "PWNED").exists()


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    _save(tmp_path)
    other = models.build("tiny10", 10, width=2)  # same keys, other shapes
    torch.save(other.state_dict(), KEY.directory(tmp_path) / "model.pt")
    with pytest.raises(CheckpointError, match="does not match model tiny10.*shape mismatch"):
        store.load(KEY, tmp_path)


def test_incomplete_checkpoint_counts_as_missing(tmp_path):
    _save(tmp_path)
    (KEY.directory(tmp_path) / "meta.json").unlink()  # meta is written last: a crash leaves no half donor
    assert not store.exists(KEY, tmp_path)

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


def _assert_same_state(got: dict, want: dict) -> None:
    """Same keys (in the same order) and equal tensors; a zip would stop at the shorter state dict."""
    assert list(got) == list(want), f"keys differ: missing {set(want) - set(got)}, extra {set(got) - set(want)}"
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


def test_state_comparison_sees_missing_and_extra_keys():
    """A test of the test: dropping or adding a buffer, or changing a value, fails the comparison."""
    state = models.build("tiny10", 10).state_dict()
    _assert_same_state(dict(state), state)
    last = list(state)[-1]
    for got in ({k: v for k, v in state.items() if k != last}, {**state, "extra": torch.zeros(1)},
                {**state, last: state[last] + 1}):
        with pytest.raises(AssertionError):
            _assert_same_state(got, state)
        with pytest.raises(AssertionError):
            _assert_same_state(state, got)


def test_round_trip_and_metadata(tmp_path):
    net = _save(tmp_path)
    loaded, meta = store.load(KEY, tmp_path)
    assert not loaded.training
    _assert_same_state(loaded.state_dict(), net.state_dict())
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
    with pytest.raises(CheckpointError, match="replaced or damaged after it was stored.*retrain with:\n  python "
                                              "train_models.py data=synthetic model=tiny10 seed=3 store="):
        store.load(KEY, tmp_path)
    # the same bytes read directly (an import) are refused as corrupt
    with pytest.raises(CheckpointError, match="corrupt or unsafe"):
        store.load_state(KEY.directory(tmp_path) / "model.pt", "redo")


def test_swapped_checkpoint_is_refused_naming_both_hashes(tmp_path):
    _save(tmp_path)
    other = store.DonorKey.make("synthetic", "tiny10", seed=4)
    torch.manual_seed(1)
    _save(tmp_path, other)
    meta = store.load_meta(KEY, tmp_path)
    (KEY.directory(tmp_path) / "model.pt").write_bytes((other.directory(tmp_path) / "model.pt").read_bytes())
    with pytest.raises(CheckpointError) as e:
        store.load(KEY, tmp_path)
    msg = str(e.value)
    assert meta["sha256"][:16] in msg and store.load_meta(other, tmp_path)["sha256"][:16] in msg
    assert f"store={tmp_path}" in msg


def test_forced_retrain_that_crashes_leaves_the_old_donor_whole(tmp_path, monkeypatch):
    old = _save(tmp_path)
    meta = store.load_meta(KEY, tmp_path)

    def crash(*a, **k):
        raise KeyboardInterrupt("killed between model.pt and meta.json")

    monkeypatch.setattr(store, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        store.save(KEY, models.build("tiny10", 10), {"num_classes": 10, "metrics": {"test_acc": 0.9}}, tmp_path)
    monkeypatch.undo()
    net, meta2 = store.load(KEY, tmp_path)  # hash checked: the weights are the ones the metadata describes
    assert meta2 == meta
    _assert_same_state(net.state_dict(), old.state_dict())
    assert [p.name for p in KEY.directory(tmp_path).parent.iterdir()] == ["seed3"]  # no temporary left behind


class _Payload:
    def __reduce__(self):  # would run code if unpickled without weights_only
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickled_code_is_never_executed(tmp_path, monkeypatch):
    from stitch.fileio import read_json, sha256, write_json

    monkeypatch.chdir(tmp_path)
    _save(tmp_path)
    path = KEY.directory(tmp_path) / "model.pt"
    with open(path, "wb") as f:
        torch.save({"x": _Payload()}, f, pickle_module=pickle)
    meta = read_json(KEY.directory(tmp_path) / "meta.json")  # even with a matching hash in the metadata
    write_json(KEY.directory(tmp_path) / "meta.json", dict(meta, sha256=sha256(path)))
    with pytest.raises(CheckpointError, match="corrupt or unsafe"):
        store.load(KEY, tmp_path)
    assert not (tmp_path / "PWNED").exists()


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    _save(tmp_path)
    from stitch.fileio import read_json, sha256, write_json

    other = models.build("tiny10", 10, width=2)  # same keys, other shapes
    path = KEY.directory(tmp_path) / "model.pt"
    torch.save(other.state_dict(), path)
    meta = read_json(KEY.directory(tmp_path) / "meta.json")
    write_json(KEY.directory(tmp_path) / "meta.json", dict(meta, sha256=sha256(path)))
    with pytest.raises(CheckpointError, match=r"does not match the model \(shape mismatches: conv1.weight "
                                              r"\(32, 3, 3, 3\) != \(16, 3, 3, 3\)"):
        store.load(KEY, tmp_path)


def test_incomplete_checkpoint_counts_as_missing(tmp_path):
    _save(tmp_path)
    (KEY.directory(tmp_path) / "meta.json").unlink()  # meta is written last: a crash leaves no half donor
    assert not store.exists(KEY, tmp_path)

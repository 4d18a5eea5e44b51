"""When the machine or the files misbehave: one line naming the file, path or setting and what to do,
with the documented exit code (2: the configuration, 1: the environment), nothing silently skipped.

Every fault is made here with temporary directories, damaged files and monkeypatched device or
network queries; nothing touches the network or needs a GPU.
"""
from __future__ import annotations

import errno
import os
import time
import urllib.error
from pathlib import Path

import pytest
import torch

from stitch import cli, models, store
from stitch.errors import CheckpointError, ConfigError, DownloadError, EnvironmentProblem

ROOT = Path(__file__).resolve().parents[1]


def _exit_of(fn, capsys) -> tuple[int, str]:
    """Run ``fn`` through the entry scripts' error handling: (exit code, stderr)."""
    wrapped = cli.job(lambda cfg: fn())
    with pytest.raises(SystemExit) as e:
        wrapped(None)
    return e.value.code, capsys.readouterr().err


# ----------------------------------------------------------------------- exit codes
def test_environment_problems_exit_1_and_configuration_problems_exit_2_in_one_line(capsys):
    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "/results/records/run.json")

    code, err = _exit_of(full_disk, capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "No space left on device: /results/records/run.json" in err and "finished results are intact" in err

    def offline():
        raise DownloadError("could not download CIFAR-10 from X")
    assert _exit_of(offline, capsys) == (1, "error: could not download CIFAR-10 from X\n")

    def typo():
        raise ConfigError("device=cuda: this machine has no CUDA GPU")
    assert _exit_of(typo, capsys)[0] == 2


def test_hydra_full_error_shows_the_traceback_of_an_environment_problem(monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")

    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "/x")
    with pytest.raises(OSError):
        cli.job(lambda cfg: full_disk())(None)


# --------------------------------------------------------------------------- devices
def test_a_device_the_machine_lacks_is_named_with_what_it_has(monkeypatch):
    from stitch import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError, match=r"device=cuda: this machine has no CUDA GPU \(torch sees: cpu.*\); use "
                                          r"device=auto or device=cpu"):
        hardware.resolve_device("cuda")
    with pytest.raises(ConfigError, match="device=cuda:1"):
        hardware.resolve_device("cuda:1")
    assert hardware.resolve_device("auto") == torch.device("cpu")
    assert hardware.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert hardware.resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match=r"device=cuda:1: this machine has no cuda:1 \(1 CUDA GPUs\)"):
        hardware.resolve_device("cuda:1")


def test_train_models_on_a_gpu_trainer_without_a_gpu_says_so_before_lightning(monkeypatch):
    from stitch.commands.train_models import _check_accelerator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"trainer.accelerator=gpu: this machine has no CUDA GPU.*trainer=default"):
        _check_accelerator({"accelerator": "gpu", "devices": 1})
    _check_accelerator({"accelerator": "auto"})
    _check_accelerator({"accelerator": "cpu", "devices": 2})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_stitch_py_device_cuda_without_a_gpu_is_one_line_and_exit_2():
    from .conftest import run_script

    r = run_script("stitch.py", "device=cuda", "hydra.run.dir=/tmp/stitch-device-test")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: device=cuda: this machine has no CUDA GPU")


# ------------------------------------------------------------------------- downloads
@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_a_download_without_a_network_is_one_line_naming_source_and_folder(tmp_path, monkeypatch, name):
    import torchvision.datasets

    from stitch import data as data_lib

    def no_network(*args, **kwargs):
        raise urllib.error.URLError(OSError(errno.ENETUNREACH, "Network is unreachable"))
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_network)
    monkeypatch.setattr(torchvision.datasets, "SVHN", no_network)
    dm = data_lib.build(name, root=str(tmp_path / name), download=True)
    with pytest.raises(DownloadError) as e:
        dm.load()
    msg = str(e.value)
    assert "\n" not in msg and str((tmp_path / name).resolve()) in msg and "Network is unreachable" in msg
    assert ("cs.toronto.edu" if name == "cifar10" else "ufldl.stanford.edu") in msg and "by hand" in msg
    assert isinstance(e.value, EnvironmentProblem)


def test_a_download_needing_a_missing_package_says_which_and_what_to_do(tmp_path, monkeypatch):
    import torchvision.datasets

    from stitch import data as data_lib

    def needs_gdown(*args, download=False, **kwargs):
        raise ModuleNotFoundError("No module named 'gdown'", name="gdown")
    monkeypatch.setattr(torchvision.datasets, "CelebA", needs_gdown)
    dm = data_lib.build("celeba", root=str(tmp_path), download=True, image_size=32)
    with pytest.raises(DownloadError, match=r"the gdown package is not installed; put img_align_celeba/.* under "):
        dm.load()


# ---------------------------------------------------------------- damaged own files
def _tiny_cifar_folder(root: Path) -> None:
    from PIL import Image

    from stitch.data.cifar10 import CLASSES

    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            px = torch.randint(0, 255, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(px).save(root / split / c / "0.png")


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 not a torch file", "tensor"])
def test_a_damaged_decode_cache_is_discarded_and_rebuilt(tmp_path, caplog, damage):
    from stitch import data as data_lib

    _tiny_cifar_folder(tmp_path)
    dm = data_lib.build("cifar10", root=str(tmp_path))
    first = dm.load()
    cache = dm._cache_file("folder")
    if damage == "tensor":
        torch.save(torch.zeros(3), cache)  # a valid torch file with the wrong content
    else:
        cache.write_bytes(damage)
    again = dm.load()
    assert torch.equal(again["train"][0], first["train"][0]) and torch.equal(again["test"][1], first["test"][1])
    assert f"discarding the damaged decode cache {cache}" in caplog.text
    assert torch.load(cache, weights_only=True)["train"]["x"].shape == first["train"][0].shape  # rebuilt


def _saved_donor(root: Path, acc: float = 0.9) -> store.DonorKey:
    key = store.DonorKey.make("synthetic", "tiny10", 0)
    net = models.build("tiny10", 10, 3)
    store.save(key, net, {"num_classes": 10, "in_channels": 3, "metrics": {"test_acc": acc}}, root)
    return key


@pytest.mark.parametrize("damage", ["", '{"num_classes": 10, "in_ch', "{}", "[1, 2]"])
def test_a_damaged_donor_meta_json_names_the_file_and_the_command(tmp_path, damage):
    key = _saved_donor(tmp_path)
    meta = key.directory(tmp_path) / "meta.json"
    meta.write_text(damage)
    with pytest.raises(CheckpointError) as e:
        store.load(key, tmp_path)
    msg = str(e.value)
    assert f"donor metadata {meta} is damaged" in msg and "python train_models.py data=synthetic model=tiny10" in msg


def test_store_list_and_verify_report_a_damaged_donor_instead_of_a_traceback(tmp_path, capsys):
    from stitch.store.__main__ import main

    key = _saved_donor(tmp_path)
    (key.directory(tmp_path) / "meta.json").write_text('{"trunc')
    assert main(["list", "--store", str(tmp_path)]) == 0
    assert "DAMAGED: donor metadata" in capsys.readouterr().out
    assert main(["verify", "--store", str(tmp_path)]) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.parametrize("damage", [b"", b"garbage", "wrong keys"])
def test_a_damaged_saved_stitching_layer_names_the_file(tmp_path, damage):
    from stitch.results import load_stitch

    path = tmp_path / "stitches" / "run.pt"
    path.parent.mkdir()
    if damage == "wrong keys":
        torch.save({"something": torch.zeros(2)}, path)
    else:
        path.write_bytes(damage)
    with pytest.raises(CheckpointError, match=rf"saved stitching layer {path} is damaged .*force=true save_stitch=true"):
        load_stitch(path)


# ---------------------------------------------------------------- results not writable
def test_results_dir_that_is_a_file_or_read_only_is_refused_before_any_work(tmp_path, monkeypatch):
    import tempfile

    from stitch.fileio import check_writable_dir

    a_file = tmp_path / "results.txt"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match=rf"results_dir={a_file}: it is a file, not a directory"):
        check_writable_dir(a_file, "results_dir")
    with pytest.raises(ConfigError, match=rf"results_dir={a_file}/sub: {a_file} is a file, not a directory"):
        check_writable_dir(a_file / "sub", "results_dir")
    check_writable_dir(tmp_path / "new" / "dir", "results_dir")  # proven writable, nothing created
    assert not (tmp_path / "new").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(ConfigError, match=r"results_dir=.*: cannot write there \(Read-only file system\)"):
        check_writable_dir(tmp_path, "results_dir")


def test_stitch_py_with_results_dir_a_file_exits_2_in_one_line(tmp_path):
    from .conftest import run_script

    a_file = tmp_path / "results"
    a_file.write_text("not a directory")
    r = run_script("stitch.py", f"results_dir={a_file}", f"hydra.run.dir={tmp_path}/out")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"error: results_dir={a_file}: it is a file, not a directory" in r.stderr


@pytest.mark.slow
def test_a_full_disk_mid_study_exits_1_in_one_line_with_finished_records_intact(donor_store, tmp_path, capsys,
                                                                                 monkeypatch):
    from hydra import compose, initialize_config_dir

    from stitch import fileio
    from stitch.commands.stitch import study
    from stitch.results import load_records
    from stitch.study import runner

    from .conftest import SYNTH_OVERRIDES

    with initialize_config_dir(config_dir=str(ROOT / "stitch" / "conf"), version_base="1.3"):
        cfg = compose("stitch", overrides=[f"store={donor_store}", f"results_dir={tmp_path / 'res'}",
                                           *SYNTH_OVERRIDES, "method=dm", "layer=[relu7,relu8]",
                                           "similarity.indices=[cka]", "similarity.samples=32"])
    writes = []

    def fill_up(path, obj):
        writes.append(path)
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        fileio.write_json(path, obj)
    monkeypatch.setattr(runner, "write_json", fill_up)
    code, err = _exit_of(lambda: study(cfg), capsys)
    assert code == 1 and "Traceback" not in err
    assert err.strip().endswith("(free some space (finished results are intact) and run again: finished runs are "
                                "skipped)") and str(writes[1]) in err
    (rec,) = load_records(tmp_path / "res")
    assert rec["layer"] == "relu7" and rec["status"] == "ok"
    assert not list((tmp_path / "res" / "claims").glob("*.claim"))  # the failed run is free to be redone


# ------------------------------------------------------------------------ leftovers
def test_leftovers_of_interrupted_saves_are_never_listed_and_are_cleaned(tmp_path, capsys):
    from stitch.store.__main__ import main

    key = _saved_donor(tmp_path)
    d = key.directory(tmp_path)
    left = d.parent / f".{d.name}.tmp-deadbeef"  # a save killed after writing both files
    left.mkdir()
    (left / "model.pt").write_bytes((d / "model.pt").read_bytes())
    (left / "meta.json").write_text((d / "meta.json").read_text())
    assert main(["list", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("synthetic/") == 1 and "tmp-" not in out
    assert main(["verify", "--store", str(tmp_path)]) == 1
    assert f"leftover {left}" in capsys.readouterr().out and left.exists()
    assert main(["verify", "--store", str(tmp_path), "--fix"]) == 1  # too young: maybe a save in progress
    assert left.exists()
    minute_ago = time.time() - 120
    os.utime(left, (minute_ago, minute_ago))
    capsys.readouterr()
    assert main(["verify", "--store", str(tmp_path), "--fix"]) == 0
    assert f"removed {left}" in capsys.readouterr().out and not left.exists()
    # the next save removes leftovers old enough not to be another process's save in progress
    left.mkdir()
    fresh = d.parent / ".1.tmp-0123abcd"
    fresh.mkdir()
    old = time.time() - store.LEFTOVER_AGE_S - 60
    os.utime(left, (old, old))
    _saved_donor(tmp_path)
    assert not left.exists() and fresh.exists()


# --------------------------------------------------------------- donors at chance
def test_studies_refuse_a_donor_at_chance_unless_allowed(tmp_path):
    from stitch.study.assembly import check_not_at_chance

    key = store.DonorKey.make("synthetic", "tiny10", 0)
    at_chance = {"num_classes": 10, "metrics": {"test_acc": 0.1}}
    with pytest.raises(ConfigError) as e:
        check_not_at_chance(key, "model1", at_chance, False, str(tmp_path))
    msg = str(e.value)
    assert "donor synthetic/tiny10/seed0 (model1) has test accuracy 0.100, near chance (below 0.150)" in msg
    assert "python train_models.py data=synthetic model=tiny10 seed=0" in msg and "donor.allow_chance=true" in msg
    check_not_at_chance(key, "model1", at_chance, True, str(tmp_path))
    check_not_at_chance(key, "model1", {"num_classes": 10, "metrics": {"test_acc": 0.6}}, False, str(tmp_path))
    with pytest.raises(ConfigError, match="below 0.500"):  # multi-label: half the labels right is chance
        check_not_at_chance(key, "model2", {"num_classes": 40, "multilabel": True, "metrics": {"test_acc": 0.4}},
                            False, str(tmp_path))


# ------------------------------------------------------------------------------ W&B
def test_wandb_asked_for_but_not_installed_is_said_once_before_any_work(monkeypatch):
    import importlib.util

    from stitch.loggers import check_wandb_installed

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(ConfigError, match=r"logger=wandb: the wandb package is not installed; pip install wandb"):
        check_wandb_installed({"name": "wandb", "mode": "offline"})
    check_wandb_installed({"name": "wandb", "mode": "disabled"})  # nothing to log: nothing missing
    check_wandb_installed({"name": "csv"})
    monkeypatch.setenv("WANDB_MODE", "disabled")
    check_wandb_installed({"name": "wandb"})


"""Operations: run claims between concurrent processes, W&B that never blocks a study, progress
lines with an ETA, the installable package (wheel, console commands, packaged configs) and donor
training that resumes from its checkpoint after a kill.

The end-to-end tests run the real entry points in subprocesses on the synthetic data set.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from stitch import claims
from stitch.results import load_records

from .conftest import SYNTH_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]
FAST = ["similarity.indices=[cka]", "similarity.samples=32", "print_table=true"]


def _env(tmp: Path, **extra: str) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "CUDA_VISIBLE", "STITCH_"))}
    e.update({"WANDB_MODE": "disabled", "WANDB_DIR": str(tmp / "wandb_dir"), "WANDB_SILENT": "true",
              "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra})
    return e


def _write_claim(path: Path, **holder) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": 0, "started": time.time(), "token": "t",
                                "pid_start": None, **holder}))


def _captured(name: str):
    """A logger at INFO whose messages are collected in the returned list."""
    import logging

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger(name)
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    return logger, lines


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# --------------------------------------------------------------------------- claims
def test_claim_is_exclusive_and_released(tmp_path):
    path = claims.claim_path(tmp_path, "run-a")
    claim, holder = claims.acquire(path)
    assert claim is not None and holder is None and path.is_file()
    again, holder = claims.acquire(path)  # a live claim (this very process): not taken
    assert again is None and (holder.host, holder.pid) == (socket.gethostname(), os.getpid())
    assert str(holder) == f"{socket.gethostname()}:{os.getpid()}"
    claim.release()
    assert not path.exists()


def test_stale_claims_are_taken_over_live_ones_are_not(tmp_path):
    path = claims.claim_path(tmp_path, "run-b")
    # same host, dead PID: stale
    _write_claim(path, pid=_dead_pid())
    claim, _ = claims.acquire(path)
    assert claim is not None and claims.read_holder(path).pid == os.getpid()
    claim.release()
    # same host, a live process: live however old its claim is
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_claim(path, pid=sleeper.pid, started=time.time() - 10 * claims.DEFAULT_TIMEOUT_S,
                     pid_start=claims._process_start(sleeper.pid))
        claim, holder = claims.acquire(path)
        assert claim is None and holder.pid == sleeper.pid
        if claims._process_start(sleeper.pid) is not None:  # Linux: a reused PID is told apart
            _write_claim(path, pid=sleeper.pid, pid_start=claims._process_start(sleeper.pid) - 1)
            claim, _ = claims.acquire(path)
            assert claim is not None
            claim.release()
    finally:
        sleeper.kill()
        sleeper.wait()
    # another host: live while younger than the timeout, stale after it
    _write_claim(path, host="elsewhere.example", pid=1, started=time.time() - 100)
    claim, holder = claims.acquire(path, timeout_s=3600)
    assert claim is None and str(holder) == "elsewhere.example:1"
    claim, _ = claims.acquire(path, timeout_s=50)
    assert claim is not None
    # a claim taken over meanwhile is not removed by its former holder
    _write_claim(path, host="elsewhere.example", pid=2)
    claim.release()
    assert claims.read_holder(path).pid == 2
    assert not list(path.parent.glob("*.takeover"))


def test_an_empty_or_damaged_claim_holds_nothing(tmp_path, monkeypatch):
    """A 0-byte claim (a write failed mid-claim: disk full) once read as a live holder `?:0` for a minute: the
    study exited 0 and never did the run. Claims are now linked into place complete, so no claim of ours is
    ever empty; an unreadable one (a process without hard links writing in place, or a crash of one) holds
    the run for a few seconds at most."""
    path = claims.claim_path(tmp_path, "run-c")
    path.parent.mkdir(parents=True)
    for junk in (b"", b'{"host": "x", "pi'):
        path.write_bytes(junk)
        assert claims.acquire(path)[0] is None  # may be being written in place right now
        old = time.time() - 2 * claims._WRITING_GRACE_S
        os.utime(path, (old, old))
        claim, holder = claims.acquire(path)
        assert claim is not None and holder is None and claims.read_holder(path).pid == os.getpid()
        claim.release()
    assert claims._WRITING_GRACE_S <= 10
    monkeypatch.setattr(claims, "_can_link", False)  # in-place mode writes a complete claim too
    claim, _ = claims.acquire(path)
    assert claim is not None and claims.read_holder(path).pid == os.getpid()
    claim.release()


def test_a_claim_that_cannot_be_written_leaves_no_file(tmp_path, monkeypatch):
    """A full disk while claiming: the error reaches the caller and no (empty) claim stays behind."""
    import errno

    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    path = claims.claim_path(tmp_path, "run-d")
    with pytest.raises(OSError, match="No space"):
        claims.acquire(path)
    assert not list(path.parent.iterdir())
    monkeypatch.setattr(claims, "_can_link", False)
    with pytest.raises(OSError, match="No space"):
        claims.acquire(path)
    assert not list(path.parent.iterdir())
    monkeypatch.setattr(os, "fsync", real_fsync)
    claim, _ = claims.acquire(path)
    assert claim is not None and claims.read_holder(path).pid == os.getpid()


def _compose(tmp_path: Path, store: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "stitch" / "conf"), version_base="1.3"):
        return compose("stitch", overrides=[f"store={store}", f"results_dir={tmp_path / 'res'}", *SYNTH_OVERRIDES,
                                            *FAST, *overrides])


def test_a_run_claimed_by_a_live_process_is_neither_ok_nor_failed(donor_store, tmp_path, capsys):
    from omegaconf import OmegaConf

    from stitch.commands.stitch import study
    from stitch.settings import study_settings
    from stitch.study import run_identity

    cfg = _compose(tmp_path, donor_store, "method=dm", "layer=[relu7,relu8]")
    plain = OmegaConf.to_container(cfg, resolve=True)
    slug, _ = run_identity(study_settings(plain), "relu8", "relu8", "dm")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _write_claim(claims.claim_path(tmp_path / "res", slug), pid=sleeper.pid,
                     pid_start=claims._process_start(sleeper.pid))
        assert study(cfg) == 0  # the claimed run does not fail the study
    finally:
        sleeper.kill()
        sleeper.wait()
    out = capsys.readouterr().out
    assert re.search(rf"relu8 +dm +claimed .*claimed by {re.escape(socket.gethostname())}:{sleeper.pid}", out), out
    recs = load_records(tmp_path / "res", status=None)
    assert [r["layer"] for r in recs] == ["relu7"] and recs[0]["status"] == "ok"
    assert recs[0]["pid"] == os.getpid() and recs[0]["warnings"] == []


@pytest.mark.slow
def test_two_processes_share_one_study_and_do_each_run_once(donor_store, tmp_path):
    """Two real stitch.py processes on one 8-run study: every run is done exactly once."""
    res = tmp_path / "res"
    cmd = lambda i: [sys.executable, "stitch.py", f"store={donor_store}", f"results_dir={res}",  # noqa: E731
                     f"hydra.run.dir={tmp_path / f'run{i}'}", *SYNTH_OVERRIDES, *FAST, "method=tlm", "tlm.epochs=20",
                     "layer=all"]
    procs = [subprocess.Popen(cmd(i), cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    recs = load_records(res, status=None)
    assert len(recs) == 8 and all(r["status"] == "ok" for r in recs)
    performed = [len(re.findall(r"\[\d/8\] layer=\S+ -> \S+ tlm  ok ", out)) for out in outs]
    assert sum(performed) == 8, (performed, [o[-3000:] for o in outs])  # each run performed once
    for p, n in zip(procs, performed):  # ... and its record names the process that did it
        assert sum(r["launcher_pid"] == p.pid for r in recs) == n  # the study runs in a child of p (stitch/supervisor.py)
    assert all(n >= 1 for n in performed), performed  # the two processes did overlap
    assert not list((res / "claims").glob("*"))  # every claim released


# ------------------------------------------------------------------------------ W&B
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wandb_mode_decision(monkeypatch):
    from stitch import loggers

    monkeypatch.setattr(loggers, "_decided", {})
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    assert loggers.check_target({}) == ("api.wandb.ai", 443)
    assert loggers.check_target({"check_host": "localhost:8080"}) == ("localhost", 8080)
    assert loggers.check_target({"check_host": None}) is None
    monkeypatch.setenv("WANDB_BASE_URL", "http://wandb.local:8080")
    assert loggers.check_target({"check_host": "auto"}) == ("wandb.local", 8080)
    assert loggers.decide_wandb_mode({"mode": "offline", "check_host": "127.0.0.1:1"}) == ("offline", None)
    monkeypatch.setenv("WANDB_API_KEY", "x")
    port = _closed_port()
    t = time.time()
    mode, note = loggers.decide_wandb_mode({"mode": None, "check_host": f"127.0.0.1:{port}"})
    assert mode == "offline" and f"127.0.0.1:{port}" in note and time.time() - t < 5
    with socket.socket() as server:  # a host that answers: online stays online
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert loggers.decide_wandb_mode({"check_host": f"127.0.0.1:{server.getsockname()[1]}"}) == ("online", None)


def test_wandb_errors_become_warnings_in_the_record(donor_store, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from omegaconf import OmegaConf

    from stitch.study import run_study

    def broken(*args, **kwargs):
        raise RuntimeError("simulated W&B outage")

    monkeypatch.setattr(wandb, "init", broken)
    cfg = OmegaConf.to_container(_compose(tmp_path, donor_store, "method=tlm", "tlm.epochs=2", "layer=relu8",
                                          "logger=none"), resolve=True)
    cfg["logger"] = {"name": "wandb", "mode": "offline", "save_dir": str(tmp_path / "wb")}
    (rec,) = run_study(cfg)
    assert rec["status"] == "ok"
    assert any("W&B init failed" in w and "simulated W&B outage" in w for w in rec["warnings"])
    assert load_records(tmp_path / "res", status=None)[0]["warnings"] == rec["warnings"]


@pytest.mark.slow
def test_unreachable_wandb_falls_back_offline_and_progress_lines(donor_store, tmp_path):
    """An API key but no reachable W&B host: a 2-run study logs offline, quickly, with progress lines."""
    res, run_dir = tmp_path / "res", tmp_path / "run"
    env = _env(tmp_path, WANDB_API_KEY="x")
    env.pop("WANDB_MODE")  # the mode is decided from the key: online, unless the host does not answer
    t = time.time()
    p = subprocess.run([sys.executable, "stitch.py", f"store={donor_store}", f"results_dir={res}",
                        f"hydra.run.dir={run_dir}", *SYNTH_OVERRIDES, *FAST, "logger=wandb", "study=wb",
                        f"logger.check_host=127.0.0.1:{_closed_port()}", "method=tlm", "tlm.epochs=2",
                        "layer=[layer1,layer2]", "+progress_every_s=0"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.time() - t
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    recs = load_records(res, status=None)
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs)
    for r in recs:
        assert any("did not answer" in w and "offline" in w for w in r["warnings"]), r["warnings"]
    runs = list(run_dir.rglob("offline-run-*"))
    assert len(runs) == 2  # one offline W&B run per stitching run: config, TLM epochs, metrics
    data = b"".join(f.read_bytes() for r in runs for f in r.glob("*.wandb"))
    for needle in (b"tlm/loss", b"tlm/epoch", b"relative_acc", b"method_config"):
        assert needle in data, needle
    assert seconds < 240, seconds  # no network timeouts (a W&B init timeout alone is 30 s per run)
    # progress: a start and a finish line per run, the finish with elapsed time and ETA; TLM epochs
    assert "[1/2] layer=relu1 -> relu1 tlm  start" in out
    assert re.search(r"\[1/2\] layer=relu1 -> relu1 tlm  ok  \d+\.\ds  elapsed \d+:\d\d  ETA \d+:\d\d", out), out
    assert re.search(r"\[2/2\] layer=relu2 -> relu2 tlm  ok  \d+\.\ds  elapsed \d+:\d\d  ETA 0:00", out), out
    assert re.search(r"\[2/2\]   epoch 2/2  loss \d", out), out


def test_progress_eta_and_durations():
    import logging

    from stitch.progress import StudyProgress, duration

    assert (duration(40), duration(725), duration(3723), duration(None)) == ("0:40", "12:05", "1:02:03", "?")
    logger, lines = _captured("test.progress")
    p = StudyProgress(4, every_s=0, start=time.time() - 40, tty=False, logger=logger)
    p.skip("layer=a -> a dm", "skipped (finished)")
    r = p.start("layer=b -> b tlm")
    r.epoch(1, 2, {"loss": 0.5})
    r.done("ok", seconds=10.0)
    assert lines[0] == "[1/4] layer=a -> a dm  skipped (finished)"
    assert lines[1] == "[2/4] layer=b -> b tlm  start"
    assert lines[2].startswith("[2/4]   epoch 1/2  loss 0.5")
    assert lines[3] == "[2/4] layer=b -> b tlm  ok  10.0s  elapsed 0:40  ETA 0:20"  # 2 runs to go x 10 s


def test_the_eta_weighs_the_runs_left_by_their_expected_cost():
    """A 2-layer TLM + DM study: the early-layer TLM runs are the expensive ones. After one TLM run of weight 4
    (40 s) and one DM run (2 s), the runs left cost 40 / 4 s per unit of TLM weight and 2 s per DM run."""
    import logging

    from stitch.progress import StudyProgress, run_weight

    assert run_weight("tlm", 0, 8, 3) > run_weight("tlm", 7, 8, 3) > run_weight("dm", 0, 8) == 1.0
    logger, lines = _captured("test.progress.eta")
    p = StudyProgress(4, every_s=0, tty=False, logger=logger, weights=[4.0, 1.0, 1.0, 1.0],
                      kinds=["tlm", "dm", "tlm", "dm"])
    p.start("a tlm").done("ok", seconds=160.0, one_off_s=120.0)  # 120 s trained its target's OOD detector
    assert p.eta() == pytest.approx(10.0 * 3)  # 3 units of weight left; no DM run measured yet: the overall rate
    p.start("a dm").done("ok", seconds=2.0)
    assert p.eta() == pytest.approx(10.0 * 1 + 2.0 * 1)
    r = p.start("b tlm")
    r.step(5, 10, 1, 2)  # every_s=0: heartbeat lines are off
    assert not any("step" in line for line in lines)
    p.every_s = 1e-9
    r._last = 0.0
    r.step(5, 10, 1, 2)
    assert re.search(r"\[3/4\]   epoch 1/2  step 5/10  0:0\d", lines[-1]), lines[-1]


# ------------------------------------------------------------------ installable package
@pytest.mark.slow
def test_wheel_has_configs_and_commands_that_run_from_anywhere(donor_store, tmp_path):
    src = tmp_path / "src"  # build from a copy: an in-tree build would write build/ into the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "stitch", src / "stitch", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    b = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                       capture_output=True, text=True, timeout=300, env=_env(tmp_path))
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("stitch-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    packaged = {n for n in names if n.startswith("stitch/conf/") and n.endswith(".yaml")}
    expected = {f"stitch/conf/{p.relative_to(ROOT / 'stitch' / 'conf').as_posix()}"
                for p in (ROOT / "stitch" / "conf").rglob("*.yaml")}
    assert packaged == expected and "stitch/conf/stitch.yaml" in packaged
    for line in ("stitch-run = stitch.commands.stitch:main", "stitch-train = stitch.commands.train_models:main",
                 "stitch-sweep = stitch.commands.sweep:main"):
        assert line in entry_points, entry_points
    # installed without dependencies (they are this environment's), then used from another directory
    target = tmp_path / "site"
    i = subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                       capture_output=True, text=True, timeout=300, env=_env(tmp_path))
    assert i.returncode == 0, i.stdout[-3000:] + i.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _env(tmp_path, PYTHONPATH=str(target))
    where = subprocess.run([sys.executable, "-c", "import stitch.commands.stitch as m; print(m.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr
    script = target / "bin" / "stitch-run"  # the console command pip made (its shebang: this Python)
    assert all((target / "bin" / c).is_file() for c in ("stitch-run", "stitch-train", "stitch-sweep"))
    p = subprocess.run([str(script), f"store={donor_store}", "results_dir=res", *SYNTH_OVERRIDES, *FAST, "method=dm",
                        "layer=layer1"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (rec,) = load_records(elsewhere / "res", status=None)
    assert rec["status"] == "ok" and rec["layer"] == "relu1"
    assert (elsewhere / "outputs").is_dir()  # Hydra's run directory: relative to the working directory
    listing = subprocess.run([str(target / "bin" / "stitch-sweep"), "list=true"],
                             cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert listing.returncode == 0 and "p1_fig2" in listing.stdout, listing.stdout[-2000:] + listing.stderr[-2000:]


# ----------------------------------------------------------------- donor training resume
@pytest.mark.slow
def test_killed_donor_training_resumes_from_its_checkpoint(tmp_path):
    import torch

    store_dir = tmp_path / "store"
    epochs = 6
    args = [sys.executable, "train_models.py", f"store={store_dir}", "data=synthetic", "data.train_size=2048",
            "data.test_size=128", "model=tiny10", "seed=0", f"epochs={epochs}", "logger=none",
            "trainer.accelerator=cpu", f"hydra.run.dir={tmp_path / 'run'}"]
    ckpt = store_dir / ".train-ckpt" / "synthetic" / "tiny10" / "seed0" / "last.ckpt"
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and not ckpt.is_file() and proc.poll() is None:
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert ckpt.is_file(), "no checkpoint before the training ended"
    done = torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"] + 1
    assert 1 <= done < epochs, done
    assert not (store_dir / "synthetic" / "tiny10" / "seed0" / "meta.json").exists()  # no donor yet
    p = subprocess.run(args, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"resuming the interrupted training after epoch {done} of {epochs}" in p.stdout + p.stderr
    meta = json.loads((store_dir / "synthetic" / "tiny10" / "seed0" / "meta.json").read_text())
    assert meta["metrics"]["epochs"] == epochs and meta["metrics"]["epochs_done"] == epochs
    assert meta["resumed_from_epoch"] == done
    assert not (store_dir / ".train-ckpt").exists()  # removed once the donor is stored

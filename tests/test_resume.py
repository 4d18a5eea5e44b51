"""Sweeps end to end through stitch.py: interrupted multiruns resume, force=true redoes,
the joblib and submitit_local launchers, W&B offline logging of runs and sweep reports.

Each test runs the real entry scripts in subprocesses on tiny settings (Tiny-10 donors of one
epoch on 128 digits) sharing one model store.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stitch.results import read_record, record_files

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TINY = ["data.train_subset=128", "data.test_subset=64", "donor.epochs=1", "donor.allow_chance=true", "tlm.epochs=1",
        "similarity.indices=[cka]", "similarity.samples=32", "print_table=false"]


def env(tmp: Path, **extra) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "CUDA_VISIBLE", "STITCH_"))}
    e.update({"WANDB_MODE": "disabled", "WANDB_DIR": str(tmp / "wandb_dir"), "WANDB_SILENT": "true",
              "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra})
    return e


def stitch(tmp: Path, store: Path, results: Path, *overrides: str, multirun=True, check=True, extra_env=None,
           timeout=300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "stitch.py", *(["-m"] if multirun else []), f"store={store}", f"results_dir={results}",
           f"hydra.sweep.dir={tmp / 'multirun'}", f"hydra.run.dir={tmp / 'run'}", *TINY, *overrides]
    p = subprocess.run(cmd, cwd=ROOT, env=env(tmp, **(extra_env or {})), capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}\nexit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def records(results: Path) -> dict[str, dict]:
    out = {}
    for f in record_files(results) if results.is_dir() else []:
        r = read_record(f)
        out[f"{r['layer']}/{r['method']}/s{r['seed']}"] = {**r, "_mtime": os.stat(f).st_mtime_ns, "_path": str(f)}
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Two Tiny-10 donors (seeds 0, 1), trained once for the module."""
    tmp = tmp_path_factory.mktemp("store")
    stitch(tmp, tmp / "models", tmp / "warmup", "method=dm", "layer=relu8", multirun=False)
    return tmp / "models"


def test_interrupted_multirun_resumes_and_force_redoes(store, tmp_path):
    res = tmp_path / "res"
    # job 1 of 3 stops the sweep: an unknown layer is a user error, the process exits there
    p = stitch(tmp_path, store, res, "method=dm", "layer=relu7,bogus,relu8", check=False)
    assert p.returncode != 0 and "bogus" in (p.stderr + p.stdout)
    first = records(res)
    assert set(first) == {"relu7/dm/s0"}                            # relu8 never ran
    time.sleep(0.05)
    stitch(tmp_path, store, res, "method=dm", "layer=relu7,relu8")
    second = records(res)
    assert set(second) == {"relu7/dm/s0", "relu8/dm/s0"}           # the missing run is done ...
    assert second["relu7/dm/s0"]["_mtime"] == first["relu7/dm/s0"]["_mtime"]  # ... the finished one is not
    stitch(tmp_path, store, res, "method=dm", "layer=relu7,relu8", "force=true")
    third = records(res)
    for k in second:
        assert third[k]["_mtime"] > second[k]["_mtime"], f"force=true did not redo {k}"


def test_failed_run_is_redone_on_resume(store, tmp_path):
    """A run recorded as failed is not 'finished': the next sweep tries it again (in-process)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from stitch.study import run_study

    res = tmp_path / "res"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("stitch", overrides=[f"store={store}", f"results_dir={res}", *TINY, "method=dm", "layer=relu8"])
    cfg = OmegaConf.to_container(cfg, resolve=True)
    run_study(cfg)
    rec = records(res)["relu8/dm/s0"]
    bad = {k: v for k, v in rec.items() if not k.startswith("_")}
    bad.update(status="failed", error="RuntimeError: simulated", metrics=None)
    Path(rec["_path"]).write_text(json.dumps(bad))
    (again,) = run_study(cfg)
    assert again["status"] == "ok" and records(res)["relu8/dm/s0"]["status"] == "ok"
    (skipped,) = run_study(cfg)                      # and now it is finished: skipped
    assert records(res)["relu8/dm/s0"]["_mtime"] == os.stat(rec["_path"]).st_mtime_ns


def test_killed_sweep_resumes(store, tmp_path):
    """SIGKILL a multirun once its first run is recorded; the rerun does only what is missing."""
    res = tmp_path / "res"
    args = [sys.executable, "stitch.py", "-m", f"store={store}", f"results_dir={res}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}", *TINY, "method=tlm", "tlm.epochs=3", "layer=relu2",
            "seed=0,1,2,3"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not records(res) and proc.poll() is None:
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = records(res)
    assert 1 <= len(done) < 4, f"kill came too late or too early: {sorted(done)}"
    for f in (res / "records").glob("*.json"):       # atomic writes: never a torn record
        json.loads(f.read_text())
    stitch(tmp_path, store, res, "method=tlm", "tlm.epochs=3", "layer=relu2", "seed=0,1,2,3")
    after = records(res)
    assert set(after) == {f"relu2/tlm/s{s}" for s in range(4)}
    for k, r in done.items():
        assert after[k]["_mtime"] == r["_mtime"], f"{k} was redone"


def test_joblib_launcher_two_parallel_jobs_one_gpu_each(store, tmp_path):
    """n_jobs=2 workers; with two (pretend) GPUs each worker pins a different one."""
    res = tmp_path / "res"
    stitch(tmp_path, store, res, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "method=dm",
           "layer=relu7,relu8", f"hydra.callbacks.gpu_per_job.lock_dir={tmp_path / 'locks'}",
           extra_env={"STITCH_GPUS": "0,1"})  # own lock directory: never collides with a real sweep here
    assert set(records(res)) == {"relu7/dm/s0", "relu8/dm/s0"}
    logs = "\n".join(Path(f).read_text() for f in glob.glob(str(tmp_path / "multirun" / "*" / "*.log")))
    gpus = {line.split("job on GPU ")[1].split()[0] for line in logs.splitlines() if "job on GPU " in line}
    assert gpus == {"0", "1"}, logs[-2000:]


def test_gpu_claims_are_exclusive(tmp_path):
    """The lock scheme itself: a second process cannot take a GPU the first one holds."""
    code = ("import sys; from stitch.gpu_jobs import claim_gpu; print(claim_gpu(['0', '1'], sys.argv[1]), "
            "flush=True); sys.stdin.read()")
    holders = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        got = sorted(h.stdout.readline().strip() for h in holders)
        assert got == ["0", "1"]
        third = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, input="",
                               capture_output=True, text=True)
        assert third.returncode != 0 and "n_jobs" in third.stderr
    finally:
        for h in holders:
            h.stdin.close()
            h.wait()


def test_submitit_local_launcher(store, tmp_path):
    res = tmp_path / "res"
    stitch(tmp_path, store, res, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "method=dm",
           "layer=relu7,relu8")
    assert set(records(res)) == {"relu7/dm/s0", "relu8/dm/s0"}


def _wandb_runs(root: Path) -> list[Path]:
    return sorted(root.rglob("offline-run-*"))


def test_wandb_offline_runs_and_sweep_report(store, tmp_path):
    res = tmp_path / "res"
    stitch(tmp_path, store, res, "method=dm", "layer=relu7,relu8", "logger=wandb", "study=wb",
           extra_env={"WANDB_MODE": "offline"})
    runs = _wandb_runs(tmp_path / "multirun")
    assert len(runs) == 2, "one offline W&B run per stitching run"
    for r in runs:
        assert list(r.glob("*.wandb")), f"{r} has no run data"
    # config (the record's semantic config), the run name and the summary metrics are in the run data
    data = b"".join(p.read_bytes() for r in runs for p in r.glob("*.wandb"))
    for needle in (b"relu7", b"relu8", b"relative_acc", b"--dm.seed0-", b"method_config"):
        assert needle in data, needle
    out = tmp_path / "figs"
    p = subprocess.run([sys.executable, "sweep.py", f"inputs=[{res}]", "figures=[p1_fig2]", f"out={out}",
                        "logger=wandb", f"hydra.run.dir={tmp_path / 'sweep_run'}", "formats=[png]"],
                       cwd=ROOT, env=env(tmp_path, WANDB_MODE="offline"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    report = _wandb_runs(tmp_path / "sweep_run")
    assert len(report) == 1 and list(report[0].glob("*.wandb"))
    assert (out / "fig-p1-2.png").is_file()

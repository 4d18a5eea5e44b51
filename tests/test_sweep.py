"""sweep.py's tables: hand-written records with known values -> runs, aggregates, exports."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest

from stitch.sweep.collect import aggregate, collect, condition_of, export
from stitch.sweep.report import run_sweep


def record(run: str, *, layer="layer1", target=None, method="tlm", seed=0, m1seed=0, m2seed=1, rel=0.9,
           ce=0.5, status="ok", study="s", variant=None, history=None, extra_cfg=None, **metrics) -> dict:
    """A record as stitch.experiment writes it (only the fields sweep.py reads)."""
    target = target or layer
    kind = "tlm" if method.startswith("tlm") else "dm"
    mcfg = {"kind": kind, "epochs": 5} if kind == "tlm" else {"kind": kind, "solver": "ls"}
    m = lambda s: {"name": "tiny10", "options": {"padding": "kornblith"}, "seed": s}  # noqa: E731
    config = {"data": {"name": "digits"}, "seed": seed, "layer": layer, "target_layer": target, "method": method,
              "method_config": mcfg, "model1": m(m1seed), "model2": m(m2seed), **(extra_cfg or {})}
    rec = {"run": run, "study": study, "layer": layer, "target_layer": target, "method": method, "kind": kind,
           "variant": variant, "seed": seed, "data": "digits", "self_stitch": m1seed == m2seed, "status": status,
           "model1": {**m(m1seed), "key": f"digits/tiny10/seed{m1seed}", "test_acc": 0.9},
           "model2": {**m(m2seed), "key": f"digits/tiny10/seed{m2seed}", "test_acc": 0.9},
           "config": config, "started": "2026-01-01T00:00:00+00:00"}
    if status == "ok":
        rec["metrics"] = {"relative_acc": rel, "cross_entropy": ce, "stitched_acc": 0.8 * rel, "model2_acc": 0.8,
                          **metrics}
        rec["fit"] = {"steps": 10, "fit_s": 1.0}
        rec["history"] = history or []
    else:
        rec["error"] = "TrainingDiverged: TLM loss became nan"
    return rec


def write(d: Path, rec: dict) -> Path:
    p = d / "records" / f"{rec['run']}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(rec))
    return p


@pytest.fixture
def mixed(tmp_path) -> Path:
    """Two studies' directories: TLM at layer1 with 3 ok seeds + 1 failed seed, DM with 2 ok seeds,
    TLM at layer2 with every run failed, one duplicated run, one unreadable record."""
    a, b = tmp_path / "res_a", tmp_path / "res_b"
    tlm = [0.90, 0.80, 0.70]
    for s, v in enumerate(tlm):
        rec = record(f"tlm-l1-s{s}", seed=s, rel=v, ce=1.0 + s,
                     history=[{"step": 0, "cka": 0.5}, {"step": 10, "cka": 0.4 + s / 100}])
        write(a, rec)
        if s == 0:
            write(b, rec)  # the same run copied into another directory: counted once
    write(a, record("tlm-l1-s3", seed=3, status="failed"))
    write(b, record("dm-l1-m0", method="dm", m1seed=0, rel=0.60))
    write(b, record("dm-l1-m2", method="dm", m1seed=2, rel=0.50))
    write(b, record("tlm-l2-s0", layer="layer2", seed=0, status="failed"))
    (b / "records" / "broken.json").write_text("{not json")
    return tmp_path


def test_collect_keeps_failed_runs_and_dedupes(mixed):
    c = collect([mixed / "res_a", mixed / "res_b"])
    runs = c.runs
    assert len(runs) == 7                                   # 8 files, one duplicate, one unreadable
    assert len(c.unreadable) == 1 and c.unreadable[0].endswith("broken.json")
    assert set(runs.loc[runs["status"] == "failed", "run"]) == {"tlm-l1-s3", "tlm-l2-s0"}
    assert runs.loc[runs["run"] == "tlm-l1-s3", "error"].iloc[0].startswith("TrainingDiverged")
    assert runs["relative_acc"].dtype == float               # None of failed runs -> NaN, numeric column
    # flattened columns
    for colname in ("model1.options.padding", "model1.tag", "method_config.epochs", "config.data.name",
                    "fit.steps", "record_path"):
        assert colname in runs, colname
    assert (runs["model1.tag"] == "tiny10").all()
    # history: one row per tracked step, for the successful TLM runs
    assert len(c.history) == 6 and set(c.history.columns) >= {"run", "step", "cka", "condition"}


def test_aggregate_mean_std_count_over_seeds(mixed):
    runs = collect([mixed]).runs                             # the parent directory: both studies found
    agg = aggregate(runs).set_index(["layer", "method"])
    tlm = agg.loc[("layer1", "tlm")]
    assert tlm["n_runs"] == 4 and tlm["n_ok"] == 3 and tlm["n_failed"] == 1
    assert tlm["failed_runs"] == "tlm-l1-s3"
    assert tlm["relative_acc.count"] == 3
    assert math.isclose(tlm["relative_acc.mean"], 0.8, rel_tol=1e-12)
    assert math.isclose(tlm["relative_acc.std"], statistics.stdev([0.9, 0.8, 0.7]), rel_tol=1e-12)
    assert math.isclose(tlm["cross_entropy.mean"], 2.0, rel_tol=1e-12)
    assert tlm["seed.values"] == "0;1;2"
    dm = agg.loc[("layer1", "dm")]                           # aggregated over donor seeds (model1.seed 0, 2)
    assert dm["n_ok"] == 2 and math.isclose(dm["relative_acc.mean"], 0.55)
    assert math.isclose(dm["relative_acc.std"], statistics.stdev([0.6, 0.5]))
    assert dm["model1.seed.values"] == "0;2"
    allfailed = agg.loc[("layer2", "tlm")]
    assert allfailed["n_ok"] == 0 and allfailed["n_failed"] == 1
    assert math.isnan(allfailed["relative_acc.mean"]) and allfailed["relative_acc.count"] == 0
    # replicate keys and donor descriptors are not metrics
    assert "seed.mean" not in agg and "model1.test_acc.mean" not in agg


def test_single_run_has_no_std(tmp_path):
    write(tmp_path, record("one", rel=0.7))
    agg = aggregate(collect([tmp_path]).runs)
    assert agg["relative_acc.mean"].iloc[0] == 0.7 and math.isnan(agg["relative_acc.std"].iloc[0])


def test_intra_and_inter_network_are_different_conditions(tmp_path):
    """Donor seeds are replicate keys, yet self-stitching (m2 = m1) must not average with m2 != m1."""
    intra = record("intra", m1seed=0, m2seed=0, rel=1.0)
    inter = record("inter", m1seed=0, m2seed=1, rel=0.5)
    assert condition_of(intra) != condition_of(inter)
    assert condition_of(record("a", seed=0)) == condition_of(record("b", seed=5, m1seed=3, m2seed=4))
    assert condition_of(record("a", layer="layer1")) != condition_of(record("b", layer="layer2"))
    for r in (intra, inter):
        write(tmp_path, r)
    agg = aggregate(collect([tmp_path]).runs)
    assert sorted(agg["relative_acc.mean"]) == [0.5, 1.0]


def test_inputs_as_globs_and_files(mixed):
    files = collect([str(mixed / "res_*" / "records" / "tlm-l1-*.json")])
    assert set(files.runs["run"]) == {"tlm-l1-s0", "tlm-l1-s1", "tlm-l1-s2", "tlm-l1-s3"}
    one = collect([mixed / "res_b" / "records" / "dm-l1-m0.json"])
    assert list(one.runs["run"]) == ["dm-l1-m0"]
    assert len(collect([mixed / "nowhere"]).runs) == 0


def test_export_csv_and_parquet_round_trip(mixed, tmp_path):
    c = collect([mixed])
    agg = aggregate(c.runs)
    paths = export({"runs": c.runs, "aggregate": agg}, tmp_path / "out")
    assert {p.name for p in paths} == {"runs.csv", "runs.parquet", "aggregate.csv", "aggregate.parquet"}
    back = pd.read_parquet(tmp_path / "out" / "aggregate.parquet")
    assert len(back) == len(agg)
    assert back.set_index(["layer", "method"]).loc[("layer1", "tlm"), "relative_acc.mean"] == pytest.approx(0.8)
    runs_csv = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert (runs_csv["status"] == "failed").sum() == 2


def test_run_sweep_writes_tables_and_lists_failures(mixed, tmp_path, capsys):
    out = tmp_path / "sweep"
    cfg = {"inputs": [str(mixed)], "figures": "none", "out": str(out), "formats": ["png"],
           "tables": ["csv", "parquet"], "seed_keys": ["seed", "model1.seed", "model2.seed"],
           "logger": {"name": "none"}}
    assert run_sweep(cfg) == 0
    text = capsys.readouterr().out
    assert "7 runs" in text and "5 ok, 2 failed" in text and "tlm-l1-s3" in text
    for name in ("runs", "aggregate", "history"):
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.parquet").is_file()
    failed = pd.read_csv(out / "failed.csv")
    assert set(failed["run"]) == {"tlm-l1-s3", "tlm-l2-s0"}
    with pytest.raises(SystemExit):  # strict: an unreadable record is an error
        run_sweep({**cfg, "strict": True})


def test_run_sweep_rejects_unknown_figures(mixed, tmp_path):
    from stitch.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown figure"):
        run_sweep({"inputs": [str(mixed)], "figures": ["p9_fig9"], "out": str(tmp_path / "o")})


def test_makefile_has_one_target_per_figure():
    """`make help` lists every figure target, and each runs its experiment then sweep.py (dry run)."""
    import subprocess

    from stitch.sweep.figures import FIGURES

    root = Path(__file__).resolve().parents[1]
    text = subprocess.run(["make", "-s", "help"], cwd=root, capture_output=True, text=True, check=True).stdout
    for name, fig in FIGURES.items():
        assert fig.stem in text, f"make help does not list {fig.stem}"
        for scale in ("smoke", "paper"):
            assert (root / "conf" / "experiment" / f"{name}_{scale}.yaml").is_file()
            dry = subprocess.run(["make", "-n", "-W", ".venv/.installed", fig.stem, f"SCALE={scale}"], cwd=root,
                                 capture_output=True, text=True, check=True).stdout
            assert f"stitch.py -m +experiment={name}_{scale} results_dir=results/{name}_{scale}" in dry
            assert f"sweep.py inputs=[results/{name}_{scale}] figures=[{name}] out=figures/{fig.stem}/{scale}" in dry

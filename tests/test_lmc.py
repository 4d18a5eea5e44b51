"""Linear mode connectivity: the study's LMC step writes records, the sweep only reads them.

* ``stitch.py step=lmc`` (``stitch/study/lmc.py``) evaluates W(λ) = (1-λ) W0 + λ W1 between the
  saved stitching layers of a study's finished runs and writes ``<results_dir>/lmc/<id>.json``;
* figure ``p1_lmc`` (``stitch/sweep``) draws those records and runs no network;
* the rule behind it (issue 9): ``stitch/sweep`` imports nothing that runs a network, and no
  module outside ``stitch/sweep`` imports from it.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from stitch.results import load_records

from .conftest import ROOT, SYNTH_OVERRIDES, run_script

SWEEP = ROOT / "stitch" / "sweep"
# modules that load donors or data, fit or evaluate stitching layers: what runs a network
NETWORK = ("stitch.study", "stitch.evaluation", "stitch.features", "stitch.data", "stitch.store", "stitch.matching",
           "stitch.training", "stitch.donors", "stitch.ood", "stitch.activations", "stitch.probing",
           "stitch.checkpointing", "stitch.similarity", "stitch.losses", "stitch.models")
# the one exception: figures.layer_order builds an architecture on the meta device (no weights, never
# run) for its layer names
ALLOWED = {("figures.py", "stitch.models")}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imports(path: Path) -> set[str]:
    """Every module (and ``module.name``) a file imports, anywhere in it, relative imports resolved."""
    package = _module_name(path).rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_sweep_imports_nothing_that_runs_a_network():
    bad = []
    for path in sorted(SWEEP.glob("*.py")):
        for name in sorted(imports(path)):
            if _under(name, NETWORK) and (path.name, name) not in ALLOWED:
                bad.append(f"{path.name}: {name}")
        for node in ast.walk(ast.parse(path.read_text())):  # saved tensors only, never pickled code
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                weights_only = [k for k in node.keywords if k.arg == "weights_only"]
                if not (weights_only and getattr(weights_only[0].value, "value", None) is True):
                    bad.append(f"{path.name}:{node.lineno}: torch.load without weights_only=True")
    assert not bad, "stitch/sweep only reads records:\n  " + "\n  ".join(bad)


def test_no_module_outside_sweep_imports_from_sweep():
    entry = ROOT / "stitch" / "commands" / "sweep.py"  # sweep.py's own command
    files = [p for p in sorted((ROOT / "stitch").rglob("*.py")) if SWEEP not in p.parents and p != entry]
    files += sorted((ROOT / "bench").glob("*.py"))
    bad = [f"{p.relative_to(ROOT)}: {n}" for p in files for n in sorted(imports(p)) if _under(n, ["stitch.sweep"])]
    assert not bad, "\n".join(bad)


def test_lmc_table_reads_records_and_labels_them(tmp_path):
    from stitch.sweep.lmc import COLUMNS, lmc_table

    rec = {"lmc": "x", "status": "ok", "pair_type": "methods", "run0": "a", "run1": "b", "method0": "tlm",
           "method1": "dm", "variant0": "paper1", "variant1": "least_squares", "layer": "relu6",
           "target_layer": "relu6", "model1": {"key": "digits/tiny10/seed0", "name": "tiny10"},
           "lambdas": [0.0, 0.5, 1.0], "relative_acc": [0.9, 0.5, 0.95], "stitched_acc": [0.8, 0.4, 0.85],
           "cross_entropy": [0.3, 1.2, 0.2]}
    (tmp_path / "lmc").mkdir()
    (tmp_path / "lmc" / "x.json").write_text(json.dumps(rec))
    (tmp_path / "lmc" / "y.json").write_text(json.dumps({**rec, "lmc": "y", "status": "failed", "run1": "c"}))
    t = lmc_table([tmp_path])
    assert list(t.columns) == COLUMNS and len(t) == 3  # the failed pair is left out
    assert t["pair_label"].unique().tolist() == ["TLM (paper 1 recipe) vs DM (least squares)"]
    assert t["lambda"].tolist() == [0.0, 0.5, 1.0] and t["relative_acc"].tolist() == [0.9, 0.5, 0.95]
    assert set(t["model1.tag"]) == {"tiny10"} and set(t["pair"]) == {"a|b"}


# ------------------------------------------------------------------------------ end to end
FAST = ["similarity.indices=[cka]", "similarity.samples=32", "tlm.epochs=2", "layer=layer6", "save_stitch=true"]
# the end runs' test images and evaluation are the step's: λ = 0 and 1 reproduce their accuracy
SWEEP_CHECK = """
import sys
from stitch.sweep.report import run_sweep
rc = run_sweep({{"inputs": [{res!r}], "figures": ["p1_lmc"], "out": {out!r}, "formats": ["png"], "strict": True}})
net = [m for m in sys.modules if m.startswith(("stitch.study", "stitch.evaluation", "stitch.features", "stitch.data",
       "stitch.store", "stitch.matching", "stitch.training", "stitch.donors", "stitch.stitching"))]
print("NETWORK MODULES", net)
sys.exit(rc or (3 if net else 0))
"""


@pytest.mark.slow
def test_lmc_step_writes_records_that_the_figure_draws(tmp_path, donor_store, caplog):
    from stitch.sweep.report import run_sweep

    res = tmp_path / "res"
    common = [f"store={donor_store}", f"results_dir={res}", *SYNTH_OVERRIDES, *FAST, f"hydra.run.dir={tmp_path}/out",
              f"hydra.sweep.dir={tmp_path}/multi"]

    def step(*args):
        return run_script("stitch.py", *common, "step=lmc", "lmc.lambdas=3", "lmc.min_relative_acc=0", *args)

    # no finished runs yet: a clear message, exit 1 (a make target must not go on to draw nothing)
    r = step()
    assert r.returncode == 1 and "save_stitch=true" in r.stderr, r.stderr[-2000:]

    # the study: TLM from two stitching seeds and least squares, stitching layers saved
    r = run_script("stitch.py", "-m", *common, "seed=0,1")
    assert r.returncode == 0, r.stderr[-3000:]
    runs = {x["run"]: x for x in load_records(res)}
    assert len(runs) == 4 and all((res / x["stitch_file"]).is_file() for x in runs.values())

    # the figure without LMC records: a placeholder naming the command that makes them
    assert run_sweep({"inputs": [str(res)], "figures": ["p1_lmc"], "out": str(tmp_path / "f0"),
                      "formats": ["png"]}) == 0
    assert (tmp_path / "f0" / "fig-p1-lmc.png").is_file()
    assert f"step=lmc results_dir={res}" in caplog.text

    r = step()
    assert r.returncode == 0, r.stderr[-3000:]
    files = sorted((res / "lmc").glob("*.json"))
    recs = [json.loads(p.read_text()) for p in files]
    # seeds: TLM seed 0 vs 1 (DM is deterministic: never paired with itself); methods: each TLM run vs DM
    assert sorted((x["pair_type"], x["method0"], x["method1"]) for x in recs) == [
        ("methods", "tlm", "dm"), ("methods", "tlm", "dm"), ("seeds", "tlm", "tlm")]
    for x in recs:
        assert x["status"] == "ok" and x["lambdas"] == [0.0, 0.5, 1.0]
        assert len(x["relative_acc"]) == len(x["stitched_acc"]) == len(x["cross_entropy"]) == 3
        assert x["layer"] == x["target_layer"] == "relu6" and x["code_version"] and x["hardware"]
        assert x["model1"]["key"] == runs[x["run0"]]["model1"]["key"]
        assert x["relative_acc"][0] == pytest.approx(runs[x["run0"]]["metrics"]["relative_acc"], abs=1e-4)
        assert x["relative_acc"][-1] == pytest.approx(runs[x["run1"]]["metrics"]["relative_acc"], abs=1e-4)
        assert x["cross_entropy"][0] == pytest.approx(runs[x["run0"]]["metrics"]["cross_entropy"], rel=1e-4)
    assert "rel.acc" in r.stdout and "methods" in r.stdout

    # a re-run skips the finished pairs; force=true redoes them
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    r = step()
    assert r.returncode == 0 and (r.stdout + r.stderr).count("skip lmc") == 3
    assert mtimes == {p: p.stat().st_mtime_ns for p in files}
    r = step("force=true")
    assert r.returncode == 0 and all(p.stat().st_mtime_ns != mtimes[p] for p in files)

    # the figure draws the records and imports no network code
    out = tmp_path / "fig"
    r = run_script("-c", SWEEP_CHECK.format(res=str(res), out=str(out)))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert (out / "fig-p1-lmc.png").stat().st_size > 10_000

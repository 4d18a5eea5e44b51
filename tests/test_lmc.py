"""Linear mode connectivity: the study's LMC step writes records, the sweep only reads them.

* ``stitch.py step=lmc`` (``stitch/study/lmc.py``) evaluates W(λ) = (1-λ) W0 + λ W1 between the
  saved stitching layers of a study's finished runs and writes ``<results_dir>/lmc/<id>.json``;
* figure ``p1_lmc`` (``stitch/sweep``) draws those records and runs no network, nor does ``p1_fig8``,
  which draws saved stitching layers (``stitch.results.load_stitch``);
* the rule behind it (issue 9): ``stitch/sweep`` imports nothing that runs a network, and no
  module outside ``stitch/sweep`` imports from it.
"""
from __future__ import annotations

import ast
import json
import types
from pathlib import Path

import pytest
import torch

from stitch.errors import ConfigError
from stitch.fileio import sha256
from stitch.results import load_records, load_stitch

from .conftest import ROOT, SYNTH_OVERRIDES, run_script

SWEEP = ROOT / "stitch" / "sweep"
# modules that load donors or data, fit or evaluate stitching layers: what runs a network
NETWORK = ("stitch.study", "stitch.evaluation", "stitch.features", "stitch.data", "stitch.store", "stitch.matching",
           "stitch.training", "stitch.donors", "stitch.ood", "stitch.activations", "stitch.probing",
           "stitch.checkpointing", "stitch.similarity", "stitch.losses", "stitch.models", "stitch.stitching")
ALLOWED: set[tuple[str, str]] = set()  # (file, module) exceptions: none


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


# figures drawn in a fresh interpreter: none of the NETWORK modules may be loaded afterwards
SWEEP_CHECK = """
import json, sys
from stitch.sweep import report
from tests.figure_checks import summary
kept, real_draw = {{}}, report.draw
def draw(name, ctx):
    ctx.keep = kept
    return real_draw(name, ctx)
report.draw = draw
rc = report.run_sweep({{"inputs": [{res!r}], "figures": {figures!r}, "out": {out!r}, "formats": ["png"],
                       "strict": True}})
net = [m for m in sys.modules if m.startswith({network!r})]
print("NETWORK MODULES", net)
print("FIGURES " + json.dumps({{stem: summary(fig) for stem, fig in kept.items()}}))
sys.exit(rc or (3 if net else 0))
"""


def drawn_figures(stdout: str) -> dict:
    """The summaries (tests/figure_checks.py) of the figures a ``draw_in_subprocess`` call drew, by stem."""
    line = next(ln for ln in stdout.splitlines() if ln.startswith("FIGURES "))
    return json.loads(line[len("FIGURES "):])


def draw_in_subprocess(res: Path, out: Path, figures: list[str]):
    network = tuple(NETWORK) + tuple(p + "." for p in NETWORK)
    return run_script("-c", SWEEP_CHECK.format(res=str(res), out=str(out), figures=figures, network=network))


def _run_record(run: str, layer: str, kind: str, seed: int = 0, **extra) -> dict:
    """A finished run's record as the study writes it (``save_stitch=true``)."""
    donor = lambda s: {"name": "tiny10", "options": {"padding": "kornblith"}, "seed": s,  # noqa: E731
                       "key": f"digits/tiny10/seed{s}"}
    mcfg = {"kind": kind, **extra.pop("mcfg", {})}
    rec = {"run": run, "study": "fabricated", "layer": layer, "target_layer": layer, "method": kind, "kind": kind,
           "variant": "paper1" if kind == "tlm" else "least_squares", "seed": seed, "data": "digits",
           "self_stitch": False, "status": "ok", "model1": donor(0), "model2": donor(1), "precision": "32",
           "config": {"data": {"name": "digits"}, "method_config": mcfg, "seed": seed},
           "metrics": {"relative_acc": 0.9}, "fit": {"steps": 10}, "stitch_file": f"stitches/{run}.pt"}
    rec.update(extra)
    return rec


def _save(res: Path, rec: dict, state: dict) -> None:
    (res / "records").mkdir(parents=True, exist_ok=True)
    (res / "stitches").mkdir(exist_ok=True)
    (res / "records" / f"{rec['run']}.json").write_text(json.dumps(rec))
    torch.save(state, res / rec["stitch_file"])


def test_load_stitch_multiplies_low_rank_factors(tmp_path):
    w1, w2, b = torch.randn(6, 2), torch.randn(2, 5), torch.randn(5)
    torch.save({"w1": w1, "w2": w2, "bias": b}, tmp_path / "low.pt")
    torch.save({"weight": w1 @ w2, "bias": b}, tmp_path / "full.pt")
    for name in ("low.pt", "full.pt"):
        W, bias = load_stitch(tmp_path / name)
        assert torch.allclose(W, w1 @ w2) and torch.equal(bias, b)


def test_saved_layer_figures_import_no_network_code(tmp_path):
    """p1_fig8 (saved stitching matrices, one of them low rank) and p1_lmc drawn in a fresh interpreter."""
    res = tmp_path / "res"
    for kind, strengths in (("tlm", (0.0, 1e-3, 1e-2)), ("dm", (1e-3, 1e-2, 1e-1))):
        for j, a in enumerate(strengths):
            W = torch.randn(16, 16)
            W[torch.rand(16, 16) < 0.3 * j] = 0
            state = {"weight": W, "bias": torch.zeros(16)}
            if (kind, j) == ("tlm", 0):
                state = {"w1": torch.randn(16, 4), "w2": torch.randn(4, 16), "bias": torch.zeros(16)}
            mcfg = {"l1": a} if kind == "tlm" else {"solver": "lasso", "alpha": a, "zero_threshold": 1e-4}
            _save(res, _run_record(f"f8-{kind}-{j}", "layer4", kind, mcfg=mcfg,
                                   metrics={"relative_acc": 0.95 - 0.1 * j}), state)
    grid = [0.0, 0.5, 1.0]
    (res / "lmc").mkdir()
    (res / "lmc" / "x.json").write_text(json.dumps({
        "lmc": "x", "status": "ok", "pair_type": "methods", "run0": "f8-tlm-1", "run1": "f8-dm-0", "method0": "tlm",
        "method1": "dm", "layer": "layer4", "target_layer": "layer4", "model1": {"key": "digits/tiny10/seed0"},
        "lambdas": grid, "relative_acc": [0.9, 0.5, 0.9], "stitched_acc": [0.8, 0.4, 0.8],
        "cross_entropy": [0.3, 1.0, 0.3]}))
    out = tmp_path / "fig"
    r = draw_in_subprocess(res, out, ["p1_fig8", "p1_lmc"])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    drawn = drawn_figures(r.stdout)
    assert not drawn["fig-p1-8"]["placeholder"] and not drawn["fig-p1-lmc"]["placeholder"]
    sparsity = [p for p in drawn["fig-p1-8"]["panels"] if p["ylabel"] == "relative accuracy"]
    assert sparsity and sparsity[0]["lines"] >= 1 and sparsity[0]["collections"] >= 1  # means and runs
    (lmc,) = [p for p in drawn["fig-p1-lmc"]["panels"] if p["lines"]]
    assert lmc["title"].startswith("layer4") and "methods" in lmc["title"]


# ------------------------------------------------------------------------------ the step's plan
def _lmc_settings(tmp_path: Path, *overrides: str):
    from stitch.settings import study_settings

    from .test_configs import _resolved

    return study_settings(_resolved("stitch", ["+experiment=p1_lmc_smoke", f"results_dir={tmp_path / 'res'}",
                                               "device=cpu", *overrides], tmp_path / "out"))


def _ends(s, res: Path, **extra) -> list[dict]:
    """TLM from stitching seeds 0 and 1 and least squares at layer6, recorded with the step's own settings
    except the training-only data keys (the records may lack data.train_subset or differ in augment)."""
    data = {k: v for k, v in s.identity()["data"].items() if k != "train_subset"}
    data["augment"] = not data.get("augment")
    recs = []
    for run, kind, seed in (("tlm-0", "tlm", 0), ("tlm-1", "tlm", 1), ("dm", "dm", 0)):
        rec = _run_record(run, "layer6", kind, seed)
        rec["config"]["data"] = data
        rec.update(extra)
        _save(res, rec, {"weight": torch.randn(8, 8), "bias": torch.randn(8)})
        recs.append(rec)
    return recs


def test_eligibility_compares_only_what_the_test_evaluation_depends_on(tmp_path):
    from stitch.study.lmc import eligible_runs, evaluation_setup, run_lmc, run_setup

    s = _lmc_settings(tmp_path)
    res = Path(s.results_dir)
    recs = _ends(s, res)
    assert evaluation_setup(s)["precision"] == "32" and str(s.precision) == "auto"  # resolved on this device
    runs, mismatched = eligible_runs(s)
    assert sorted(r["run"] for r in runs) == ["dm", "tlm-0", "tlm-1"] and not mismatched
    assert all(run_setup(r) == evaluation_setup(s) for r in recs)

    # another precision or other test images: every run skipped, and the step says so
    for change in ({"precision": "bf16"}, {"config": {**recs[0]["config"],
                                                      "data": {**recs[0]["config"]["data"], "test_subset": 50}}}):
        for r in recs:
            (res / "records" / f"{r['run']}.json").write_text(json.dumps({**r, **change}))
        runs, mismatched = eligible_runs(s)
        assert not runs and sum(map(len, mismatched.values())) == 3
        with pytest.raises(ConfigError, match=r"3 finished run\(s\).*(precision: 'bf16' \(run\) vs '32'|"
                                              r"data.test_subset: 50 \(run\) vs None)") as e:
            run_lmc(s)
        assert "min_relative_acc" not in str(e.value)
    # runs in bf16 are the ends of a step in bf16
    for r in recs:
        (res / "records" / f"{r['run']}.json").write_text(json.dumps({**r, "precision": "bf16"}))
    assert len(eligible_runs(_lmc_settings(tmp_path, "precision=bf16"))[0]) == 3


def test_a_changed_stitching_layer_is_evaluated_again(tmp_path, monkeypatch):
    """Records name the sha256 of their two saved layers: a re-run study's new layers are not skipped."""
    import stitch.study.lmc as lmc

    s = _lmc_settings(tmp_path, "lmc.lambdas=3")
    res = Path(s.results_dir)
    _ends(s, res)
    evaluated: list[torch.Tensor] = []  # W(λ) of every evaluation
    net = types.SimpleNamespace(stitch=types.SimpleNamespace(set_affine=lambda W, b: evaluated.append(W)))
    ctx = types.SimpleNamespace(source=None, new_network=lambda: net)
    donor = types.SimpleNamespace(meta={}, key="k")
    study = types.SimpleNamespace(device=torch.device("cpu"), precision="32", load_s=0.0, cache=None,
                                  data=types.SimpleNamespace(multilabel=False), model1=donor, model2=donor,
                                  pair=lambda L, M: ctx)
    monkeypatch.setattr(lmc.Study, "assemble", lambda *a, **k: study)
    monkeypatch.setattr(lmc, "evaluate", lambda *a, **k: {"relative_acc": 0.9, "stitched_acc": 0.8,
                                                           "cross_entropy": 0.3})

    recs = lmc.run_lmc(s)
    assert len(recs) == 3 and len(evaluated) == 9 and all(r["status"] == "ok" for r in recs)
    (W0, _), (W1, _) = load_stitch(res / "stitches" / "tlm-0.pt"), load_stitch(res / "stitches" / "tlm-1.pt")
    seeds = next(r for r in recs if r["pair_type"] == "seeds")
    assert seeds["stitch_sha256"] == [sha256(res / "stitches" / f"{r}.pt") for r in ("tlm-0", "tlm-1")]
    assert any(torch.allclose(W, (W0 + W1) / 2) for W in evaluated)

    evaluated.clear()
    assert len(lmc.run_lmc(s)) == 3 and not evaluated  # finished, same layers: skipped

    # the study re-run (force=true): tlm-1's layer is another one under the same run id
    torch.save({"weight": torch.randn(8, 8), "bias": torch.randn(8)}, res / "stitches" / "tlm-1.pt")
    before = {p.name: json.loads(p.read_text()) for p in (res / "lmc").glob("*.json")}
    recs = lmc.run_lmc(s)
    assert len(evaluated) == 6  # the two pairs with tlm-1, not tlm-0 vs dm
    after = {p.name: json.loads(p.read_text()) for p in (res / "lmc").glob("*.json")}
    assert len(before) == 3 and after.keys() == before.keys()  # the same records, rewritten in place
    new = sha256(res / "stitches" / "tlm-1.pt")
    for name, r in after.items():
        assert (r == before[name]) == ("tlm-1" not in (r["run0"], r["run1"]))
        assert ("tlm-1" in (r["run0"], r["run1"])) == (new in r["stitch_sha256"])
    assert sorted(r["lmc"] for r in recs) == sorted(r["lmc"] for r in after.values())


# ------------------------------------------------------------------------------ end to end
FAST = ["similarity.indices=[cka]", "similarity.samples=32", "tlm.epochs=2", "layer=layer6", "save_stitch=true"]


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

    # a re-run study's new stitching layer under the same run id: the pairs with it are evaluated again
    dm = next(x for x in runs.values() if x["kind"] == "dm")
    state = torch.load(res / dm["stitch_file"], weights_only=True)
    torch.save({k: 0.5 * v for k, v in state.items()}, res / dm["stitch_file"])
    before = {p.name: json.loads(p.read_text()) for p in files}
    r = step()
    assert r.returncode == 0 and (r.stdout + r.stderr).count("skip lmc") == 1, r.stderr[-3000:]
    for p in files:
        x = json.loads(p.read_text())
        assert (x == before[p.name]) == (x["pair_type"] == "seeds")

    # the figure draws the records and imports no network code
    out = tmp_path / "fig"
    r = draw_in_subprocess(res, out, ["p1_lmc"])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    drawn = drawn_figures(r.stdout)["fig-p1-lmc"]
    curves = [p for p in drawn["panels"] if p["lines"]]
    assert not drawn["placeholder"] and curves, drawn
    assert all(p["xlabel"].startswith("λ") for p in curves)

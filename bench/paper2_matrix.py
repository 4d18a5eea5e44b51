"""Time and memory of a paper-2 layer x layer study (TLM, DM, OOD detectors and scores), from scratch.

Runs ``stitch.py`` once as a child process on a fresh results directory (detectors are trained
unless the model store already holds them: pass a fresh ``store=`` copy holding only the donor to
time them, the usual store to time their reuse), measures its wall time and peak resident memory,
then prints a table of where the time went, read from the study's records and its detectors' meta
files:

    python bench/paper2_matrix.py +experiment=p2_fig1_released method=[tlm,dm] \\
        data.root=../shared/data/cifar10-jpeg store=models/released        # Tiny-10 8 x 8, from scratch
    python bench/paper2_matrix.py --summarise results/p2_released          # the table of a finished study

Arguments are stitch.py's overrides. Results go to docs/benchmarks.md, measured with nothing else
running on the machine.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stitch.results import readable_records  # noqa: E402


def _detectors(records: list[dict]) -> dict[str, dict]:
    """The detectors a study's records used: path -> meta json."""
    out = {}
    for r in records:
        path = (r.get("ood_energies") or {}).get("detector")
        if path and path not in out:
            meta = Path(path).with_suffix(".json")
            try:
                out[path] = json.loads(meta.read_text())
            except (OSError, ValueError):
                out[path] = {}
    return out


def summarise(results_dir: Path, wall_s: float | None = None, peak_gb: float | None = None,
              since: float | None = None) -> None:
    records = [rec for _, rec in readable_records(sorted((results_dir / "records").glob("*.json")))]
    if not records:
        sys.exit(f"no records in {results_dir}/records")
    by = defaultdict(lambda: {"n": 0, "failed": 0, "fit": 0.0, "eval": 0.0, "run": 0.0})
    for r in records:
        k = r.get("method", "?")
        by[k]["n"] += 1
        by[k]["failed"] += r.get("status") != "ok"
        t = r.get("timings") or {}
        by[k]["fit"] += t.get("fit_s") or 0.0
        by[k]["eval"] += t.get("eval_s") or 0.0
        by[k]["run"] += t.get("run_s") or 0.0
    dets = _detectors(records)
    trained = {p: m for p, m in dets.items() if since is None or Path(p).stat().st_mtime >= since}
    det_s = sum((m.get("timings") or {}).get("train_s", 0.0) for m in trained.values())
    sanity_s = sum(s.get("seconds", 0.0) for m in trained.values() for s in (m.get("sanity") or {}).values())
    peak_rec = max(((r.get("timings") or {}).get("peak_rss_gb") or 0.0) for r in records)
    hw = records[0].get("hardware", "?")
    pairs = {(r["layer"], r["target_layer"]) for r in records}
    print(f"# {results_dir}: {len(records)} runs over {len(pairs)} layer pairs; {hw}")
    print("| phase | runs | total s | mean s |")
    print("|---|---|---|---|")
    for k, v in sorted(by.items()):
        n = max(1, v["n"])
        print(f"| {k}: fit | {v['n']} | {v['fit']:.0f} | {v['fit'] / n:.1f} |")
        print(f"| {k}: evaluate (+ OOD score; first use of a target layer trains its detector) | {v['n']} | "
              f"{v['eval']:.0f} | {v['eval'] / n:.1f} |")
        print(f"| {k}: whole run | {v['n']} | {v['run']:.0f} | {v['run'] / n:.1f} |")
    if dets:
        print(f"| OOD detectors trained (inside the runs' evaluate) | {len(trained)} of {len(dets)} | {det_s:.0f} | "
              f"{det_s / max(1, len(trained)):.0f} |")
        print(f"| detector sanity checks (SVHN etc.) | {len(trained)} | {sanity_s:.0f} | |")
        aurocs = [((m.get("sanity") or {}) and max((s.get("auroc") or 0) for s in m["sanity"].values()))
                  for m in dets.values()]
        print(f"| detector sanity AUROC (min / max) | {len(dets)} | {min(aurocs):.3f} / {max(aurocs):.3f} | |")
    if wall_s is not None:
        print(f"| **whole study, wall** (process start to exit) | {len(records)} | {wall_s:.0f} | |")
    print(f"| peak resident memory, GiB | | {peak_gb if peak_gb is not None else peak_rec:.2f} | |")
    failed = sum(v["failed"] for v in by.values())
    if failed:
        print(f"\n{failed} runs failed: see their records")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--summarise", type=Path, help="print the table of a finished study's results directory")
    ap.add_argument("--results", type=Path, help="results directory for the run (default: a fresh temporary one)")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    if a.summarise:
        summarise(a.summarise)
        return
    with tempfile.TemporaryDirectory(prefix="bench-p2-") as tmp:
        results = a.results or Path(tmp) / "results"
        cmd = [sys.executable, str(ROOT / "stitch.py"), f"results_dir={results}", "print_table=false",
               f"hydra.run.dir={tmp}/out", *a.overrides]
        start = time.time()
        code = subprocess.call(cmd, cwd=ROOT)
        wall = time.time() - start
        # the study's process is a grandchild (stitch.py supervises it): RUSAGE_CHILDREN covers both
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        if code not in (0, 1):
            sys.exit(f"stitch.py exited {code}")
        summarise(results, wall, peak, since=start)


if __name__ == "__main__":
    main()

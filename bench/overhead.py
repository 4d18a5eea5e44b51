"""Per-run overhead of a study: what a sweep of thousands of runs pays besides fitting and evaluating.

Times, in one process, on the study's real path (``stitch.study``): composing and validating the
settings, assembling the study (data, donors, fast path), and for every run its fit, its evaluation
and the rest (identity, claim, record write, progress). Donors must exist (run ``make demo`` or
``python train_models.py`` first) or are trained on demand before timing starts.

    python bench/overhead.py                                   # Tiny-10 on digits, DM at every layer
    python bench/overhead.py method=tlm tlm.epochs=1 layer=[relu2,relu6]

Arguments are stitch.py's Hydra overrides. Prints a table; results go to docs/benchmarks.md.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stitch.cli import to_dict  # noqa: E402
from stitch.hardware import hardware_name  # noqa: E402
from stitch.settings import study_settings  # noqa: E402
from stitch.study import Study, run_study  # noqa: E402


def main(overrides: list[str]) -> None:
    conf = Path(__file__).resolve().parents[1] / "conf"
    with tempfile.TemporaryDirectory() as results:
        base = ["method=dm", "similarity.indices=[cka]", "print_table=false", f"results_dir={results}"]
        t = time.perf_counter()
        with initialize_config_dir(str(conf), version_base="1.3"):
            cfg = to_dict(compose("stitch", overrides=[*base, *overrides]))
        compose_s = time.perf_counter() - t
        t = time.perf_counter()
        settings = study_settings(cfg)
        settings_s = time.perf_counter() - t
        Study.assemble(settings)  # trains missing donors and decodes the data once, outside the timings
        t = time.perf_counter()
        study = Study.assemble(settings)
        assemble_s = time.perf_counter() - t
        del study
        t = time.perf_counter()
        records = run_study(settings)
        study_s = time.perf_counter() - t
        t = time.perf_counter()
        again = run_study(settings)  # every run finished: what a resumed sweep pays per skipped run
        skip_s = time.perf_counter() - t
    runs = [r for r in records if r["status"] == "ok"]
    fit = [r["timings"]["fit_s"] for r in runs]
    ev = [r["timings"]["eval_s"] for r in runs]
    rest = [r["timings"]["run_s"] - r["timings"]["fit_s"] - r["timings"]["eval_s"] for r in runs]
    print(f"# {settings.model1.name} on {settings.data.name}, {len(runs)} runs ({', '.join(settings.method)}); "
          f"{hardware_name('cpu' if not torch.cuda.is_available() else 'cuda', threads=True)}; "
          f"torch {torch.__version__}")
    print(f"| {'phase':<52} | {'seconds':>9} |")
    print(f"|{'-' * 54}|{'-' * 11}|")
    rows = [("compose the Hydra config", compose_s), ("validate the settings (study_settings)", settings_s),
            ("assemble the study (data, donors, fast path)", assemble_s),
            ("whole study (assembly + all runs)", study_s),
            ("per run: fit (median)", statistics.median(fit)), ("per run: evaluate (median)", statistics.median(ev)),
            ("per run: the rest (identity, claim, record; median)", statistics.median(rest)),
            (f"re-run, all {len(again)} runs skipped as finished (whole study)", skip_s)]
    for label, sec in rows:
        print(f"| {label:<52} | {sec:>9.4f} |")


if __name__ == "__main__":
    main(sys.argv[1:])

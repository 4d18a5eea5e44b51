"""Collect stitching records into tables, aggregate over seeds, draw the papers' figures.

    python sweep.py inputs=[results/p1_fig2_smoke] figures=[p1_fig2] out=figures/fig-p1-2/smoke
    python sweep.py inputs='[results/*]' out=figures/all          # every figure the records support
    python sweep.py inputs=[results/x] logger=wandb               # also log tables + figures to W&B
    python sweep.py list=true

Writes <out>/runs.{csv,parquet} (one row per run, failed ones included),
<out>/aggregate.{csv,parquet} (mean/std/count over seeds per condition),
<out>/history.{csv,parquet} (tracked TLM steps), <out>/failed.csv and the figures
(PNG + PDF). See docs/sweeps.md.
"""
import hydra
from omegaconf import DictConfig

from stitch.cli import to_dict, user_errors_as_messages
from stitch.sweep.report import run_sweep


@hydra.main(config_path="conf", config_name="sweep", version_base="1.3")
@user_errors_as_messages
def main(cfg: DictConfig) -> int:
    return run_sweep(to_dict(cfg))


if __name__ == "__main__":
    raise SystemExit(main())

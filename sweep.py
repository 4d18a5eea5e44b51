"""Collect stitching records into tables, aggregate over seeds, draw the papers' figures
(installed: ``stitch-sweep``; code: ``stitch/commands/sweep.py``).

    python sweep.py inputs=[results/p1_fig2_smoke] figures=[p1_fig2] out=figures/fig-p1-2/smoke
    python sweep.py inputs='[results/*]' out=figures/all          # every figure the records support
    python sweep.py inputs=[results/x] logger=wandb               # also log tables + figures to W&B
    python sweep.py list=true

Writes <out>/runs.{csv,parquet} (one row per run, failed ones included),
<out>/aggregate.{csv,parquet} (mean/std/count over seeds per condition),
<out>/history.{csv,parquet} (tracked TLM steps), <out>/failed.csv and the figures
(PNG + PDF). See docs/sweeps.md.
"""
from stitch.commands.sweep import main

if __name__ == "__main__":
    main()  # exit code: 0 ok, 1 strict=true and something missing, 2 bad configuration or inputs

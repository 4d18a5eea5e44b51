"""``stitch-sweep`` (= ``python sweep.py``): collect records into tables, aggregate, draw the figures.

    stitch-sweep inputs=[results/p1_fig2_smoke] figures=[p1_fig2] out=figures/fig-p1-2/smoke
    stitch-sweep inputs='[results/*]' out=figures/all
    stitch-sweep list=true

See ``docs/sweeps.md``.
"""
import hydra
from omegaconf import DictConfig

from stitch import cli


@hydra.main(config_path="../conf", config_name="sweep", version_base="1.3")
@cli.job
def sweep(cfg: DictConfig) -> int:
    from stitch.sweep.report import run_sweep

    return run_sweep(cli.to_dict(cfg))


def main() -> None:
    cli.main(sweep)  # exit code: 0 ok, 1 strict=true and something missing, 2 bad configuration or inputs

"""``stitch-run`` (= ``python stitch.py``): one stitching study, layers x methods -> one record per run.

    stitch-run                                     # Tiny-10 on digits, donors seeds 0 and 1, every layer, TLM and DM
    stitch-run -m layer=all method=tlm,dm seed=0,1,2
    stitch-run layer=layer3 target_layer=all method=dm      # one row of the layer x layer matrix
    stitch-run model@model2=resnet20 layer=layer4 target_layer=layer2.0
"""
import logging

import hydra
from omegaconf import DictConfig

from stitch import cli
from stitch.settings import check_stitch

log = logging.getLogger("stitch")


@hydra.main(config_path="../conf", config_name="stitch", version_base="1.3")
@cli.job
def study(cfg: DictConfig) -> int:
    c = cli.to_dict(cfg)
    check_stitch(c)  # run_study checks too; here a typo fails before the training stack loads (seconds)
    from stitch.experiment import format_table, run_study

    records = run_study(c)
    if cfg.print_table:
        print(format_table(records))
    # runs claimed by another live process are neither ok nor failed: they do not change the exit code
    failed = sum(r["status"] == "failed" for r in records)
    claimed = sum(r["status"] == "claimed" for r in records)
    if failed:
        log.warning("%d of %d runs failed; see their records in %s", failed, len(records), cfg.results_dir)
    if claimed:
        log.info("%d of %d runs are being done by other processes (claimed); rerun later to collect them",
                 claimed, len(records))
    return failed


def main() -> None:
    cli.main(study)  # exit code: 0 all runs ok (or claimed by others), 1 a run failed, 2 bad configuration

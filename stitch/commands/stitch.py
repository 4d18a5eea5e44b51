"""``stitch-run`` (= ``python stitch.py``): one stitching study, layers x methods -> one record per run.

    stitch-run                                     # Tiny-10 on digits, donors seeds 0 and 1, every layer, TLM and DM
    stitch-run -m layer=all method=tlm,dm seed=0,1,2
    stitch-run layer=layer3 target_layer=all method=dm      # one row of the layer x layer matrix
    stitch-run model@model2=resnet20 layer=layer4 target_layer=layer2.0
    stitch-run +experiment=p1_lmc_smoke step=lmc            # after the study: W(lambda) between its saved layers
"""
from __future__ import annotations

import logging
import sys

from stitch.supervisor import supervise

log = logging.getLogger("stitch")


def study(cfg) -> int:
    """One study from its composed config; returns the number of failed runs."""
    from stitch import cli
    from stitch.settings import study_settings

    settings = study_settings(cli.to_dict(cfg))  # a typo fails here, before the training stack loads (seconds)
    if settings.step == "lmc":
        return lmc_step(settings)
    if settings.step == "probing":
        from stitch.study.probing import format_probing_table, run_probing

        rec = run_probing(settings)
        if settings.print_table:
            print(format_probing_table(rec))
        return 0
    from stitch.study import format_table, run_study

    records = run_study(settings)
    if settings.print_table:
        print(format_table(records))
    # runs claimed by another live process are neither ok nor failed: they do not change the exit code
    failed = sum(r["status"] == "failed" for r in records)
    claimed = sum(r["status"] == "claimed" for r in records)
    if failed:
        log.warning("%d of %d runs failed; see their records in %s", failed, len(records), settings.results_dir)
    if claimed:
        log.info("%d of %d runs are being done by other processes (claimed); rerun later to collect them",
                 claimed, len(records))
    return failed


def lmc_step(settings) -> int:
    """``step=lmc``: linear mode connectivity of the saved stitching layers of the study's finished runs."""
    from stitch.study import format_lmc_table, run_lmc

    records = run_lmc(settings)
    if not records:
        print(f"error: no pairs of saved stitching layers in {settings.results_dir}: step=lmc needs the study's "
              f"finished runs with save_stitch=true, two stitching seeds of a method or TLM and DM at a layer pair, "
              f"both ends at relative accuracy >= lmc.min_relative_acc={settings.lmc.min_relative_acc} (run the "
              f"study first, with the same overrides: python stitch.py -m +experiment=p1_lmc_<scale> ...)",
              file=sys.stderr)
        return 1
    if settings.print_table:
        print(format_lmc_table(records))
    failed = sum(r["status"] == "failed" for r in records)
    if failed:
        log.warning("%d of %d LMC pairs failed; see their records in %s/lmc", failed, len(records),
                    settings.results_dir)
    return failed


def _hydra_main() -> None:
    # imported here, not at the top: the supervising parent process never loads Hydra or torch
    import hydra

    from stitch import cli

    app = hydra.main(config_path="../conf", config_name="stitch", version_base="1.3")(cli.job(study))
    cli.main(app)  # exit code: 0 all runs ok (or claimed by others), 1 a run failed, 2 bad configuration


def main() -> None:
    supervise(_hydra_main)  # a native crash inside one run loses that run, not the study (stitch/supervisor.py)

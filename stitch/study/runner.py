"""The study loop: every (layer pair, method) fitted, evaluated and recorded.

``run_study(settings)`` is what ``stitch.py`` calls. For every (source layer, target layer,
method) it writes ``<results_dir>/records/<run id>.json`` atomically. A record that already
exists with ``status: ok`` is skipped unless ``force=true``; a run that fails (e.g. a diverged
loss) is recorded with ``status: failed`` and the study goes on. Donors, the data and cached
activations are shared by all runs of the study (:class:`~stitch.study.assembly.Study`), which
is what makes ``layer=all`` cheap.

Several processes may work on one study (two terminals, parallel launcher jobs, several
machines on a shared file system): each run is claimed first (``stitch/claims.py``), so every
run is done once. A run claimed by another live process is not waited for: it is returned as
``status: claimed`` (``claimed_by: host:pid``, no record written) and counts as neither ok nor
failed. Progress is logged per run with an ETA (``stitch/progress.py``).

Optional settings (pass them with ``+``): ``claim_timeout_s`` (6 h: when a claim of another
host counts as abandoned) and ``progress_every_s`` (30: seconds between TLM epoch lines when
stderr is not a terminal). Neither is part of a run's identity.
"""
from __future__ import annotations

import logging
import time

from .. import claims
from ..evaluation import evaluate
from ..fileio import check_writable_dir, save_torch, write_json
from ..hardware import peak_memory_gb
from ..matching.fitting import PairContext, fit
from ..progress import StudyProgress
from ..results import read_record
from ..settings import LoggerSettings, StudySettings, study_settings
from ..supervisor import crashed_runs, launcher_pid, mark_run
from .assembly import Study
from ..provenance import failure_recorded, provenance
from .records import done_before, finished, record_path, run_identity, stitch_path

log = logging.getLogger(__name__)


def run_study(cfg: dict | StudySettings) -> list[dict]:
    """Run a study (a resolved ``conf/stitch.yaml`` dict or its settings); one record per run."""
    t0 = time.time()
    s = study_settings(cfg)  # every typo at once, before data, donors or records
    check_writable_dir(s.results_dir, "results_dir")
    if s.logger.name == "wandb":
        from ..loggers import check_wandb_installed

        check_wandb_installed(s.logger.as_dict())
    study = Study.assemble(s)
    records: list[dict] = []
    weights, kinds = _run_weights(study)
    progress = StudyProgress(len(study.layer_pairs) * len(s.method), every_s=float(s.progress_every_s), start=t0,
                             weights=weights, kinds=kinds)
    wandb_cfg = _wandb_config(s.logger, s.study)  # online or offline is decided here, once
    study_start = t0  # with force, a record another process wrote since then is that process's work
    for ctx in study.pairs():
        for name in s.method:
            records.append(_run(study, ctx, name, progress, wandb_cfg, study_start))
    budget = study.cache.budget / 2**30 if study.cache is not None else 0.0
    log.info("study %s: %d runs in %.0f s; peak memory %.2f GiB (activation cache budget %.2f GiB)", s.study,
             len(records), time.time() - t0, peak_memory_gb(), budget)
    for i, r in enumerate(records):  # runs claimed by others: not waited for, but shown finished if they are
        if r["status"] == "claimed":
            records[i] = finished(record_path(s.results_dir, r["run"])) or r
    return records


def _run_weights(study: Study) -> tuple[list[float], list[str]]:
    """Each run's expected cost and kind, in run order (for the progress ETA)."""
    from ..progress import run_weight

    s, layers2 = study.settings, study.model2.net.layers
    weights, kinds = [], []
    for _, M in study.layer_pairs:
        for name in s.method:
            m = s.method[name]
            weights.append(run_weight(m.kind, layers2.index(M), len(layers2), getattr(m, "epochs", 1)))
            kinds.append(m.kind)
    return weights, kinds


def _run(study: Study, ctx: PairContext, name: str, progress: StudyProgress, wandb_cfg: dict | None,
         study_start: float) -> dict:
    """One run: skipped when finished, left to another process when claimed, else fitted and recorded."""
    s, m = study.settings, study.settings.method[name]
    L, M = ctx.L, ctx.M
    slug, semantic = run_identity(s, L, M, name)
    label = f"layer={L} -> {M} {name}"
    # positions in the networks' forward order: figures sort layers by them without building a network
    head = {"run": slug, "study": s.study, "layer": L, "target_layer": M, "method": name, "kind": m.kind,
            "variant": m.name, "seed": s.seed, "layer_index": ctx.m1.layers.index(L),
            "target_layer_index": ctx.m2.layers.index(M)}
    if slug in crashed_runs():  # it killed an earlier process of this invocation (stitch/supervisor.py)
        progress.skip(label, "crashed the process (recorded as failed)")
        return read_record(record_path(s.results_dir, slug))
    done = done_before(s.results_dir, slug, force=s.force, save_stitch=s.save_stitch, precision=study.precision)
    if done is not None:
        log.info("skip %s (finished; force=true reruns)", slug)
        progress.skip(label, "skipped (finished)")
        return done
    claim, holder = claims.acquire(claims.claim_path(s.results_dir, slug), s.claim_timeout_s)
    if claim is None:  # another live process does this run: not waited for, not recorded here
        progress.skip(label, f"claimed by {holder}")
        return {**head, "status": "claimed", "claimed_by": str(holder)}
    try:  # the claim is released when the record is written, and on any exception
        done = done_before(s.results_dir, slug, force=s.force, save_stitch=s.save_stitch, since=study_start)
        if done is not None:  # finished by another process after this one looked
            progress.skip(label, "skipped (finished by another process)")
            return done
        rec = {**head, "data": s.data.name, "model1": {**s.model1.as_dict(), **study.model1.summary()},
               "model2": {**s.model2.as_dict(), **study.model2.summary()}, "self_stitch": study.self_stitch,
               "config": semantic, **provenance(study.device, study.precision), "launcher_pid": launcher_pid(),
               "warnings": []}
        mark_run({"record_path": str(record_path(s.results_dir, slug)), "claim_path": str(claim.path), "head": rec})
        run_progress = progress.start(label)
        wb = _open_wandb(wandb_cfg, slug, semantic, name)
        t = time.time()
        with failure_recorded(rec, f"run {slug}", log,
                              on_abort=lambda: wb is not None and wb.finish(exit_code=1, quiet=True)):
            rec.update(_fit_and_evaluate(study, ctx, name, slug, run_progress, wb))
        rec.setdefault("timings", {})["run_s"] = time.time() - t
        rec["timings"]["study_load_s"] = study.load_s
        rec["timings"]["peak_rss_gb"] = round(peak_memory_gb(), 3)  # the process's, so far (a study's peak is its last)
        if wb is not None:
            _finish_wandb(wb, rec)
            rec["warnings"] += wb.warnings
        write_json(record_path(s.results_dir, slug), rec)
        mark_run(None)
        run_progress.done(rec["status"], one_off_s=rec["timings"].get("one_off_s") or 0.0)
        return rec
    finally:
        claim.release()


def _fit_and_evaluate(study: Study, ctx: PairContext, name: str, slug: str, run_progress, wb) -> dict:
    s, m = study.settings, study.settings.method[name]
    net, info = fit(ctx, m, s.seed, study.data.multilabel, on_epoch=_epoch_callback(run_progress, wb),
                    on_step=run_progress.step)
    out, one_off_s = {}, 0.0
    if info.get("above_chance"):
        note = (f"TLM did not converge: its last epoch's mean loss {info['final_epoch_loss']:.3f} is above chance "
                f"level {info['chance_loss']:.3f} (a uniform guess); its relative accuracy measures the training, "
                f"not the layers: give it more tlm.epochs (or tlm.init=dm)")
        log.warning("run %s: %s", slug, note)
        out["warnings"] = [note]
    t_eval = time.time()
    sim = s.similarity
    metrics = evaluate(net, ctx.source, study.data.multilabel, "test", list(sim.indices), sim.samples, sim.mode,
                       sim.raw)
    if s.ood.enabled:
        from ..ood import ood_scores

        ood = ood_scores(net, ctx.source, study.detectors)
        metrics.update(ood["metrics"])
        out["ood_energies"] = ood["energies"]
        one_off_s = ood.get("detector_trained_s", 0.0)  # the first run into a target trains its detector
        if ood["metrics"]["ood/detector_trusted"] == 0:
            out.setdefault("warnings", []).append(
                f"the OOD detector of {ctx.M} fails its sanity check ({ood['energies']['sanity_data']} AUROC "
                f"{ood['metrics']['ood/sanity_auroc']:.3f} < ood.sanity.min_auroc): its AUROC cannot call this "
                f"stitch in-distribution")
    history = info.pop("history", None)
    if s.save_stitch:
        # written before the record, so a record with stitch_file always has its file
        save_torch(stitch_path(s.results_dir, slug),
                   {k: v.detach().cpu().clone() for k, v in net.stitch.state_dict().items()})
        out["stitch_file"] = f"stitches/{slug}.pt"
    return {**out, "status": "ok", "metrics": metrics, "fit": info, "history": history,
            "timings": {"fit_s": info.get("fit_s"), "eval_s": time.time() - t_eval, "one_off_s": one_off_s}}


# ---------------------------------------------------------------------- W&B runs
# One W&B run per stitching run: project = logger.project, group = the study, job_type = the
# method, name = the run id, config = the run's semantic config; TLM epochs as tlm/* over
# tlm/epoch, tracked steps as track/* over track/step, metrics in the summary. W&B problems
# become warnings in the record (stitch/loggers.py); they never stop the study.
def _wandb_config(logger: LoggerSettings, study: str) -> dict | None:
    lcfg = logger.as_dict()
    if logger.name != "wandb":
        return None
    from ..loggers import decide_wandb_mode

    wcfg = {**lcfg, "group": lcfg.get("group") or study}
    decide_wandb_mode(wcfg)  # a missing network costs one short check per process, not a timeout per run
    return wcfg


def _open_wandb(wcfg: dict | None, slug: str, semantic: dict, method: str):
    if wcfg is None:
        return None
    from ..loggers import WandbRun

    run = WandbRun(wcfg, name=slug, config=semantic, job_type=method)
    run.define_metric("tlm/*", step_metric="tlm/epoch")
    run.define_metric("track/*", step_metric="track/step")
    return run


def _epoch_callback(progress, wb):
    def on_epoch(epoch: int, epochs: int, values: dict) -> None:
        progress.epoch(epoch, epochs, values)
        if wb is not None:
            wb.log({"tlm/epoch": epoch, **{f"tlm/{k}": v for k, v in values.items()}})

    return on_epoch


def _finish_wandb(wb, rec: dict) -> None:
    for h in rec.get("history") or []:
        wb.log({"track/step": h["step"], **{f"track/{k}": v for k, v in h.items() if k != "step" and v is not None}})
    wb.summary({k: v for k, v in (rec.get("metrics") or {}).items() if v is not None})
    wb.summary({"status": rec["status"], **({"error": rec["error"]} if rec.get("error") else {})})
    wb.finish(exit_code=0 if rec["status"] == "ok" else 1)

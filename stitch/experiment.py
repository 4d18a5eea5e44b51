"""One stitching study: donors, layer pairs, methods -> one result record per run.

``run_study(cfg)`` is what ``stitch.py`` calls. For every (source layer, target
layer, method) it writes ``<results_dir>/records/<run key>.json`` atomically. A
record that already exists with ``status: ok`` is skipped unless ``force=true``; a
run that fails (e.g. a diverged loss) is recorded with ``status: failed`` and the
study goes on. Donors, the data and cached activations are shared by all runs of
the study, which is what makes ``layer=all`` cheap.

Several processes may work on one study (two terminals, parallel launcher jobs, several
machines on a shared file system): each run is claimed first (``stitch/claims.py``), so
every run is done once. A run claimed by another live process is not waited for: it is
returned as ``status: claimed`` (``claimed_by: host:pid``, no record written) and counts as
neither ok nor failed. Progress is logged per run with an ETA (``stitch/progress.py``).

Settings read here without a default in ``conf/stitch.yaml`` (pass them with ``+``, e.g.
``+claim_timeout_s=3600``): ``claim_timeout_s`` (6 h: when a claim of another host counts as
abandoned) and ``progress_every_s`` (30: seconds between TLM epoch lines when stderr is not
a terminal). Neither is part of a run's identity.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from . import claims, settings, store
from .data import from_config as datamodule_from_cfg
from .hardware import hardware_name
from .store import donor_key
from .errors import CheckpointError, ConfigError
from .evaluation import evaluate
from .features import ActivationCache, FeatureSource, resolve_cache_dtype, resolve_precision
from .fileio import read_json, save_torch, write_json
from .matching import MatchingStatistics, solve
from .matching.task_loss import linear_cka_torch, train_task_loss
from .models import StitchableNetwork
from .progress import StudyProgress
from .stitching import StitchedNetwork, build_stitching_layer, to_rows
from .version import code_version

log = logging.getLogger(__name__)

# keys of the config that do not change a run's result (excluded from its identity)
_NON_SEMANTIC = {"tlm", "dm", "force", "results_dir", "store", "logger", "print_table", "device", "study", "layer",
                 "target_layer", "method", "donor", "cache", "batch_size", "save_stitch", "fold_batchnorm",
                 "channels_last", "claim_timeout_s", "progress_every_s"}
# where things are read from, not what is computed: moving the data or the weights file keeps a run's identity
_DATA_LOCATION = {"root", "download", "cache", "num_workers", "layout"}
_MODEL_LOCATION = {"weights"}
# method options added after records existed: at these values they are left out of the identity, so
# finished runs stay finished; any other value makes a new run
_IDENTITY_DEFAULTS = {"split": "train"}
_UNSET = object()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ------------------------------------------------------------------------ donors
def get_donor(cfg: dict, which: str, device: torch.device, num_classes: int | None = None
              ) -> tuple[StitchableNetwork, dict, store.DonorKey]:
    """Model ``which`` from the store: imported from ``<which>.weights`` or trained on demand when missing.

    ``num_classes``: the data's class count, checked against the donor's."""
    mcfg = cfg[which]
    key = donor_key(cfg["data"], mcfg, mcfg["seed"])
    if mcfg.get("weights"):  # a local state-dict file: imported once (a different file under that name: an error)
        from .store.importing import import_checkpoint

        import_checkpoint(mcfg["weights"], data_cfg=cfg["data"], model_cfg=mcfg, name=str(mcfg["seed"]),
                          store_root=cfg["store"], device=device)
    elif not store.exists(key, cfg["store"]):
        if key.imported:
            raise CheckpointError(f"no donor {key} for {which} in the model store "
                                  f"{store.store_root(cfg['store']).resolve()}; import it with:\n  "
                                  f"{key.train_command(cfg['store'])}\n(or pass {which}.weights=<file>)")
        elif not cfg["donor"].get("train_missing", False):
            raise CheckpointError(f"no trained donor {key} for {which} in the model store "
                                  f"{store.store_root(cfg['store']).resolve()}; train it with:\n  "
                                  f"{key.train_command(cfg['store'])}\n(or run with donor.train_missing=true)")
        else:
            from .donors import train_donor  # Lightning: imported only when a donor is trained

            log.info("donor %s missing: training it now (donor.train_missing=true)", key)
            d = cfg["donor"]
            train_donor(cfg["data"], mcfg, d["optim"], d["trainer"], d["epochs"], mcfg["seed"], cfg["store"],
                        logger_cfg=None)
    net, meta = store.load(key, cfg["store"], device)
    if num_classes is not None and meta.get("num_classes") not in (None, num_classes):
        raise ConfigError(f"donor {key} ({which}) has {meta['num_classes']} classes but {cfg['data']['name']} has "
                          f"{num_classes}: a stitched network would be scored against the wrong labels")
    if bool(meta.get("normalize", True)) != bool(cfg["data"].get("normalize", True)):
        raise ConfigError(f"donor {key} was trained with data.normalize={meta.get('normalize')} but this run uses "
                          f"data.normalize={cfg['data'].get('normalize')}; use the same preprocessing")
    return net, meta, key


# ------------------------------------------------------------------------ layers
def _as_list(v) -> list[str] | str | None:
    if v is None or isinstance(v, str):
        return v
    return [str(x) for x in v]


def layer_pairs(cfg: dict, m1: StitchableNetwork, m2: StitchableNetwork) -> list[tuple[str, str]]:
    """Expand ``layer``/``target_layer`` into canonical (L, M) pairs.

    Each is ``all`` (the family's default group, e.g. block outputs), ``every``, a group name
    (Tiny-10 ``bn``: every pre-activation point), a layer name or alias, or a list of these.
    """
    layer, target = _as_list(cfg["layer"]), _as_list(cfg.get("target_layer"))
    sources = list(dict.fromkeys(m1.select_layers(layer)))  # relu3 and its alias layer3 are one layer
    if target is None:
        pairs = []
        for L in sources:
            if L not in m2.layers:
                raise ConfigError(f"target_layer is unset, so the target is the source layer {L!r}, which model 2 "
                                  f"({m2.family}) does not have; pass target_layer=<name> or target_layer=all. "
                                  f"Model 2 layers: {', '.join(m2.layers)}")
            pairs.append((L, L))
        return pairs
    targets = list(dict.fromkeys(m2.select_layers(target)))
    return [(L, M) for L in sources for M in targets]


# ----------------------------------------------------------------------- records
def run_identity(cfg: dict, L: str, M: str, method: str) -> tuple[str, dict]:
    semantic = {k: v for k, v in cfg.items() if k not in _NON_SEMANTIC}
    if not (cfg.get("ood") or {}).get("enabled"):
        semantic.pop("ood", None)  # detector settings only matter when OOD scores are computed
    mcfg = {k: v for k, v in cfg["method"][method].items() if _IDENTITY_DEFAULTS.get(k, _UNSET) != v}
    semantic.update(layer=L, target_layer=M, method=method, method_config=mcfg,
                    data={k: v for k, v in cfg["data"].items() if k not in _DATA_LOCATION},
                    model1={k: v for k, v in cfg["model1"].items() if k not in _MODEL_LOCATION},
                    model2={k: v for k, v in cfg["model2"].items() if k not in _MODEL_LOCATION})
    h = hashlib.sha256(json.dumps(semantic, sort_keys=True, default=str).encode()).hexdigest()[:10]
    tag = lambda m: store.DonorKey.make(cfg["data"]["name"], m["name"], m["seed"], m.get("options")).tag  # noqa
    slug = (f"{tag(cfg['model1'])}.s{cfg['model1']['seed']}.{L}--{tag(cfg['model2'])}.s{cfg['model2']['seed']}.{M}"
            f"--{method}.seed{cfg['seed']}-{h}")
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", slug), semantic


def record_path(cfg: dict, slug: str) -> Path:
    return Path(cfg["results_dir"]) / "records" / f"{slug}.json"


def stitch_path(cfg: dict, slug: str) -> Path:
    """Where ``save_stitch=true`` keeps a run's stitching layer (state dict, tensors only)."""
    return Path(cfg["results_dir"]) / "stitches" / f"{slug}.pt"


def finished(path: Path) -> dict | None:
    try:
        rec = read_json(path)
    except (OSError, ValueError):
        return None
    return rec if rec.get("status") == "ok" else None


# ----------------------------------------------------------------------- methods
@dataclass
class PairContext:
    m1: StitchableNetwork
    m2: StitchableNetwork
    L: str
    M: str
    source: FeatureSource
    input_shape: tuple[int, ...]
    _stats: MatchingStatistics | None = None
    _stats_samples: int | None = None

    def new_network(self, rank: int | None = None) -> StitchedNetwork:
        src = self.m1.layer_shapes(self.input_shape)[self.L]
        dst = self.m2.layer_shapes(self.input_shape)[self.M]
        layer = build_stitching_layer(src, dst, rank).to(self.source.device)
        return StitchedNetwork(self.m1, self.m2, self.L, self.M, layer)

    def statistics(self, net: StitchedNetwork, samples: int | None, split: str = "train") -> MatchingStatistics:
        """Sufficient statistics of (resized A rows, B rows) over a split (training by default), one pass.

        ``split="test"`` reproduces paper 1's released code, which solves least squares on the test
        images it then evaluates on (a like-for-like check, not a fair score)."""
        if self._stats is not None and self._stats_samples == (samples, split):
            return self._stats
        stats = MatchingStatistics(device=self.source.device)
        seen = 0
        with torch.no_grad():
            for batch in self.source.batches(split):
                a, b = batch.a, batch.b
                if samples is not None:
                    take = min(len(a), samples - seen)
                    a, b = a[:take], b[:take]
                stats.update(to_rows(net.stitch.prepare(a)), to_rows(b), check_finite=False)
                seen += len(a)
                if samples is not None and seen >= samples:
                    break
        self._stats, self._stats_samples = stats, (samples, split)
        return stats


def fit_direct(ctx: PairContext, mcfg: dict) -> tuple[StitchedNetwork, dict]:
    net = ctx.new_network()
    t = time.time()
    stats = ctx.statistics(net, mcfg.get("samples"), mcfg.get("split", "train"))
    W, b = solve(stats, kind=mcfg.get("solver", "ls"), rank=mcfg.get("rank"), alpha=mcfg.get("alpha"),
                 bias=mcfg.get("bias", True))
    net.stitch.set_affine(W.float(), b.float())
    info = {"rows": int(stats.n), "fit_s": time.time() - t}
    if mcfg.get("solver") == "lasso":
        info["sparsity"] = float((W.abs() < mcfg.get("zero_threshold", 1e-4)).float().mean())
    return net, info


def fit_task_loss(ctx: PairContext, mcfg: dict, seed: int, multilabel: bool, on_epoch=None
                  ) -> tuple[StitchedNetwork, dict]:
    torch.manual_seed(seed)
    net = ctx.new_network(mcfg.get("rank"))
    init = mcfg.get("init", "random")
    if init == "identity":
        net.stitch.set_identity()
    elif init in ("dm", "ls"):
        W, b = solve(ctx.statistics(net, mcfg.get("init_samples")), kind="ls")
        net.stitch.set_affine(W.float(), b.float())
    elif init != "random":
        raise ConfigError(f"unknown TLM init {init!r}; use random, identity or dm")
    track = None
    if mcfg.get("track_every"):
        probe = next(ctx.source.batches("test", batch_size=mcfg.get("track_samples", 256)))

        @torch.no_grad()
        def track(step, n):
            s = n.stitch(probe.a)
            logits = n.head(s).float()
            ce = -(torch.softmax(probe.z2, 1) * torch.log_softmax(logits, 1)).sum(1).mean()
            r2 = 1 - (s.float() - probe.b.float()).pow(2).sum() / probe.b.float().pow(2).sum()
            acc = (logits.argmax(1) == probe.y).float().mean() if not multilabel else None
            return {"cka": float(linear_cka_torch(s, probe.b)), "r2": float(r2), "cross_entropy": float(ce),
                    "stitched_acc": None if acc is None else float(acc)}
    info = train_task_loss(net, ctx.source, mcfg, multilabel, seed=seed, on_track=track, on_epoch=on_epoch)
    info["fit_s"] = info.pop("seconds")
    if mcfg.get("l1"):
        info["sparsity"] = float((net.stitch.matrix.abs() < mcfg.get("zero_threshold", 1e-4)).float().mean())
    return net, info


# ------------------------------------------------------------------------- study
def run_study(cfg: dict) -> list[dict]:
    t0 = time.time()
    settings.check_stitch(cfg)  # every typo at once, before data, donors or records
    dm = datamodule_from_cfg(cfg["data"], augment=True)  # constructing it reads no data
    size = getattr(dm, "image_size", 32)  # in-memory sets are 32 px unless they say otherwise
    settings.check_layers(cfg, dm.num_classes, getattr(dm, "input_shape", None) or (3, size, size))
    device = resolve_device(cfg.get("device", "auto"))
    precision = resolve_precision(str(cfg.get("precision", "auto")), device)
    methods = cfg["method"]
    dm.setup()
    m1, meta1, key1 = get_donor(cfg, "model1", device, dm.num_classes)
    if store.DonorKey.make(cfg["data"]["name"], cfg["model2"]["name"], cfg["model2"]["seed"],
                           cfg["model2"].get("options")) == key1:
        m2, meta2, key2 = m1, meta1, key1  # self-stitching: one network
    else:
        m2, meta2, key2 = get_donor(cfg, "model2", device, dm.num_classes)
    pairs = layer_pairs(cfg, m1, m2)
    for L, M in pairs:  # incompatible layers are a configuration error: reject before running anything
        build_stitching_layer(m1.layer_shapes(dm.input_shape)[L], m2.layer_shapes(dm.input_shape)[M])
    if cfg.get("fold_batchnorm", True):  # frozen donors: BatchNorm folded into the convs (float32-equal, faster)
        from .models.fold import fold_batchnorm

        if m2 is m1:
            m1 = m2 = fold_batchnorm(m1, {L for L, _ in pairs} | {M for _, M in pairs})
        else:
            m1, m2 = fold_batchnorm(m1, {L for L, _ in pairs}), fold_batchnorm(m2, {M for _, M in pairs})
    if cfg.get("channels_last", True):  # NHWC convolutions: faster on CPUs (oneDNN) and GPUs with AMP
        from .models.fold import to_channels_last

        for m in {id(m1): m1, id(m2): m2}.values():
            to_channels_last(m)
    load_s = time.time() - t0
    cache_cfg = cfg.get("cache") or {}
    budget = cache_cfg.get("budget_gb", "auto")
    if budget == "auto":
        # CPU: a third of the RAM (paper 1's Tiny-10 at bn1 needs 5.8 GB for A and B: streaming it costs 4x)
        budget = (0.5 * torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda"
                  else max(4.0, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 3 / 2**30))
    cache = ActivationCache(int(float(budget) * 2**30)) if cache_cfg.get("enabled", True) else None
    sim = cfg.get("similarity") or {}
    donors = {"model1": {"key": str(key1), "sha256": meta1.get("sha256"), "test_acc": meta1["metrics"]["test_acc"]},
              "model2": {"key": str(key2), "sha256": meta2.get("sha256"), "test_acc": meta2["metrics"]["test_acc"]}}
    records = []
    progress = StudyProgress(len(pairs) * len(methods), every_s=float(cfg.get("progress_every_s", 30)), start=t0)
    claim_timeout = float(cfg.get("claim_timeout_s") or claims.DEFAULT_TIMEOUT_S)
    study_start = time.time()
    wandb_cfg = _wandb_config(cfg)  # online or offline is decided here, once
    for L, M in pairs:
        source = FeatureSource(m1, m2, L, M, dm, device, precision, cache, resolve_cache_dtype(
            cache_cfg.get("dtype", "auto"), device), batch_size=cfg.get("batch_size", 256),
            limits={"train": cfg.get("train_limit"), "test": cfg.get("test_limit")})
        ctx = PairContext(m1, m2, L, M, source, dm.input_shape)
        for name, mcfg in methods.items():
            slug, semantic = run_identity(cfg, L, M, name)
            path = record_path(cfg, slug)
            label = f"layer={L} -> {M} {name}"
            done = _done_before(cfg, path, slug)
            if done is not None:
                log.info("skip %s (finished; force=true reruns)", slug)
                progress.skip(label, "skipped (finished)")
                records.append(done)
                continue
            claim, holder = claims.acquire(claims.claim_path(cfg["results_dir"], slug), claim_timeout)
            if claim is None:  # another live process does this run: not waited for, not recorded here
                progress.skip(label, f"claimed by {holder}")
                records.append({"run": slug, "study": cfg.get("study"), "layer": L, "target_layer": M, "method": name,
                                "kind": mcfg["kind"], "variant": mcfg.get("name"), "seed": cfg["seed"],
                                "status": "claimed", "claimed_by": str(holder)})
                continue
            try:  # the claim is released when the record is written, and on any exception
                done = _done_before(cfg, path, slug, since=study_start)
                if done is not None:  # finished by another process after this one looked
                    progress.skip(label, "skipped (finished by another process)")
                    records.append(done)
                    continue
                rec = {"run": slug, "study": cfg.get("study"), "layer": L, "target_layer": M, "method": name,
                       "kind": mcfg["kind"], "variant": mcfg.get("name"), "seed": cfg["seed"],
                       "data": cfg["data"]["name"], "model1": {**cfg["model1"], **donors["model1"]},
                       "model2": {**cfg["model2"], **donors["model2"]}, "self_stitch": key1 == key2,
                       "config": semantic, "code_version": code_version(), "device": str(device),
                       "precision": precision, "hardware": hardware_name(device), "host": _HOST, "pid": os.getpid(),
                       "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "warnings": []}
                run_progress = progress.start(label)
                wb = _open_wandb(wandb_cfg, slug, semantic, name)
                t = time.time()
                try:
                    if mcfg["kind"] == "dm":
                        net, info = fit_direct(ctx, mcfg)
                    else:
                        net, info = fit_task_loss(ctx, mcfg, cfg["seed"], dm.multilabel,
                                                  on_epoch=_epoch_callback(run_progress, wb))
                    t_eval = time.time()
                    metrics = evaluate(net, source, dm.multilabel, "test", sim.get("indices", []),
                                       sim.get("samples", 500), sim.get("mode", "rows"), sim.get("raw", True))
                    if (cfg.get("ood") or {}).get("enabled"):
                        from .ood import ood_metrics

                        metrics.update(ood_metrics(net, source, key2, cfg, dm))
                    history = info.pop("history", None)
                    if cfg.get("save_stitch"):
                        # written before the record, so a record with stitch_file always has its file
                        save_torch(stitch_path(cfg, slug),
                                   {k: v.detach().cpu().clone() for k, v in net.stitch.state_dict().items()})
                        rec["stitch_file"] = f"stitches/{slug}.pt"
                    rec.update(status="ok", metrics=metrics, fit=info, history=history, timings={
                        "fit_s": info.get("fit_s"), "eval_s": time.time() - t_eval, "run_s": time.time() - t})
                except (KeyboardInterrupt, ConfigError):
                    if wb is not None:
                        wb.finish(exit_code=1, quiet=True)
                    raise
                except Exception as e:  # recorded, and the study goes on
                    log.error("run %s failed: %s", slug, e)
                    rec.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(),
                               timings={"run_s": time.time() - t})
                rec["timings"]["study_load_s"] = load_s
                if wb is not None:
                    _finish_wandb(wb, rec)
                    rec["warnings"] += wb.warnings
                write_json(path, rec)
                run_progress.done(rec["status"])
                records.append(rec)
            finally:
                claim.release()
        if cache is not None and len(pairs) > 1 and cfg.get("target_layer") is None:
            cache.clear()  # layer=all without a matrix: activations of this pair are not needed again
    for i, r in enumerate(records):  # runs claimed by others: not waited for, but shown finished if they are
        if r["status"] == "claimed":
            records[i] = finished(record_path(cfg, r["run"])) or r
    return records


_HOST = socket.gethostname()


def _done_before(cfg: dict, path: Path, slug: str, since: float | None = None) -> dict | None:
    """The finished record of a run that need not be done again, else None.

    Without ``force``: any finished record (with its stitching layer when ``save_stitch``). With
    ``force`` (``since`` = when this study started): only a record another process wrote since,
    i.e. a concurrent process of the same forced sweep did the run already."""
    if not cfg.get("force"):
        done = finished(path)
        if done is not None and cfg.get("save_stitch") and not stitch_path(cfg, slug).is_file():
            return None  # finished before save_stitch was on: redo it to get the stitching layer
        return done
    if since is None:
        return None
    done = finished(path)
    if done is None or (done.get("host"), done.get("pid")) == (_HOST, os.getpid()):
        return None
    try:
        return done if path.stat().st_mtime >= since else None
    except OSError:
        return None


# ---------------------------------------------------------------------- W&B runs
# One W&B run per stitching run: project = logger.project, group = the study, job_type = the
# method, name = the run id, config = the run's semantic config; TLM epochs as tlm/* over
# tlm/epoch, tracked steps as track/* over track/step, metrics in the summary. W&B problems
# become warnings in the record (stitch/loggers.py); they never stop the study.
def _wandb_config(cfg: dict) -> dict | None:
    lcfg = cfg.get("logger") or {}
    if lcfg.get("name") != "wandb":
        return None
    from .loggers import decide_wandb_mode

    wcfg = {**lcfg, "group": lcfg.get("group") or cfg.get("study")}
    decide_wandb_mode(wcfg)  # a missing network costs one short check per process, not a timeout per run
    return wcfg


def _open_wandb(wcfg: dict | None, slug: str, semantic: dict, method: str):
    if wcfg is None:
        return None
    from .loggers import WandbRun

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


def format_table(records: list[dict]) -> str:
    cols = [("layer", 10), ("target", 10), ("method", 12), ("status", 7), ("rel.acc", 8), ("acc", 7),
            ("CE", 7), ("struct", 8), ("CKA", 6), ("fit s", 7)]
    lines = ["  ".join(f"{c:>{w}}" for c, w in cols)]
    for r in records:
        m = r.get("metrics") or {}
        f = lambda v, p=3: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
        vals = [r["layer"], r["target_layer"], r["method"], r["status"], f(m.get("relative_acc")),
                f(m.get("stitched_acc")), f(m.get("cross_entropy")), f(m.get("dm_structural")),
                f(m.get("sim/cka"), 2), f((r.get("timings") or {}).get("fit_s"), 1)]
        line = "  ".join(f"{str(v):>{w}}" for v, (_, w) in zip(vals, cols))
        if r["status"] == "claimed":  # being done by another process: neither ok nor failed
            line += f"  claimed by {r.get('claimed_by', '?')}"
        lines.append(line)
    return "\n".join(lines)

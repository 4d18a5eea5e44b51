"""The model store from the command line.

    python -m stitch.store import FILE --preset drfrankenstein-tiny10 --data-root DIR [--name in0]
    python -m stitch.store import FILE --data cifar10 --model resnet20 --option width=1 --name mine
    python -m stitch.store list                     # every donor with its accuracy and origin
    python -m stitch.store verify                   # re-check every donor's file hash
    python -m stitch.store verify --fix             # ... and delete leftovers of interrupted saves

Exit codes: 0 ok, 1 a check failed (verify), 2 bad input (missing file or data, mismatched keys).
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path


from ..errors import DataNotFoundError, StitchError
from . import DonorKey, leftovers, load, read_meta, remove_leftovers, store_root
from .importing import PRESETS, group_config, import_checkpoint, key_values, model_config


def _import(args) -> int:
    preset = PRESETS.get(args.preset or "", {})
    if args.preset and not preset:
        raise ValueError(f"unknown preset {args.preset!r}; valid: {', '.join(PRESETS)}")
    data = args.data or preset.get("data")
    model = args.model or preset.get("model")
    if not data or not model:
        raise ValueError("say which data set and model the checkpoint is for: --data and --model, or --preset "
                         f"({', '.join(PRESETS)})")
    data_cfg = group_config("data", data)
    if args.data_root:
        data_cfg["root"] = args.data_root
    data_cfg.update(key_values(args.data_option, "--data-option"))
    model_cfg = model_config(model, key_values(args.option, "--option"))
    renames = [tuple(r.split("=", 1)) for r in args.rename]
    if any(len(r) != 2 for r in renames):
        raise ValueError("--rename must look like REGEX=REPLACEMENT")
    for pattern, _ in renames:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"--rename {pattern!r}: not a regular expression ({e})") from None
    from ..hardware import resolve_device

    device = resolve_device(args.device)
    if args.name and len(args.files) > 1:
        raise ValueError(f"--name names one donor, but {len(args.files)} files were given; import them one by one, "
                         f"or let each be named after its folder (released layout: <name>/110000.pt)")
    use = " ".join([f"model@model1={model}", *(f"model1.options.{o}" for o in args.option)])
    for file in args.files:
        name = args.name or Path(file).expanduser().resolve().parent.name  # released layout: <name>/110000.pt
        meta = import_checkpoint(file, data_cfg=data_cfg, model_cfg=model_cfg, name=name, store_root=args.store,
                                 device=device, strip_prefix=args.strip_prefix, add_prefix=args.add_prefix,
                                 renames=renames, force=args.force, evaluate=not args.no_eval)
        acc = meta["metrics"].get("test_acc")
        print(f"{meta['key']}: test accuracy {'n/a' if acc is None else f'{acc:.4f}'} "
              f"(from {meta.get('provenance', {}).get('source', '?')}); use it with "
              f"{use} model1.seed={meta['seed']}")
    return 0


def _donors(root: str | None) -> list[Path]:
    """Every donor's metadata file; a store that does not exist is an error, not an empty list."""
    if not store_root(root).is_dir():
        raise ValueError(f"no model store at {store_root(root).resolve()} (--store or $STITCH_STORE)")
    # not the hidden folders of saves in progress or interrupted (.<seed>.tmp-*): they are no donors
    return sorted(f for f in store_root(root).glob("*/*/*/meta.json") if not f.parent.name.startswith("."))


def _list(args) -> int:
    files = _donors(args.store)
    print(f"{'donor':<48} {'test acc':>8}  origin")
    for f in files:
        try:
            m = read_meta(f, "python -m stitch.store verify")
        except StitchError as e:
            print(f"{str(f.parent):<48} {'?':>8}  DAMAGED: {str(e).splitlines()[0]}")
            continue
        acc = (m.get("metrics") or {}).get("test_acc")
        origin = m.get("provenance", {}).get("source") or "trained here"
        print(f"{m.get('key', str(f.parent)):<48} {'n/a' if acc is None else f'{acc:.4f}':>8}  {origin}")
    return 0


def _verify(args) -> int:
    bad = 0
    for f in _donors(args.store):
        try:
            m = read_meta(f, "python -m stitch.store verify")
            key = DonorKey.make(m["data"], m["model"], m["seed"], m.get("options"))
        except (StitchError, KeyError, ValueError) as e:
            bad += 1
            print(f"FAILED  {f.parent}: {str(e).splitlines()[0] if str(e) else e!r}")
            continue
        try:
            load(key, args.store)
            print(f"ok      {key}")
        except StitchError as e:
            bad += 1
            print(f"FAILED  {key}: {e}")
    removed = remove_leftovers(args.store, 60.0) if args.fix else []  # younger ones may be a save in progress
    for p in removed:
        print(f"removed {p} (an interrupted save)")
    left = leftovers(args.store)
    for p in left:
        print(f"leftover {p} (an interrupted save{', or one in progress: under a minute old' if args.fix else ''})")
    if left and not args.fix:
        print("run with --fix to delete the leftovers")
    return 1 if bad or left else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stitch.store", description="The model store of donor networks.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--store", default=None, help="store root (default: $STITCH_STORE or models)")
    # --store also after the sub-command; SUPPRESS keeps a value given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", parents=[common], help="import state-dict file(s) as donors")
    imp.add_argument("files", nargs="+", help="state-dict file(s) (torch.save of a dict of tensors)")
    imp.add_argument("--preset", help="one of: " + ", ".join(f"{k} ({v['about']})" for k, v in PRESETS.items()))
    imp.add_argument("--data", help="data set (conf/data/<name>.yaml)")
    imp.add_argument("--data-root", help="where the data set is (data.root)")
    imp.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE")
    imp.add_argument("--model", help="conf/model entry (tiny10_unpadded) or a family name (resnet20)")
    imp.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="model option")
    imp.add_argument("--name", help="donor name used as model.seed (default: the file's folder, e.g. in0)")
    imp.add_argument("--strip-prefix", action="append", default=[], metavar="PREFIX", help="e.g. module.")
    imp.add_argument("--add-prefix", default="", metavar="PREFIX")
    imp.add_argument("--rename", action="append", default=[], metavar="REGEX=REPL", help="regex key renaming")
    imp.add_argument("--device", default="auto")
    imp.add_argument("--no-eval", action="store_true", help="do not measure the test accuracy")
    imp.add_argument("--force", action="store_true", help="re-import; accept a near-chance accuracy")
    sub.add_parser("list", parents=[common], help="list the donors in the store").set_defaults(fn=_list)
    ver = sub.add_parser("verify", parents=[common], help="verify the donors in the store")
    ver.add_argument("--fix", action="store_true", help="delete leftovers of interrupted saves")
    ver.set_defaults(fn=_verify)
    imp.set_defaults(fn=_import)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.fn(args)
    except DataNotFoundError as e:  # its hint speaks Hydra (data.root=...); here the option is --data-root
        print(f"error: {str(e).replace('data.root=', '--data-root ')}", file=sys.stderr)
        return 2
    except (StitchError, ValueError, TypeError, re.error) as e:  # bad input: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

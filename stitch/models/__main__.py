"""List a model's stitchable layers with their activation shapes.

    python -m stitch.models resnet18 --data cifar10
    python -m stitch.models vit_tiny --option img_size=32 --option patch_size=4
"""
from __future__ import annotations

import argparse
import math
import sys


from . import build, list_models

_INPUTS = {"digits": (3, 32, 32), "synthetic": (3, 32, 32), "cifar10": (3, 32, 32), "svhn": (3, 32, 32),
           "celeba": (3, 224, 224), "imagenet": (3, 224, 224)}
_CLASSES = {"celeba": 40, "imagenet": 1000}


def main(argv: list[str] | None = None) -> None:
    from ..store.importing import CONF, key_values, model_config

    configs = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
    p = argparse.ArgumentParser(prog="python -m stitch.models", description=__doc__.splitlines()[0])
    p.add_argument("model", choices=sorted(set(list_models()) | set(configs)),
                   help="a family or a conf/model entry (e.g. tiny10_unpadded, vit_tiny_32)")
    p.add_argument("--data", default="cifar10", choices=sorted(_INPUTS), help="data set (input size, classes)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="model option")
    args = p.parse_args(argv)
    try:
        options = key_values(args.option, "--option")
        cfg = model_config(args.model, options)
        net = build(cfg["name"], num_classes=_CLASSES.get(args.data, 10), **cfg["options"])
        shapes = net.layer_shapes(_INPUTS[args.data])
    except (ValueError, TypeError, AssertionError) as e:  # a bad option or an input it cannot take: exit 2
        hint = f" ({args.model} cannot take {args.data} inputs of shape {_INPUTS[args.data]})" \
            if isinstance(e, AssertionError) else ""
        print(f"error: {e}{hint}", file=sys.stderr)
        sys.exit(2)
    options = cfg["options"]
    shape = _INPUTS[args.data]
    print(f"{args.model} {options or ''} on {args.data} {shape}:")
    groups = net.layer_groups
    for i, (group, names) in enumerate(groups.items()):
        default = "  (layer=all)" if i == 0 else ""
        print(f"  [{group}]{default}")
        print(f"    {'layer':<16} {'activation shape':<20} {'values':>10}")
        for layer in names:
            print(f"    {layer:<16} {str(shapes[layer]):<20} {math.prod(shapes[layer]):>10}")
    if net.layer_aliases:
        print("  aliases: " + ", ".join(f"{a} = {c}" for a, c in net.layer_aliases.items()))
    print("  select a group with layer=<group>, every point with layer=every")


if __name__ == "__main__":
    main()

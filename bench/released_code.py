"""Paper 1's released code and ours, side by side: one augmented TLM epoch and one least-squares pass.

The released code (GitHub renyi-ai/drfrankenstein, MIT) is run as published, from a checkout you point to
(it is never copied into this project), with version shims only:

* torchvision renamed ``RandomAffine(fillcolor=)`` to ``fill=`` (its MNIST transforms, imported on start) and
  moved ``models.resnet.load_state_dict_from_url`` to ``torch.hub`` (imported by its ResNet-20);
* ``cv2`` is imported by its CelebA reader only and ``pkbar`` by its Trainer's progress bar only (neither
  runs here): stub modules stand in when they cannot be imported;
* its data sets come from ``torchvision.datasets.CIFAR10`` files; here ``get_datasets`` serves the same
  CIFAR-10 images ours read (``shared/data/cifar10-jpeg``) through the released code's own per-image
  transforms (flip, crop with 4 px padding, normalise), with its ``DataLoader`` and batch size;
* its model paths name the architecture by their folders: links in a temporary folder give the released
  checkpoints that layout.

Both sides get the same CPU, the same thread count (``--threads``, data loading in-process) and the same
batches of images, alternating batch by batch (ours first on even batches, theirs first on odd ones), so
a busy machine slows both alike. Times are extrapolated from ``--batches`` batches to an epoch of 50,000
images; the least-squares pass runs both over the same ``--ls-images`` training images. GFLOP/s counts
the floating-point work of one step of each (``torch.utils.flop_counter``) against the rate model 2's
plain forward reaches in isolation on this CPU (the "conv rate").

    git clone https://github.com/renyi-ai/drfrankenstein /tmp/drfrankenstein
    pip install --target /tmp/drfrankenstein-deps pkbar dotmap
    python bench/released_code.py --released-code /tmp/drfrankenstein --deps /tmp/drfrankenstein-deps
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from phases import Phases, ls_step, tlm_step  # noqa: E402

from stitch import store  # noqa: E402
from stitch.data import build as build_data  # noqa: E402
from stitch.hardware import hardware_name  # noqa: E402
from stitch.matching import MatchingStatistics, least_squares  # noqa: E402
from stitch.models.fold import as_input_for, fold_batchnorm, to_channels_last  # noqa: E402
from stitch.stitching import build_stitching_layer  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
RELEASED = {"tiny10": "tiny10-cifar10", "resnet20": "resnet20-w1-cifar10"}
OPTIONS = {"tiny10": {"padding": "none"}, "resnet20": {"width": 1}}


# ------------------------------------------------------------------ the released code, with its shims
def load_released(code: Path, deps: Path | None, images: np.ndarray, labels: np.ndarray):
    """Import the released code's modules from ``code``, with the shims of the module docstring."""
    for p in (str(code), *([str(deps)] if deps else [])):
        sys.path.insert(0, p)
    if importlib.util.find_spec("cv2") is None:
        sys.modules["cv2"] = types.ModuleType("cv2")  # its CelebA reader's import; unused on CIFAR-10
    try:
        import pkbar  # noqa: F401 - its Trainer's progress bar (needs setuptools' pkg_resources)
    except ImportError:
        sys.modules["pkbar"] = types.ModuleType("pkbar")  # the bar is not used here: no Trainer runs
    import torchvision.transforms as T
    from PIL import Image

    class RandomAffine(T.RandomAffine):  # torchvision >= 0.12: fillcolor= is fill=
        def __init__(self, *a, fillcolor=None, **k):
            super().__init__(*a, **({"fill": fillcolor} if fillcolor is not None else {}), **k)

    T.RandomAffine = RandomAffine
    import torchvision.models.resnet as tv_resnet

    if not hasattr(tv_resnet, "load_state_dict_from_url"):  # torchvision >= 0.13 moved it to torch.hub
        tv_resnet.load_state_dict_from_url = torch.hub.load_state_dict_from_url
    from dotmap import DotMap

    import src.dataset as rdata  # noqa: E402 - the released code
    from src.dataset.transforms import transformer

    class CIFAR10Images(torch.utils.data.Dataset):
        """torchvision's CIFAR10 interface over the images ours read."""
        classes = [str(i) for i in range(10)]

        def __init__(self, x, y, transform):
            self.x, self.y, self.transform = x, y, transform

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.transform(Image.fromarray(self.x[i])), int(self.y[i])

    train_t, test_t = (T.Compose(t) for t in transformer["cifar10"])
    state = {"n": len(images)}

    def get_datasets(name):
        assert name == "cifar10", name
        n = state["n"]
        return DotMap({"train": CIFAR10Images(images[:n], labels[:n], train_t),
                       "val": CIFAR10Images(images[:n], labels[:n], test_t)})

    rdata.get_datasets = get_datasets
    for mod in list(sys.modules.values()):  # modules that imported the name before the patch
        if getattr(mod, "__name__", "").startswith("src.") and getattr(mod, "get_datasets", None) is not None:
            mod.get_datasets = get_datasets
    return state


def released_paths(model: str, pair: list[str], released_dir: Path, tmp: Path) -> list[str]:
    """The released checkpoints under ``<tmp>/<arch>/cifar10/<seed>/110000.pt``: the layout its loader parses."""
    arch = "tiny10" if model == "tiny10" else "resnet20"
    out = []
    for seed in pair:
        d = tmp / arch / "cifar10" / seed
        d.mkdir(parents=True, exist_ok=True)
        link = d / "110000.pt"
        if not link.exists():
            link.symlink_to(released_dir / RELEASED[model] / seed / "110000.pt")
        out.append(str(link))
    return out


# ------------------------------------------------------------------ measurements
def flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def conv_rate(net, x, repeats: int = 5) -> float:
    """FLOP/s of ``net``'s plain forward on batch ``x`` (best of ``repeats``): what this CPU's kernels reach."""
    with torch.no_grad():
        work = flops(lambda: net(x))
        net(x)
        best = min(_timed(lambda: net(x)) for _ in range(repeats))
    return work / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--released-code", type=Path, required=True, help="a checkout of renyi-ai/drfrankenstein")
    p.add_argument("--deps", type=Path, default=None, help="where pkbar and dotmap are (pip install --target)")
    p.add_argument("--released-dir", type=Path, default=SHARED / "released-drfrankenstein")
    p.add_argument("--model", default="tiny10", choices=sorted(RELEASED))
    p.add_argument("--layer", default="bn6")
    p.add_argument("--pair", default="in0,in1")
    p.add_argument("--store", default="models/released")
    p.add_argument("--data-root", default=str(SHARED / "cifar10-jpeg"))
    p.add_argument("--batches", type=int, default=30, help="TLM batches timed per side (then extrapolated)")
    p.add_argument("--batch-size", type=int, default=128, help="paper 1's TLM batch size")
    p.add_argument("--ls-images", type=int, default=5000, help="training images of the least-squares pass")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pair = args.pair.split(",")

    # ours: the donors as stitch.py runs them (BatchNorm folded where it may be, channels-last)
    nets = []
    for seed in pair:
        key = store.DonorKey.make("cifar10", args.model, seed, OPTIONS[args.model])
        if not store.exists(key, args.store):
            sys.exit(f"donor {key} is not in {args.store}: run `make released-donors` first")
        nets.append(store.load(key, args.store)[0])
    layer = nets[0].check_layer(args.layer)
    m1, m2 = (to_channels_last(fold_batchnorm(n, [layer])) for n in nets)
    datamodule = build_data("cifar10", root=args.data_root, normalize=True)
    datamodule.setup()
    images_u8, labels = datamodule.tensors("train")
    hwc = images_u8.permute(0, 2, 3, 1).contiguous().numpy()  # the released loader's PIL images
    shape = nets[0].layer_shapes(datamodule.input_shape)[layer]

    state = load_released(args.released_code, args.deps, hwc, labels.numpy())
    from src.models.frank.frankenstein import FrankeinsteinNet
    from src.models.frank.initializer import PsInvInit
    from src.trainer import FrankStepHandler

    tmp = Path(tempfile.mkdtemp(prefix="released-"))
    paths = released_paths(args.model, pair, args.released_dir, tmp)
    cwd = os.getcwd()
    os.chdir(args.released_code)  # it reads config/default.env relative to its folder
    try:
        torch.manual_seed(0)
        frank = FrankeinsteinNet(paths[0], paths[1], layer, layer, "cifar10", init="random")
        theirs = FrankStepHandler(frank, optimizer_name="adam", lr=1e-3, target_type="soft_2")
        frank.train()
        for m in frank.models:
            m.eval_mode()  # as its Trainer.train(freeze_bn=True) leaves them
        loader = torch.utils.data.DataLoader(
            sys.modules["src.dataset"].get_datasets("cifar10")["train"], batch_size=args.batch_size, shuffle=True, num_workers=0, drop_last=True,
            generator=torch.Generator().manual_seed(0))
        batches = iter(loader)

        torch.manual_seed(0)
        stitch = build_stitching_layer(shape, shape)
        ours_state = (stitch, torch.optim.Adam(stitch.parameters(), lr=1e-3), torch.Generator().manual_seed(0))
        t_ours, t_theirs = Phases(), Phases()

        def ours_step(ph, i):
            xb = images_u8[(i * args.batch_size) % len(images_u8):][:args.batch_size]
            s, opt, g = ours_state
            tlm_step(ph, datamodule, xb, m1, m2, s, opt, layer, None, g)

        def theirs_step(ph):
            with ph("data (DataLoader, per-image transforms)"):
                x, y = next(batches)
            with ph("step (front, end with hook, soft labels, backward, Adam)"):
                theirs.step(x, y, True)

        for i in range(args.batches + 2):  # 2 warm-up batches per side, not counted
            a, b = (t_ours, t_theirs) if i >= 2 else (Phases(), Phases())
            if i % 2 == 0:
                ours_step(a, i)
                theirs_step(b)
            else:
                theirs_step(b)
                ours_step(a, i)

        # floating-point work of one step of each, and the conv rate of model 2's forward alone
        xb = images_u8[:args.batch_size]
        f_ours = flops(lambda: ours_step(Phases(), 0))
        x, y = next(batches)
        f_theirs = flops(lambda: theirs.step(x, y, True))
        rate = conv_rate(m2, as_input_for(m2, datamodule.preprocess(xb)))

        # the least-squares pass over the same images: theirs (its ps_inv comparator, as its PsInvInit runs it)
        state["n"] = args.ls_images
        t0 = time.perf_counter()
        PsInvInit(frank.front_model, frank.end_model, layer, layer, "cifar10", dataset_type="train")
        ls_theirs = time.perf_counter() - t0
    finally:
        os.chdir(cwd)
    ph = Phases()
    stats = MatchingStatistics()
    t0 = time.perf_counter()
    for i in range(0, args.ls_images, 256):
        ls_step(ph, datamodule, images_u8[i:min(i + 256, args.ls_images)], m1, m2, stitch, stats, layer, None)
    least_squares(stats)
    ls_ours = time.perf_counter() - t0

    scale = 50000 / args.batch_size / args.batches
    cpu = hardware_name("cpu", threads=True)
    print(f"{args.model} {args.pair} at {layer} {tuple(shape)}; {cpu}; torch {torch.__version__}; "
          f"{args.threads} thread(s); TLM: {args.batches} alternating batches of {args.batch_size} per side, "
          f"extrapolated to 50,000 images; LS: {args.ls_images} images")
    print("\n| phase | released code s/epoch | ours s/epoch | ratio |\n|---|---|---|---|")
    tot_t, tot_o = sum(t_theirs.t.values()) * scale, sum(t_ours.t.values()) * scale
    for n, v in t_theirs.t.items():
        print(f"| released: {n} | {v * scale:.1f} | | |")
    for n, v in t_ours.t.items():
        print(f"| ours: {n} | | {v * scale:.1f} | |")
    print(f"| **TLM epoch, total** | {tot_t:.1f} | {tot_o:.1f} | {tot_t / tot_o:.2f}x |")
    print(f"| **least-squares pass** ({args.ls_images} images) | {ls_theirs:.1f} | {ls_ours:.1f} | "
          f"{ls_theirs / ls_ours:.2f}x |")
    steps = args.batches
    g_t = f_theirs * steps / sum(t_theirs.t.values()) / 1e9
    g_o = f_ours * steps / sum(t_ours.t.values()) / 1e9
    print(f"\nGFLOP per TLM step: released {f_theirs / 1e9:.2f}, ours {f_ours / 1e9:.2f}; achieved GFLOP/s: "
          f"released {g_t:.1f}, ours {g_o:.1f}; model 2's plain forward alone: {rate / 1e9:.1f} GFLOP/s "
          f"(ours at {100 * g_o * 1e9 / rate:.0f}% of it, released at {100 * g_t * 1e9 / rate:.0f}%)")


if __name__ == "__main__":
    main()

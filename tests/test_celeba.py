"""CelebA's 40 attributes: the packed and official readers, the fixed split, multi-label donor metrics
against hand-computed values, and OOD detection of a multi-label head (joint energy).

The readers are tested on tiny files written here; the real faces (``shared/data/celeba-10k``) only
where this workplace has them.
"""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from stitch import data as data_lib
from stitch.data.celeba import SHARED_CELEBA, split_ranges
from stitch.errors import ConfigError, DataNotFoundError
from stitch.evaluation import average_precision, multilabel_metrics


def _jpeg(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _face(i: int, w: int = 16, h: int = 20) -> np.ndarray:
    """A W x H image: grey level 10 * i, with a white band in the rows a centre crop removes."""
    img = np.full((h, w, 3), 10 * i, dtype=np.uint8)
    img[:2] = 255
    img[-2:] = 255
    return img


def _attributes(n: int) -> np.ndarray:
    """+1/-1 rows as in list_attr_celeba.txt: attribute k of image i is on when (i >> (k % 5)) & 1."""
    return np.array([[1 if (i >> (k % 5)) & 1 else -1 for k in range(40)] for i in range(n)], dtype=np.int8)


def _coded_face(i: int, w: int = 16, h: int = 20) -> np.ndarray:
    """Five vertical stripes, stripe b bright when bit b of i is set: the attributes of _attributes are visible."""
    img = np.full((h, w, 3), 40, dtype=np.uint8)
    for b in range(5):
        if (i >> b) & 1:
            img[:, 3 * b:3 * b + 3] = 220
    return img


def write_packed(path, n: int = 20, face=_face) -> np.ndarray:
    blobs = [_jpeg(face(i)) for i in range(n)]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    attrs = _attributes(n)
    np.savez(path, jpeg=np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets=offsets,
             files=np.array([f"{i + 1:06d}.jpg" for i in range(n)]), attributes=attrs,
             attribute_names=np.array([f"attr{k}" for k in range(40)]))
    return attrs


def test_the_packed_file_is_split_in_file_order_80_10_10_with_float_targets(tmp_path):
    attrs = write_packed(tmp_path / "celeba.npz", n=20)
    dm = data_lib.build("celeba", root=str(tmp_path), image_size=16, normalize=False)
    dm.setup()
    assert dm.multilabel and dm.num_classes == 40 and dm.input_shape == (3, 16, 16)
    assert {s: dm.size(s) for s in ("train", "val", "test")} == {"train": 16, "val": 2, "test": 2}
    x, y = dm.tensors("test")
    assert x.dtype == torch.uint8 and y.dtype == torch.float32
    assert torch.equal(y, torch.from_numpy((attrs[18:] > 0).astype(np.float32)))  # the last two, in order
    # the central 16 x 16 square of the 16 x 20 face: the white bands at the top and bottom are cropped away
    assert abs(int(x[0].float().mean()) - 180) <= 3 and int(x[1].max()) < 250
    assert split_ranges(10_000) == {"train": range(0, 8000), "val": range(8000, 9000), "test": range(9000, 10000)}


def test_the_official_layout_is_split_by_its_partition_file(tmp_path):
    from PIL import Image

    folder = tmp_path / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    attrs = _attributes(6)
    names = [f"{i + 1:06d}.jpg" for i in range(6)]
    for i, name in enumerate(names):
        Image.fromarray(_face(i, 18, 22)).save(folder / "img_align_celeba" / name, quality=95)
    header = " ".join(f"attr{k}" for k in range(40))
    rows = [f"{name} " + " ".join(str(int(v)) for v in attrs[i]) for i, name in enumerate(names)]
    (folder / "list_attr_celeba.txt").write_text("\n".join(["6", header, *rows]) + "\n")
    (folder / "list_eval_partition.txt").write_text("\n".join(f"{n} {p}" for n, p in zip(names, [0, 0, 0, 1, 2, 2])))
    dm = data_lib.build("celeba", root=str(tmp_path), image_size=16)
    assert {s: dm.size(s) for s in ("train", "val", "test")} == {"train": 3, "val": 1, "test": 2}
    assert torch.equal(dm.tensors("val")[1][0], torch.from_numpy((attrs[3] > 0).astype(np.float32)))


def test_a_missing_or_partial_celeba_says_what_to_put_where(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"(?s)CelebA not found under .*celeba.npz.*img_align_celeba"):
        data_lib.build("celeba", root=str(tmp_path)).setup()
    (tmp_path / "celeba").mkdir()
    (tmp_path / "celeba" / "list_attr_celeba.txt").write_text("0\n")
    with pytest.raises(DataNotFoundError, match=r"incomplete: img_align_celeba, list_eval_partition.txt missing"):
        data_lib.build("celeba", root=str(tmp_path)).setup()
    with pytest.raises(ConfigError, match="data.image_size=8: expected an integer >= 16"):
        data_lib.build("celeba", root=str(tmp_path), image_size=8)


def test_average_precision_matches_a_hand_computation():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.3], [0.1, 0.4]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    ap = average_precision(scores, targets)
    assert ap[0].item() == pytest.approx((1 / 1 + 2 / 3) / 2)  # positives at ranks 1 and 3
    assert math.isnan(ap[1].item())  # no positives: undefined, left out of the mean


def test_multilabel_donor_metrics_report_the_majority_baseline_and_map():
    """A donor that only predicts each attribute's majority must show as exactly the baseline."""
    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, x):
            return self.logits[: len(x)]

    class DM:
        multilabel = True

        def __init__(self, y_train, y_test):
            self.y = {"train": y_train, "test": y_test}

        def tensors(self, split):
            return torch.zeros(len(self.y[split]), 3, 4, 4), self.y[split]

        def batches(self, split, batch_size, device="cpu"):
            yield self.tensors(split)

    y_train = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # majority: attr0 on, attr1 off
    y_test = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    majority_only = Fixed(torch.tensor([[5.0, -5.0]] * 4))
    m = multilabel_metrics(majority_only, DM(y_train, y_test))
    assert m["majority_acc"] == pytest.approx((3 / 4 + 2 / 4) / 2) and m["acc"] == pytest.approx(m["majority_acc"])
    assert m["per_attribute_acc"] == [0.75, 0.5] and m["positive_rate"] == pytest.approx(5 / 8)
    good = Fixed(torch.tensor([[3.0, -2.0], [-1.0, 2.0], [2.0, 1.0], [1.0, -1.0]]))
    g = multilabel_metrics(good, DM(y_train, y_test))
    assert g["acc"] == 1.0 and g["mean_ap"] == pytest.approx(1.0) and g["majority_acc"] == m["majority_acc"]


def test_the_donor_floor_of_a_multilabel_task_is_its_majority_baseline():
    from stitch import store

    assert store.sanity_floor(40, True, 0.80) == pytest.approx(0.805)
    assert store.sanity_floor(40, True) == 0.5  # unknown baseline (older donors): the weak floor
    assert store.sanity_floor(10) == pytest.approx(0.15)


# ------------------------------------------------------------------ OOD, multi-label
def test_joint_energy_matches_hand_computation():
    from stitch.ood.energy import joint_energy

    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0]])
    e = joint_energy(logits)
    assert e[0].item() == pytest.approx(-2 * math.log(2))
    assert e[1].item() == pytest.approx(-(math.log(1 + math.e ** 2) + math.log(1 + math.e ** -1)))


def test_a_multilabel_detector_trains_scores_by_joint_energy_and_tells_faces_from_noise(tmp_path):
    """The detector of a multi-label model 2 learns its 40 attributes with BCE, is scored by joint energy,
    skips Liu et al.'s fine-tuning (its margins are for softmax energies), and separates the in-distribution
    test faces from noise images far better than chance."""
    from stitch import models
    from stitch.ood import detector_config
    from stitch.ood.energy import joint_energy
    from stitch.ood.training import train_detector

    write_packed(tmp_path / "celeba.npz", n=120, face=_coded_face)
    dm = data_lib.build("celeba", root=str(tmp_path), image_size=16, batch_size=32)
    dm.setup()
    torch.manual_seed(0)
    net = models.build("tiny10", 40, 3, width=1).eval()
    cfg = detector_config({"detector": {"epochs": 8, "batch_size": 32, "lr": 3e-3,
                                        "conv": {"arch": "resnet20", "options": {"width": 0.25}, "input_size": 8}},
                           "energy": {"epochs": 2}, "outliers": {"sources": ["noise"]}})
    det, info = train_detector(net, "layer3", dm, cfg)
    assert det.multilabel and info["multilabel"] and info["score"].startswith("joint energy")
    assert [h["phase"] for h in info["history"]] == ["classify"] * 8  # no energy phase
    assert info["history"][-1]["loss"] < info["history"][0]["loss"]
    logits = torch.randn(5, 40)
    torch.testing.assert_close(det.energy(logits), joint_energy(logits))
    assert det.predict(logits).shape == (5, 40) and 0.0 <= info["eval"]["acc"] <= 1.0
    assert info["eval"]["outlier_auroc"] > 0.75


@pytest.mark.skipif(not (SHARED_CELEBA / "celeba.npz").is_file(), reason="no shared/data/celeba-10k here")
def test_the_real_celeba_10k_reads_with_its_documented_split_and_attribute_rates():
    dm = data_lib.build("celeba", root=str(SHARED_CELEBA), image_size=32)
    dm.setup()
    assert {s: dm.size(s) for s in ("train", "val", "test")} == {"train": 8000, "val": 1000, "test": 1000}
    y = torch.cat([dm.tensors(s)[1] for s in ("train", "val", "test")])
    rates = y.mean(0)
    assert rates.min().item() == pytest.approx(0.02, abs=0.01)   # Bald (README: 2 %)
    assert rates.max().item() == pytest.approx(0.83, abs=0.01)   # No_Beard (README: 83 %)
    assert dm.tensors("train")[0].shape[1:] == (3, 32, 32)

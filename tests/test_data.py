"""Data modules: the offline default, batch transforms, local CIFAR-10 layouts, clear errors."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from stitch import data
from stitch.data.base import BatchTransform
from stitch.data.cifar10 import SHARED_JPEG
from stitch.errors import DataNotFoundError


def test_digits_is_a_fixed_stratified_split():
    dm = data.build("digits")
    desc = dm.describe()
    assert desc["sizes"] == {"train": 1257, "val": 90, "test": 450}
    assert desc["input_shape"] == [3, 32, 32]
    x, y = dm.tensors("test")
    assert x.dtype == torch.uint8 and x.shape == (450, 3, 32, 32)
    counts = torch.bincount(y, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 46  # stratified: class shares as in the full set
    x2, y2 = data.build("digits").tensors("test")
    assert torch.equal(x, x2) and torch.equal(y, y2)  # deterministic
    assert sum(desc["sizes"].values()) == 1797  # every bundled scan used exactly once


def test_batches_are_preprocessed_and_reproducible():
    dm = data.build("digits", normalize=False)
    (xa, ya), = list(dm.batches("train", 32, shuffle=True, seed=3, limit=32))
    (xb, yb), = list(dm.batches("train", 32, shuffle=True, seed=3, limit=32))
    assert xa.dtype == torch.float32 and 0 <= xa.min() and xa.max() <= 1
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert sum(len(y) for _, y in dm.batches("test", 100)) == 450


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    tf = BatchTransform(crop_padding=2, flip=False)
    out = tf(x, augment=True, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x.float() / 255, (2, 2, 2, 2))
    for i in range(16):
        windows = [padded[i, :, a:a + 8, b:b + 8] for a in range(5) for b in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    flipped = BatchTransform(crop_padding=0, flip=True)(x, augment=True, generator=torch.Generator().manual_seed(1))
    base = x.float() / 255
    assert all(torch.equal(f, b) or torch.equal(f, b.flip(2)) for f, b in zip(flipped, base))


def test_normalisation_uses_the_declared_statistics():
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = BatchTransform(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))(x)
    assert torch.allclose(out, torch.full_like(out, 2.0))
    assert torch.equal(BatchTransform()(out), out)  # float batches pass through


def test_missing_cifar10_says_where_to_put_it(tmp_path):
    with pytest.raises(DataNotFoundError, match="data.download=true") as e:
        data.build("cifar10", root=str(tmp_path / "nowhere")).setup()
    assert "train/<class>" in str(e.value)
    with pytest.raises(DataNotFoundError, match="SVHN not found"):
        data.build("svhn", root=str(tmp_path)).setup()
    with pytest.raises(DataNotFoundError, match="ImageNet not found"):
        data.build("imagenet", root=str(tmp_path)).setup()
    with pytest.raises(DataNotFoundError, match="CelebA not found"):
        data.build("celeba", root=str(tmp_path)).setup()


def test_unknown_data_set_lists_the_valid_ones():
    with pytest.raises(ValueError, match="available: celeba, cifar10, digits"):
        data.build("mnist")


def _jpeg(rng) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def test_cifar10_reads_image_folder_and_packed_layouts(tmp_path):
    rng = np.random.default_rng(0)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    blobs = {s: [_jpeg(rng) for _ in range(20)] for s in ("train", "test")}
    labels = {s: np.arange(20) % 10 for s in ("train", "test")}
    folder, packed = tmp_path / "folder", tmp_path / "packed"
    for s in ("train", "test"):
        for i, (b, c) in enumerate(zip(blobs[s], labels[s])):
            d = folder / s / classes[c]
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i:05d}.jpg").write_bytes(b)
        offsets = np.cumsum([0] + [len(b) for b in blobs[s]])
        packed.mkdir(exist_ok=True)
        np.savez(packed / f"{s}.npz", jpeg=np.frombuffer(b"".join(blobs[s]), dtype=np.uint8), offsets=offsets,
                 labels=labels[s], classes=np.array(classes))
    a = data.build("cifar10", root=str(folder))
    b = data.build("cifar10", root=str(packed))
    assert a.size("train") == b.size("train") == 20 and a.size("test") == 20
    # the same JPEGs decode to the same pixels whichever layout holds them (folder order is by class)
    xb, yb = b.tensors("test")
    xa, ya = a.tensors("test")
    order = np.argsort(labels["test"], kind="stable")
    assert torch.equal(xa, xb[order]) and torch.equal(ya, yb[order])
    assert (packed / "decoded-npz.pt").is_file()  # decoded once, cached
    c = data.build("cifar10", root=str(packed))
    assert torch.equal(c.tensors("test")[0], xb)


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED_JPEG / "test.npz").is_file(), reason="real CIFAR-10 JPEGs not present")
def test_real_cifar10_jpegs():
    dm = data.build("cifar10", root=str(SHARED_JPEG), cache=False)
    assert dm.size("train") == 50000 and dm.size("test") == 10000
    assert torch.bincount(dm.tensors("test")[1]).tolist() == [1000] * 10

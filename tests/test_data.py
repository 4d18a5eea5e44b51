"""Data modules: the offline default, batch transforms, local CIFAR-10 layouts, clear errors."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from stitch import data
from stitch.data.base import BatchTransform
from stitch.data.cifar10 import SHARED_JPEG
from stitch.data.svhn import SHARED_SVHN, SVHN_MEAN
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


# ------------------------------------------------------------------ augmentation
# The contract of BatchTransform.augment (pad-4 random crop + horizontal flip), checked so that it fails
# when augmentation is broken: a no-op, fixed (0 or centred) offsets, never/always flipping, a crop that is
# not a window of the *zero*-padded image, a generator that is ignored, or augment=False not honoured.
AUG_N, AUG_SIZE, AUG_PAD = 64, 32, 4


def _distinct_images() -> torch.Tensor:
    x = torch.randint(0, 256, (AUG_N, 3, AUG_SIZE, AUG_SIZE), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    assert len({bytes(img.flatten().tolist()) for img in x}) == AUG_N  # distinct images
    return x


def _offsets_and_flips(x: torch.Tensor, out: torch.Tensor) -> list[tuple[int, int, bool]]:
    """(row offset, column offset, flipped) of every output image, found exhaustively.

    Each output must equal exactly one of the 81 windows (offsets 0..8 x 0..8) of its own zero-padded
    input, flipped or not (162 candidates); random pixels make two candidates coincide with probability ~0.
    """
    n, s, p = len(x), AUG_SIZE, AUG_PAD
    assert out.shape == x.shape and out.dtype == torch.float32
    padded = torch.nn.functional.pad(x.float() / 255, (p, p, p, p))              # zeros around the image
    windows = padded.unfold(2, s, 1).unfold(3, s, 1).permute(0, 2, 3, 1, 4, 5)   # n x 9 x 9 x 3 x s x s
    assert windows.shape[1:3] == (2 * p + 1, 2 * p + 1)
    found = []
    for i in range(n):
        plain = (windows[i] == out[i]).flatten(2).all(2)                # 9 x 9: window == output
        flipped = (windows[i] == out[i].flip(-1)).flatten(2).all(2)     # 9 x 9: flip(window) == output
        hits = [(int(a), int(b), False) for a, b in plain.nonzero()]
        hits += [(int(a), int(b), True) for a, b in flipped.nonzero()]
        assert len(hits) == 1, f"image {i}: {len(hits)} of the 162 (offset, flip) candidates match, expected 1"
        found.append(hits[0])
    return found


def check_augmentation_contract() -> None:
    """Raise AssertionError if BatchTransform's augmentation breaks its contract (see above)."""
    tf = BatchTransform(crop_padding=AUG_PAD, flip=True)
    x = _distinct_images()
    base = x.float() / 255
    out = tf(x, augment=True, generator=torch.Generator().manual_seed(1))
    # (a) every output is a 32x32 window of its own 4-zero-padded input, possibly flipped
    draws = _offsets_and_flips(x, out)
    rows, cols, flips = zip(*draws)
    # (b) the crop offsets vary (not always 0, not always centred) and flipping is random (both occur).
    # For a correct augmentation with uniform offsets in 0..8 and fair flips, the chance that a batch of 64
    # fails this is P(all 64 row offsets equal) + P(all column offsets equal) + P(all flips equal)
    # <= 2 * 9 * 9**-64 + 2 * 2**-64 = 2 * 9**-63 + 2**-63 ~ 1.1e-19 (and the seed is fixed anyway).
    assert len(set(rows)) > 1, f"every row offset is {rows[0]}"
    assert len(set(cols)) > 1, f"every column offset is {cols[0]}"
    assert len(set(zip(rows, cols))) > 1
    assert any(flips), "no image was flipped"
    assert not all(flips), "every image was flipped"
    assert not torch.equal(out, base)
    # (c) the generator decides everything: the same seed reproduces the batch, another seed differs
    again = tf(x, augment=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    other = tf(x, augment=True, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(out, other)
    assert _offsets_and_flips(x, other) != draws
    # (d) augment=False leaves the batch as it is (only converted to float in [0, 1])
    plain = tf(x, augment=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain, base)


def test_augmentation_is_a_random_window_of_the_zero_padded_image_maybe_flipped():
    check_augmentation_contract()


_ORIGINAL_AUGMENT = BatchTransform.augment


def _crop_at(x: torch.Tensor, di: torch.Tensor, dj: torch.Tensor, p: int = AUG_PAD, mode: str = "constant"):
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (p, p, p, p), mode=mode)
    return torch.stack([padded[k, :, int(di[k]):int(di[k]) + h, int(dj[k]):int(dj[k]) + w] for k in range(n)])


def _random_flip(x: torch.Tensor, g) -> torch.Tensor:
    flip = torch.rand(len(x), generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _draws(x: torch.Tensor, g):
    n = len(x)
    return (torch.randint(0, 2 * AUG_PAD + 1, (n,), generator=g), torch.randint(0, 2 * AUG_PAD + 1, (n,), generator=g))


def _without_flip(self: BatchTransform) -> BatchTransform:
    return BatchTransform(self.mean, self.std, self.crop_padding, flip=False)


def _broken_only_flips(self, x, g=None):
    return _random_flip(x, g)


def _broken_offsets_zero(self, x, g=None):
    zero = torch.zeros(len(x), dtype=torch.long)
    return _random_flip(_crop_at(x, zero, zero), g)


def _broken_offsets_centred(self, x, g=None):
    centre = torch.full((len(x),), AUG_PAD)
    return _random_flip(_crop_at(x, centre, centre), g)


def _broken_one_offset_per_batch(self, x, g=None):
    di, dj = _draws(x, g)
    return _random_flip(_crop_at(x, di[:1].expand(len(x)), dj[:1].expand(len(x))), g)


def _broken_columns_never_shifted(self, x, g=None):
    di, _ = _draws(x, g)
    return _random_flip(_crop_at(x, di, torch.full((len(x),), AUG_PAD)), g)


def _broken_replicate_padding(self, x, g=None):
    return _random_flip(_crop_at(x, *_draws(x, g), mode="replicate"), g)


def _broken_vertical_flip(self, x, g=None):
    cropped = _ORIGINAL_AUGMENT(_without_flip(self), x, g)
    flip = torch.rand(len(x), generator=g) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(2), cropped)


BROKEN_AUGMENTATIONS = {
    "no-op": lambda self, x, g=None: x,
    "only flips": _broken_only_flips,
    "offsets always 0": _broken_offsets_zero,
    "offsets always centred": _broken_offsets_centred,
    "one offset for the whole batch": _broken_one_offset_per_batch,
    "columns never shifted": _broken_columns_never_shifted,
    "never flips": lambda self, x, g=None: _ORIGINAL_AUGMENT(_without_flip(self), x, g),
    "always flips": lambda self, x, g=None: _ORIGINAL_AUGMENT(_without_flip(self), x, g).flip(3),
    "replicate padding": _broken_replicate_padding,
    "vertical flip": _broken_vertical_flip,
    "generator ignored": lambda self, x, g=None: _ORIGINAL_AUGMENT(self, x, None),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_AUGMENTATIONS))
def test_augmentation_check_fails_on_broken_augmentation(broken, monkeypatch):
    """A test of the test: the contract check must reject each broken augmentation."""
    monkeypatch.setattr(BatchTransform, "augment", BROKEN_AUGMENTATIONS[broken])
    with pytest.raises(AssertionError):
        check_augmentation_contract()


def test_augmentation_check_fails_when_augment_false_is_ignored(monkeypatch):
    original_call = BatchTransform.__call__
    monkeypatch.setattr(BatchTransform, "__call__",
                        lambda self, x, augment=False, generator=None: original_call(self, x, True, generator))
    with pytest.raises(AssertionError):
        check_augmentation_contract()


def test_data_module_augments_only_training_batches_it_is_allowed_to():
    """``batches(augment=True)`` augments iff the data module's ``augment`` setting is on."""
    plain = [x for x, _ in data.build("digits", normalize=False, augment=True).batches("train", 64, limit=64)]
    aug = [x for x, _ in data.build("digits", normalize=False, augment=True).batches("train", 64, augment=True,
                                                                                   seed=0, limit=64)]
    off = [x for x, _ in data.build("digits", normalize=False, augment=False).batches("train", 64, augment=True,
                                                                                    seed=0, limit=64)]
    assert len(plain) == len(aug) == len(off) == 1
    assert not torch.equal(aug[0], plain[0])  # augmented
    assert torch.equal(off[0], plain[0])      # data.augment=false: the request to augment is ignored


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
    # the same JPEGs decode to the same pixels whichever layout holds them, paired with the same labels
    xb, yb = b.tensors("test")
    xa, ya = a.tensors("test")
    pairs = lambda x, y: sorted((bytes(xi.flatten().tolist()), int(yi)) for xi, yi in zip(x, y))  # noqa: E731
    assert pairs(xa, ya) == pairs(xb, yb)
    # both are read in one fixed mixed order (the files may be sorted by class): "the first n images" of a
    # split, which train_limit and similarity samples take, are a sample of every class
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(yb, torch.from_numpy(labels["test"])[perm])
    assert b._cache_file("npz").is_file()  # decoded once, cached: in the user's cache, not in the data folder
    assert sorted(p.name for p in packed.iterdir()) == ["test.npz", "train.npz"]
    c = data.build("cifar10", root=str(packed))
    assert torch.equal(c.tensors("test")[0], xb) and torch.equal(c.tensors("test")[1], yb)


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED_JPEG / "test.npz").is_file(), reason="real CIFAR-10 JPEGs not present")
def test_real_cifar10_jpegs():
    dm = data.build("cifar10", root=str(SHARED_JPEG), cache=False)
    assert dm.size("train") == 50000 and dm.size("test") == 10000
    assert torch.bincount(dm.tensors("test")[1]).tolist() == [1000] * 10
    # the packed copy is stored class by class; read, it is mixed: the first 1,000 images hold every class
    first = torch.bincount(dm.tensors("test")[1][:1000], minlength=10)
    assert first.min() > 60 and first.max() < 140


def _svhn_npz(path, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=n).astype(np.int64)
    np.savez(path, x=x, y=y)
    return x, y


def test_svhn_reads_a_packed_test_split_and_says_what_a_training_study_lacks(tmp_path):
    x, y = _svhn_npz(tmp_path / "test.npz", 20)
    dm = data.build("svhn", root=str(tmp_path), normalize=False)
    images, labels = dm.tensors("test")
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images[3].permute(1, 2, 0), torch.from_numpy(x[3]))  # HWC on disk -> CHW here
    assert torch.equal(labels, torch.from_numpy(y)) and dm.input_shape == (3, 32, 32)
    with pytest.raises(DataNotFoundError, match="no train split .*put train.npz"):
        dm.tensors("train")
    _svhn_npz(tmp_path / "train.npz", 30, seed=1)  # a training split next to it: a full data set
    assert data.build("svhn", root=str(tmp_path)).size("train") == 30


def test_a_damaged_svhn_file_is_named(tmp_path):
    (tmp_path / "test.npz").write_bytes(b"not a zip")
    with pytest.raises(DataNotFoundError, match=r"test\.npz is not a readable SVHN \.npz"):
        data.build("svhn", root=str(tmp_path)).setup()


def test_the_sanity_check_uses_svhn_against_cifar10_when_only_its_test_split_exists(tmp_path):
    from stitch.ood.sanity import resolve_sanity_data

    _svhn_npz(tmp_path / "test.npz", 8)
    assert resolve_sanity_data("cifar10", {"data": "auto", "options": {"root": str(tmp_path)}}) == \
        {"name": "svhn", "root": str(tmp_path)}





@pytest.mark.skipif(not (SHARED_SVHN / "test.npz").is_file(), reason="real SVHN test digits not present")
def test_the_real_svhn_test_digits():
    dm = data.build("svhn", root=str(SHARED_SVHN))
    images, labels = dm.tensors("test")
    assert images.shape == (10_000, 3, 32, 32)
    counts = torch.bincount(labels, minlength=10)
    assert counts.sum() == 10_000 and (counts > 400).all()  # every digit 0..9, digit 0 stored as 0
    # SVHN's channel means are close to its published normalisation statistics
    mean = images.float().mean((0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(SVHN_MEAN), atol=0.03)


def _previous_augmented_batch(x, g, mean, std, p=4):
    """The batch transform as it was before the uint8 path (the reference): float gather, flip by select,
    then (x / 255 - mean) / std."""
    x = x.float().div_(255.0)
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    di = torch.randint(0, 2 * p + 1, (n,), generator=g)
    dj = torch.randint(0, 2 * p + 1, (n,), generator=g)
    rows, cols = di[:, None] + torch.arange(h)[None, :], dj[:, None] + torch.arange(w)[None, :]
    x = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None],
               rows[:, None, :, None], cols[:, None, None, :]]
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def test_fast_augmentation_equals_the_previous_path_within_float32_rounding():
    """Crop and flip on the uint8 images, one copy per image, and the normalisation as one multiply-add: the
    same images as before (same random draws, same pixels), values within float32 rounding; the GPU's
    one-gather variant gives the identical crops."""
    from stitch.data.base import CIFAR_MEAN, CIFAR_STD, BatchTransform, crop_flip_gather, crop_flip_per_image

    x = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8)
    t = BatchTransform(CIFAR_MEAN, CIFAR_STD)
    new = t(x, augment=True, generator=torch.Generator().manual_seed(5))
    old = _previous_augmented_batch(x, torch.Generator().manual_seed(5), CIFAR_MEAN, CIFAR_STD)
    torch.testing.assert_close(new, old, rtol=0, atol=2e-6)
    assert not torch.equal(new, t(x))  # it did augment
    torch.testing.assert_close(t(x), ((x.float() / 255 - torch.tensor(CIFAR_MEAN).view(1, -1, 1, 1))
                                      / torch.tensor(CIFAR_STD).view(1, -1, 1, 1)), rtol=0, atol=2e-6)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    g = torch.Generator().manual_seed(2)
    di, dj = torch.randint(0, 9, (48,), generator=g), torch.randint(0, 9, (48,), generator=g)
    flip = torch.rand(48, generator=g) < 0.5
    assert torch.equal(crop_flip_per_image(padded, di, dj, flip, 32, 32), crop_flip_gather(padded, di, dj, flip, 32, 32))

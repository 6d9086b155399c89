"""Data pipeline: digits TFDS builder, splits, scaling/dequantisation, seeds, sharding, mocks."""

import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds

from scoresde import data
from scoresde.data import synthetic


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    data.prepare_digits(d)
    return d


def _rows(images, labels):
    return sorted(zip(labels.tolist(), [im.tobytes() for im in np.asarray(images, np.uint8)]))


def test_digits_builder_round_trip_and_splits(data_dir):
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = data.split_indices()
    sizes = {s: len(i) for s, i in idx.items()}
    assert sizes == {"train": 1350, "validation": 150, "test": 297}
    # the three index sets partition the 1797 images
    allidx = np.concatenate(list(idx.values()))
    assert len(np.unique(allidx)) == 1797 == len(allidx)
    for split, i in idx.items():
        images, labels = data.load_arrays("digits", split, data_dir=data_dir)
        assert images.shape == (sizes[split], 8, 8, 1) and images.dtype == np.uint8
        assert labels.dtype == np.int32 and images.max() <= 16
        # the stored split is exactly the documented subset of load_digits (as a multiset)
        assert _rows(images, labels) == _rows(d.images[i][..., None], d.target[i])
    info = data.dataset_info("digits")
    assert (info.shape, info.num_levels, info.num_classes, info.flip_ok) == ((8, 8, 1), 17, 10, False)
    both, _ = data.load_arrays("digits", "train+validation", data_dir=data_dir)
    assert len(both) == 1500


def test_dequantisation_range_and_levels(data_dir):
    k, _ = data.load_arrays("digits", "validation", data_dir=data_dir)
    it = data.make_iterator("digits", "validation", 150, seed=3, num_epochs=1, shuffle=False,
                            scale="[0,1]", data_dir=data_dir)
    x = next(it)["image"]
    assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() < 1.0
    # floor(17 x) recovers the integer level; the remainder u is uniform on [0, 1)
    np.testing.assert_array_equal(np.floor(x.astype(np.float64) * 17), k)
    u = x.astype(np.float64) * 17 - k
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005  # 9600 draws: se 0.003
    # without dequantisation the values are exactly the 17-point grid k / 16 in [-1, 1]
    it = data.make_iterator("digits", "validation", 150, seed=3, num_epochs=1, shuffle=False,
                            dequantize=False, data_dir=data_dir)
    x = next(it)["image"]
    np.testing.assert_allclose(x, 2 * k / 16 - 1, atol=1e-6)
    assert x.min() == -1.0 and x.max() == 1.0


@pytest.mark.parametrize("scale", ["[-1,1]", "[0,1]"])
@pytest.mark.parametrize("dequantize", [True, False])
def test_scaling_inverse(scale, dequantize):
    rng = np.random.default_rng(0)
    for levels in (17, 256):
        k = rng.integers(0, levels, size=(64, 8, 8, 1))
        x = data.scale_images(k, levels, scale=scale, dequantize=dequantize, rng=rng)
        lo, hi = (-1, 1) if scale == "[-1,1]" else (0, 1)
        assert x.min() >= lo and x.max() <= hi
        np.testing.assert_array_equal(data.to_levels(x, levels, scale=scale, dequantized=dequantize), k)
    assert data.log_scale_per_dim(17, "[-1,1]") == pytest.approx(np.log(2 / 17))
    assert data.log_scale_per_dim(256, "[0,1]") == pytest.approx(-np.log(256))


def test_determinism_and_epochs(data_dir):
    def take(seed, n=12):
        it = data.make_iterator("digits", "train", 128, seed=seed, data_dir=data_dir)
        return [next(it) for _ in range(n)]

    a, b, c = take(0), take(0), take(1)
    for ba, bb in zip(a, b):
        np.testing.assert_array_equal(ba["image"], bb["image"])
        np.testing.assert_array_equal(ba["label"], bb["label"])
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    assert all(bt["image"].shape == (128, 8, 8, 1) and bt["label"].shape == (128,) for bt in a)
    # one epoch of a shuffled split visits every example exactly once
    it = data.make_iterator("digits", "validation", 50, seed=5, num_epochs=1, dequantize=False,
                            scale="[0,1]", data_dir=data_dir)
    batches = list(it)
    assert len(batches) == 3
    imgs = np.concatenate([bt["image"] for bt in batches])
    labs = np.concatenate([bt["label"] for bt in batches])
    k, y = data.load_arrays("digits", "validation", data_dir=data_dir)
    assert _rows(np.rint(imgs * 16), labs) == _rows(k, y)


@pytest.mark.parametrize("kw", [dict(dequantize=True), dict(num_epochs=2, drop_remainder=False),
                                dict(process_index=1, process_count=2)])
def test_start_batch_is_the_tail_of_the_stream(data_dir, kw):
    """start_batch=k gives batches k, k+1, ... of the full stream bit for bit (noise included),
    across epoch boundaries (150 validation digits, batch 64)."""
    def stream(start):
        return list(itertools.islice(data.make_iterator("digits", "validation", 64, seed=3,
                                                        data_dir=data_dir, start_batch=start, **kw), 12))
    full = stream(0)
    assert len(full) >= 5
    for k in (1, 2, 3, 7):
        tail = stream(k)
        want = max(0, len(full) - k) if kw.get("num_epochs") else 12
        assert len(tail) == want
        for a, b in zip(full[k:], tail):
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])
    with pytest.raises(ValueError, match="start_batch"):
        data.make_iterator("digits", "validation", 64, seed=3, data_dir=data_dir, start_batch=-1)


def test_process_sharding_disjoint():
    parts = []
    for p in range(3):
        it = data.make_iterator("ring", "validation", 1000, seed=0, num_epochs=1,
                                process_index=p, process_count=3, drop_remainder=False)
        parts.append(np.concatenate([bt["image"] for bt in it]))
    full, _ = data.load_arrays("ring", "validation")
    rows = [set(map(tuple, q.tolist())) for q in parts]
    assert [len(q) for q in parts] == [3333] * 3 and all(len(r) == 3333 for r in rows)
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    assert set().union(*rows) <= set(map(tuple, full.tolist()))


def test_synthetic_sets_geometry():
    rng = np.random.default_rng(0)
    x, k = synthetic.sample_ring(rng, 20000)
    np.testing.assert_allclose(x.mean(0), 0.0, atol=0.1)
    # E|x|^2 = r^2 + 2 std^2 for the ring of 8 Gaussians
    assert abs((x**2).sum(1).mean() - (16 + 2 * 0.25)) < 0.15
    np.testing.assert_allclose(np.linalg.norm(x - synthetic.ring_means()[k], axis=1).mean(),
                               0.5 * np.sqrt(np.pi / 2), rtol=0.03)  # Rayleigh mean
    x, _ = synthetic.sample_checkerboard(rng, 5000)
    cells = np.floor((x + 4) / 2).astype(int)
    assert np.all(np.abs(x) <= 4) and np.all(cells.sum(1) % 2 == 0)  # only "black" squares
    x, lab = synthetic.sample_moons(rng, 2000)
    assert set(np.unique(lab)) == {0, 1} and abs(x[lab == 0, 1].mean() - x[lab == 1, 1].mean()) > 1
    x, _ = synthetic.sample_swiss_roll(rng, 2000)
    r = np.linalg.norm(x, axis=1)
    lo, hi = np.percentile(r, [1, 99])  # radius t / 2.5 in [1.88, 5.65] plus N(0, 0.25^2) noise
    assert 1.3 < lo < 2.3 and 5.2 < hi < 6.2


@pytest.mark.parametrize("name,shape,flip", [("mnist", (28, 28, 1), False), ("cifar10", (32, 32, 3), True)])
def test_tfds_sets_through_same_pipeline(name, shape, flip):
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        info = data.dataset_info(name)
        assert info.num_levels == 256 and info.shape == shape
        raw, labels = data.load_arrays(name, "train")
        assert raw.shape == (40, *shape) and labels.shape == (40,)
        it = data.make_iterator(name, "train", 16, seed=0, flip=flip, dequantize=False, num_epochs=1)
        bts = list(it)
        assert len(bts) == 2 and bts[0]["image"].shape == (16, *shape) and bts[0]["image"].dtype == np.float32
        assert bts[0]["label"].dtype == np.int32 and bts[0]["image"].min() >= -1 and bts[0]["image"].max() <= 1
        if flip:  # each image equals the unflipped one or its mirror, and both occur
            ref = next(data.make_iterator(name, "train", 16, seed=0, dequantize=False))["image"]
            got = bts[0]["image"]
            same = np.all(got == ref, axis=(1, 2, 3))
            mirr = np.all(got == ref[:, :, ::-1], axis=(1, 2, 3))
            assert np.all(same | mirr) and same.sum() > 0 and mirr.sum() > 0


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="valid names: digits, ring"):
        data.make_iterator("imagenet", "train", 8, seed=0)
    with pytest.raises(ValueError, match="flip=True is not allowed for 'digits'"):
        data.make_iterator("digits", "train", 8, seed=0, flip=True)
    with pytest.raises(ValueError, match="batch_size"):
        data.make_iterator("ring", "train", 0, seed=0)
    with pytest.raises(ValueError, match="process_index"):
        data.make_iterator("ring", "train", 8, seed=0, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="valid splits"):
        data.make_iterator("ring", "bogus", 8, seed=0)
    with pytest.raises(FileNotFoundError, match="(?s)'mnist'.*tfds build mnist"):
        data.make_iterator("mnist", "train", 8, seed=0, data_dir=str(tmp_path))

"""Offline metrics: Frechet distance vs closed forms, entropy, NN distances, digit classifier."""

import numpy as np
import pytest

from scoresde import metrics
from scoresde.metrics.frechet import frechet_distance


def _rot(a):
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def test_frechet_distance_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1, abs=1e-10)
    # diagonal: |m1 - m2|^2 + sum (sqrt a - sqrt b)^2
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    want = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, abs=1e-10)
    # non-commuting 2x2: tr((C1 C2)^{1/2}) = sqrt(tr(C1 C2) + 2 sqrt(det C1 det C2))
    c1 = np.diag([3.0, 0.5])
    c2 = _rot(0.7) @ np.diag([2.0, 0.1]) @ _rot(0.7).T
    tr_sqrt = np.sqrt(np.trace(c1 @ c2) + 2 * np.sqrt(np.linalg.det(c1) * np.linalg.det(c2)))
    want = 1.0 + np.trace(c1) + np.trace(c2) - 2 * tr_sqrt
    assert frechet_distance([0.0, 0.0], c1, [1.0, 0.0], c2) == pytest.approx(want, abs=1e-10)
    # symmetric, zero on identical Gaussians (also rank-deficient ones)
    assert frechet_distance([0, 0], c2, [1, 0], c1) == pytest.approx(want, abs=1e-10)
    low = np.outer([1.0, 2.0], [1.0, 2.0])
    assert abs(frechet_distance([0, 0], low, [0, 0], low)) < 1e-8
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance([0, 0], c1, [0, 0, 0], np.eye(3))


def test_frechet_distance_from_samples_converges():
    rng = np.random.default_rng(0)
    c1, c2 = np.diag([3.0, 0.5]), _rot(0.7) @ np.diag([2.0, 0.1]) @ _rot(0.7).T
    x1 = rng.multivariate_normal([0, 0], c1, 100_000)
    x2 = rng.multivariate_normal([1, 0], c2, 100_000)
    want = frechet_distance([0, 0], c1, [1, 0], c2)
    assert metrics.frechet_distance_from_features(x1, x2) == pytest.approx(want, rel=0.03)
    # the extension point with an arbitrary feature map: identity features give the same
    assert metrics.frechet_distance_with(lambda x: x, x1, x2, batch_size=30_000) == pytest.approx(
        metrics.frechet_distance_from_features(x1, x2), rel=1e-9)


def test_entropy_and_confidence():
    labels = np.array([0] * 50 + [1] * 25 + [2] * 25)
    assert metrics.histogram_entropy(labels, 10) == pytest.approx(-(0.5 * np.log(0.5) + 0.5 * np.log(0.25)))
    assert metrics.histogram_entropy(np.arange(1000) % 10, 10) == pytest.approx(np.log(10))
    assert metrics.histogram_entropy(np.zeros(7, int), 10) == 0.0
    proba = np.array([[0.95, 0.05], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    assert metrics.confident_fraction(proba, 0.9) == 0.5


def test_nearest_neighbours_and_memorisation():
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(300, 8, 8, 1)), rng.normal(size=(200, 8, 8, 1))
    q = rng.normal(size=(50, 64))
    brute = np.sqrt(((q[:, None, :] - train.reshape(300, -1)[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(metrics.nearest_neighbour_distances(q, train, chunk=7), brute, rtol=1e-9)
    d, idx = metrics.nearest_neighbours(q, train, chunk=7)
    np.testing.assert_allclose(d, brute, rtol=1e-9)
    np.testing.assert_array_equal(idx, np.sqrt(((q[:, None, :] - train.reshape(300, -1)[None]) ** 2).sum(-1)).argmin(1))
    copies = metrics.memorisation_report(train[:100] + 1e-3, train, test)
    assert copies["nn_dist_ratio"] < 0.01 and copies["frac_samples_below_test_q05"] == 1.0
    fresh = metrics.memorisation_report(rng.normal(size=(2000, 8, 8, 1)), train, test)
    assert 0.9 < fresh["nn_dist_ratio"] < 1.1 and 0.02 < fresh["frac_samples_below_test_q05"] < 0.1


@pytest.fixture(scope="module")
def digit_setup(tmp_path_factory):
    from scoresde.data import prepare_digits

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    cache = str(tmp_path_factory.mktemp("cache"))
    prepare_digits(data_dir)
    # 1000 steps keep the test short; the default (3000) is what the toolkit reports with.
    clf = metrics.load_digit_classifier(cache_dir=cache, data_dir=data_dir, steps=1000)
    return clf, cache, data_dir


def test_digit_classifier_accuracy_and_cache(digit_setup):
    from scoresde.data import load_arrays

    clf, cache, data_dir = digit_setup
    k, y = load_arrays("digits", "test", data_dir=data_dir)
    x = metrics.levels_to_input(k)
    acc = clf.accuracy(x, y)
    print(f"digit classifier test accuracy: {acc:.4f}")
    assert acc >= 0.9
    p = clf.predict_proba(x)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    assert clf.features(x).shape == (297, 128)
    again = metrics.load_digit_classifier(cache_dir=cache, data_dir=data_dir, steps=1000)  # .npz
    np.testing.assert_allclose(again.predict_proba(x), p, atol=1e-6)


def test_digits_sample_quality_on_real_digits(digit_setup):
    from scoresde.data import load_arrays

    clf, _, data_dir = digit_setup
    k, _ = load_arrays("digits", "test", data_dir=data_dir)
    r = metrics.digits_sample_quality(metrics.levels_to_input(k), clf=clf, data_dir=data_dir)
    ref, s = r["reference"], r["samples"]
    print("reference numbers on real test digits:", ref, r["classifier_test_accuracy"])
    assert abs(s["fd"]) < 1e-6 and s["confident"] == ref["confident"]  # samples == test set
    assert ref["confident"] >= 0.9 and ref["class_entropy"] >= 0.95 * np.log(10)
    assert ref["fd"] > 0 and ref["memorisation"]["nn_dist_ratio"] == 1.0
    noise = metrics.digits_sample_quality(np.random.default_rng(0).uniform(-1, 1, (300, 8, 8, 1)),
                                          clf=clf, data_dir=data_dir)["samples"]
    assert noise["fd"] > 10 * ref["fd"] and noise["confident"] < 0.9 * ref["confident"]

"""Offline sample-quality metrics for the 8x8 digits with a toolkit-trained classifier.

No Inception weights can be downloaded here, so the digits get their own judge: a
small MLP classifier (64 -> 256 -> 128 -> 10, ReLU) trained on the digits "train"
split (1350 images; validation and test are never seen) with dequantised inputs
x = 2 (k + u) / 17 - 1, the scale and dequantisation of `scoresde.data` ("[-1,1]"),
so real (integer) digits and continuous model samples both look like its training
data. Its 128-d penultimate layer gives the features for a Frechet distance (the
FID recipe, Heusel et al. 2017, with this network in place of Inception).

Trained weights are cached as a .npz (default ~/.cache/scoresde, or $SCORESDE_CACHE)
and retrained (a few seconds on CPU, deterministic given the seed) when missing.

`digits_sample_quality(samples)` reports, for samples in the "[-1,1]" scale:
  fd            Frechet distance of sample features vs test-image features
  confident     fraction of samples with max class probability >= 0.9
  class_entropy entropy (nats) of the histogram of predicted classes (max log 10)
  memorisation  nearest-training-image distances vs those of test images
and the same numbers for the real test digits as the reference (FD test vs train).
"""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from scoresde.metrics.frechet import confident_fraction, frechet_distance_from_features, histogram_entropy
from scoresde.metrics.memorisation import memorisation_report

NUM_LEVELS = 17
CACHE_VERSION = "v1"


class _MLPClassifier(nn.Module):
    hidden: tuple[int, ...] = (256, 128)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = x.reshape(x.shape[0], -1)
        for i, w in enumerate(self.hidden):
            h = nn.relu(nn.Dense(w)(h))
            if i < len(self.hidden) - 1:
                h = nn.Dropout(0.2, deterministic=not train)(h)
        return nn.Dense(self.num_classes)(h), h


def levels_to_input(k, num_levels: int = NUM_LEVELS) -> np.ndarray:
    """Integer digits k in 0..16 -> bin centres 2 (k + 1/2) / 17 - 1 in the "[-1,1]" scale."""
    from scoresde.data import bin_centres

    return bin_centres(k, num_levels, scale="[-1,1]")


@dataclasses.dataclass
class DigitClassifier:
    """Trained classifier: `features(x)` (N, 128), `predict_proba(x)` (N, 10).

    x: digits (N, 8, 8, 1) or (N, 64) as floats in the "[-1,1]" scale of `scoresde.data`.
    """

    params: dict
    module: _MLPClassifier = dataclasses.field(default_factory=_MLPClassifier)

    def __post_init__(self):
        self._fwd = jax.jit(lambda p, x: self.module.apply({"params": p}, x))

    def _run(self, x):
        x = np.asarray(x, np.float32).reshape(len(x), -1)
        if x.shape[1] != 64:
            raise ValueError(f"expected 8x8 digits ((N, 8, 8, 1) or (N, 64)), got {x.shape[1]} values each.")
        logits, feats = self._fwd(self.params, jnp.asarray(x))
        return np.asarray(logits), np.asarray(feats)

    def features(self, x) -> np.ndarray:
        return self._run(x)[1]

    def predict_proba(self, x) -> np.ndarray:
        return np.asarray(jax.nn.softmax(self._run(x)[0], axis=-1))

    def accuracy(self, x, labels) -> float:
        return float(np.mean(self.predict_proba(x).argmax(-1) == np.asarray(labels)))


def train_digit_classifier(images, labels, *, seed: int = 0, steps: int = 3000, batch_size: int = 128,
                           lr: float = 1e-3, weight_decay: float = 1e-4) -> DigitClassifier:
    """Train the MLP classifier with AdamW on dequantised digits (integer images k in 0..16)."""
    module = _MLPClassifier()
    k_img = np.asarray(images, np.float32).reshape(len(images), -1)
    y = np.asarray(labels, np.int32)
    key = jax.random.PRNGKey(seed)
    params = module.init(key, jnp.zeros((1, 64)))["params"]
    opt = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=weight_decay)

    @jax.jit
    def step(params, opt_state, key):
        k1, k2, k3 = jax.random.split(key, 3)
        idx = jax.random.randint(k1, (batch_size,), 0, len(y))
        x = 2.0 * (jnp.asarray(k_img)[idx] + jax.random.uniform(k2, (batch_size, 64))) / NUM_LEVELS - 1.0

        def loss_fn(p):
            logits, _ = module.apply({"params": p}, x, train=True, rngs={"dropout": k3})
            return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)[idx]).mean()

        loss, g = jax.value_and_grad(loss_fn)(params)
        upd, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, loss

    def run(params, opt_state, key):
        def body(carry, k):
            p, s = carry
            p, s, loss = step(p, s, k)
            return (p, s), loss

        (params, _), _ = jax.lax.scan(body, (params, opt_state), jax.random.split(key, steps))
        return params

    params = jax.jit(run)(params, opt.init(params), jax.random.fold_in(key, 1))
    return DigitClassifier(jax.device_get(params), module)


def default_cache_dir() -> str:
    return os.environ.get("SCORESDE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "scoresde"))


def _flatten(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


def _unflatten(flat):
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(v)
    return tree


def load_digit_classifier(*, cache_dir: str | None = None, data_dir: str | None = None, seed: int = 0,
                          steps: int = 3000, retrain: bool = False) -> DigitClassifier:
    """The cached classifier, trained on the digits "train" split if the cache is missing.

    The cache file name records (version, seed, steps); the default 3000 AdamW steps
    take a few seconds on CPU and give about 99-100% test accuracy.
    """
    path = os.path.join(cache_dir or default_cache_dir(),
                        f"digit_classifier_{CACHE_VERSION}_seed{seed}_steps{steps}.npz")
    if not retrain and os.path.exists(path):
        try:
            with np.load(path) as f:
                return DigitClassifier(_unflatten(dict(f)))
        except Exception:  # noqa: BLE001 - a corrupt cache is simply retrained
            pass
    from scoresde.data import load_arrays

    images, labels = load_arrays("digits", "train", data_dir=data_dir)
    clf = train_digit_classifier(images, labels, seed=seed, steps=steps)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **_flatten(clf.params))
    os.replace(tmp, path)  # atomic: concurrent readers never see a partial file
    return clf


def _quality(clf, x, ref_feats, train_x, test_x):
    p = clf.predict_proba(x)
    return {
        "fd": frechet_distance_from_features(clf.features(x), ref_feats),
        "confident": confident_fraction(p, 0.9),
        "class_entropy": histogram_entropy(p.argmax(-1), 10),
        "memorisation": memorisation_report(x, train_x, test_x),
    }


def digits_sample_quality(samples, *, clf: DigitClassifier | None = None, data_dir: str | None = None) -> dict:
    """Sample-quality numbers of digit samples ("[-1,1]" scale) next to real test digits.

    Returns {"samples": {...}, "reference": {...}, "classifier_test_accuracy": a,
    "max_entropy": log 10}: each block has fd (vs test features; for the reference,
    test vs train+validation features), confident, class_entropy and memorisation
    (distances in the "[-1,1]" pixel scale to the train+validation images).
    """
    from scoresde.data import load_arrays

    clf = clf or load_digit_classifier(data_dir=data_dir)
    tr_k, _ = load_arrays("digits", "train+validation", data_dir=data_dir)
    te_k, te_y = load_arrays("digits", "test", data_dir=data_dir)
    train_x, test_x = levels_to_input(tr_k), levels_to_input(te_k)
    test_feats = clf.features(test_x)
    samples = np.asarray(samples, np.float32).reshape(-1, 8, 8, 1)
    ref = _quality(clf, test_x, clf.features(train_x), train_x, test_x)
    return {
        "samples": _quality(clf, samples, test_feats, train_x, test_x),
        "reference": ref,
        "classifier_test_accuracy": clf.accuracy(test_x, te_y),
        "max_entropy": float(np.log(10)),
    }

"""Synthetic 2-D data sets (NumPy, seeded): ring, checkerboard, swiss roll, two moons.

Each sampler is `sample_<name>(rng, n) -> (x (n, 2) float32, labels (n,) int32)` with
`rng` a `numpy.random.Generator`. The laws are continuous, so there is nothing to
dequantise; the values are used as they are (no scaling).

* ring: mixture of 8 equally weighted isotropic Gaussians, means on the circle of
  radius 4 at angles 2 pi k / 8, standard deviation 0.5; label = component k. The exact
  law is `ring_mixture()` (a `scoresde.analytic.GaussianMixture`), so exact scores
  and log-densities are available for tests.
* checkerboard: uniform on the black squares of a 4x4 board over [-4, 4]^2 (the
  FFJORD toy set, Grathwohl et al. 2019); label = square index 0..7.
* swiss_roll: sklearn-style roll t in [1.5 pi, 4.5 pi], (t cos t, t sin t) / 2.5
  plus N(0, 0.25^2) noise (Grathwohl et al. 2019 scale); label 0.
* moons: two interleaving half circles (sklearn `make_moons` geometry), centred and
  scaled by 2, plus N(0, 0.1^2) noise; label = moon 0 or 1.
"""

from __future__ import annotations

import numpy as np

RING_COMPONENTS = 8
RING_RADIUS = 4.0
RING_STD = 0.5


def ring_means() -> np.ndarray:
    """(8, 2) component means of the ring: 4 (cos 2 pi k/8, sin 2 pi k/8)."""
    a = 2 * np.pi * np.arange(RING_COMPONENTS) / RING_COMPONENTS
    return RING_RADIUS * np.stack([np.cos(a), np.sin(a)], axis=1)


def ring_mixture():
    """The ring's exact law as a `scoresde.analytic.GaussianMixture`."""
    import jax.numpy as jnp

    from scoresde.analytic import GaussianMixture

    k = RING_COMPONENTS
    return GaussianMixture.diagonal(jnp.full((k,), 1.0 / k), jnp.asarray(ring_means(), jnp.float32),
                                    jnp.full((k, 2), RING_STD**2, jnp.float32))


def sample_ring(rng: np.random.Generator, n: int):
    k = rng.integers(0, RING_COMPONENTS, size=n)
    x = ring_means()[k] + RING_STD * rng.standard_normal((n, 2))
    return x.astype(np.float32), k.astype(np.int32)


def sample_checkerboard(rng: np.random.Generator, n: int):
    # 8 black squares of side 2 on [-4, 4]^2: column c in 0..3, row r with (r + c) even.
    sq = rng.integers(0, 8, size=n)
    c = sq % 4
    r = 2 * (sq // 4) + (c % 2)
    u = rng.random((n, 2))
    x = np.stack([-4.0 + 2.0 * (c + u[:, 0]), -4.0 + 2.0 * (r + u[:, 1])], axis=1)
    return x.astype(np.float32), sq.astype(np.int32)


def sample_swiss_roll(rng: np.random.Generator, n: int):
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 2.5 + 0.25 * rng.standard_normal((n, 2))
    return x.astype(np.float32), np.zeros(n, np.int32)


def sample_moons(rng: np.random.Generator, n: int):
    lab = rng.integers(0, 2, size=n)
    a = np.pi * rng.random(n)
    upper = np.stack([np.cos(a), np.sin(a)], axis=1)
    lower = np.stack([1 - np.cos(a), 0.5 - np.sin(a)], axis=1)
    x = np.where(lab[:, None] == 0, upper, lower)
    x = 2.0 * (x - np.array([0.5, 0.25])) + 0.1 * rng.standard_normal((n, 2))
    return x.astype(np.float32), lab.astype(np.int32)


SAMPLERS = {
    "ring": sample_ring,
    "checkerboard": sample_checkerboard,
    "swiss_roll": sample_swiss_roll,
    "moons": sample_moons,
}
NUM_CLASSES = {"ring": RING_COMPONENTS, "checkerboard": 8, "swiss_roll": None, "moons": 2}

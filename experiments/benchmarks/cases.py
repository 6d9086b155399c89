"""The Gaussian-mixture cases shared by the benchmarks and the tests: one definition each.

Every case is a `scoresde.analytic.GaussianMixture`, so its score, denoiser, log-density
and samples are exact under every SDE.

* A, `ring`: 2-D, 8 equal-weight components of std 0.5 with means on a circle of radius 4
  (`scoresde.data.synthetic.ring_mixture`).
* B, `mixture_b`: 16-D, 5 components, drawn with numpy `rng = default_rng(0)` as
  `means = rng.normal(0, 3, (5, 16))`, then `stds = rng.uniform(0.2, 1.0, (5, 16))`, then
  `weights = rng.dirichlet(2 * ones(5))`, in that order (the table of issue 14 and the
  likelihood comparison of issue 15 use exactly this mixture).
* `mixture_32d`: the same recipe in 32-D with `default_rng(32)` (issue 15's second case).
* `mixture_full`: 8-D, 6 components with full covariances (random rotations of spectra in
  [0.05, 1.5]), means ~ N(0, 4 I), Dirichlet(2) weights, `default_rng(7)`: a case no
  sampler setting was tuned on (issue 14's held-out mixture).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from scoresde.analytic import GaussianMixture
from scoresde.data.synthetic import ring_mixture


def ring(dtype=jnp.float32) -> GaussianMixture:
    """Case A: the 2-D ring (8 components, radius 4, std 0.5)."""
    gm = ring_mixture()
    return GaussianMixture(gm.weights.astype(dtype), gm.means.astype(dtype), gm.covs.astype(dtype))


def diagonal_mixture(seed: int, k: int, d: int, dtype=jnp.float32) -> GaussianMixture:
    """The recipe of case B: means N(0, 9 I), stds U[0.2, 1.0], weights Dirichlet(2), drawn
    in that order from numpy's default_rng(seed)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 3.0, size=(k, d))
    stds = rng.uniform(0.2, 1.0, size=(k, d))
    weights = rng.dirichlet(2.0 * np.ones(k))
    return GaussianMixture.diagonal(jnp.asarray(weights, dtype), jnp.asarray(means, dtype),
                                    jnp.asarray(stds**2, dtype))


def mixture_b(dtype=jnp.float32) -> GaussianMixture:
    """Case B: 16-D, 5 components, default_rng(0)."""
    return diagonal_mixture(0, 5, 16, dtype)


def mixture_32d(dtype=jnp.float32) -> GaussianMixture:
    """The 32-D likelihood case: case B's recipe with 5 components, default_rng(32)."""
    return diagonal_mixture(32, 5, 32, dtype)


def mixture_full(dtype=jnp.float32) -> GaussianMixture:
    """Held-out case: 8-D, 6 components, full covariances, default_rng(7)."""
    rng = np.random.default_rng(7)
    k, d = 6, 8
    means = rng.normal(0.0, 2.0, size=(k, d))
    covs = []
    for _ in range(k):
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        covs.append((q * rng.uniform(0.05, 1.5, size=d)) @ q.T)
    weights = rng.dirichlet(2.0 * np.ones(k))
    return GaussianMixture(jnp.asarray(weights, dtype), jnp.asarray(means, dtype), jnp.asarray(np.stack(covs), dtype))


CASES = {"A": ring, "B": mixture_b, "C": mixture_full}

"""Data-parallel sampling and likelihood on 2 forced host devices (tests/conftest.py).

A batch split over devices with scoresde.parallel.pmap_over_batch must give the same
numbers as one device for the same per-example keys: every sampler and the likelihood
draw example i's randomness from key i only, and the adaptive solvers control each
example's error on its own.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde.analytic import GaussianMixture
from scoresde.likelihood import log_likelihood
from scoresde.parallel import pmap_over_batch
from scoresde.sampling import EulerMaruyama, ProbabilityFlowODE, sample
from scoresde.sde import VPSDE

SDE = VPSDE()
B = 8


@pytest.fixture(scope="module")
def mixture():
    ang = jnp.arange(8) * 2 * jnp.pi / 8
    means = 4.0 * jnp.stack([jnp.cos(ang), jnp.sin(ang)], axis=1)
    return GaussianMixture.isotropic(jnp.full((8,), 1 / 8), means, 0.25)


@pytest.fixture(scope="module")
def score(mixture):
    return mixture.score_fn(SDE)


@pytest.fixture(scope="module")
def keys():
    return jax.random.split(jax.random.key(0), B)


def test_two_devices():
    assert jax.local_device_count() == 2, "tests/conftest.py must force 2 host devices"


def test_likelihood_pmap_matches_one_device(mixture, score, keys):
    x = mixture.sample(jax.random.key(1), B, SDE.eps, SDE)
    fn = lambda k, x: log_likelihood(score, SDE, k, x, trace="hutchinson", n_probes=2)  # noqa: E731
    logp_1, nfe_1 = jax.jit(fn)(keys, x)
    logp_2, nfe_2 = pmap_over_batch(fn, batched_argnums=(0, 1))(keys, x)
    assert logp_2.shape == (B,)
    np.testing.assert_allclose(np.asarray(logp_2), np.asarray(logp_1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(nfe_2), np.asarray(nfe_1))
    # the Hutchinson noise is really per example: other keys give other estimates
    logp_3, _ = jax.jit(fn)(jax.random.split(jax.random.key(9), B), x)
    assert np.abs(np.asarray(logp_3 - logp_1)).max() > 1e-3


@pytest.mark.parametrize("sampler", [EulerMaruyama(n_steps=20), ProbabilityFlowODE(rtol=1e-4, atol=1e-4)],
                         ids=["euler_maruyama", "pf_ode_tsit5"])
def test_sampler_pmap_matches_one_device(score, keys, sampler):
    x_T = SDE.prior_sample(jax.random.key(2), (B, 2))
    fn = lambda k, x: sample(sampler, score, SDE, k, x).samples  # noqa: E731
    one = jax.jit(fn)(keys, x_T)
    two = pmap_over_batch(fn, batched_argnums=(0, 1))(keys, x_T)
    assert two.shape == (B, 2) and np.all(np.isfinite(np.asarray(two)))
    np.testing.assert_allclose(np.asarray(two), np.asarray(one), rtol=1e-5, atol=1e-5)

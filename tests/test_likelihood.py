"""Probability-flow ODE log-likelihood and bits/dim against closed forms.

Oracles: a Gaussian data law (its noised densities and its probability-flow map are
linear-Gaussian in closed form, written out here independently of the package) and a
16-D Gaussian mixture (scoresde.analytic.GaussianMixture, whose log p_t is exact).
Integrating in the wrong direction (from T to eps, or starting the data at T) changes
log p by O(1) nats per dimension here, far outside every tolerance below.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from scoresde.analytic import GaussianMixture
from scoresde.likelihood import (
    bits_per_dim, data_bits_per_dim, dequantize, log_likelihood,
)
from scoresde._keys import per_example_keys
from scoresde.sde import VPSDE

SDE = VPSDE(beta_min=0.1, beta_max=20.0, eps=1e-3, T=1.0)


# --- Gaussian data: everything in closed form ------------------------------------------

class Gauss:
    """x_0 ~ N(mu, S), S = U diag(lam) U^T; p_t = N(alpha mu, U diag(alpha^2 lam + sigma^2) U^T)."""

    def __init__(self, mu, U, lam, sde):
        self.mu, self.U, self.lam, self.sde = mu, U, lam, sde

    def c(self, t):  # eigenvalues of C_t, shape (..., D)
        t = jnp.asarray(t)[..., None]
        return self.sde.alpha(t) ** 2 * self.lam + self.sde.sigma(t) ** 2

    def _y(self, x, t):  # coordinates of x - alpha mu in the eigenbasis
        a = self.sde.alpha(jnp.asarray(t))
        a = a[..., None] if jnp.ndim(a) else a
        return (x - a * self.mu) @ self.U

    def log_prob(self, x, t):
        y, c = self._y(x, t), self.c(t)
        return -0.5 * jnp.sum(y**2 / c + jnp.log(2 * jnp.pi * c), -1)

    def score(self, x, t):
        return -(self._y(x, t) / self.c(t)) @ self.U.T

    def flow(self, x, s, t):
        """Exact probability-flow map x_s -> x_t: y_t = sqrt(c_t / c_s) y_s per eigen-direction."""
        y = self._y(x, s) * jnp.sqrt(self.c(t) / self.c(s))
        return self.sde.alpha(t) * self.mu + y @ self.U.T


@pytest.fixture(scope="module")
def gauss():
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return Gauss(jnp.array([0.7, -1.2, 0.3]), jnp.asarray(U, jnp.float32), jnp.array([0.04, 0.5, 2.0]), SDE)


def test_gaussian_exact_trace_default_prior_matches_closed_form(gauss):
    # With the N(0, I) prior, the ODE gives log p_eps(x) + [log N(x_T; 0, I) - log p_T(x_T)],
    # x_T the exact flow of x; both terms are closed forms here.
    x = gauss.mu + jax.random.normal(jax.random.key(1), (16, 3)) @ (gauss.U * jnp.sqrt(gauss.lam)).T
    logp, nfe = log_likelihood(gauss.score, SDE, jax.random.key(2), x, trace="exact")
    x_T = gauss.flow(x, SDE.eps, SDE.T)
    mismatch = SDE.prior_logp(x_T) - gauss.log_prob(x_T, SDE.T)
    expected = gauss.log_prob(x, SDE.eps) + mismatch
    err = np.abs(np.asarray(logp - expected)) / 3
    assert err.max() < 1e-3, err.max()
    # the prior mismatch itself is visible at this tolerance (lam = 2 is far from N(0, I) at T)
    assert np.abs(np.asarray(mismatch)).mean() / 3 > 1e-3
    assert np.all(np.asarray(nfe) > 20) and np.all(np.asarray(nfe) < 1000)


def test_nfe_counts_vector_field_evaluations(gauss):
    # Count score calls with a host callback (batch of one example) and compare.
    calls = []

    def score(x, t):
        jax.debug.callback(lambda: calls.append(1), ordered=False)
        return gauss.score(x, t)

    x = gauss.mu[None]
    _, nfe = jax.jit(lambda x: log_likelihood(score, SDE, jax.random.key(0), x, trace="exact", rtol=1e-4,
                                              atol=1e-4))(x)
    jax.block_until_ready(nfe)
    jax.effects_barrier()
    assert int(nfe[0]) == len(calls), (int(nfe[0]), len(calls))


# --- 16-D Gaussian mixture (the benchmark's case B) ------------------------------------

@pytest.fixture(scope="module")
def mixture_b():
    rng = np.random.default_rng(1)
    means = rng.normal(0.0, 3.0, size=(5, 16))
    stds = rng.uniform(0.2, 1.0, size=(5, 16))
    weights = rng.dirichlet(2.0 * np.ones(5))
    return GaussianMixture.diagonal(jnp.asarray(weights, jnp.float32), jnp.asarray(means, jnp.float32),
                                    jnp.asarray(stds**2, jnp.float32))


@pytest.fixture(scope="module")
def mixture_points(mixture_b):
    return mixture_b.sample(jax.random.key(3), 8, SDE.eps, SDE)


@pytest.fixture(scope="module")
def mixture_loglik(mixture_b):
    """log_likelihood with the exact p_T as terminal density. The score function object is
    kept fixed, so calls with the same settings and shapes reuse one compilation."""
    score = mixture_b.score_fn(SDE)
    p_T = lambda z: mixture_b.log_prob(z, SDE.T, SDE)  # noqa: E731
    return lambda k, x, trace, probe, n: log_likelihood(score, SDE, k, x, trace=trace, probe=probe,
                                                        n_probes=n, terminal_logp=p_T)


@pytest.fixture(scope="module")
def mixture_exact(mixture_loglik, mixture_points):
    return mixture_loglik(jax.random.key(0), mixture_points, "exact", "rademacher", 1)


def test_mixture_exact_trace_matches_analytic(mixture_b, mixture_points, mixture_exact):
    logp, nfe = mixture_exact
    ref = mixture_b.log_prob(mixture_points, SDE.eps, SDE)
    err = np.abs(np.asarray(logp - ref)) / 16
    assert err.max() < 1e-3, err
    assert np.all(np.isfinite(np.asarray(logp))) and np.all(np.asarray(nfe) > 0)


@pytest.mark.parametrize("probe,n_probes", [("rademacher", 1), ("gaussian", 4)])
def test_hutchinson_is_unbiased(mixture_loglik, mixture_points, mixture_exact, probe, n_probes):
    # M independent estimates per point, from per-example keys on a replicated batch.
    M = 48
    n = mixture_points.shape[0]
    x = jnp.repeat(mixture_points, M, axis=0)
    keys = jax.random.split(jax.random.key(11 + n_probes), n * M)
    est, _ = mixture_loglik(keys, x, "hutchinson", probe, n_probes)
    est = np.asarray(est).reshape(n, M)
    exact = np.asarray(mixture_exact[0])
    se = est.std(axis=1, ddof=1) / math.sqrt(M)
    z = (est.mean(axis=1) - exact) / se
    assert np.all(se > 0)
    assert np.abs(z).max() < 4.0, z
    assert abs(z.mean()) < 3.0 / math.sqrt(n), z  # the z-scores average to ~N(0, 1/n)
    # an estimate with K probes is one draw of the estimator: it is noisy, not constant
    assert np.all(est.std(axis=1) > 1e-3)


def test_hutchinson_probes_are_per_example(mixture_loglik, mixture_points):
    # The estimate of example i depends on key i only: permuting keys and points together
    # permutes the estimates. (Same batch size as the unbiasedness test: no recompilation.)
    x = jnp.repeat(mixture_points, 48, axis=0)
    keys = jax.random.split(jax.random.key(5), x.shape[0])
    a, _ = mixture_loglik(keys, x, "hutchinson", "rademacher", 1)
    perm = np.random.default_rng(0).permutation(x.shape[0])
    b, _ = mixture_loglik(keys[perm], x[perm], "hutchinson", "rademacher", 1)
    np.testing.assert_allclose(np.asarray(a)[perm], np.asarray(b), rtol=1e-5, atol=1e-4)


# --- bits per dimension -----------------------------------------------------------------

@pytest.mark.parametrize("num_levels,data_range", [(256, (-1.0, 1.0)), (256, (0.0, 1.0)), (17, (-1.0, 1.0)),
                                                   (17, (0.0, 16.0))])
def test_bpd_of_uniform_density_is_log2_levels(num_levels, data_range):
    # p_x = 1/(b - a)^D on [a, b]^D gives every level probability 1/L: exactly log2 L bits.
    a, b = data_range
    D = 5
    logp = jnp.full((4,), -D * math.log(b - a))
    np.testing.assert_allclose(bits_per_dim(logp, D, num_levels=num_levels, data_range=data_range),
                               math.log2(num_levels), rtol=1e-6)


def test_bpd_reproduces_score_sde_offset():
    # score_sde: bpd = -logp / (D ln 2) + 7 - inverse_scaler(-1): 7 for [-1, 1], 8 for [0, 1], L = 256.
    logp, D = jnp.array([-1234.5, 10.0]), 3072
    base = -logp / (D * math.log(2))
    np.testing.assert_allclose(bits_per_dim(logp, D, num_levels=256, data_range=(-1, 1)), base + 7, rtol=1e-6)
    np.testing.assert_allclose(bits_per_dim(logp, D, num_levels=256, data_range=(0, 1)), base + 8, rtol=1e-6)


@pytest.mark.parametrize("num_levels", [17, 256])
def test_bpd_bounds_discretised_gaussian(num_levels):
    # Data: a Gaussian N(m, s^2) per coordinate on [-1, 1], discretised into L levels. The exact
    # P(k) = Phi(hi) - Phi(lo); E_u[log p_x(x)] over the cell is a closed form (uniform x in the
    # cell: E (x - m)^2 = (c - m)^2 + w^2 / 12). Jensen: bpd >= exact bits, gap -> 0 as w -> 0.
    m, s, D = 0.1, 0.3, 1
    w = 2.0 / num_levels
    k = np.arange(num_levels)
    lo, hi = -1 + w * k, -1 + w * (k + 1)
    p_k = norm.cdf(hi, m, s) - norm.cdf(lo, m, s)
    c = 0.5 * (lo + hi)
    e_logp = -0.5 * np.log(2 * np.pi * s**2) - ((c - m) ** 2 + w**2 / 12) / (2 * s**2)
    bpd = np.asarray(bits_per_dim(jnp.asarray(e_logp), D, num_levels=num_levels, data_range=(-1, 1)))
    exact = -np.log2(p_k)
    central = p_k > 1e-6
    assert np.all(bpd[central] >= exact[central] - 1e-4)
    gap = float(np.sum(p_k * (bpd - exact)))  # expected excess code length, bits
    # second-order Jensen gap: Var_u(log p) / (2 ln 2) = w^2 (c - m)^2 / (12 s^4) / (2 ln 2) + O(w^4)
    predicted = float(np.sum(p_k * w**2 * (c - m) ** 2 / (12 * s**4))) / (2 * math.log(2))
    assert gap >= 0 and abs(gap - predicted) < 0.25 * predicted + 1e-5, (gap, predicted)


def test_data_bits_per_dim_end_to_end_gaussian(gauss):
    # 8-bit data: the Gaussian law discretised into L = 256 levels on [-8, 8] (cell width 1/16).
    # The ODE bits/dim of dequantised points (default prior, exact trace, 16 points) matches the
    # exact discrete code length -log2 P(k) / D (P(k) by MC over each cell) within the Jensen gap
    # (~0.002 bits) and the MC error of one u per point (SE ~ 0.01 bits); a wrong scale term
    # (e.g. dropping (b - a) = 16) is off by 4 bits.
    L, rng_ = 256, (-8.0, 8.0)
    x0 = gauss.mu + jax.random.normal(jax.random.key(7), (16, 3)) @ (gauss.U * jnp.sqrt(gauss.lam)).T
    levels = jnp.clip(jnp.floor((x0 + 8) / 16 * L), 0, L - 1).astype(jnp.int32)
    bpd, nfe = data_bits_per_dim(gauss.score, SDE, jax.random.key(8), levels, num_levels=L, data_range=rng_,
                                 trace="exact")

    @jax.jit
    def exact_bits(levels):
        u = jax.random.uniform(jax.random.key(9), (4096,) + levels.shape)
        logp_cells = jax.vmap(lambda xx: gauss.log_prob(xx, SDE.eps))(-8 + 16 * (levels[None] + u) / L)
        log_pk = jax.nn.logsumexp(logp_cells, axis=0) - math.log(4096) + 3 * math.log(16 / L)
        return -log_pk / (3 * math.log(2))

    diff = np.asarray(bpd) - np.asarray(exact_bits(levels))
    assert -0.04 < diff.mean() < 0.05, diff
    assert np.all(np.abs(diff) < 0.3), diff
    assert np.all(np.asarray(nfe) > 0)


# --- validation ---------------------------------------------------------------------------

def test_errors_name_the_argument(gauss):
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="trace"):
        log_likelihood(gauss.score, SDE, jax.random.key(0), x, trace="hutch")
    with pytest.raises(ValueError, match="probe"):
        log_likelihood(gauss.score, SDE, jax.random.key(0), x, probe="normal")
    with pytest.raises(ValueError, match="n_probes"):
        log_likelihood(gauss.score, SDE, jax.random.key(0), x, n_probes=0)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        log_likelihood(gauss.score, SDE, jax.random.key(0), jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="keys but the batch has 2"):
        log_likelihood(gauss.score, SDE, jax.random.split(jax.random.key(0), 3), x)
    with pytest.raises(ValueError, match="num_levels"):
        bits_per_dim(jnp.zeros(2), 3, num_levels=1)
    with pytest.raises(ValueError, match="data_range"):
        bits_per_dim(jnp.zeros(2), 3, num_levels=256, data_range=(1, -1))
    with pytest.raises(ValueError, match="levels must lie in"):
        dequantize(jax.random.key(0), jnp.array([[0, 17]]), num_levels=17)
    assert per_example_keys(jax.random.key(0), 4).shape == (4,)
    assert per_example_keys(jax.random.PRNGKey(0), 4).shape == (4,)

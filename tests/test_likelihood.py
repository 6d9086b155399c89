"""Probability-flow ODE log-likelihood and bits/dim against closed forms.

Oracles: a Gaussian data law (its noised densities and its probability-flow map are
linear-Gaussian in closed form, written out here independently of the package) and a
16-D Gaussian mixture (scoresde.analytic.GaussianMixture, whose log p_t is exact).
Integrating in the wrong direction (from T to eps, or starting the data at T) changes
log p by O(1) nats per dimension here, far outside every tolerance below. The bounds of
dequantised integer data are checked in test_likelihood_bounds.py.
"""

import math

import jax
import jax.numpy as jnp
import diffrax
import numpy as np
import pytest
from scipy.stats import norm

from scoresde.analytic import GaussianMixture
from scoresde.likelihood import (
    bits_per_dim, data_bits_per_dim, dequantize, exact_divergence, hutchinson_divergence, log_likelihood,
    log_likelihood_terms,
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


@pytest.mark.parametrize("kw", [dict(), dict(batching="joint", quadrature=3)], ids=["augmented", "quadrature"])
def test_nfe_counts_vector_field_evaluations(gauss, kw):
    # Count score calls with a host callback (batch of one example) and compare: every
    # stage of the augmented solve; with quadrature the trajectory stages, the initial-step
    # heuristic's two calls and m calls per accepted step (n_divergence of them).
    calls = []

    def score(x, t):
        jax.debug.callback(lambda: calls.append(1), ordered=False)
        return gauss.score(x, t)

    x = gauss.mu[None]
    terms = jax.jit(lambda x: log_likelihood_terms(score, SDE, jax.random.key(0), x, trace="exact", rtol=1e-4,
                                                   atol=1e-4, **kw))(x)
    jax.block_until_ready(terms)
    jax.effects_barrier()
    assert int(terms.nfe[0]) == len(calls), (int(terms.nfe[0]), len(calls))
    if kw:
        assert 0 < int(terms.n_divergence[0]) < int(terms.nfe[0]) and int(terms.n_divergence[0]) % 3 == 0


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
    return lambda k, x, trace, probe, n, **kw: log_likelihood_terms(score, SDE, k, x, trace=trace, probe=probe,
                                                                    n_probes=n, terminal_logp=p_T, **kw)


@pytest.fixture(scope="module")
def mixture_exact(mixture_loglik, mixture_points):
    t = mixture_loglik(jax.random.key(0), mixture_points, "exact", "rademacher", 1)
    return t.logp, t.nfe


def test_mixture_exact_trace_matches_analytic(mixture_b, mixture_points, mixture_exact):
    logp, nfe = mixture_exact
    ref = mixture_b.log_prob(mixture_points, SDE.eps, SDE)
    err = np.abs(np.asarray(logp - ref)) / 16
    assert err.max() < 1e-3, err
    assert np.all(np.isfinite(np.asarray(logp))) and np.all(np.asarray(nfe) > 0)


# Each option of the solve against the analytic log p_eps (exact trace, exact p_T: the
# solver's error alone, budget 1e-3 nats/dim per point as above; the mean error, 1e-4, is
# 10x below what a first-order slip in the quadrature or the time change would give).
SOLVES = {
    "joint-augmented-logsnr-reverse": dict(batching="joint", time_variable="log_snr", jacobian_mode="reverse"),
    "joint-quadrature3": dict(batching="joint", quadrature=3),
    "per-example-quadrature3-reverse": dict(quadrature=3, jacobian_mode="reverse"),
    "joint-quadrature4-dopri8": dict(batching="joint", quadrature=4, solver=diffrax.Dopri8(), rtol=1e-4, atol=1e-4),
    "fixed24-quadrature3": dict(n_steps=24, quadrature=3),
}


@pytest.mark.parametrize("name", list(SOLVES))
def test_solve_options_match_analytic(mixture_b, mixture_points, mixture_loglik, name):
    t = mixture_loglik(jax.random.key(0), mixture_points, "exact", "rademacher", 1, **SOLVES[name])
    err = np.abs(np.asarray(t.logp - mixture_b.log_prob(mixture_points, SDE.eps, SDE))) / 16
    assert err.max() < 1e-3 and err.mean() < 1e-4, err
    # the latent is the end of the flow: its terminal density is what was added
    np.testing.assert_allclose(np.asarray(t.terminal), np.asarray(mixture_b.log_prob(t.x_T, SDE.T, SDE)), rtol=1e-6)
    if "quadrature" in SOLVES[name]:
        assert np.all(np.asarray(t.n_divergence) < np.asarray(t.nfe))


def test_fixed_step_solve_ignores_the_rest_of_the_batch(mixture_loglik, mixture_points):
    # Per-example keys and a fixed grid: a batch split in two halves gives the same
    # numbers, Hutchinson probes included (a joint adaptive solve would share its steps).
    keys = jax.random.split(jax.random.key(4), 8)
    kw = dict(n_steps=12, quadrature=2)
    whole = mixture_loglik(keys, mixture_points, "hutchinson", "rademacher", 2, **kw)
    halves = [mixture_loglik(keys[i:i + 4], mixture_points[i:i + 4], "hutchinson", "rademacher", 2, **kw)
              for i in (0, 4)]
    np.testing.assert_allclose(np.concatenate([np.asarray(h.logp) for h in halves]), np.asarray(whole.logp),
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(np.concatenate([np.asarray(h.nfe) for h in halves]), np.asarray(whole.nfe))
    # and the probes are really per example: other keys, other numbers
    other = mixture_loglik(jax.random.split(jax.random.key(5), 8), mixture_points, "hutchinson", "rademacher", 2, **kw)
    assert np.abs(np.asarray(other.logp - whole.logp)).max() > 1e-3


def test_exact_divergence_modes_match_the_jacobian_trace():
    # A map whose examples do not mix, with per-example conditioning; forward, reverse and
    # chunked products all give tr(J_b) of jax.jacfwd per example.
    W = jax.random.normal(jax.random.key(0), (5, 5)) / 2
    fn = lambda x, c: jnp.tanh(x @ W + c[:, None]) * x  # noqa: E731
    x = jax.random.normal(jax.random.key(1), (3, 5))
    c = jnp.array([0.1, -0.5, 2.0])
    probes = jax.random.rademacher(jax.random.key(2), (4, 3, 5), jnp.float32)

    @jax.jit
    def all_of_them(x, c, probes):
        ref = jax.vmap(lambda z, cc: jnp.trace(jax.jacfwd(lambda a: fn(a[None], cc[None])[0])(z)))(x, c)
        divs = [exact_divergence(fn, x, c, mode=m, chunk=k) for m, k in
                (("forward", None), ("reverse", None), ("forward", 2), ("reverse", 3))]
        hut = [hutchinson_divergence(fn, x, probes, c, mode=m)[1] for m in ("forward", "reverse")]
        return ref, divs, hut

    ref, divs, (fwd, rev) = all_of_them(x, c, probes)
    for v, div in divs:
        np.testing.assert_allclose(np.asarray(v), np.asarray(fn(x, c)), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(div), np.asarray(ref), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(fwd), np.asarray(rev), rtol=1e-5, atol=1e-6)
    assert fwd.shape == (3, 4)
    # e^T J e over the 2^5 Rademacher sign vectors averages to the trace exactly
    signs = jnp.asarray(np.array(np.meshgrid(*[[-1.0, 1.0]] * 5, indexing="ij")).reshape(5, -1).T)
    allp = jnp.broadcast_to(signs[:, None, :], (32, 3, 5))
    np.testing.assert_allclose(np.asarray(hutchinson_divergence(fn, x, allp, c)[1].mean(-1)), np.asarray(ref),
                               rtol=1e-5, atol=1e-5)


FAST = dict(batching="joint", quadrature=3)  # Hutchinson checks: any fixed trajectory will do


@pytest.mark.parametrize("probe,n_probes", [("rademacher", 1), ("gaussian", 4)])
def test_hutchinson_is_unbiased(mixture_loglik, mixture_points, mixture_exact, probe, n_probes):
    # M independent estimates per point, from per-example keys on a replicated batch.
    M = 48
    n = mixture_points.shape[0]
    x = jnp.repeat(mixture_points, M, axis=0)
    keys = jax.random.split(jax.random.key(11 + n_probes), n * M)
    t = mixture_loglik(keys, x, "hutchinson", probe, n_probes, **FAST)
    est = np.asarray(t.logp).reshape(n, M)
    exact = np.asarray(mixture_exact[0])
    se = est.std(axis=1, ddof=1) / math.sqrt(M)
    z = (est.mean(axis=1) - exact) / se
    assert np.all(se > 0)
    assert np.abs(z).max() < 4.0, z
    assert abs(z.mean()) < 3.0 / math.sqrt(n), z  # the z-scores average to ~N(0, 1/n)
    # an estimate with K probes is one draw of the estimator: it is noisy, not constant
    assert np.all(est.std(axis=1) > 1e-3)
    if n_probes > 1:
        # the probes' variance predicted from the spread of the per-probe integrals along
        # one trajectory matches the variance over independent draws (M = 48: +-30%)
        predicted = np.asarray(t.integrals).var(axis=-1, ddof=1).reshape(n, M).mean(axis=1) / n_probes
        ratio = predicted / est.var(axis=1, ddof=1)
        assert np.all((ratio > 0.6) & (ratio < 1.6)), ratio


def test_hutchinson_probes_are_per_example(mixture_loglik, mixture_points):
    # The estimate of example i depends on key i only: permuting keys and points together
    # permutes the estimates. (Same batch size as the unbiasedness test: no recompilation.)
    x = jnp.repeat(mixture_points, 48, axis=0)
    keys = jax.random.split(jax.random.key(5), x.shape[0])
    a = mixture_loglik(keys, x, "hutchinson", "rademacher", 1, **FAST).logp
    perm = np.random.default_rng(0).permutation(x.shape[0])
    b = mixture_loglik(keys[perm], x[perm], "hutchinson", "rademacher", 1, **FAST).logp
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
    for bad in (dict(batching="vmap"), dict(time_variable="sigma"), dict(jacobian_mode="both"), dict(quadrature=0),
                dict(n_steps=0), dict(trace_chunk=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            log_likelihood(gauss.score, SDE, jax.random.key(0), x, **bad)
    with pytest.raises(ValueError, match="n_steps for a fixed-step"):
        log_likelihood(gauss.score, SDE, jax.random.key(0), x, solver=diffrax.Euler())
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

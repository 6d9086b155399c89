"""Bits/dim bounds of dequantised integer data against an exact discrete law.

The data: 2-D integers k in {0..3}^2, cells of width w = 0.5 on [-1, 1]^2. The model:
the probability-flow ODE of a 2-component diagonal Gaussian mixture with its exact
score and its exact p_T as terminal density, so the model density at eps is exactly the
mixture noised to eps (a Gaussian mixture again) and the model's probability of every
cell is a closed form with the normal CDF:

    P(k) = sum_c w_c prod_d [Phi((hi_d - alpha mu_cd) / s_cd) - Phi((lo_d - alpha mu_cd) / s_cd)],
    s_cd^2 = alpha^2 S_cd + sigma^2   (alpha, sigma at eps).

The component stds (0.15-0.3) are below the cell width, so the density varies strongly
inside a cell and the uniform bound is loose (0.3 bits/dim): tightening is visible.
Each bound must sit at or above -log2 P(k) / D within its standard error; the
importance-weighted bound must fall toward it as K grows. Checked by hand once: adding
log q to the log-weights instead of subtracting it puts the truncated-normal and the
learned bounds below the exact values; averaging the log-weights instead of taking
their log-mean-exp fails the comparison with the importance-weighted values computed here.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from scoresde.analytic import GaussianMixture
from scoresde.likelihood import (
    BitsPerDimBound, LearnedDequantizer, TruncatedNormalDequantizer, UniformDequantizer, bits_per_dim_bound,
    data_bits_per_dim,
)
from scoresde.models.dequantizer import DequantizerNet, fit_dequantizer
from scoresde.sde import VPSDE

SDE = VPSDE(beta_min=0.1, beta_max=20.0, eps=1e-3, T=1.0)
L, A, B = 4, -1.0, 1.0
W = (B - A) / L
MEANS = np.array([[-0.45, 0.3], [0.35, -0.4]])
STDS = np.array([[0.2, 0.3], [0.25, 0.15]])
WEIGHTS = np.array([0.55, 0.45])
K = 32  # draws per cell
GRID = np.stack(np.meshgrid(np.arange(L), np.arange(L), indexing="ij"), -1).reshape(-1, 2)


def exact_bits(levels):
    """-log2 P(k) / D of the noised mixture's cell probabilities (float64, closed form)."""
    eps = jnp.float32(SDE.eps)
    al, sg = float(SDE.alpha(eps)), float(SDE.sigma(eps))
    lo = A + W * levels
    hi = lo + W
    sd = np.sqrt(al**2 * STDS**2 + sg**2)
    p = sum(WEIGHTS[c] * (norm.cdf((hi - al * MEANS[c]) / sd[c]) - norm.cdf((lo - al * MEANS[c]) / sd[c])).prod(-1)
            for c in range(2))
    return -np.log2(p) / 2


@pytest.fixture(scope="module")
def model():
    gm = GaussianMixture.diagonal(jnp.asarray(WEIGHTS, jnp.float32), jnp.asarray(MEANS, jnp.float32),
                                  jnp.asarray(STDS**2, jnp.float32))
    return gm.score_fn(SDE), (lambda z: gm.log_prob(z, SDE.T, SDE))


@pytest.fixture(scope="module")
def cells():
    """The 6 most probable cells (P from 0.08 to 0.22) and their exact code lengths."""
    order = np.argsort(exact_bits(GRID))
    levels = GRID[order[:6]]
    return jnp.asarray(levels), exact_bits(levels)


@pytest.fixture(scope="module")
def bound(model, cells):
    """bits_per_dim_bound with K draws per cell; one compiled solve (exact trace, joint,
    quadrature) shared by every dequantiser (same score function, settings and shapes)."""
    score, p_T = model

    def run(dequantizer, key=0):
        return bits_per_dim_bound(score, SDE, jax.random.key(key), cells[0], num_levels=L, data_range=(A, B),
                                  dequantizer=dequantizer, n_draws=K, trace="exact", terminal_logp=p_T,
                                  batching="joint", quadrature=3)

    return run


def iw_gaps(r: BitsPerDimBound, exact):
    """Mean over cells of (IW bound with k draws - exact), k = 1, 2, 4, ..., K, each
    averaged over the K / k disjoint groups of draws; and the per-cell single-draw stats."""
    logw = -np.asarray(r.bpd_draws, np.float64) * 2 * math.log(2)  # nats, up to the cell constant
    gaps = {}
    for k in (1, 2, 4, 8, 16, 32):
        g = logw.reshape(len(exact), K // k, k)
        iw = -(np.log(np.mean(np.exp(g - g.max(-1, keepdims=True)), -1)) + g.max(-1)) / (2 * math.log(2))
        gaps[k] = (iw.mean(1) - exact)
    return gaps


def test_uniform_bound_and_importance_weighting(bound, cells):
    r = bound(UniformDequantizer())
    exact = cells[1]
    draws = np.asarray(r.bpd_draws)
    se1 = draws.std(1, ddof=1) / math.sqrt(K)
    gaps = iw_gaps(r, exact)
    # each cell's single-draw bound is above the exact code length within 3 SE ...
    assert np.all(gaps[1] > -3 * se1), (gaps[1], se1)
    # ... and the Jensen gap is real: 0.3 bits/dim on average, many SE above zero
    assert gaps[1].mean() > 5 * np.sqrt(np.mean(se1**2) / len(exact)), gaps[1]
    # importance weighting tightens it monotonically toward the exact value, still a bound
    means = [gaps[k].mean() for k in (1, 2, 4, 8, 16, 32)]
    assert all(m1 > m2 for m1, m2 in zip(means, means[1:])), means
    assert means[-1] < 0.3 * means[0], means
    se32 = np.asarray(r.se)
    assert np.all(np.isfinite(se32)) and np.all(se32 > 0)
    assert np.all(np.asarray(r.bpd) - exact > -3 * se32), (np.asarray(r.bpd) - exact, se32)
    np.testing.assert_allclose(np.asarray(r.bpd) - exact, gaps[32], rtol=1e-4, atol=1e-5)
    # the exact trace has no probe noise
    np.testing.assert_array_equal(np.asarray(r.probe_se), 0.0)


@pytest.mark.parametrize("std", [None, 0.2], ids=["sigma_eps", "std0.2"])
def test_truncated_normal_bound_is_a_bound(bound, cells, std):
    # std=None: the noise level at eps (0.01), a q far narrower than the model's smooth
    # density in a cell, so a valid but very loose bound (3.4 bits/dim above); 0.2: close
    # to uniform-shaped, near the uniform bound.
    r = bound(TruncatedNormalDequantizer(std=std))
    exact = cells[1]
    draws = np.asarray(r.bpd_draws)
    se1 = draws.std(1, ddof=1) / math.sqrt(K)
    assert np.all(draws.mean(1) - exact > -3 * se1)
    assert np.all(np.asarray(r.bpd) - exact > -3 * np.asarray(r.se))
    if std is None:
        assert np.all(draws.mean(1) - exact > 2.0)


def test_variational_dequantizer_tightens_the_bound(model, bound, cells):
    score, _ = model
    net = DequantizerNet(num_levels=L, hidden=32, depth=1)
    params0 = net.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2)))
    # untrained: exactly the uniform dequantiser (u = sigmoid of a logistic draw, log q = 0)
    u, logq = net.draw(params0, jax.random.split(jax.random.key(1), 512), jnp.zeros((512, 2), jnp.int32))
    np.testing.assert_allclose(np.asarray(logq), 0.0, atol=1e-5)
    assert abs(float(u.mean()) - 0.5) < 0.03 and abs(float(u.var()) - 1 / 12) < 0.01
    params, _ = fit_dequantizer(net, score, SDE, GRID, key=jax.random.key(2), data_range=(A, B), steps=150,
                                batch=16, learning_rate=1e-2, params=params0)
    r_var = bound(net.as_dequantizer(params))
    r_uni = bound(UniformDequantizer())
    exact = cells[1]
    draws = np.asarray(r_var.bpd_draws)
    se1 = draws.std(1, ddof=1) / math.sqrt(K)
    gap_var, gap_uni = draws.mean(1) - exact, np.asarray(r_uni.bpd_draws).mean(1) - exact
    assert np.all(gap_var > -3 * se1), (gap_var, se1)
    # the learned q at least halves the uniform single-draw gap (0.30 -> about 0.13 bits/dim)
    assert gap_var.mean() < 0.6 * gap_uni.mean(), (gap_var.mean(), gap_uni.mean())


def test_data_bits_per_dim_is_the_single_uniform_draw(model, cells):
    # data_bits_per_dim = bits_per_dim_bound(uniform, n_draws=1): same numbers, same keys.
    score, p_T = model
    kw = dict(num_levels=L, data_range=(A, B), trace="exact", terminal_logp=p_T, batching="joint", quadrature=3)
    levels = jnp.repeat(cells[0], K, axis=0)  # the batch size of `bound`: its compiled solve is reused
    bpd, nfe = data_bits_per_dim(score, SDE, jax.random.key(7), levels, **kw)
    r = bits_per_dim_bound(score, SDE, jax.random.key(7), levels, **kw)
    np.testing.assert_array_equal(np.asarray(bpd), np.asarray(r.bpd))
    np.testing.assert_array_equal(np.asarray(nfe), np.asarray(r.nfe[:, 0]))
    assert np.all(np.isnan(np.asarray(r.se)))  # one draw: no spread to estimate it from


def test_bound_errors_name_the_argument(model, cells):
    score, _ = model
    with pytest.raises(ValueError, match="n_draws"):
        bits_per_dim_bound(score, SDE, jax.random.key(0), cells[0], num_levels=L, n_draws=0)
    with pytest.raises(TypeError, match="dequantizer must be an AbstractDequantizer"):
        bits_per_dim_bound(score, SDE, jax.random.key(0), cells[0], num_levels=L, dequantizer="uniform")
    with pytest.raises(ValueError, match="levels must lie in"):
        bits_per_dim_bound(score, SDE, jax.random.key(0), cells[0] + L, num_levels=L)
    bad = LearnedDequantizer(lambda keys, levels: (jnp.zeros(levels.shape[:1]), jnp.zeros(levels.shape[:1])))
    with pytest.raises(ValueError, match="must return u shaped like levels"):
        bad.sample(jax.random.split(jax.random.key(0), 6), cells[0], num_levels=L, sde=SDE, data_range=(A, B))

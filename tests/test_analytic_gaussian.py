"""Exact Gaussian-mixture marginals: the oracles of every other test."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from scoresde import CosineVPSDE, SubVPSDE, VESDE, VPSDE
from scoresde.analytic import GaussianMixture


def _mixture(dtype=jnp.float32, full=True):
    key = jax.random.PRNGKey(3)
    k1, k2, k3 = jax.random.split(key, 3)
    K, D = 3, 3
    means = jax.random.normal(k1, (K, D), dtype) * 2
    A = jax.random.normal(k2, (K, D, D), dtype) * 0.5
    covs = A @ jnp.swapaxes(A, 1, 2) + 0.1 * jnp.eye(D, dtype=dtype)
    if not full:
        covs = jax.vmap(jnp.diag)(jax.random.uniform(k3, (K, D), dtype, 0.05, 1.0))
    return GaussianMixture(jnp.array([0.2, 0.5, 0.3], dtype), means, covs)


@pytest.mark.parametrize("sde_idx", range(4))
@pytest.mark.parametrize("full", [True, False])
def test_score_is_grad_log_prob_and_denoiser_is_tweedie(sde_idx, full):
    with enable_x64():
        sde = [VPSDE(), CosineVPSDE(), SubVPSDE(), VESDE()][sde_idx]
        gm = _mixture(jnp.float64, full)
        x = jax.random.normal(jax.random.PRNGKey(0), (16, 3), jnp.float64) * 3
        t = jax.random.uniform(jax.random.PRNGKey(1), (16,), jnp.float64, sde.eps, sde.T)
        grad = jax.vmap(lambda xi, ti: jax.grad(lambda z: gm.log_prob(z[None], ti, sde)[0])(xi))(x, t)
        np.testing.assert_allclose(gm.score(x, t, sde), grad, rtol=1e-9, atol=1e-12)
        # Tweedie: E[x0 | x_t] = (x + sigma^2 score) / alpha.
        a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        np.testing.assert_allclose(gm.denoise(x, t, sde), (x + s**2 * grad) / a, rtol=1e-8, atol=1e-8)
        # p_t integrates the right way: log_prob agrees with the explicitly noised mixture.
        np.testing.assert_allclose(gm.log_prob(x, t[0], sde), gm.noised(t[0], sde).log_prob(x), rtol=1e-10)


def test_log_prob_matches_scipy_at_t0_and_normalises():
    from scipy.stats import multivariate_normal
    with enable_x64():
        gm = _mixture(jnp.float64)
        x = np.random.default_rng(0).normal(size=(10, 3)) * 2
        ref = np.log(sum(float(w) * multivariate_normal(np.asarray(m), np.asarray(c)).pdf(x)
                         for w, m, c in zip(gm.weights, gm.means, gm.covs)))
        np.testing.assert_allclose(gm.log_prob(x), ref, rtol=1e-10)


def test_t_to_eps_limit_is_the_data_law():
    """As t -> 0, p_t -> p_0: log p_t(x) - log p_0(x) = O(sigma(t)^2)."""
    with enable_x64():
        gm = _mixture(jnp.float64)
        x = gm.sample(jax.random.PRNGKey(5), 64)
        p0 = gm.log_prob(x)
        gaps = []
        for eps in (1e-3, 1e-4, 1e-5):
            sde = VPSDE(eps=eps)
            gaps.append(float(jnp.max(jnp.abs(gm.log_prob(x, eps, sde) - p0))))
        assert gaps[-1] < 1e-3
        # sigma^2 ~ beta_min t: the gap shrinks ~10x per decade of t.
        assert gaps[0] / gaps[1] > 5 and gaps[1] / gaps[2] > 5, gaps


@pytest.mark.parametrize("sde_idx", range(4))
def test_samples_have_closed_form_moments(sde_idx):
    """Samples of p_t: mean and covariance within 4 standard errors of the closed form."""
    sde = [VPSDE(), CosineVPSDE(), SubVPSDE(), VESDE(sigma_max=5.0)][sde_idx]
    gm = _mixture()
    n = 40000
    for t in (None, 0.3, 0.8):
        x, k = gm.sample_with_labels(jax.random.PRNGKey(7), n, t, sde if t is not None else None)
        x = np.asarray(x, np.float64)
        mean = np.asarray(gm.mean(t, sde))
        cov = np.asarray(gm.covariance(t, sde), np.float64)
        se_mean = np.sqrt(np.diag(cov) / n)
        assert np.all(np.abs(x.mean(0) - mean) < 4 * se_mean), (t, x.mean(0), mean)
        # Var of the sample covariance entry (i, j) is about (C_ii C_jj + C_ij^2) / n for
        # near-Gaussian data; mixtures have heavier tails, so take 6 of those SEs.
        se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
        assert np.all(np.abs(np.cov(x.T) - cov) < 6 * se_cov), (t, np.cov(x.T), cov)
        freq = np.bincount(np.asarray(k), minlength=3) / n
        w = np.asarray(gm.weights)
        assert np.all(np.abs(freq - w) < 4 * np.sqrt(w * (1 - w) / n))


def test_point_masses_have_exact_scores():
    """Zero covariances (used by the ideal score) are handled exactly when sigma > 0."""
    sde = VPSDE()
    pts = jnp.array([[0.0, 1.0], [2.0, -1.0]])
    gm = GaussianMixture.isotropic(jnp.array([0.5, 0.5]), pts, 0.0)
    x = jnp.array([[0.3, 0.2]])
    t = 0.5
    a, s = sde.alpha(t), sde.sigma(t)
    logits = -jnp.sum((x - a * pts) ** 2, -1) / (2 * s**2)
    w = jax.nn.softmax(logits)
    np.testing.assert_allclose(gm.denoise(x, t, sde), (w @ pts)[None], rtol=1e-5)
    np.testing.assert_allclose(gm.score(x, t, sde), -(x - a * (w @ pts)) / s**2, rtol=1e-5)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="weights must have shape"):
        GaussianMixture(jnp.ones(2) / 2, jnp.zeros((3, 2)), jnp.ones((3, 2, 2)))
    with pytest.raises(ValueError, match="covs must have shape"):
        GaussianMixture(jnp.ones(3) / 3, jnp.zeros((3, 2)), jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture(jnp.ones(3), jnp.zeros((3, 2)), jnp.ones((3, 2, 2)))
    gm = _mixture()
    with pytest.raises(ValueError, match="values per example"):
        gm.score(jnp.ones((4, 5)), 0.5, VPSDE())
    with pytest.raises(ValueError, match=r"t must lie in"):
        gm.score(jnp.ones((4, 3)), 2.0, VPSDE())


def test_diagonal_fast_path_equals_the_rotation_path():
    """A diagonal mixture skips the (K, D, D) rotations; score, denoiser and log-density
    must equal those of the general eigen-form path (tolerance: float32 round-off)."""
    import equinox as eqx

    from scoresde import VPSDE

    sde = VPSDE()
    rng = np.random.default_rng(3)
    gm = GaussianMixture.diagonal(jnp.array([0.2, 0.3, 0.5]), jnp.asarray(rng.normal(0, 2, (3, 5)), jnp.float32),
                                  jnp.asarray(rng.uniform(0.05, 1.0, (3, 5)), jnp.float32))
    assert gm.diag is not None
    general = eqx.tree_at(lambda g: g.diag, gm, None, is_leaf=lambda v: v is None)
    x = jnp.asarray(rng.normal(0, 2, (64, 5)), jnp.float32)
    t = jnp.linspace(1e-3, 1.0, 64)
    for f in (lambda g: g.score(x, t, sde), lambda g: g.denoise(x, t, sde), lambda g: g.log_prob(x, t, sde)):
        np.testing.assert_allclose(f(gm), f(general), rtol=2e-5, atol=2e-5)
    rot = GaussianMixture(gm.weights, gm.means, gm.covs.at[0, 0, 1].set(0.01).at[0, 1, 0].set(0.01))
    assert rot.diag is None

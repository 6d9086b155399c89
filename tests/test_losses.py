"""Denoising score matching: the exact score minimises it; DDPM's L_simple is a special case."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import (AntitheticTime, DiscreteTime, EDMWeighting, EpsPrediction,
                      LikelihoodImportanceTime, LikelihoodWeighting, LogNormalTime, SimpleWeighting,
                      StratifiedTime, SubVPSDE, UniformTime, VESDE, VPSDE, dsm_loss, score_fn_from_network)
from scoresde.analytic import GaussianMixture

from helpers import ring as ring_case


@pytest.fixture(scope="module")
def ring():
    """Case A of the sampler benchmark: 8 components of std 0.5 on a circle of radius 4."""
    return ring_case()


PERTURBATIONS = {
    "shift": lambda x, t: jnp.ones_like(x),
    "scale": lambda x, t: x,
    "rotate": lambda x, t: jnp.stack([-x[:, 1], x[:, 0]], -1),
    "time": lambda x, t: jnp.sin(7 * t)[:, None] * jnp.ones_like(x),
}


def _directional(score, delta, sde, key, x0, weighting=SimpleWeighting()):
    """Per-example loss and its derivative d/dc of the loss of score + c * delta, at c = 0."""

    def per(c):
        return dsm_loss(lambda x, t: score(x, t) + c * delta(x, t), sde, key, x0, weighting=weighting)[1]

    loss, dper = jax.jvp(per, (0.0,), (1.0,))
    return loss, dper


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=10.0)], ids=["vp", "ve"])
def test_exact_score_is_stationary_and_minimal(ring, sde):
    n = 50000
    key = jax.random.PRNGKey(0)
    x0 = ring.sample(jax.random.PRNGKey(1), n)
    exact = ring.score_fn(sde)
    base, _ = dsm_loss(exact, sde, key, x0)
    for name, delta in PERTURBATIONS.items():
        _, d = _directional(exact, delta, sde, key, x0)
        se = float(jnp.std(d)) / np.sqrt(n)
        # Gradient of the loss along the perturbation ~ 0 within Monte Carlo error.
        assert abs(float(jnp.mean(d))) < 3.5 * se, (name, float(jnp.mean(d)), se)
        # ... and every perturbed score has a higher loss (same noise: common random numbers).
        for c in (-0.3, -0.1, 0.1, 0.3):
            pert, _ = dsm_loss(lambda x, t: exact(x, t) + c * delta(x, t), sde, key, x0)
            assert float(pert) > float(base), (name, c, float(pert), float(base))
    # The stationarity check can fail: a slightly wrong score has a clearly non-zero gradient.
    wrong = GaussianMixture.isotropic(ring.weights, ring.means * 1.1, 0.25).score_fn(sde)
    _, d = _directional(wrong, PERTURBATIONS["scale"], sde, key, x0)
    assert abs(float(jnp.mean(d))) > 10 * float(jnp.std(d)) / np.sqrt(n)


def test_importance_sampled_likelihood_weighting(ring, capsys):
    """Same expectation as uniform t with lambda = g^2, much smaller variance (VP)."""
    sde = VPSDE()
    n = 200000
    x0 = ring.sample(jax.random.PRNGKey(2), n)
    exact = ring.score_fn(sde)
    loss_fn = jax.jit(lambda key, ts: dsm_loss(exact, sde, key, x0, weighting=LikelihoodWeighting(),
                                               time_sampler=ts)[1], static_argnums=1)
    pu = np.asarray(loss_fn(jax.random.PRNGKey(3), UniformTime()), np.float64)
    pi = np.asarray(loss_fn(jax.random.PRNGKey(4), LikelihoodImportanceTime(stratified=False)), np.float64)
    mu, vu = pu.mean(), pu.var()
    mi, vi = pi.mean(), pi.var()
    with capsys.disabled():
        print(f"\n[likelihood weighting, VP, exact ring score, n={n}] "
              f"uniform t: mean {mu:.4f} var {vu:.1f} | importance t: mean {mi:.4f} var {vi:.3f}")
    assert abs(mu - mi) < 3 * np.sqrt(vu / n + vi / n), (mu, mi)
    assert vi < vu / 5, (vi, vu)


@pytest.mark.parametrize("sampler", [AntitheticTime(), StratifiedTime()], ids=["antithetic", "stratified"])
def test_low_discrepancy_times_are_unbiased(ring, sampler):
    sde = VPSDE()
    x0 = ring.sample(jax.random.PRNGKey(5), 4096)
    exact = ring.score_fn(sde)
    f = jax.jit(lambda k, ts: dsm_loss(exact, sde, k, x0, time_sampler=ts)[0], static_argnums=1)
    keys = jax.random.split(jax.random.PRNGKey(6), 64)
    a = np.array([f(k, UniformTime()) for k in keys])
    b = np.array([f(k, sampler) for k in keys])
    assert abs(a.mean() - b.mean()) < 3 * np.sqrt(a.var() / 64 + b.var() / 64)
    t, w = sampler(jax.random.PRNGKey(0), 1000, sde)
    assert float(t.min()) >= sde.eps and float(t.max()) <= sde.T
    # One time per stratum of [eps, T].
    idx = np.floor((np.asarray(t) - sde.eps) / (sde.T - sde.eps) * 1000).astype(int)
    assert len(np.unique(np.clip(idx, 0, 999))) == 1000


@pytest.mark.parametrize("base", [StratifiedTime(), AntitheticTime(), UniformTime()],
                         ids=["stratified", "antithetic", "uniform"])
def test_importance_time_is_driven_by_its_base_sampler(base):
    """LikelihoodImportanceTime(base=...) maps the base's variates u to the log-SNR
    lambda(eps) + u (lambda(T) - lambda(eps)) (so a stratified / antithetic base spreads
    the log-SNR the same way), with w = Z / ((T - eps) g^2 / sigma^2), and is unbiased:
    E[w h(t)] = (1/(T - eps)) int h dt, checked on h(t) = t, whose average is (eps + T) / 2.
    """
    sde = VPSDE()
    n = 2048
    key = jax.random.PRNGKey(7)
    t, w = LikelihoodImportanceTime(base=base)(key, n, sde)
    u = base.unit(key, n)
    lam_eps, lam_T = sde.log_snr(sde.eps), sde.log_snr(sde.T)
    np.testing.assert_allclose(sde.log_snr(t), lam_eps + u * (lam_T - lam_eps), rtol=2e-5, atol=2e-4)
    np.testing.assert_allclose(w, (lam_eps - lam_T) / ((sde.T - sde.eps) * sde.g2(t) / sde.sigma(t) ** 2),
                               rtol=1e-6)
    est = [float(jnp.mean(jnp.prod(jnp.stack(LikelihoodImportanceTime(base=base)(k, n, sde)), 0)))
           for k in jax.random.split(jax.random.PRNGKey(8), 16)]
    se = np.std(est) / np.sqrt(len(est))
    assert abs(np.mean(est) - (sde.eps + sde.T) / 2) < 4 * se + 1e-4, (np.mean(est), se)


def test_importance_time_defaults_and_errors():
    """The default base is StratifiedTime (the main job's sampler); `stratified` is a
    shorthand for the base; wrong arguments say what to pass."""
    sde, key = VPSDE(), jax.random.PRNGKey(0)
    for a, b in [(LikelihoodImportanceTime(), LikelihoodImportanceTime(base=StratifiedTime())),
                 (LikelihoodImportanceTime(stratified=True), LikelihoodImportanceTime(base=StratifiedTime())),
                 (LikelihoodImportanceTime(stratified=False), LikelihoodImportanceTime(base=UniformTime()))]:
        np.testing.assert_array_equal(a(key, 64, sde)[0], b(key, 64, sde)[0])
    with pytest.raises(ValueError, match="base or stratified"):
        LikelihoodImportanceTime(base=UniformTime(), stratified=True)
    with pytest.raises(TypeError, match="AbstractUnitSampler"):
        LikelihoodImportanceTime(base=LogNormalTime())


def test_ddpm_l_simple_is_a_special_case():
    """VP + SimpleWeighting + eps-network + DiscreteTime(N) + mean over pixels = DDPM's L_simple.

    L_simple = E_{i, x0, eps} || eps - eps_theta(sqrt(ab_i) x0 + sqrt(1 - ab_i) eps, t_i) ||^2
    (Ho et al. 2020, eq. 14), written out here by hand with the same random draws.
    """
    sde = VPSDE()
    N = 1000
    x0 = jax.random.normal(jax.random.PRNGKey(0), (32, 4, 4, 1))
    eps_theta = lambda x, t: 0.3 * x + jnp.sin(3 * t)[:, None, None, None]
    score = score_fn_from_network(eps_theta, sde, EpsPrediction())
    key = jax.random.PRNGKey(1)
    ours, _ = dsm_loss(score, sde, key, x0, weighting=SimpleWeighting(), time_sampler=DiscreteTime(N),
                       reduce_dims="mean")
    kt, kz = jax.random.split(key)
    i = jax.random.randint(kt, (32,), 0, N)
    t = sde.eps + (sde.T - sde.eps) * i / (N - 1)
    ab = sde.alpha(t)[:, None, None, None] ** 2
    eps = jax.random.normal(kz, x0.shape)
    xt = jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * eps
    by_hand = jnp.mean((eps - eps_theta(xt, t)) ** 2)
    np.testing.assert_allclose(ours, by_hand, rtol=1e-5)
    # The continuous VP with beta in [0.1, 20] is DDPM's chain: beta_i = 1e-4 .. 0.02 over
    # N = 1000 steps gives log prod(1 - beta_j) = log alpha(i/N)^2 to within 2% for i >= 50
    # (the gaps are the half-step offset of the grid and the second-order sum beta_j^2 / 2).
    betas = np.linspace(1e-4, 0.02, N)
    ab_ddpm = np.cumprod(1 - betas)
    ab_ours = np.asarray(sde.alpha(jnp.arange(1, N + 1) / N)) ** 2
    np.testing.assert_allclose(np.log(ab_ours)[50:], np.log(ab_ddpm)[50:], rtol=2e-2)


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"])
def test_edm_weighting_is_edm_loss(sde):
    """lambda_EDM(sh) || D - x0 ||^2 (Karras et al. 2022, eq. 8) computed through the score.

    EDM works on x_hat = x / alpha at noise level sh = sigma / alpha, so with a denoiser D
    (an x0 prediction) and score = -(x - alpha D) / sigma^2 (written by hand here) the
    per-example loss must be (sh^2 + sd^2) / (sh sd)^2 || D(x_t) - x0 ||^2. VE has alpha = 1,
    which would hide a missing alpha; VP and sub-VP do not (alpha(0.9) ~ 0.02).
    """
    sd = 0.5
    x0 = jax.random.normal(jax.random.PRNGKey(0), (16, 3))
    t = jnp.linspace(0.1, 0.9, 16)
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    D = lambda x, t: 0.8 * x / sde.alpha(t)[:, None] + 0.1
    score = lambda x, t: -(x - sde.alpha(t)[:, None] * D(x, t)) / sde.sigma(t)[:, None] ** 2
    key = jax.random.PRNGKey(3)
    _, per = dsm_loss(score, sde, key, x0, weighting=EDMWeighting(sd), t=t)
    xt = a * x0 + s * jax.random.normal(jax.random.split(key)[1], x0.shape)  # dsm_loss's own draw
    sh = (s / a)[:, 0]
    lam = (sh**2 + sd**2) / (sh * sd) ** 2
    np.testing.assert_allclose(per, lam * jnp.sum((D(xt, t) - x0) ** 2, -1), rtol=1e-4)
    # lambda(t) itself: EDM's weight times d||D - x0||^2 / d||sigma s + z||^2 = sigma^4 / alpha^2.
    np.testing.assert_allclose(EDMWeighting(sd)(t, sde), lam * s[:, 0] ** 4 / a[:, 0] ** 2, rtol=1e-5)


def test_labels_reach_the_score_and_set_the_loss():
    """dsm_loss(..., labels=y) calls score(x_t, t, y) with the labels in batch order: the
    per-example loss equals || sigma s(x_t, t, y) + z ||^2 written out by hand (uniform
    t, SimpleWeighting), under jit, and other labels give another loss."""
    sde = VPSDE()
    score = lambda x, t, y: -x + 0.5 * y[:, None].astype(x.dtype)
    x0 = jax.random.normal(jax.random.PRNGKey(1), (4, 2))
    y = jnp.arange(4)
    key = jax.random.PRNGKey(0)
    f = jax.jit(lambda k, x, y: dsm_loss(score, sde, k, x, labels=y))
    loss, per = f(key, x0, y)
    kt, kz = jax.random.split(key)
    t = sde.eps + (sde.T - sde.eps) * jax.random.uniform(kt, (4,))
    z = jax.random.normal(kz, x0.shape)
    s = sde.sigma(t)[:, None]
    xt = sde.alpha(t)[:, None] * x0 + s * z
    by_hand = jnp.sum((s * score(xt, t, y) + z) ** 2, -1)
    # atol: example 0 (label 0, t near eps) has a loss of 2e-5 from a cancelling residual.
    np.testing.assert_allclose(per, by_hand, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(loss, jnp.mean(by_hand), rtol=1e-5)
    assert np.all(np.abs(np.asarray(f(key, x0, y[::-1])[1] - per)) > 1e-3)


def test_bad_input_errors():
    sde = VPSDE()
    good = lambda x, t: -x
    key = jax.random.PRNGKey(0)
    with pytest.raises(TypeError, match="x0 must be a floating-point array"):
        dsm_loss(good, sde, key, jnp.ones((4, 2), jnp.int32))
    with pytest.raises(ValueError, match=r"score_fn\(x_t, t\) returned shape \(4, 3\)"):
        dsm_loss(lambda x, t: jnp.ones((4, 3)), sde, key, jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="batch-first"):
        dsm_loss(good, sde, key, jnp.ones((4,)))
    with pytest.raises(ValueError, match=r"t must lie in \[eps, T\]"):
        dsm_loss(good, sde, key, jnp.ones((4, 2)), t=jnp.array([0.5, 0.5, 0.5, 1.2]))
    with pytest.raises(ValueError, match="reduce_dims"):
        dsm_loss(good, sde, key, jnp.ones((4, 2)), reduce_dims="max")

"""Tests of SDE-DPM-Solver++ (scoresde.sampling.sde_multistep) against closed forms.

Oracles: (1) a point mass c, for which every step is exact for any step size: with
u = (x - alpha c) / sigma, a step maps u to e^{-eta h} u + sqrt(1 - e^{-2 eta h}) z, so
after the whole grid (Lambda = lambda(eps) - lambda(T)) the residual
r = u_eps - e^{-eta Lambda} u_T is N(0, 1 - e^{-2 eta Lambda}) and independent of u_T;
(2) the exact law of a Gaussian mixture at t = eps (tests/helpers.check_law: moments
within 4 standard errors, weights within 3); (3) DPMSolverPP, which eta = 0 must
reproduce (float64, 1e-10 relative). Tolerances: moments within 4 standard errors of
the sample statistic, correlations within 4 / sqrt(N).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from helpers import check_law
from scoresde import GaussianMixture, VPSDE
from scoresde.sampling import DPMSolverPP, EDMGrid, LogSNRGrid, SDEDPMSolverPP, UniformTimeGrid, sample

SDE = VPSDE()
GM = GaussianMixture.isotropic(jnp.array([0.3, 0.7]), jnp.array([[-2.0, 0.0], [1.5, 1.0]]),
                               jnp.array([0.3, 0.5]) ** 2)
_CALLS = [0]


def _count():
    _CALLS[0] += 1


def mixture_score(x, t):
    return GM.score(x, t, SDE)


def counted_score(x, t):
    """The mixture's exact score; each batched call adds one to _CALLS when it runs."""
    jax.debug.callback(_count)
    return GM.score(x, t, SDE)


def gauss_score(x, t, cond):
    """Exact score of N(mu, s2 I) data, (mu, s2) per example: -(x - alpha mu) / (alpha^2 s2 + sigma^2)."""
    mu, s2 = cond
    a, s = SDE.alpha(t)[:, None], SDE.sigma(t)[:, None]
    return -(x - a * mu) / (a**2 * s2[:, None] + s**2)


@pytest.mark.parametrize("order, eta, n, t_start", [(1, 1.0, 1, None), (2, 0.3, 3, None), (3, 0.3, 7, None),
                                                   (2, 2.0, 4, None), (2, 0.3, 5, 0.4)])
def test_point_mass_law_is_exact_for_any_step(order, eta, n, t_start):
    """For a point mass c (D = c on every path) the output at eps is alpha_e c + sigma_e u
    with u - e^{-eta Lambda} u_T ~ N(0, 1 - e^{-2 eta Lambda}) independent of u_T, for every
    step count: a wrong coefficient of x, D or the noise shows up as a mean, variance or
    correlation error. With a truncated start (UniformTimeGrid(t_start)) x_T is taken as the
    state at t_start: u_T and Lambda are those of t_start (a grid that still started at T
    would leave u with the wrong mean)."""
    N, c = 20000, 0.7
    t0 = SDE.T if t_start is None else t_start
    with enable_x64():
        x_T = SDE.prior_sample(jax.random.key(1), (N, 1), jnp.float64)
        cond = (jnp.full((N, 1), c), jnp.zeros((N,)))
        smp = SDEDPMSolverPP(n, order, eta=eta, grid=UniformTimeGrid(t_start=t_start))
        x = sample(smp, gauss_score, SDE, jax.random.key(2), x_T, cond=cond).samples
        lam = lambda t: 0.5 * float(SDE.log_snr(t))
        big_lam = lam(SDE.eps) - lam(t0)
        u_T = np.asarray((x_T - SDE.alpha(t0) * c) / SDE.sigma(t0))[:, 0]
        u = np.asarray((x - SDE.alpha(SDE.eps) * c) / SDE.sigma(SDE.eps))[:, 0]
    r = u - np.exp(-eta * big_lam) * u_T
    v = -np.expm1(-2 * eta * big_lam)
    assert abs(r.mean()) < 4 * np.sqrt(v / N), r.mean()
    assert abs(r.var() - v) < 4 * v * np.sqrt(2 / N), (r.var(), v)
    assert abs(np.corrcoef(r, u_T)[0, 1]) < 4 / np.sqrt(N)


@pytest.mark.parametrize("smp", [SDEDPMSolverPP(40, 2), SDEDPMSolverPP(40, 3, eta=0.5),
                                 SDEDPMSolverPP(40, 2, grid=EDMGrid(), final="denoise")],
                         ids=["2m_eta1", "3m_eta0.5", "2m_edm_denoise"])
def test_mixture_law_at_eps(smp):
    """4096 samples of the 2-D two-component mixture: moments and component weights at eps
    (E[x_0 | x_eps] for final="denoise": the law at eps shrunk by the tiny sigma(eps),
    within the same tolerance) match the exact law."""
    x_T = SDE.prior_sample(jax.random.key(3), (4096, 2))
    x = sample(smp, mixture_score, SDE, jax.random.key(4), x_T).samples
    check_law(GM, SDE, x, SDE.eps)


def test_variance_error_shrinks_with_steps():
    """N(1, 0.2^2) data in 1-D, 40000 samples: the relative error of the sample variance at
    eps falls at every doubling of the steps from 4 to 32 (2M, eta = 1: about -0.77, -0.24,
    +0.07, +0.03; the sample variance's standard error is 0.007 of it) and is within 4 SE
    at 64 steps (about 0.007, measured on 10^6 samples)."""
    N = 40000
    x_T = SDE.prior_sample(jax.random.key(5), (N, 1))
    cond = (jnp.ones((N, 1)), jnp.full((N,), 0.04))
    v_true = float(SDE.alpha(SDE.eps)) ** 2 * 0.04 + float(SDE.sigma(SDE.eps)) ** 2
    errs = []
    for n in (4, 8, 16, 32, 64):
        x = np.asarray(sample(SDEDPMSolverPP(n, 2), gauss_score, SDE, jax.random.key(n), x_T, cond=cond).samples)
        errs.append(abs(x.var() / v_true - 1))
    se = np.sqrt(2 / N)
    assert all(a > b for a, b in zip(errs[:4], errs[1:4])), errs
    assert errs[0] > 0.5 and errs[-1] < 4 * se, errs


@pytest.mark.parametrize("order", [1, 2, 3])
def test_eta_zero_is_dpm_solver_pp(order):
    """eta = 0 takes DPM-Solver++'s steps (float64, 1e-10 relative), with both endings, two
    grids and lower-order-final rules; so does eta = 1 with t_noise below every step's
    start time (no step adds noise, so every step is an eta = 0 step)."""
    with enable_x64():
        x_T = SDE.prior_sample(jax.random.key(6), (8, 2), jnp.float64)
        cond = (jnp.broadcast_to(jnp.array([1.0, -0.5]), (8, 2)), jnp.full((8,), 0.09))
        for n, kw in [(1, {}), (2, {"final": "denoise"}), (7, {}), (7, {"final": "denoise"}),
                      (7, {"grid": UniformTimeGrid(), "lower_order_final": "always"})]:
            want = sample(DPMSolverPP(n, order, **kw), gauss_score, SDE, jax.random.key(7), x_T, cond=cond)
            for smp in (SDEDPMSolverPP(n, order, eta=0.0, **kw),
                        SDEDPMSolverPP(n, order, eta=1.0, t_noise=SDE.eps / 2, **kw)):
                got = sample(smp, gauss_score, SDE, jax.random.key(8), x_T, cond=cond)
                np.testing.assert_allclose(got.samples, want.samples, rtol=1e-10, atol=1e-10, err_msg=f"{smp}")
                assert int(got.nfe) == int(want.nfe) == n


def test_t_noise_splits_deterministic_and_stochastic_steps():
    """t_noise at or above T is the plain solver (same keys, same samples); in between, the
    steps above t_noise are DPM-Solver++'s: two runs with different keys agree until the
    first noisy step and differ after it."""
    x_T = SDE.prior_sample(jax.random.key(9), (16, 2))
    key = jax.random.key(10)
    plain = sample(SDEDPMSolverPP(8, 2), mixture_score, SDE, key, x_T).samples
    same = sample(SDEDPMSolverPP(8, 2, t_noise=SDE.T), mixture_score, SDE, key, x_T).samples
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(same))
    ts = np.asarray(LogSNRGrid()(SDE, 8))
    smp = SDEDPMSolverPP(8, 2, t_noise=float(ts[4]))
    a = sample(smp, mixture_score, SDE, key, x_T, trajectory=True).trajectory
    b = sample(smp, mixture_score, SDE, jax.random.key(11), x_T, trajectory=True).trajectory
    np.testing.assert_allclose(a[:5], b[:5], rtol=1e-6, atol=1e-6)
    assert float(jnp.min(jnp.abs(a[5] - b[5]))) > 1e-3


def test_keys_per_example_and_batch_split():
    """The same keys give the same samples; other keys other samples; half a batch with its
    half of the keys gives that half of the samples."""
    x_T = SDE.prior_sample(jax.random.key(12), (8, 2))
    keys = jax.random.split(jax.random.key(13), 8)
    smp = SDEDPMSolverPP(6, 3, eta=0.7)
    full = np.asarray(sample(smp, mixture_score, SDE, keys, x_T).samples)
    np.testing.assert_array_equal(full, np.asarray(sample(smp, mixture_score, SDE, keys, x_T).samples))
    other = np.asarray(sample(smp, mixture_score, SDE, jax.random.split(jax.random.key(14), 8), x_T).samples)
    assert np.min(np.abs(other - full)) > 1e-4
    for sl in (slice(0, 4), slice(4, 8)):
        part = np.asarray(sample(smp, mixture_score, SDE, keys[sl], x_T[sl]).samples)
        np.testing.assert_allclose(part, full[sl], rtol=1e-6, atol=1e-6)


def test_nfe_is_the_number_of_score_calls():
    """The reported NFE equals the score calls counted while the program runs, with both
    endings, and equals n_steps * evals_per_step."""
    x_T = SDE.prior_sample(jax.random.key(15), (4, 2))
    for n, final in [(1, "ode"), (1, "denoise"), (2, "denoise"), (5, "ode")]:
        smp = SDEDPMSolverPP(n, 3, final=final)
        _CALLS[0] = 0
        res = sample(smp, counted_score, SDE, jax.random.key(16), x_T)
        res.samples.block_until_ready()
        assert int(res.nfe) == _CALLS[0] == n * smp.evals_per_step, (n, final, int(res.nfe), _CALLS[0])
        assert np.all(np.isfinite(np.asarray(res.samples)))


def test_declared_orders_and_errors():
    assert SDEDPMSolverPP(10, 1).order == 1 and SDEDPMSolverPP(10, 3).order == 1
    assert SDEDPMSolverPP(10, 3, eta=0.0).order == 2 and SDEDPMSolverPP(10, 1, eta=0.0).order == 1
    for kwargs, needle in [(dict(n_steps=0), "n_steps must be an integer >= 1"),
                           (dict(n_steps=5, solver_order=4), "solver_order"),
                           (dict(n_steps=5, eta=-0.5), "eta must be a float >= 0"),
                           (dict(n_steps=5, eta=True), "eta must be a float >= 0"),
                           (dict(n_steps=5, t_noise=0.0), "t_noise"),
                           (dict(n_steps=5, final="tweedie"), "final"),
                           (dict(n_steps=5, lower_order_final="sometimes"), "lower_order_final")]:
        with pytest.raises(ValueError, match=needle):
            SDEDPMSolverPP(**kwargs)


def test_traced_sde_has_finite_gradients():
    """Through a traced SDE (jit/grad over beta_max), with steps with and without noise:
    the gradient of the samples' sum is finite and matches a central difference (2%)."""
    x_T = SDE.prior_sample(jax.random.key(17), (8, 2))
    smp = SDEDPMSolverPP(4, 2, t_noise=0.5)

    @jax.jit  # one compiled program for both central-difference points
    def total(beta_max):
        sde = VPSDE(beta_max=beta_max)
        return jnp.sum(sample(smp, GM.score_fn(sde), sde, jax.random.key(18), x_T).samples)

    g = float(jax.grad(total)(20.0))
    fd = float(total(20.01) - total(19.99)) / 0.02
    assert np.isfinite(g) and abs(g - fd) < 0.02 * abs(fd) + 1e-3, (g, fd)


def test_truncated_uniform_grid():
    """UniformTimeGrid(t_start): n + 1 evenly spaced times from t_start to eps; None is the
    grid from T; a t_start outside (eps, T] is refused."""
    ts = np.asarray(UniformTimeGrid(t_start=0.6)(SDE, 4))
    np.testing.assert_allclose(ts, 0.6 + np.arange(5) / 4 * (SDE.eps - 0.6), rtol=1e-6)
    assert ts[0] == np.float32(0.6) and ts[-1] == np.float32(SDE.eps)
    np.testing.assert_array_equal(np.asarray(UniformTimeGrid(t_start=None)(SDE, 4)), np.asarray(UniformTimeGrid()(SDE, 4)))
    with pytest.raises(ValueError, match="t_start"):
        UniformTimeGrid(t_start=1.5)(SDE, 4)

"""Tests of scoresde.sampling against exact Gaussian / Gaussian-mixture scores.

Tolerances: moment checks use 4 standard errors of the sample statistic (estimated
from the sample itself); component weights 3 standard errors sqrt(w (1 - w) / B);
convergence orders are slopes of log(error) against log(steps) over doublings, in
float64, against the closed-form probability-flow map of a Gaussian (exact) or a
fine solve driven by the same Brownian path.
"""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from helpers import check_law, fitted_order
from scoresde import GaussianMixture, SubVPSDE, VESDE, VPSDE
from scoresde.sampling import (
    DDIM, AncestralPredictor, DPMSolverPP, EDMGrid, EDMHeun, EulerMaruyama,
    EulerMaruyamaPredictor, LangevinCorrector, LogSNRGrid, NoneCorrector, ODEEuler, ODEHeun,
    PredictorCorrector, ProbabilityFlowODE, ReverseDiffusionPredictor, ReverseSRK, SampleResult,
    UniformTimeGrid, sample, tweedie_denoise,
)

B = 2048


def mixture():
    return GaussianMixture.isotropic(jnp.array([0.3, 0.7]), jnp.array([[-2.0, 0.0], [1.5, 1.0]]),
                                     jnp.array([0.3, 0.5]) ** 2)


_run = eqx.filter_jit(lambda smp, sf, sde, key, x: sample(smp, sf, sde, key, x))


CONVERGED = {
    "em": EulerMaruyama(400),
    "em_diffrax": EulerMaruyama(200, use_diffrax=True),
    "shark": ReverseSRK(100),
    "ode_tsit5": ProbabilityFlowODE(),
    "ode_dopri5": ProbabilityFlowODE(solver=diffrax.Dopri5(), rtol=1e-4, atol=1e-4),
    "ode_euler": ODEEuler(400, grid=EDMGrid()),
    "ode_heun": ODEHeun(100, grid=EDMGrid()),
    "pc_rd_langevin": PredictorCorrector(400, ReverseDiffusionPredictor(),
                                         LangevinCorrector(0.1, 1, step_rule="sigma2")),
    "pc_em": PredictorCorrector(400, EulerMaruyamaPredictor(), NoneCorrector()),
    "pc_ancestral": PredictorCorrector(400, AncestralPredictor(), NoneCorrector(), LogSNRGrid()),
    "edm_heun": EDMHeun(50),
    "edm_heun_churn": EDMHeun(100, s_churn=20.0, s_min=0.05, s_max=10.0, s_noise=1.0),
    "dpm2": DPMSolverPP(50, 2),
    "dpm3": DPMSolverPP(50, 3),
    "ddim": DDIM(200, grid=LogSNRGrid()),
}


@pytest.mark.parametrize("name", list(CONVERGED))
def test_sampler_draws_exact_mixture_law_vp(name):
    sde = VPSDE()
    gm = mixture()
    x_T = sde.prior_sample(jax.random.key(0), (B, 2))
    res = _run(CONVERGED[name], gm.score_fn(sde), sde, jax.random.key(1), x_T)
    check_law(gm, sde, res.samples, sde.eps)


@pytest.mark.parametrize("sde", [SubVPSDE(), VESDE()], ids=["subvp", "ve"])
@pytest.mark.parametrize("smp", [
    PredictorCorrector(400, ReverseDiffusionPredictor(), LangevinCorrector(0.1, 1, step_rule="sigma2")),
    PredictorCorrector(400, AncestralPredictor(), NoneCorrector(), LogSNRGrid())],
    ids=["pc_rd_langevin", "pc_ancestral"])
def test_subvp_and_ve(sde, smp):
    gm = mixture()
    x_T = sde.prior_sample(jax.random.key(2), (B, 2))
    res = _run(smp, gm.score_fn(sde), sde, jax.random.key(3), x_T)
    check_law(gm, sde, res.samples, sde.eps)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_langevin_ratio_rule_in_high_dimension(sde):
    """Song et al.'s per-example snr rule (the default) in 64-D, including sub-VP where the
    original code has no discrete alphas: the law of a Gaussian within 6% in variance (ratio-rule bias ~4% at snr 0.05, see LangevinCorrector)."""
    D = 64
    gm = GaussianMixture.isotropic(jnp.array([1.0]), jnp.ones((1, D)), 0.25)
    x_T = sde.prior_sample(jax.random.key(4), (512, D))
    smp = PredictorCorrector(200, ReverseDiffusionPredictor(), LangevinCorrector(0.05, 1))
    x = np.asarray(_run(smp, gm.score_fn(sde), sde, jax.random.key(5), x_T).samples)
    v_true = float(gm.covariance(sde.eps, sde)[0, 0])
    assert abs(x.mean() - float(sde.alpha(sde.eps))) < 4 * math.sqrt(v_true / x.size)
    assert abs(x.var(0).mean() / v_true - 1) < 0.06


ALL_SMALL = {
    "em": lambda n: EulerMaruyama(n),
    "em_diffrax": lambda n: EulerMaruyama(n, use_diffrax=True),
    "shark": lambda n: ReverseSRK(n),
    "ode_euler": lambda n: ODEEuler(n),
    "ode_heun": lambda n: ODEHeun(n, grid=EDMGrid()),
    "pc": lambda n: PredictorCorrector(n),
    "pc_em_ratio": lambda n: PredictorCorrector(n, EulerMaruyamaPredictor(), LangevinCorrector(0.16, 2)),
    "pc_ancestral": lambda n: PredictorCorrector(n, AncestralPredictor(), LangevinCorrector()),
    "edm_churn": lambda n: EDMHeun(n, s_churn=40.0),
    "dpm2": lambda n: DPMSolverPP(n, 2),
    "dpm3": lambda n: DPMSolverPP(n, 3, grid=UniformTimeGrid()),
    "dpm3_edm_nolof": lambda n: DPMSolverPP(n, 3, grid=EDMGrid(), lower_order_final=False),
    "ddim": lambda n: DDIM(n),
}


DETERMINISTIC = ("ode_euler", "ode_heun", "dpm2", "dpm3", "dpm3_edm_nolof", "ddim")
NAN_CASES = [(VPSDE(), name) for name in ALL_SMALL] + [
    (sde, name) for sde in (SubVPSDE(), VESDE())
    for name in ("pc", "pc_em_ratio", "pc_ancestral", "edm_churn", "dpm3")]


@pytest.mark.parametrize("sde, name", NAN_CASES,
                         ids=[f"{type(s).__name__}-{n}" for s, n in NAN_CASES])
def test_few_steps_stay_finite_and_near_the_data(sde, name):
    """1, 2 and 5 steps: finite, the NFE the sampler declares, and, for the deterministic
    samplers, every denoised sample within 3 of a component mean (the components have std
    0.3 and 0.5; a 1-step DDIM lands on E[x_0 | x_T], in the convex hull of the means). A
    wrong sign or a missing alpha in an update throws samples far outside. (A stochastic
    sampler with 1 step adds noise of std sqrt(g^2 h) ~ 4 and has no such bound.)"""
    gm = mixture()
    sf = gm.score_fn(sde)
    x_T = sde.prior_sample(jax.random.key(6), (8, 2))
    means = np.asarray(gm.means)
    for n in (1, 2, 5):
        smp = ALL_SMALL[name](n)
        res = sample(smp, sf, sde, jax.random.key(7), x_T, denoise=True)
        x = np.asarray(res.samples)
        assert np.all(np.isfinite(x)), (name, n)
        if smp.evals_per_step is not None:
            assert int(res.nfe) == n * smp.evals_per_step + 1, (name, n, int(res.nfe))
        if name in DETERMINISTIC:
            dist = np.min(np.linalg.norm(x[:, None, :] - means[None], axis=-1), axis=1)
            assert np.all(dist < 3.0), (name, n, dist)


# --- convergence orders (float64, closed-form probability-flow map of a Gaussian) -------------
def _gauss_flow(sde, mu, s2, x_T):
    """Exact PF-ODE map of N(mu, s2 I) data: x_eps = a_e mu + sqrt(v_e / v_T) (x_T - a_T mu)."""
    v = lambda t: sde.alpha(t) ** 2 * s2 + sde.sigma(t) ** 2
    return sde.alpha(sde.eps) * mu + jnp.sqrt(v(sde.eps) / v(sde.T)) * (x_T - sde.alpha(sde.T) * mu)


_slope = fitted_order


@pytest.mark.parametrize("make, ns", [
    (lambda n: ODEEuler(n, grid=LogSNRGrid()), (32, 64, 128, 256)),
    (lambda n: ODEHeun(n, grid=LogSNRGrid()), (16, 32, 64, 128)),
    (lambda n: EDMHeun(n), (16, 32, 64, 128)),
    (lambda n: DDIM(n, grid=LogSNRGrid()), (16, 32, 64, 128)),
], ids=["euler", "heun", "edm_heun", "ddim"])
def test_ode_convergence_order(make, ns):
    """The fitted slope is within 0.25 of the order the sampler declares (`order`)."""
    order = make(ns[0]).order
    with enable_x64():
        sde = VPSDE()
        mu, s2 = jnp.array([1.0, -0.5]), 0.04
        gm = GaussianMixture.isotropic(jnp.array([1.0]), mu[None], s2)
        sf = lambda x, t: gm.score(x, t, sde)
        x_T = sde.prior_sample(jax.random.key(8), (64, 2), jnp.float64)
        ref = _gauss_flow(sde, mu, s2, x_T)
        errs = [float(jnp.sqrt(jnp.mean((sample(make(n), sf, sde, jax.random.key(0), x_T).samples
                                         - ref) ** 2))) for n in ns]
    p = _slope(ns, errs)
    assert abs(p - order) < 0.25, (errs, p)


def test_adaptive_ode_matches_closed_form_and_counts_nfe():
    with enable_x64():
        sde = VPSDE()
        mu, s2 = jnp.array([1.0, -0.5]), 0.04
        gm = GaussianMixture.isotropic(jnp.array([1.0]), mu[None], s2)
        x_T = sde.prior_sample(jax.random.key(9), (32, 2), jnp.float64)
        ref = _gauss_flow(sde, mu, s2, x_T)
        tight = sample(ProbabilityFlowODE(rtol=1e-9, atol=1e-9), gm.score_fn(sde), sde, None or jax.random.key(0), x_T)
        loose = sample(ProbabilityFlowODE(rtol=1e-3, atol=1e-3), gm.score_fn(sde), sde, jax.random.key(0), x_T)
    assert float(jnp.max(jnp.abs(tight.samples - ref))) < 1e-6
    assert float(jnp.max(jnp.abs(loose.samples - ref))) < 5e-2
    # Tsit5 is FSAL: 1 + 6 per attempted step.
    assert int(tight.nfe) % 6 == 1 and int(loose.nfe) % 6 == 1
    assert int(loose.nfe) < int(tight.nfe)


# --- SDE solvers on one Brownian path (VirtualBrownianTree, float64) ----------------------
TOL = 2.0**-12
SOLVERS = {"shark": lambda n: ReverseSRK(n, brownian_tol=TOL),
           "euler_maruyama": lambda n: EulerMaruyama(n, use_diffrax=True, brownian_tol=TOL)}


@pytest.fixture(scope="module")
def one_path():
    """Solutions of every (solver, steps) the strong-order tests use, on one Brownian path
    (the same key for every solve), computed once: {(name, n): samples (32, 1)}."""
    with enable_x64():
        sde = VPSDE()
        gm = GaussianMixture.isotropic(jnp.array([1.0]), jnp.array([[0.5]]), 0.09)
        x_T = sde.prior_sample(jax.random.key(10), (32, 1), jnp.float64)
        key = jax.random.key(11)
        sf = gm.score_fn(sde)
        runs = [("shark", n) for n in (16, 32, 64, 256)] + [("euler_maruyama", n) for n in (16, 32, 64, 512)]
        return {(name, n): _run(SOLVERS[name](n), sf, sde, key, x_T).samples for name, n in runs}


def _rms(a, b):
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))  # float64 solutions


@pytest.mark.parametrize("name", ["shark", "euler_maruyama"])
def test_strong_order_same_brownian_path(one_path, name):
    """Additive noise: ShARK (forward time s = T - t) has strong order 1.5 and Euler-Maruyama
    strong order 1, against a fine 256-step ShARK solve on the same Brownian path: the
    fitted slope is within 0.25 of the declared `order`."""
    ns = (16, 32, 64)
    errs = [_rms(one_path[name, n], one_path["shark", 256]) for n in ns]
    assert abs(_slope(ns, errs) - SOLVERS[name](ns[0]).order) < 0.25, errs


def test_forward_time_shark_agrees_with_fine_em_on_same_path(one_path):
    """The forward-time ShARK solution (diffrax #598 workaround) is the pathwise solution:
    it agrees with a 512-step EM on the same Brownian path, and better than a 64-step EM."""
    fine_em = one_path["euler_maruyama", 512]
    err_sh, err_em = _rms(one_path["shark", 64], fine_em), _rms(one_path["euler_maruyama", 64], fine_em)
    assert err_sh < 0.01 and err_sh < err_em / 3, (err_sh, err_em)


# --- interface --------------------------------------------------------------------------
def test_batch_split_invariance_and_key_forms():
    sde = VPSDE()
    gm = mixture()
    sf = gm.score_fn(sde)
    x_T = sde.prior_sample(jax.random.key(12), (8, 2))
    keys = jax.random.split(jax.random.key(13), 8)
    # (the diffrax paths vmap one solve per example, so they are split-invariant by construction)
    for smp in [EulerMaruyama(5), PredictorCorrector(5, AncestralPredictor()), EDMHeun(5, s_churn=10.0)]:
        full = sample(smp, sf, sde, keys, x_T).samples
        halves = jnp.concatenate([sample(smp, sf, sde, keys[:4], x_T[:4]).samples,
                                  sample(smp, sf, sde, keys[4:], x_T[4:]).samples])
        np.testing.assert_allclose(full, halves, rtol=1e-5, atol=1e-6)
    raw = jax.random.key_data(keys)
    np.testing.assert_array_equal(sample(EulerMaruyama(3), sf, sde, raw, x_T).samples,
                                  sample(EulerMaruyama(3), sf, sde, keys, x_T).samples)
    one = jax.random.key(1)
    np.testing.assert_array_equal(sample(EulerMaruyama(3), sf, sde, one, x_T).samples,
                                  sample(EulerMaruyama(3), sf, sde, jax.random.split(one, 8), x_T).samples)


def test_jit_with_sampler_and_sde_as_arguments():
    gm = mixture()
    f = jax.jit(lambda smp, sde, key, x: sample(smp, gm.score_fn(sde), sde, key, x, trajectory=True))
    x_T = jax.random.normal(jax.random.key(14), (16, 2))
    for sde in (VPSDE(), VPSDE(beta_max=10.0)):
        for smp in (DPMSolverPP(7, 3), PredictorCorrector(6)):
            res = f(smp, sde, jax.random.key(0), x_T)
            eager = sample(smp, gm.score_fn(sde), sde, jax.random.key(0), x_T, trajectory=True)
            np.testing.assert_allclose(res.samples, eager.samples, rtol=2e-4, atol=2e-5)
            assert res.trajectory.shape == (smp.n_steps + 1, 16, 2)
            np.testing.assert_array_equal(res.trajectory[0], x_T)
            np.testing.assert_allclose(res.trajectory[-1], res.samples)


def test_nfe_counts_and_denoise():
    sde = VPSDE()
    gm = mixture()
    sf = gm.score_fn(sde)
    x_T = sde.prior_sample(jax.random.key(15), (4, 2))
    k = jax.random.key(0)
    cases = [(EulerMaruyama(7), 7), (ODEEuler(7), 7), (ODEHeun(7), 14),
             (PredictorCorrector(7), 14), (PredictorCorrector(7, corrector=LangevinCorrector(0.1, 3)), 28),
             (PredictorCorrector(7, corrector=NoneCorrector()), 7), (EDMHeun(7), 14),
             (DPMSolverPP(7, 3), 7), (DDIM(7), 7)]
    for smp, nfe in cases:
        res = sample(smp, sf, sde, k, x_T)
        assert isinstance(res, SampleResult) and res.trajectory is None
        assert int(res.nfe) == nfe, type(smp).__name__
        den = sample(smp, sf, sde, k, x_T, denoise=True)
        assert int(den.nfe) == nfe + 1
        np.testing.assert_allclose(den.samples, gm.denoise(res.samples, sde.eps, sde), rtol=1e-4, atol=1e-4)
    x = jax.random.normal(k, (5, 2))
    np.testing.assert_allclose(tweedie_denoise(sf, sde, x, 0.3), gm.denoise(x, 0.3, sde), rtol=1e-4, atol=1e-5)


def test_grids():
    for sde in (VPSDE(), SubVPSDE(), VESDE()):
        for grid in (UniformTimeGrid(), EDMGrid(), LogSNRGrid()):
            ts = np.asarray(grid(sde, 10))
            assert ts.shape == (11,) and ts[0] == np.float32(sde.T) and ts[-1] == np.float32(sde.eps)
            assert np.all(np.diff(ts) < 0)
        with enable_x64():
            ts = EDMGrid()(sde, 10, jnp.float64)
            sh = np.exp(-0.5 * np.asarray(sde.log_snr(ts)))
            np.testing.assert_allclose(np.diff(sh ** (1 / 7)), np.diff(sh ** (1 / 7))[0], rtol=1e-6)
            lam = np.asarray(sde.log_snr(LogSNRGrid()(sde, 10, jnp.float64)))
            np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-6)


def test_errors_are_clear():
    sde = VPSDE()
    sf = mixture().score_fn(sde)
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="n_steps"):
        EulerMaruyama(0)
    with pytest.raises(ValueError, match="order"):
        DPMSolverPP(10, 4)
    with pytest.raises(ValueError, match="key"):
        sample(EulerMaruyama(2), sf, sde, jax.random.split(jax.random.key(0), 3), x)
    with pytest.raises(TypeError, match="x_T"):
        sample(EulerMaruyama(2), sf, sde, jax.random.key(0), jnp.zeros((4, 2), jnp.int32))
    with pytest.raises(TypeError, match="sampler"):
        sample("em", sf, sde, jax.random.key(0), x)
    # a score closing over a batch of labels works on the whole batch but not on one
    # example (as the per-example diffrax solves call it): named, with the fix
    labels = jnp.arange(4.0)
    closure = lambda x_, t_: sf(x_, t_) + labels[:, None]  # noqa: E731
    for smp in (EulerMaruyama(2), ProbabilityFlowODE()):
        with pytest.raises(ValueError, match=r"for one example of shape \(1, 2\).*closes over.*cond="):
            sample(smp, closure, sde, jax.random.key(0), x)

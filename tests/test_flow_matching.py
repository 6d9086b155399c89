"""The flow-matching path (FlowMatchingPath, Interpolant), the velocity parameterisation and
the flow-matching loss, against closed forms.

Tolerances: schedule identities in float64 to 1e-9 relative (they are algebra, so only
round-off remains); conversions in float32 to 1e-4; the samplers draw the exact mixture law
(component weights within 3 standard errors, means and variances within 4, as in
test_sampling.py, and a sliced 2-Wasserstein distance to an exact sample within 1.5x the
distance between two exact samples of the same size, the noise floor); the ODE likelihood
with the exact trace and the exact p_T equals the analytic log-density within 1e-3 nats/dim.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from helpers import check_law, mixture_b, ring
from scoresde import (
    FlowMatchingPath, FlowMatchingWeighting, GaussianMixture, Interpolant, VelocityPrediction, VPSDE, convert,
    dsm_loss, log_likelihood, score_fn_from_network,
)
from scoresde import sampling as S


# --- closed forms -------------------------------------------------------------------------
def _autodiff_schedule(sde, t):
    """f = d log alpha/dt, g^2 = d sigma^2/dt - 2 f sigma^2 and -d lambda/dt by jax.grad."""
    grad = lambda fn: jax.vmap(jax.grad(fn))(t)  # noqa: E731
    f = grad(sde.log_alpha)
    g2 = grad(lambda s: sde.sigma(s) ** 2) - 2 * f * sde.sigma(t) ** 2
    return f, g2, -grad(sde.log_snr)


def test_flow_matching_path_closed_forms():
    with enable_x64():
        sde = FlowMatchingPath()
        t = jnp.linspace(sde.eps, sde.T, 41, dtype=jnp.float64)
        np.testing.assert_allclose(sde.alpha(t), 1 - t, rtol=1e-12)
        np.testing.assert_allclose(sde.sigma(t), t, rtol=1e-12)
        np.testing.assert_allclose(sde.d_alpha(t), -1.0, rtol=1e-12)
        np.testing.assert_allclose(sde.d_sigma(t), 1.0, rtol=1e-12)
        f, g2, dlam = _autodiff_schedule(sde, t)
        np.testing.assert_allclose(sde.f(t), f, rtol=1e-9)
        np.testing.assert_allclose(sde.g2(t), g2, rtol=1e-9)
        np.testing.assert_allclose(sde.g2(t) / sde.sigma(t) ** 2, dlam, rtol=1e-9)  # g^2/sigma^2 = -dlambda/dt
        np.testing.assert_allclose(sde.log_snr(t), 2 * np.log((1 - t) / t), rtol=1e-12)
        np.testing.assert_allclose(sde.t_from_log_snr(sde.log_snr(t)), t, rtol=1e-12)
        # transition kernel from s to t: the marginal of x_t given x_s
        a, v = sde.transition(0.2, 0.7)
        np.testing.assert_allclose([a, v], [0.3 / 0.8, 0.49 - (0.3 / 0.8 * 0.2) ** 2], rtol=1e-12)
    assert sde.prior_std == 1.0


def test_interpolant_matches_flow_matching_and_the_cosine_closed_form():
    with enable_x64():
        t = jnp.linspace(1e-3, 0.999, 33, dtype=jnp.float64)
        fm, lin = FlowMatchingPath(), Interpolant(lambda s: 1 - s, lambda s: s)
        for name in ("log_alpha", "sigma", "log_snr", "f", "g2", "d_alpha", "d_sigma"):
            np.testing.assert_allclose(getattr(lin, name)(t), getattr(fm, name)(t), rtol=1e-9, err_msg=name)
        np.testing.assert_allclose(lin.t_from_log_snr(fm.log_snr(t)), t, rtol=1e-9)
        # the trigonometric path alpha = cos(pi t/2), sigma = sin(pi t/2) (Albergo & Vanden-Eijnden's
        # VP interpolant): f = -pi/2 tan(pi t/2), g^2 = pi tan(pi t/2), lambda = -2 log tan(pi t/2).
        cos = Interpolant(lambda s: jnp.cos(0.5 * jnp.pi * s), lambda s: jnp.sin(0.5 * jnp.pi * s))
        tan = np.tan(0.5 * np.pi * np.asarray(t))
        np.testing.assert_allclose(cos.f(t), -0.5 * np.pi * tan, rtol=1e-9)
        np.testing.assert_allclose(cos.g2(t), np.pi * tan, rtol=1e-9)
        np.testing.assert_allclose(cos.log_snr(t), -2 * np.log(tan), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(cos.t_from_log_snr(cos.log_snr(t)), t, rtol=1e-9)
        np.testing.assert_allclose(cos.prior_std, 1.0, rtol=1e-12)


def test_bad_paths_raise_clear_errors():
    with pytest.raises(ValueError, match="T must be smaller than 1"):
        FlowMatchingPath(T=1.0)
    with pytest.raises(ValueError, match="alpha\\(t\\) must be finite and > 0"):
        Interpolant(lambda s: 1 - s, lambda s: s, T=1.0)
    with pytest.raises(ValueError, match="must decrease strictly"):
        Interpolant(lambda s: 1 + 0 * s, lambda s: 0.5 + 0 * s)
    with pytest.raises(TypeError, match="alpha must be a function"):
        Interpolant(1.0, lambda s: s)
    with pytest.raises(ValueError, match="eps must be smaller than T"):
        FlowMatchingPath(eps=0.5, T=0.4)


# --- velocity parameterisation and the flow-matching loss ------------------------------------
GM = GaussianMixture.isotropic(jnp.array([0.4, 0.6]), jnp.array([[1.0, -1.0], [-2.0, 0.5]]), 0.09)


def test_velocity_is_eps_minus_x0_and_the_ode_drift():
    sde = FlowMatchingPath()
    x = jax.random.normal(jax.random.key(0), (6, 2))
    t = jnp.array([1e-3, 0.1, 0.4, 0.7, 0.95, 0.999])
    score = GM.score(x, t, sde)
    x0 = GM.denoise(x, t, sde)
    eps = convert(score, frm="score", to="eps", x=x, t=t, sde=sde)
    u = convert(score, frm="score", to="velocity", x=x, t=t, sde=sde)
    np.testing.assert_allclose(u, eps - x0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(u, sde.ode_drift(GM.score_fn(sde), x, t), rtol=1e-5, atol=1e-5)
    for kind, val in (("x0", x0), ("eps", eps), ("score", score)):
        np.testing.assert_allclose(convert(u, frm="velocity", to=kind, x=x, t=t, sde=sde), val, rtol=1e-3,
                                   atol=2e-4, err_msg=kind)
        np.testing.assert_allclose(convert(val, frm=kind, to="velocity", x=x, t=t, sde=sde), u, rtol=1e-3,
                                   atol=2e-4, err_msg=kind)
    # and on the VP SDE: u = alpha' x0 + sigma' eps
    vp = VPSDE()
    tv = jnp.array([0.01, 0.2, 0.5, 0.8, 0.9, 1.0])
    s_vp = GM.score(x, tv, vp)
    u_vp = convert(s_vp, frm="score", to="velocity", x=x, t=tv, sde=vp)
    e_vp = convert(s_vp, frm="score", to="eps", x=x, t=tv, sde=vp)
    ref = vp.d_alpha(tv)[:, None] * GM.denoise(x, tv, vp) + vp.d_sigma(tv)[:, None] * e_vp
    np.testing.assert_allclose(u_vp, ref, rtol=1e-4, atol=1e-4)


def test_flow_matching_weighting_is_the_velocity_regression():
    """dsm_loss with FlowMatchingWeighting of a velocity network equals mean ||u_hat - (z - x0)||^2
    with the same draws (the identity in FlowMatchingWeighting's docstring)."""
    sde = FlowMatchingPath()
    net = lambda x, t: jnp.tanh(x * 1.3 + t[:, None]) - 0.4 * x  # noqa: E731 (any velocity field)
    score = score_fn_from_network(net, sde, VelocityPrediction())
    key = jax.random.key(3)
    x0 = GM.sample(jax.random.key(4), 64)
    t = jax.random.uniform(jax.random.key(5), (64,), minval=sde.eps, maxval=sde.T)
    loss, per = dsm_loss(score, sde, key, x0, weighting=FlowMatchingWeighting(), t=t)
    _, kz = jax.random.split(key)
    xt, z = sde.sample_marginal(kz, x0, t)
    direct = jnp.sum((net(xt, t) - (z - x0)) ** 2, axis=-1)
    np.testing.assert_allclose(per, direct, rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(FlowMatchingWeighting()(t, sde), sde.g2(t) ** 2 / 4, rtol=1e-5)


# --- samplers draw the exact law on the path -----------------------------------------------------
B = 2048
_run = eqx.filter_jit(lambda smp, sf, sde, key, x: S.sample(smp, sf, sde, key, x))


def sliced_w2(x, y, key, n_dir: int = 64) -> float:
    """Sliced 2-Wasserstein distance between two equal-size samples (random unit directions)."""
    v = jax.random.normal(key, (x.shape[1], n_dir))
    v = v / jnp.linalg.norm(v, axis=0)
    return float(jnp.sqrt(jnp.mean((jnp.sort(x @ v, 0) - jnp.sort(y @ v, 0)) ** 2)))


@pytest.fixture(scope="module")
def exact_laws():
    """Per case: (mixture, exact reference sample at eps, noise floor: mean sliced W2 of 3 other
    exact samples of the same size to the reference, prior noise)."""
    sde = FlowMatchingPath()
    out = {}
    for name, case in (("A", ring()), ("B", mixture_b())):
        ref = case.sample(jax.random.key(100), B, jnp.float32(sde.eps), sde)
        floor = np.mean([sliced_w2(case.sample(jax.random.key(200 + i), B, jnp.float32(sde.eps), sde), ref,
                                   jax.random.key(7)) for i in range(3)])
        out[name] = (case, ref, floor, sde.prior_sample(jax.random.key(0), (B, case.dim)))
    return out


SAMPLERS = {
    "ode_tsit5": S.ProbabilityFlowODE(),
    "dpm3": S.DPMSolverPP(50, 3),
    "unipc": S.UniPC(50, grid=S.LogSNRGrid()),
    "ddim": S.DDIM(200, grid=S.LogSNRGrid()),
    "edm_heun": S.EDMHeun(50),
    "euler_maruyama": S.EulerMaruyama(400),
    "pc_ancestral": S.PredictorCorrector(400, S.AncestralPredictor(), S.NoneCorrector(), S.LogSNRGrid()),
}
# Each sampler on one of the two cases (the full matrix, every sampler on both cases, is
# experiments/benchmarks/flow_matching.py; results/flow_matching.md).
CASES = [("A", "ode_tsit5"), ("B", "dpm3"), ("A", "unipc"), ("B", "ddim"), ("A", "edm_heun"),
         ("B", "euler_maruyama"), ("A", "pc_ancestral")]


@pytest.mark.parametrize("case, name", CASES, ids=[f"{c}-{n}" for c, n in CASES])
def test_samplers_draw_the_exact_law_on_the_flow_matching_path(exact_laws, case, name):
    sde = FlowMatchingPath()
    gm, ref, floor, x_T = exact_laws[case]
    x = _run(SAMPLERS[name], gm.score_fn(sde), sde, jax.random.key(1), x_T).samples
    check_law(gm, sde, x, sde.eps)
    sw = sliced_w2(x, ref, jax.random.key(7))
    assert sw < 1.5 * floor, (sw, floor)


def test_one_and_two_steps_from_the_end_point_stay_finite():
    """At T = 1 - 1e-3, f = -1000 and g^2 = 2000: every sampler's first step from x_T stays
    finite (the end point alpha = 0 itself is refused by the path)."""
    sde = FlowMatchingPath()
    sf = GM.score_fn(sde)
    x_T = sde.prior_sample(jax.random.key(6), (8, 2))
    for smp in (S.ODEEuler(1), S.DPMSolverPP(2, 3), S.DDIM(1), S.EulerMaruyama(2),
                S.PredictorCorrector(2, S.AncestralPredictor())):
        x = S.sample(smp, sf, sde, jax.random.key(7), x_T, denoise=True).samples
        assert np.all(np.isfinite(np.asarray(x))), type(smp).__name__


# --- likelihood -----------------------------------------------------------------------------------
def test_ode_likelihood_exact_trace_matches_the_analytic_density():
    sde = FlowMatchingPath()
    gm = mixture_b()
    x = gm.sample(jax.random.key(3), 4, jnp.float32(sde.eps), sde)
    p_T = lambda z: gm.log_prob(z, jnp.float32(sde.T), sde)  # noqa: E731
    logp, nfe = log_likelihood(gm.score_fn(sde), sde, jax.random.key(0), x, trace="exact", terminal_logp=p_T,
                               batching="joint", quadrature=3)
    err = np.abs(np.asarray(logp - gm.log_prob(x, jnp.float32(sde.eps), sde))) / gm.dim
    assert err.max() < 1e-3, err
    assert np.all(np.asarray(nfe) > 0)

"""Consistency models (scoresde.consistency) against closed forms.

Oracle: Gaussian data N(mu, s2 I), whose probability-flow map from t to r is linear,
x_r = alpha_r mu + sqrt(c_r / c_t) (x_t - alpha_t mu), c = alpha^2 s2 + sigma^2, so its exact
consistency function is f*(x, t) = that map with r = eps. Tolerances are stated per test.
"""

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import enable_x64

from helpers import fitted_order
from scoresde import FittedGrid, FlowMatchingPath, GaussianMixture, VPSDE, sample
from scoresde.consistency import (
    ConsistencyParameterization, ConsistencySampler, ECTPairs, ICTPairs, KarrasPairs, PseudoHuber, SquaredL2,
    TruncatedLogSNRGrid, consistency_fn_from_network, consistency_loss, teacher_step,
)

MU, S2 = jnp.array([1.0, -0.5]), 0.25


def _c(sde, t):
    return sde.alpha(t) ** 2 * S2 + sde.sigma(t) ** 2


def gauss_flow(sde, x, t, r):
    """Exact probability-flow map of N(MU, S2 I) data from time t to time r (t, r: (batch,))."""
    a_t, a_r = sde.alpha(t)[:, None], sde.alpha(r)[:, None]
    return a_r * MU + jnp.sqrt(_c(sde, r) / _c(sde, t))[:, None] * (x - a_t * MU)


def exact_consistency_fn(sde):
    return lambda x, t: gauss_flow(sde, x, jnp.broadcast_to(t, x.shape[:1]),
                                   jnp.full(x.shape[:1], sde.eps, x.dtype))


def _gauss():
    return GaussianMixture.isotropic(jnp.array([1.0]), MU[None], S2)


@pytest.mark.parametrize("sde", [VPSDE(), FlowMatchingPath()], ids=["vp", "flow_matching"])
def test_boundary_condition_holds_for_any_network(sde):
    param = ConsistencyParameterization(sigma_data=0.7)
    net = lambda x, t: 3.0 * jnp.sin(x) + t[:, None] + 5.0  # noqa: E731 (anything nonzero)
    f = consistency_fn_from_network(net, sde, param)
    x = jax.random.normal(jax.random.key(0), (16, 2)) * 3
    np.testing.assert_array_equal(f(x, sde.eps), x)
    c_skip, c_out, c_in, _ = param.coefficients(jnp.asarray(sde.eps, jnp.float32), sde)
    assert float(c_skip) == 1.0 and float(c_out) == 0.0
    # away from eps the network matters, and c_skip -> 0, c_out -> sigma_data at large noise
    assert float(jnp.max(jnp.abs(f(x, 0.5) - x))) > 0.1
    c_skip, c_out, _, _ = param.coefficients(jnp.asarray(sde.T, jnp.float32), sde)
    assert float(c_skip) < 1e-3 and abs(float(c_out) - 0.7) < 1e-2


def test_teacher_step_matches_the_exact_ode_map_with_second_order():
    """Heun in sh from t to r against the exact Gaussian map (float64): the error of a step split
    into k = 8, 16, 32 substeps falls as k^-2 (fitted slope within 0.25 of 2) and is below 3e-3
    (RMS, on a step from t = 0.8 to 0.05) at k = 32; DPM-Solver++(2S) is second order too and
    more accurate at the same k."""
    with enable_x64():
        sde = VPSDE()
        gm = _gauss()
        x_t = gm.sample(jax.random.key(1), 64, 0.8, sde).astype(jnp.float64)
        t, r = jnp.full((64,), 0.8), jnp.full((64,), 0.05)
        exact = gauss_flow(sde, x_t, t, r)
        ks = (8, 16, 32)
        errs = [float(jnp.sqrt(jnp.mean((teacher_step(gm.score_fn(sde), sde, x_t, t, r, substeps=k) - exact) ** 2)))
                for k in ks]
        euler = teacher_step(gm.score_fn(sde), sde, x_t, t, r, solver="euler", substeps=16)
        dpm = [float(jnp.sqrt(jnp.mean((teacher_step(gm.score_fn(sde), sde, x_t, t, r, solver="dpm2", substeps=k)
                                        - exact) ** 2))) for k in ks]
    assert abs(fitted_order(ks, errs) - 2.0) < 0.25, errs
    assert abs(fitted_order(ks, dpm) - 2.0) < 0.25 and dpm[-1] < errs[-1], (dpm, errs)
    assert errs[-1] < 3e-3, errs
    assert float(jnp.sqrt(jnp.mean((euler - exact) ** 2))) > 3 * errs[-1]  # Euler is first order


def test_distillation_loss_vanishes_at_the_exact_consistency_function():
    """With the exact score and an accurate teacher (8 Heun substeps), the exact f* has (near) zero
    distillation loss: below 1e-3 of the loss of f* perturbed by 5% sigma (what remains is the
    teacher's discretisation error)."""
    sde = VPSDE()
    gm = _gauss()
    fstar = exact_consistency_fn(sde)
    x0 = gm.sample(jax.random.key(2), 512)
    kw = dict(pairs=KarrasPairs(8), score_fn=gm.score_fn(sde), substeps=8)
    loss, per = consistency_loss(fstar, fstar, sde, jax.random.key(3), x0, **kw)
    bad = lambda x, t: fstar(x, t) * (1 + 0.05 * sde.sigma(t)[:, None])  # noqa: E731
    loss_bad, _ = consistency_loss(bad, fstar, sde, jax.random.key(3), x0, **kw)
    assert per.shape == (512,) and float(loss) < 1e-3 * float(loss_bad), (loss, loss_bad)
    # training (no teacher) uses the same noise at t and r: its loss at f* is a nonzero estimate
    loss_ct, _ = consistency_loss(fstar, fstar, sde, jax.random.key(3), x0, pairs=KarrasPairs(8))
    assert float(loss_ct) > 100 * float(loss)
    assert float(consistency_loss(bad, fstar, sde, jax.random.key(3), x0, distance=PseudoHuber(), **kw)[0]) > 0


def test_sampler_one_step_is_the_exact_map_and_multistep_draws_the_law():
    sde = VPSDE()
    fstar = exact_consistency_fn(sde)
    x_T = sde.prior_sample(jax.random.key(4), (4096, 2))
    one = sample(ConsistencySampler(1), fstar, sde, jax.random.key(5), x_T)
    ref = gauss_flow(sde, x_T, jnp.full((4096,), sde.T), jnp.full((4096,), sde.eps))
    np.testing.assert_allclose(one.samples, ref, rtol=1e-5, atol=1e-5)
    assert int(one.nfe) == 1
    three = sample(ConsistencySampler(3), fstar, sde, jax.random.key(5), x_T, trajectory=True)
    assert int(three.nfe) == 3 and three.trajectory.shape == (4, 4096, 2)
    # fresh noise through the exact kernel keeps the exact law: moments within 4 standard errors
    x = np.asarray(three.samples, np.float64)
    v = float(_c(sde, jnp.float32(sde.eps)))
    a = float(sde.alpha(sde.eps))
    assert np.all(np.abs(x.mean(0) - a * np.asarray(MU)) < 4 * np.sqrt(v / x.shape[0]))
    assert np.all(np.abs(x.var(0) / v - 1) < 4 * np.sqrt(2 / x.shape[0]))
    det = sample(ConsistencySampler(3, stochastic=False), fstar, sde, jax.random.key(6), x_T).samples
    det2 = sample(ConsistencySampler(3, stochastic=False), fstar, sde, jax.random.key(7), x_T).samples
    np.testing.assert_array_equal(det, det2)  # a deterministic map of x_T
    with pytest.raises(ValueError, match="denoise=True needs a score function"):
        sample(ConsistencySampler(1), fstar, sde, jax.random.key(5), x_T, denoise=True)


def test_sampler_partial_renoising_mixes_implied_and_fresh_noise():
    """gamma = 0 / 1 are the implied / fresh settings bit for bit; in between the re-noised
    state is x_in = a x + sqrt(v) (sqrt(1 - gamma^2) z_hat + gamma z), read back through the
    exact (affine) consistency function at the second time (rtol = atol = 1e-4; a linear
    instead of the quadrature mix, (1 - gamma) z_hat, is off by 0.4 z_hat at gamma = 0.6)."""
    sde = VPSDE()
    fstar = exact_consistency_fn(sde)
    x_T = sde.prior_sample(jax.random.key(8), (512, 2))
    key = jax.random.key(9)

    def run(smp):
        return sample(smp, fstar, sde, key, x_T, trajectory=True).trajectory

    implied, fresh = run(ConsistencySampler(2, stochastic=False)), run(ConsistencySampler(2))
    np.testing.assert_array_equal(run(ConsistencySampler(2, stochastic=False, gamma=0.0)), implied)
    np.testing.assert_array_equal(run(ConsistencySampler(2, gamma=1.0)), fresh)
    g = 0.6
    mixed = run(ConsistencySampler(2, gamma=g))
    u = ConsistencySampler(2).grid(sde, 2)[1]
    eps = jnp.float32(sde.eps)
    a = sde.transition(eps, u)[0]
    k = jnp.sqrt(_c(sde, eps) / _c(sde, u))  # f*(x, u) = alpha_eps MU + k (x - alpha_u MU)

    def x_in(traj):  # the state the second evaluation saw, minus a x_1 (x_1: the first output)
        np.testing.assert_array_equal(traj[1], implied[1])
        return sde.alpha(u) * MU + (traj[2] - sde.alpha(eps) * MU) / k - a * traj[1]

    np.testing.assert_allclose(x_in(mixed), np.sqrt(1 - g**2) * x_in(implied) + g * x_in(fresh), rtol=1e-4, atol=1e-4)
    for bad, match in (({"gamma": 1.5}, "gamma=1.5 must be a number in"), ({"gamma": True}, "gamma=True"),
                       ({"gamma": 0.3, "stochastic": False}, "use stochastic=True for gamma > 0"),
                       ({"gamma": 0.0}, "stochastic=False for gamma = 0")):
        with pytest.raises(ValueError, match=match):
            ConsistencySampler(2, **bad)


def test_truncated_start_grid_and_sampler():
    """TruncatedLogSNRGrid puts lambda(t_i) at lambda(T) + u_i (lambda(eps) - lambda(T)) (rtol
    1e-5), equals FittedGrid when u_0 = 0, and the sampler's first evaluation is at t_0 < T:
    one step is the exact map f*(x_T, t_0) to rtol = atol = 1e-5."""
    sde = VPSDE()
    fr = (0.3, 0.5, 1.0)
    t = TruncatedLogSNRGrid(fr)(sde, 2)
    l0, l1 = sde.log_snr(jnp.float32(sde.T)), sde.log_snr(jnp.float32(sde.eps))
    np.testing.assert_allclose(sde.log_snr(t[:2]), l0 + jnp.asarray(fr[:2]) * (l1 - l0), rtol=1e-5)
    assert float(t[-1]) == np.float32(sde.eps) and float(t[0]) < sde.T
    np.testing.assert_array_equal(TruncatedLogSNRGrid((0.0, 0.4, 1.0))(sde, 2),
                                  FittedGrid(jnp.asarray([0.0, 0.4, 1.0]))(sde, 2))
    fstar = exact_consistency_fn(sde)
    x_T = sde.prior_sample(jax.random.key(10), (256, 2))
    one = sample(ConsistencySampler(1, grid=TruncatedLogSNRGrid((0.3, 1.0))), fstar, sde, jax.random.key(0), x_T)
    ref = gauss_flow(sde, x_T, jnp.full((256,), t[0]), jnp.full((256,), sde.eps))
    np.testing.assert_allclose(one.samples, ref, rtol=1e-5, atol=1e-5)
    for bad in ((0.5, 0.3, 1.0), (-0.1, 1.0), (0.2, 0.9), [0.0, 1.0]):
        with pytest.raises(ValueError, match="must be a tuple of log-SNR fractions"):
            TruncatedLogSNRGrid(bad)
    with pytest.raises(ValueError, match="has 2 steps"):
        TruncatedLogSNRGrid(fr)(sde, 3)

def test_time_pairs():
    sde = VPSDE()
    key = jax.random.key(8)
    for pairs in (KarrasPairs(18), ICTPairs(total_steps=1000), ECTPairs(stage_steps=100)):
        t, r, w = pairs(key, 256, sde, 150)
        assert np.all(np.asarray(t) > np.asarray(r)) and np.all(np.asarray(r) >= sde.eps - 1e-7)
        assert np.all(np.asarray(t) <= sde.T + 1e-6) and np.all(np.asarray(w) > 0), type(pairs).__name__
    ict = ICTPairs(total_steps=800, s0=10, s1=80)  # 4 stages of 200 steps: N = 11, 21, 41, 81
    assert [int(ict.n_points(k)) for k in (0, 199, 200, 400, 799, 5000)] == [11, 11, 21, 41, 81, 81]
    # ECT: at stage 0, r = eps (the denoising loss); from stage 3 on (ratio (1 + 8 sigmoid(-sh)) / q^a
    # < 1) sh_t - sh_r halves per stage at fixed sh_t (same key, same t): w doubles
    ect = ECTPairs(stage_steps=100)
    _, r0, _ = ect(key, 64, sde, 0)
    np.testing.assert_allclose(r0, sde.eps, rtol=1e-5)
    t3, r3, w3 = ect(key, 64, sde, 300)
    t4, r4, w4 = ect(key, 64, sde, 400)
    np.testing.assert_array_equal(t3, t4)
    keep = np.asarray(r3) > 2 * sde.eps  # away from the clip at eps
    assert keep.sum() > 32
    np.testing.assert_allclose(np.asarray(w4)[keep], 2 * np.asarray(w3)[keep], rtol=2e-2)
    t5, r5, w5 = ECTPairs(stage_steps=100, weight="uniform")(key, 64, sde, 300)
    np.testing.assert_array_equal(t5, t3)
    np.testing.assert_array_equal(w5, np.ones(64))
    with pytest.raises(ValueError, match="n_points must be an integer >= 2"):
        KarrasPairs(1)
    with pytest.raises(ValueError, match="weight must be 'inverse_dt'"):
        ECTPairs(weight="ect")


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, t):
        h = jnp.concatenate([x, t[:, None]], -1)
        return nn.Dense(2)(nn.silu(nn.Dense(32)(h)))


def test_tiny_end_to_end_distillation():
    """A 2-layer network distilled for 200 steps from the exact Gaussian score: the loss falls
    and its 1-step samples move 3x closer to the exact probability-flow map than at init."""
    sde = VPSDE()
    gm = _gauss()
    model = _Tiny()
    params = model.init(jax.random.key(9), jnp.zeros((1, 2)), jnp.zeros((1,)))
    param = ConsistencyParameterization(sigma_data=0.6)
    f_of = lambda p: consistency_fn_from_network(lambda x, t: model.apply(p, x, t), sde, param)  # noqa: E731
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state, key):
        kx, kl = jax.random.split(key)
        x0 = gm.sample(kx, 256)
        lf = lambda p: consistency_loss(f_of(p), f_of(jax.lax.stop_gradient(p)), sde, kl, x0,  # noqa: E731
                                        pairs=KarrasPairs(6), score_fn=gm.score_fn(sde), substeps=2)[0]
        loss, g = jax.value_and_grad(lf)(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, loss

    x_T = sde.prior_sample(jax.random.key(10), (512, 2))
    ref = gauss_flow(sde, x_T, jnp.full((512,), sde.T), jnp.full((512,), sde.eps))
    run = eqx.filter_jit(lambda p: sample(ConsistencySampler(1), f_of(p), sde, jax.random.key(0), x_T).samples)
    err0 = float(jnp.sqrt(jnp.mean((run(params) - ref) ** 2)))
    losses = []
    for i in range(200):
        params, state, loss = step(params, state, jax.random.key(100 + i))
        losses.append(float(loss))
    err1 = float(jnp.sqrt(jnp.mean((run(params) - ref) ** 2)))
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20]), (losses[:3], losses[-3:])
    assert err1 < err0 / 3, (err0, err1)
    assert isinstance(SquaredL2()(x_T, ref), jax.Array)


def test_diffusion_model_as_consistency_function_equals_its_edm_form():
    """consistency_fn_from_score(score) = consistency_fn_from_network(F) with F the EDM network
    output that gives the same denoiser, F = (D - c_skip^EDM x_hat) / c_out^EDM, written here
    independently in x_hat = x / alpha, sh = sigma / alpha for the Gaussian N(MU, S2 I):
    D = MU + S2 / (S2 + sh^2) (x_hat - MU) (float64: agreement to 1e-9); f(x, eps) = x exactly;
    far from eps (sh >> sh_min) f -> alpha(eps) D, the one-step denoiser."""
    from scoresde.consistency import consistency_fn_from_score

    with enable_x64():
        sde = VPSDE()
        sd = 0.5
        p = ConsistencyParameterization(sigma_data=sd)
        gm = GaussianMixture.isotropic(jnp.array([1.0], jnp.float64), MU[None].astype(jnp.float64), S2)
        f_score = consistency_fn_from_score(gm.score_fn(sde), sde, p)

        def net(x_in, c_noise):
            sh = jnp.exp(4.0 * c_noise)[:, None]
            xh = x_in * jnp.sqrt(sh**2 + sd**2)
            d = MU + S2 / (S2 + sh**2) * (xh - MU)
            return (d - sd**2 / (sh**2 + sd**2) * xh) / (sd * sh / jnp.sqrt(sh**2 + sd**2))

        f_net = consistency_fn_from_network(net, sde, p)
        x = 2.0 * jax.random.normal(jax.random.key(0), (64, 2), jnp.float64)
        t = jnp.linspace(sde.eps, sde.T, 64)
        np.testing.assert_allclose(np.asarray(f_score(x, t)), np.asarray(f_net(x, t)), rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(np.asarray(f_score(x, jnp.full((64,), sde.eps))), np.asarray(x))
        t_hi = jnp.full((64,), 0.9)
        sh = float(jnp.exp(-0.5 * sde.log_snr(0.9)))
        d = MU + S2 / (S2 + sh**2) * (x / sde.alpha(t_hi)[:, None] - MU)
        # f - alpha_eps D: the scalings differ by the shift sh_min, a relative O(sh_min / sh) (1.7e-4
        # here; measured 1.9e-4): tolerance 3 sh_min / sh
        sh_min = float(jnp.exp(-0.5 * sde.log_snr(sde.eps)))
        np.testing.assert_allclose(np.asarray(f_score(x, t_hi)), np.asarray(sde.alpha(sde.eps) * d),
                                   rtol=0, atol=3 * sh_min / sh)

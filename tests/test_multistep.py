"""Tests of the multistep solvers (scoresde.sampling.multistep) against closed forms.

Oracles: the exact probability-flow map of Gaussian data N(mu, s2 I),
x_eps = alpha_e mu + sqrt(v_e / v_T) (x_T - alpha_T mu), v = alpha^2 s2 + sigma^2, which
for a point mass (s2 = 0) is what every exponential integrator here must reproduce to
round-off (D and eps are constant along its trajectories); Tweedie's estimate of a
Gaussian mixture; DPM-Solver++ as implemented before the multistep core (a copy of that
loop below). Tolerances: 1e-9 relative where the answer is exact in float64, float32
round-off (2e-5) for float32 comparisons; convergence orders are least-squares slopes of
log error against log steps (tests/helpers.fitted_order) within 0.25 of the declared
order, in float64.

Compiled loops are shared: the solvers take their weights as inputs, so every solver
with the same step count, output kind (D or eps) and score function reuses one compiled
scan; the score functions below are module-level so that this sharing holds.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from helpers import fitted_order
from scoresde import CosineVPSDE, GaussianMixture, SubVPSDE, VESDE, VPSDE
from scoresde.sampling import EDMGrid, LogSNRGrid, UniformTimeGrid, fast, sample, tweedie_denoise
from scoresde.sampling.multistep import DEIS, IPNDM, DPMSolverPP, DPMSolverPPUpdate, UniC, UniP, UniPC

KEY = jax.random.key(0)
SDES = {"vp": VPSDE(), "cosine": CosineVPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}

# every solver and option (n -> sampler), all on the log-SNR grid; the other grids below
SOLVERS = {
    "dpm1": lambda n: DPMSolverPP(n, 1),
    "dpm2": lambda n: DPMSolverPP(n, 2),
    "dpm3": lambda n: DPMSolverPP(n, 3),
    "dpm3_always": lambda n: DPMSolverPP(n, 3, lower_order_final="always"),
    "dpm3_never": lambda n: DPMSolverPP(n, 3, lower_order_final=False),
    "dpm2_denoise": lambda n: DPMSolverPP(n, 2, final="denoise"),
    "unipc3_bh2": lambda n: UniPC(n, grid=LogSNRGrid()),
    "unipc3_bh2_never": lambda n: UniPC(n, grid=LogSNRGrid(), lower_order_final=False),
    "unipc3_bh1": lambda n: UniPC(n, UniP(3, "bh1"), UniC("bh1"), LogSNRGrid()),
    "unipc2_bh1_never": lambda n: UniPC(n, UniP(2, "bh1"), UniC("bh1"), LogSNRGrid(), lower_order_final="never"),
    "unipc1_bh2": lambda n: UniPC(n, UniP(1), UniC(), LogSNRGrid()),
    "unip3": lambda n: UniPC(n, UniP(3), None, LogSNRGrid()),
    "unipc_dpm3": lambda n: UniPC(n, DPMSolverPPUpdate(3), UniC("bh1"), LogSNRGrid(), lower_order_final="below_10"),
    "unipc3_denoise": lambda n: UniPC(n, grid=LogSNRGrid(), final="denoise"),
    "deis1": lambda n: DEIS(n, 1, LogSNRGrid()),
    "deis2": lambda n: DEIS(n, 2, LogSNRGrid()),
    "deis3": lambda n: DEIS(n, 3, LogSNRGrid(), lower_order_final="always"),
    "deis3_denoise": lambda n: DEIS(n, 3, LogSNRGrid(), final="denoise"),
    "ipndm1": lambda n: IPNDM(n, 1, LogSNRGrid()),
    "ipndm4": lambda n: IPNDM(n, 4, LogSNRGrid()),
    "ipndm3_always": lambda n: IPNDM(n, 3, LogSNRGrid(), lower_order_final=True),
    "ipndm4_denoise": lambda n: IPNDM(n, 4, LogSNRGrid(), final="denoise"),
}
GRIDS = {"t": UniformTimeGrid(), "edm": EDMGrid(), "edm_rho1": EDMGrid(1.0)}

# --- float32: a 2-D two-component mixture ---------------------------------------------------
GM = GaussianMixture.isotropic(jnp.array([0.3, 0.7]), jnp.array([[-2.0, 0.0], [1.5, 1.0]]),
                               jnp.array([0.3, 0.5]) ** 2)
_SCORE = {name: GM.score_fn(sde) for name, sde in SDES.items()}
_CALLS = [0]


def _count():
    _CALLS[0] += 1


def counted_score(x, t, sde):
    """The mixture's exact score; each batched call adds one to _CALLS when it runs."""
    jax.debug.callback(_count)
    return GM.score(x, t, sde)


_COUNTED = {name: (lambda x, t, s=sde: counted_score(x, t, s)) for name, sde in SDES.items()}


def _check_run(smp, sde_name, x_T, what=""):
    """Finite at every step, NFE = n, the trajectory from x_T to the result (run called
    directly: `sample`'s input checks trace the score, which 10^3 runs cannot afford)."""
    keys = jax.random.split(KEY, x_T.shape[0])
    x, nfe, traj = smp.run(_SCORE[sde_name], SDES[sde_name], keys, x_T, None, True)
    traj, name = np.asarray(traj), f"{what} n={smp.n_steps} on {sde_name}"
    assert np.all(np.isfinite(traj)), name
    assert int(nfe) == smp.n_steps * smp.evals_per_step, name
    assert traj.shape == (smp.n_steps + 1,) + x_T.shape, name
    np.testing.assert_array_equal(traj[0], np.asarray(x_T))
    np.testing.assert_array_equal(traj[-1], np.asarray(x))


def test_one_to_50_steps():
    """n = 1..50 for one solver of each kind (UniP + UniC, DPM-Solver++ 3M, DEIS, iPNDM, the
    denoise ending): finite at every step, NFE = n, the trajectory from x_T to the result.
    (Every step count shares one compiled step per score function; only the grid is
    compiled per n.) That the last time is eps is checked exactly in
    test_point_mass_is_exact_and_ends_at_eps."""
    x_T = VPSDE().prior_sample(jax.random.key(1), (4, 2))
    for n in range(1, 51):
        for name in ("unipc3_bh2", "dpm3", "deis3", "ipndm4", "unipc3_denoise"):
            _check_run(SOLVERS[name](n), "vp", x_T, name)


@pytest.mark.parametrize("grid", ["logsnr"] + list(GRIDS))
def test_every_solver_and_option_few_steps(grid):
    x_T = VPSDE().prior_sample(jax.random.key(2), (4, 2))
    for n in (1, 2, 3, 4, 5, 9, 10, 11, 16):
        for name, make in SOLVERS.items():
            smp = make(n) if grid == "logsnr" else dataclasses.replace(make(n), grid=GRIDS[grid])
            _check_run(smp, "vp", x_T, name)


@pytest.mark.parametrize("sde_name", ["cosine", "subvp", "ve"])
def test_other_sdes_few_steps(sde_name):
    x_T = SDES[sde_name].prior_sample(jax.random.key(3), (4, 2))
    for n in (1, 2, 5):
        for name, make in SOLVERS.items():
            _check_run(make(n), sde_name, x_T, name)


def _run_counted(smp, x_T):
    _CALLS[0] = 0
    res = sample(smp, _COUNTED["vp"], SDES["vp"], KEY, x_T)
    res.samples.block_until_ready()
    return res, _CALLS[0]


def test_nfe_is_the_number_of_score_calls():
    """The reported NFE equals the score calls counted while the program runs (a
    jax.debug.callback in the score), for every solver and both endings."""
    x_T = VPSDE().prior_sample(jax.random.key(4), (4, 2))
    for n in (1, 2, 3, 7):
        for name, make in SOLVERS.items():
            res, calls = _run_counted(make(n), x_T)
            assert int(res.nfe) == calls == n, (name, n, int(res.nfe), calls)



def test_fast_spends_nfe_and_follows_its_table():
    """fast(nfe) spends exactly nfe counted score calls at every budget, tabulated or not,
    and picks the entry of the largest tabulated budget not above nfe (5 below 5)."""
    x_T = VPSDE().prior_sample(jax.random.key(4), (4, 2))
    for nfe in (1, 5, 12, 20, 50, 100):
        res, calls = _run_counted(fast(nfe), x_T)
        assert int(res.nfe) == calls == nfe, (nfe, int(res.nfe), calls)
    assert isinstance(fast(3), UniPC) and isinstance(fast(3).grid, UniformTimeGrid)
    assert isinstance(fast(12), IPNDM) and isinstance(fast(12).grid, LogSNRGrid)
    assert isinstance(fast(20), DEIS) and fast(20).order == 3 and isinstance(fast(49).grid, UniformTimeGrid)
    assert isinstance(fast(200), UniPC) and fast(200).lower_order_final == "never"
    assert fast(10, grid=EDMGrid()).grid == EDMGrid()
    with pytest.raises(ValueError, match="nfe"):
        fast(0)

def test_one_step_is_tweedie_or_ddim():
    """One step with final="denoise" returns Tweedie's D(x_T, T) (the mixture's denoiser;
    from the score in float32 it cancels x + sigma^2 score at alpha_T = 0.0066, so 1e-3);
    with final="ode" it takes one DDIM step to eps, x = (s_e/s_T) x_T + a_e (1 - e^-h) D."""
    sde = VPSDE()
    x_T = sde.prior_sample(jax.random.key(5), (4, 2))
    D = GM.denoise(x_T, sde.T, sde)
    D_score = tweedie_denoise(_SCORE["vp"], sde, x_T, sde.T)
    np.testing.assert_allclose(D_score, D, rtol=1e-3, atol=1e-3)
    h = 0.5 * (sde.log_snr(sde.eps) - sde.log_snr(sde.T))
    ddim = sde.sigma(sde.eps) / sde.sigma(sde.T) * x_T - sde.alpha(sde.eps) * jnp.expm1(-h) * D
    for name, make in SOLVERS.items():
        den, calls = _run_counted(dataclasses.replace(make(1), final="denoise"), x_T)
        assert calls == 1 and int(den.nfe) == 1, name
        np.testing.assert_allclose(den.samples, D_score, rtol=1e-6, atol=1e-6, err_msg=name)
        if not make(1).final == "denoise":
            ode, _ = _run_counted(make(1), x_T)
            np.testing.assert_allclose(ode.samples, ddim, rtol=1e-3, atol=1e-3, err_msg=name)


# --- float64: Gaussian data with per-example (mu, s2) as conditioning -----------------------
def gauss_score(x, t, cond, sde):
    """Exact score of N(mu, s2 I) data: -(x - alpha mu) / (alpha^2 s2 + sigma^2)."""
    mu, s2 = cond
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    return -(x - a * mu) / (a**2 * s2[:, None] + s**2)


_GAUSS = {name: (lambda x, t, c, s=sde: gauss_score(x, t, c, s)) for name, sde in SDES.items()}


def _flow(sde, mu, s2, x_T):
    """Exact probability-flow map T -> eps of N(mu, s2 I) data (s2 per example)."""
    v = lambda t: sde.alpha(t) ** 2 * s2[:, None] + sde.sigma(t) ** 2
    return sde.alpha(sde.eps) * mu + jnp.sqrt(v(sde.eps) / v(sde.T)) * (x_T - sde.alpha(sde.T) * mu)


def _gauss_case(sde, s2, batch=16, seed=8):
    x_T = sde.prior_sample(jax.random.key(seed), (batch, 2), jnp.float64)
    mu = jnp.broadcast_to(jnp.array([1.0, -0.5]), (batch, 2))
    s2 = jnp.full((batch,), s2)
    return x_T, (mu, s2), _flow(sde, mu, s2, x_T)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_point_mass_is_exact_and_ends_at_eps(sde_name):
    """For a point mass c, D = c and eps = (x - alpha c)/sigma are constant along the exact
    trajectories, so every solver here must return alpha_e c + sigma_e z (z = (x_T -
    alpha_T c)/sigma_T) at t = eps, to round-off, and c itself with final="denoise"."""
    with enable_x64():
        sde = SDES[sde_name]
        x_T, cond, exact = _gauss_case(sde, 0.0)
        for name, make in SOLVERS.items():
            for n in (1, 7):
                smp = make(n)
                out = sample(smp, _GAUSS[sde_name], sde, KEY, x_T, cond=cond).samples
                want = cond[0] if smp.final == "denoise" else exact
                np.testing.assert_allclose(out, want, rtol=1e-9, atol=1e-9 * float(sde.prior_std),
                                           err_msg=f"{name}, n={n}")


def test_order_one_solvers_coincide():
    """DDIM in its four forms (data prediction: DPM-Solver++ 1, UniP-1; noise prediction:
    DEIS-1, iPNDM-1) is one map."""
    with enable_x64():
        sde = VPSDE()
        x_T, cond, _ = _gauss_case(sde, 0.04)
        outs = [sample(s, _GAUSS["vp"], sde, KEY, x_T, cond=cond).samples
                for s in (DPMSolverPP(9, 1, EDMGrid()), UniPC(9, UniP(1), None, EDMGrid()),
                          DEIS(9, 1, EDMGrid()), IPNDM(9, 1, EDMGrid()))]
    for o in outs[1:]:
        np.testing.assert_allclose(o, outs[0], rtol=1e-10, atol=1e-12)


def test_unip2_bh2_is_dpmpp2m_and_unic_corrects_it():
    """UniP-2 with B(h) = e^h - 1 is DPM-Solver++ 2M (Zhao et al. 2023, Sec. 3.2), also as
    UniPC's DPM-Solver++ predictor; UniC after it (order 3) cuts the error of 64 steps."""
    with enable_x64():
        sde = VPSDE()
        x_T, cond, exact = _gauss_case(sde, 0.04)
        run = lambda s: sample(s, _GAUSS["vp"], sde, KEY, x_T, cond=cond).samples
        for n, grid in ((12, LogSNRGrid()), (64, EDMGrid())):
            dpm = run(DPMSolverPP(n, 2, grid, lower_order_final="never"))
            np.testing.assert_allclose(run(UniPC(n, UniP(2, "bh2"), None, grid, lower_order_final="never")), dpm, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(run(UniPC(n, DPMSolverPPUpdate(2), None, grid, lower_order_final="never")), dpm, rtol=1e-10,
                                       atol=1e-12)
        with_c = run(UniPC(64, DPMSolverPPUpdate(2), UniC("bh2"), EDMGrid(), lower_order_final="never"))
        err_c, err = (float(jnp.sqrt(jnp.mean((x - exact) ** 2))) for x in (with_c, dpm))
    assert err_c < 0.4 * err, (err_c, err)  # measured 0.29


# DPM-Solver++ as it was before the multistep core (scoresde/sampling/fewstep.py at bfe1bb1),
# the oracle for "outputs unchanged": a step of every order formed and the order picked.
def _dpmpp_before(score_fn, sde, x_T, n, order, grid, lower_order_final, cond):
    ts = grid(sde, n, x_T.dtype)
    lam = 0.5 * sde.log_snr(ts)
    al, sg = sde.alpha(ts), sde.sigma(ts)
    i = jnp.arange(n)
    orders = jnp.minimum(order, i + 1)
    if lower_order_final and n < 10:
        orders = jnp.minimum(orders, n - i)
    D = lambda x, t: tweedie_denoise(lambda y, s: score_fn(y, s, cond), sde, x, t)

    def body(carry, i):
        x, m1, m2 = carry
        m0 = D(x, ts[i])
        h = lam[i + 1] - lam[i]
        h0 = jnp.where(i >= 1, lam[i] - lam[jnp.maximum(i - 1, 0)], h)
        h1 = jnp.where(i >= 2, lam[jnp.maximum(i - 1, 0)] - lam[jnp.maximum(i - 2, 0)], h)
        a, phi1 = al[i + 1], jnp.expm1(-h)
        x1 = (sg[i + 1] / sg[i]) * x - a * phi1 * m0
        r0, r1 = h0 / h, h1 / h
        D1_0, D1_1 = (m0 - m1) / r0, (m1 - m2) / r1
        x2 = x1 - 0.5 * a * phi1 * D1_0
        D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)
        D2 = (D1_0 - D1_1) / (r0 + r1)
        phi2 = phi1 / h + 1.0
        x3 = x1 + a * phi2 * D1 - a * (phi2 / h - 0.5) * D2
        o = orders[i]
        return (jnp.where(o == 1, x1, jnp.where(o == 2, x2, x3)), m0, m1), None

    zeros = jnp.zeros_like(x_T)
    return jax.lax.scan(body, (x_T, zeros, zeros), jnp.arange(n))[0][0]


@pytest.mark.parametrize("n, order, grid, lof", [
    (5, 3, LogSNRGrid(), True),        # orders (1, 2, 3, 2, 1): every branch
    (12, 3, UniformTimeGrid(), False),
])
def test_dpmpp_unchanged(n, order, grid, lof):
    """DPMSolverPP gives what it gave before the refactor (float64, Gaussian data with
    curvature so that every order's terms matter), at the settings it had then."""
    with enable_x64():
        sde = VPSDE()
        x_T, cond, _ = _gauss_case(sde, 0.04)
        new = sample(DPMSolverPP(n, order, grid, lower_order_final="below_10" if lof else "never"), _GAUSS["vp"], sde,
                     KEY, x_T, cond=cond).samples
        old = _dpmpp_before(_GAUSS["vp"], sde, x_T, n, order, grid, lof, cond)
    np.testing.assert_allclose(new, old, rtol=1e-10, atol=1e-12)


def test_dpmpp_default_unchanged_in_float32():
    sde = VPSDE()
    x_T = sde.prior_sample(jax.random.key(5), (64, 2))
    cond = (jnp.broadcast_to(jnp.array([1.0, -0.5]), (64, 2)), jnp.full((64,), 0.04))
    for smp in (DPMSolverPP(10),):
        new = sample(smp, _GAUSS["vp"], sde, KEY, x_T, cond=cond).samples
        old = _dpmpp_before(_GAUSS["vp"], sde, x_T, smp.n_steps, smp.order, smp.grid, True, cond)
        np.testing.assert_allclose(new, old, rtol=2e-5, atol=2e-5)


# --- convergence orders ---------------------------------------------------------------------
ORDER_NS = (64, 128, 256, 512)
ORDER_CASES = {
    # DPM-Solver++ 3M converges at 2 (see DPMSolverPP): expected slope 2, not its name's 3
    "dpm1": (DPMSolverPP, dict(order=1), 1),
    "dpm2": (DPMSolverPP, dict(order=2), 2),
    "dpm3": (DPMSolverPP, dict(order=3), 2),
    "unip1": (UniPC, dict(predictor=UniP(1), corrector=None), None),
    "unip2_bh1": (UniPC, dict(predictor=UniP(2, "bh1"), corrector=None), None),
    "unip2_bh2": (UniPC, dict(predictor=UniP(2, "bh2"), corrector=None), None),
    "unip3_bh1": (UniPC, dict(predictor=UniP(3, "bh1"), corrector=None), None),
    "unip3_bh2": (UniPC, dict(predictor=UniP(3, "bh2"), corrector=None), None),
    "unipc1_bh1": (UniPC, dict(predictor=UniP(1, "bh1"), corrector=UniC("bh1")), None),
    "unipc1_bh2": (UniPC, dict(predictor=UniP(1, "bh2"), corrector=UniC("bh2")), None),
    "unipc2_bh1": (UniPC, dict(predictor=UniP(2, "bh1"), corrector=UniC("bh1")), None),
    "unipc2_bh2": (UniPC, dict(predictor=UniP(2, "bh2"), corrector=UniC("bh2")), None),
    "unipc3_bh1": (UniPC, dict(predictor=UniP(3, "bh1"), corrector=UniC("bh1")), None),
    "unipc3_bh2": (UniPC, dict(predictor=UniP(3, "bh2"), corrector=UniC("bh2")), None),
    "dpm2_unic": (UniPC, dict(predictor=DPMSolverPPUpdate(2), corrector=UniC()), None),
    "deis1": (DEIS, dict(order=1), None),
    "deis2": (DEIS, dict(order=2), None),
    "deis3": (DEIS, dict(order=3), None),
    "ipndm1": (IPNDM, dict(max_order=1), None),
    "ipndm2": (IPNDM, dict(max_order=2), None),
    "ipndm4": (IPNDM, dict(max_order=4), None),
}


@pytest.fixture(scope="module")
def order_problem():
    """VP, N(mu, 0.04 I) data, EDM grid, no lowered final orders (the asymptotic order)."""
    with enable_x64():
        return _gauss_case(VPSDE(), 0.04)


@pytest.mark.parametrize("name", list(ORDER_CASES))
def test_convergence_order(name, order_problem):
    cls, kw, expected = ORDER_CASES[name]
    x_T, cond, exact = order_problem
    with enable_x64():
        errs = []
        for n in ORDER_NS:
            smp = cls(n, grid=EDMGrid(), lower_order_final="never", **kw)
            out = sample(smp, _GAUSS["vp"], VPSDE(), KEY, x_T, cond=cond).samples
            errs.append(float(jnp.sqrt(jnp.mean((out - exact) ** 2))))
    expected = smp.order if expected is None else expected
    p = fitted_order(ORDER_NS, errs)
    assert abs(p - expected) < 0.25, (name, p, expected, errs)


def test_ipndm_is_adams_bashforth_4_on_a_grid_uniform_in_sigma_hat():
    """On equal steps in sh = sigma/alpha (EDMGrid(rho=1)) iPNDM's fixed coefficients are
    Adams-Bashforth 4: slope 4 where the steps are small against the data scale (VE, sh up
    to 50, data std 1: dsh = 0.1 .. 0.025) and the warm-up starts where the flow is
    straight (its O(dsh^2) error there is ~1e-5 dsh^2)."""
    ns = (512, 1024, 2048)
    with enable_x64():
        sde = VESDE()
        x_T, cond, exact = _gauss_case(sde, 1.0)
        errs = [float(jnp.sqrt(jnp.mean((sample(IPNDM(n, grid=EDMGrid(1.0)), _GAUSS["ve"], sde, KEY, x_T,
                                               cond=cond).samples - exact) ** 2))) for n in ns]
    assert abs(fitted_order(ns, errs) - 4) < 0.25, errs


# --- traced grids, gradients, errors ----------------------------------------------------------
def test_traced_sde_matches_eager_and_has_gradients():
    """With the SDE traced (an argument of jit, differentiated) the weights are formed in
    jax.numpy inside the program; they agree with the eager float64 numpy weights, and
    the samples have finite, nonzero gradients with respect to the schedule (beta_max)."""
    x_T = VPSDE().prior_sample(jax.random.key(6), (8, 2))
    smps = (UniPC(6, grid=UniformTimeGrid()), DEIS(6))  # UniP + UniC (phi, Cramer), quadrature

    def outs(beta_max):
        sde = VPSDE(beta_max=beta_max)
        return [sample(m, lambda y, t: GM.score(y, t, sde), sde, KEY, x_T).samples for m in smps]

    traced, tangents = jax.jit(lambda b: jax.jvp(outs, (b,), (jnp.ones_like(b),)))(jnp.float32(20.0))
    for m, tr, eager, d in zip(smps, traced, outs(20.0), tangents):
        np.testing.assert_allclose(tr, eager, rtol=2e-5, atol=2e-5, err_msg=type(m).__name__)
        assert np.all(np.isfinite(np.asarray(d))) and float(jnp.abs(d).max()) > 0, d


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="n_steps must be an integer >= 1, got 0"):
        UniPC(0)
    with pytest.raises(ValueError, match=">= 1"):
        DEIS(-3)
    with pytest.raises(ValueError, match=">= 1"):
        IPNDM(True)
    with pytest.raises(ValueError, match=r"order \(DPM-Solver\+\+\) must be one of \(1, 2, 3\), got 4"):
        DPMSolverPP(10, 4)
    with pytest.raises(ValueError, match="order \\(tAB-DEIS\\) must be one of"):
        DEIS(10, 0)
    with pytest.raises(ValueError, match="UniP order"):
        UniP(4)
    with pytest.raises(ValueError, match="max_order"):
        IPNDM(10, 5)
    with pytest.raises(ValueError, match="variant must be one of"):
        UniC("bh3")
    with pytest.raises(ValueError, match=r"lower_order_final \(or None, True, False\) must be one of"):
        DEIS(10, lower_order_final="sometimes")
    with pytest.raises(ValueError, match="final must be one of"):
        UniPC(10, final="x0")
    with pytest.raises(TypeError, match="predictor must be"):
        UniPC(10, predictor=DEIS(3))
    with pytest.raises(TypeError, match="corrector must be"):
        UniPC(10, corrector=UniP())

"""Fitted time grids (scoresde.sampling.fitted): the fit lowers the error on fresh noise,
is deterministic given its key, round-trips through its file, and refuses another step
count. Exact mixture score (2-D, two components), DDIM with 3 steps from the uniform-t grid:
the fitted grid's paired RMSE on fresh noise is 0.60 against 0.75 (a wrong gradient or a
fit on the wrong target leaves it at or above the start)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import (DDIM, DPMSolverPP, EDMHeun, FittedGrid, GaussianMixture, ProbabilityFlowODE, SDEDPMSolverPP,
                      UniformTimeGrid, UniPC, VPSDE, fit_grid, sample)
from scoresde.parameterization import score_from_x0, x0_from_score
from scoresde.sampling.fitted import _VALIDATE_STREAM

SDE = VPSDE()


@pytest.fixture(scope="module")
def case():
    gm = GaussianMixture.isotropic(jnp.array([0.3, 0.7]), jnp.array([[-2.0, 0.0], [1.5, 1.0]]),
                                   jnp.array([0.3, 0.5]) ** 2)
    sf = gm.score_fn(SDE)
    smp = DDIM(3, grid=UniformTimeGrid())
    grid = fit_grid(smp, sf, SDE, jax.random.key(1), (2,), n_fit=64, init=UniformTimeGrid(), maxiter=30)
    x_T = SDE.prior_sample(jax.random.key(2), (512, 2))  # fresh noise, not the fitting noise
    ref = sample(ProbabilityFlowODE(), sf, SDE, jax.random.key(0), x_T).samples
    return sf, smp, grid, x_T, ref


def _rmse(x, ref):
    return float(jnp.sqrt(jnp.mean(jnp.sum((x - ref) ** 2, -1))))


def test_fit_lowers_error_on_fresh_noise(case):
    sf, smp, grid, x_T, ref = case
    before = _rmse(sample(smp, sf, SDE, jax.random.key(0), x_T).samples, ref)
    after = _rmse(sample(DDIM(3, grid=grid), sf, SDE, jax.random.key(0), x_T).samples, ref)
    assert after < 0.85 * before, (before, after)
    ts = np.asarray(grid(SDE, 3))
    assert ts[0] == np.float32(SDE.T) and ts[-1] == np.float32(SDE.eps) and np.all(np.diff(ts) < 0)
    assert grid.info["mse_fit"] < grid.info["mse_inits"]["UniformTimeGrid"]


def test_deterministic_and_round_trip(case, tmp_path):
    sf, smp, grid, _, _ = case
    again = fit_grid(smp, sf, SDE, jax.random.key(1), (2,), n_fit=64, init=UniformTimeGrid(), maxiter=30)
    np.testing.assert_array_equal(np.asarray(again.fractions), np.asarray(grid.fractions))
    path = str(tmp_path / "grid.json")
    grid.save(path)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # readable as any file the user writes
    loaded = FittedGrid.load(path)
    np.testing.assert_allclose(np.asarray(loaded(SDE, 3)), np.asarray(grid(SDE, 3)), rtol=1e-6)
    assert loaded.info["n_steps"] == 3


def test_wrong_step_count_and_bad_fractions_fail(case):
    _, _, grid, _, _ = case
    with pytest.raises(ValueError, match="n_steps=3"):
        grid(SDE, 5)
    with pytest.raises(ValueError, match="increase strictly"):
        FittedGrid(jnp.array([0.0, 0.6, 0.4, 1.0]))


def test_screened_fit_on_every_noise_is_the_plain_fit(case):
    """n_fit >= n_screen, one round: every screening noise is in the subset with weight
    n_rest / n_fit = 1, so the screened fit on N noises is the plain fit on the same N."""
    sf, smp, grid, _, _ = case
    screened = fit_grid(smp, sf, SDE, jax.random.key(1), (2,), n_fit=64, n_screen=64, rounds=1,
                        init=UniformTimeGrid(), maxiter=30)
    np.testing.assert_allclose(np.asarray(screened.fractions), np.asarray(grid.fractions), rtol=1e-5, atol=1e-6)
    assert screened.info["n_hard"] == [0]


def test_screened_loss_estimates_the_mse_over_all_screening_noises(case):
    """Two rounds: round 1's hard set is exactly the noises the round-0 grid (the same call
    with rounds=1) leaves >= hard_distance away, and the fit's reported loss, (1/N)[sum_hard
    + (n_rest/m) sum_subset], estimates the fitted grid's MSE over all N screening noises
    within 4 SE of the subset sampling (dropping the n_rest/m weight puts it > 6 SE low)."""
    sf, smp, _, _, _ = case
    n, m, h = 512, 64, 0.3
    kw = dict(n_fit=m, n_screen=n, hard_distance=h, init=UniformTimeGrid(), maxiter=5)
    g0 = fit_grid(smp, sf, SDE, jax.random.key(3), (2,), rounds=1, **kw)
    g = fit_grid(smp, sf, SDE, jax.random.key(3), (2,), rounds=2, **kw)
    x_T = SDE.prior_sample(jax.random.key(3), (n, 2))
    ref = np.asarray(sample(ProbabilityFlowODE(), sf, SDE, jax.random.key(0), x_T).samples)
    d0 = np.sqrt(np.sum((np.asarray(sample(DDIM(3, grid=g0), sf, SDE, jax.random.key(0), x_T).samples) - ref) ** 2, -1))
    hard = d0 >= h
    assert g.info["n_hard"] == [0, int(hard.sum())] and 0 < hard.sum() < n - m
    sq = np.sum((np.asarray(sample(DDIM(3, grid=g), sf, SDE, jax.random.key(0), x_T).samples) - ref) ** 2, -1)
    n_rest = n - hard.sum()
    se = n_rest / n * sq[~hard].std() / np.sqrt(m) * np.sqrt(1 - m / n_rest)
    assert abs(g.info["mse_fit"] - sq.mean()) < 4 * se, (g.info["mse_fit"], sq.mean(), se)
    assert n_rest / n * sq[~hard].mean() > 10 * se  # the easy noises' share is large enough to be checked


def test_screened_fit_bad_arguments():
    gm = GaussianMixture.isotropic(jnp.array([1.0]), jnp.zeros((1, 2)), jnp.array([1.0]))
    with pytest.raises(ValueError, match="hard_distance"):
        fit_grid(DDIM(3), gm.score_fn(SDE), SDE, jax.random.key(0), (2,), n_screen=16, hard_distance=-1.0)
    with pytest.raises(ValueError, match="n_screen"):
        fit_grid(DDIM(3), gm.score_fn(SDE), SDE, jax.random.key(0), (2,), n_screen=0)


def test_fit_for_a_denoise_final_sampler(case):
    """final="denoise" asks its grid for n_steps - 1 steps: the fit fits that grid (it used to fit
    n_steps and then fail), and the fitted grid runs in the same sampler; one evaluation has no grid."""
    sf, _, _, x_T, _ = case
    smp = DPMSolverPP(4, 2, grid=UniformTimeGrid(), final="denoise")
    grid = fit_grid(smp, sf, SDE, jax.random.key(1), (2,), n_fit=64, init=UniformTimeGrid(), maxiter=10)
    assert grid.n_steps == 3 and grid.info["mse_fit"] < grid.info["mse_inits"]["UniformTimeGrid"]
    res = sample(DPMSolverPP(4, 2, grid=grid, final="denoise"), sf, SDE, jax.random.key(0), x_T)
    assert int(res.nfe) == 4 and bool(jnp.all(jnp.isfinite(res.samples)))
    with pytest.raises(ValueError, match="n_steps >= 2"):
        fit_grid(DPMSolverPP(1, 1, final="denoise"), sf, SDE, jax.random.key(1), (2,), n_fit=8)


@pytest.fixture(scope="module")
def validated(case):
    """One fit with n_validate (two starts of one class: their names are numbered) and the
    same fit with restarts=2."""
    sf, smp, _, _, _ = case
    kw = dict(n_fit=64, init=(UniformTimeGrid(), UniformTimeGrid(t_start=0.8)), maxiter=30, n_validate=256)
    return (fit_grid(smp, sf, SDE, jax.random.key(1), (2,), **kw),
            fit_grid(smp, sf, SDE, jax.random.key(1), (2,), restarts=2, **kw))


def test_validation_picks_the_start_with_the_lowest_error_on_other_noises(case, validated):
    """n_validate=M: each start's fitted grid is scored on M noises apart from the fitting ones
    (their reference solves), the recorded score is that grid's mean squared error there, and
    the lowest wins; two starts of one class keep their own entries."""
    sf, smp, _, _, _ = case
    g, key, m = validated[0], jax.random.key(1), 256
    val = g.info["mse_validate"]
    assert set(val) == set(g.info["mse_inits"]) == {"UniformTimeGrid#1", "UniformTimeGrid#2"}
    assert g.info["start"] == min(val, key=val.get) and val["UniformTimeGrid#1"] != val["UniformTimeGrid#2"]
    x_val = SDE.prior_sample(jax.random.fold_in(key, _VALIDATE_STREAM), (m, 2))
    assert not np.allclose(np.asarray(x_val[:64]), np.asarray(SDE.prior_sample(key, (64, 2))))
    ref = sample(ProbabilityFlowODE(), sf, SDE, jax.random.key(0), x_val).samples
    x = sample(DDIM(3, grid=g), sf, SDE, jax.random.key(0), x_val).samples
    np.testing.assert_allclose(float(jnp.mean(jnp.sum((x - ref) ** 2, -1))), val[g.info["start"]], rtol=1e-4)
    with pytest.raises(ValueError, match="n_validate"):
        fit_grid(smp, sf, SDE, key, (2,), n_validate=0)


def test_restarts_choose_on_validation_and_restart_zero_is_the_single_fit(case, validated):
    """restarts=R repeats the fit on R sets of fitting noises and the validation noises choose
    among all of them: the first set is the single fit's (the same validation errors, and the
    same grid when it wins), and R > 1 needs n_validate."""
    sf, smp, _, _, _ = case
    one, two = validated
    val, val1 = two.info["mse_validate"], one.info["mse_validate"]
    assert set(val) == set(val1) | {k + "@1" for k in val1} and two.info["restarts"] == 2
    for k in val1:
        np.testing.assert_allclose(val[k], val1[k], rtol=1e-6)
        assert val[k + "@1"] != val[k]  # other fitting noises, another grid
    assert two.info["start"] == min(val, key=val.get)
    if "@" not in two.info["start"]:
        np.testing.assert_array_equal(np.asarray(two.fractions), np.asarray(one.fractions))
    with pytest.raises(ValueError, match="n_validate"):
        fit_grid(smp, sf, SDE, jax.random.key(1), (2,), n_fit=64, restarts=2)


def test_decoupled_grid_evaluates_the_model_at_its_shifted_times(case, tmp_path):
    """eval_shifts move step i's model evaluation to the time t'_i of log-SNR log_snr(t_i) +
    shift_i, x_i and the step's weights unchanged: the same run as the plain grid with a score
    whose denoiser at t_i is the true one at t'_i. The shifts survive save/load; the grid
    refuses to be used without them (an ordinary call, SDEDPMSolverPP); fit_grid(decouple=True)
    takes only solvers that apply them."""
    sf, _, _, x_T, _ = case
    u, shifts = jnp.array([0.0, 0.3, 0.55, 1.0]), jnp.array([0.8, -0.5, 1.2])
    grid = FittedGrid(u, eval_shifts=shifts)
    ts, t_eval = grid.with_eval_times(SDE, 3)
    np.testing.assert_allclose(np.asarray(SDE.log_snr(t_eval)), np.asarray(SDE.log_snr(ts[:-1]) + shifts), atol=2e-4)

    def moved(x, t):  # the score at t_i whose Tweedie denoiser is D(x, t'_i)
        te = jnp.broadcast_to(t_eval[jnp.argmin(jnp.abs(ts[:-1] - t[0]))], t.shape)
        return score_from_x0(SDE, x, t, x0_from_score(SDE, x, te, sf(x, te)))

    out = sample(UniPC(3, grid=grid), sf, SDE, jax.random.key(0), x_T).samples
    want = sample(UniPC(3, grid=FittedGrid(u)), moved, SDE, jax.random.key(0), x_T).samples
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=1e-4)
    plain = sample(UniPC(3, grid=FittedGrid(u)), sf, SDE, jax.random.key(0), x_T).samples
    assert float(jnp.max(jnp.abs(out - plain))) > 0.1  # the shifts do move the samples
    path = str(tmp_path / "decoupled.json")
    grid.save(path)
    np.testing.assert_allclose(np.asarray(FittedGrid.load(path).eval_shifts), np.asarray(shifts), rtol=1e-6)
    assert FittedGrid.load(path).info == {}
    with pytest.raises(ValueError, match="decouple=True"):
        grid(SDE, 3)
    with pytest.raises(ValueError, match="SDEDPMSolverPP does not"):
        sample(SDEDPMSolverPP(3, grid=grid), sf, SDE, jax.random.key(0), x_T)
    with pytest.raises(ValueError, match="eval_shifts must be"):
        FittedGrid(u, eval_shifts=jnp.zeros(2))
    with pytest.raises(ValueError, match="decouple=True fits"):
        fit_grid(EDMHeun(3), sf, SDE, jax.random.key(1), (2,), n_fit=8, decouple=True)


def test_late_shifts_hold_the_grid_and_leave_the_early_steps(case):
    """fit_grid(decouple=True, shift_min_log_snr=-5) from the fitted grid: its times stay, the
    first step (at log-SNR(T) ~ -10) keeps shift 0, the later steps' shifts are fitted: the loss
    on the fitting noises falls from 0.46 to 0.06, the RMSE on fresh noise from 0.60 to 0.32."""
    sf, smp, grid, x_T, ref = case
    g = fit_grid(smp, sf, SDE, jax.random.key(1), (2,), n_fit=64, init=FittedGrid(grid.fractions), maxiter=30,
                 decouple=True, shift_min_log_snr=-5.0)
    np.testing.assert_allclose(np.asarray(g.fractions), np.asarray(grid.fractions), atol=1e-6)
    lam = np.asarray(SDE.log_snr(g.with_eval_times(SDE, 3)[0][:-1]))
    d = np.asarray(g.eval_shifts)
    assert lam[0] < -5 <= lam[1], lam
    assert d[0] == 0.0 and np.all(np.abs(d[1:]) > 1e-3), d
    assert g.info["mse_fit"] < 0.5 * g.info["mse_inits"]["FittedGrid"], g.info
    before = _rmse(sample(DDIM(3, grid=grid), sf, SDE, jax.random.key(0), x_T).samples, ref)
    after = _rmse(sample(DDIM(3, grid=g), sf, SDE, jax.random.key(0), x_T).samples, ref)
    assert after < 0.75 * before, (before, after)


@pytest.mark.parametrize("shift_min_log_snr", [None, -20.0, 0.0])
def test_decoupled_one_step_ddim_fits_the_exact_gaussian_map(shift_min_log_snr):
    """Gaussian data N(0, s^2) in 1-D: the probability-flow map T -> eps is x -> c* x with
    c* = sqrt(alpha_eps^2 s^2 + sigma_eps^2) / sqrt(alpha_T^2 s^2 + sigma_T^2), and one DDIM step
    with its evaluation at t' gives x -> (sigma_eps/sigma_T + alpha_eps (1 - e^-h) k(t')) x,
    k = alpha' s^2 / (alpha'^2 s^2 + sigma'^2), increasing in alpha' for s < 1: a single shift
    makes the step exact, at the root of k(t') = k*. The decoupled fit finds that shift (the
    plain one-step grid has nothing to fit and stays at RMSE ~0.5). Started at shift 9 (the
    root is at ~11.1): at t = T the loss is concave in the shift, and no line search descends.
    shift_min_log_snr = -20 (below log_snr(T) ~ -10: the step gets a shift, fitted with the
    grid held fixed) finds the same root; 0 (the step starts below it) keeps the shift at 0,
    the plain one-step map."""
    s = 0.5
    gm = GaussianMixture.isotropic(jnp.array([1.0]), jnp.zeros((1, 1)), jnp.array([s * s]))
    sf = gm.score_fn(SDE)
    with jax.enable_x64():
        f = lambda g, t: float(g(jnp.asarray(t, jnp.float64)))  # noqa: E731
        aT, sT, ae, se = f(SDE.alpha, SDE.T), f(SDE.sigma, SDE.T), f(SDE.alpha, SDE.eps), f(SDE.sigma, SDE.eps)
    c_star = np.sqrt(ae**2 * s**2 + se**2) / np.sqrt(aT**2 * s**2 + sT**2)
    k_star = (c_star - se / sT) / (ae * (1 - se * aT / (sT * ae)))
    A = k_star * (1 - s * s)  # k(a) = a s^2 / (1 - a^2 (1 - s^2)) = k*  (VP: sigma^2 = 1 - alpha^2)
    a = (-s * s + np.sqrt(s**4 + 4 * A * k_star)) / (2 * A)
    want = np.log(a * a / (1 - a * a)) - np.log(aT * aT / (sT * sT))
    g = fit_grid(DDIM(1), sf, SDE, jax.random.key(0), (1,), n_fit=32, maxiter=30, decouple=True,
                 init=FittedGrid(jnp.array([0.0, 1.0]), eval_shifts=jnp.array([9.0])),
                 shift_min_log_snr=shift_min_log_snr)
    assert g.info["decouple"] and g.info.get("shift_min_log_snr") == shift_min_log_snr, g.info
    if shift_min_log_snr == 0.0:
        assert float(g.eval_shifts[0]) == 0.0 and g.info["mse_fit"] > 0.1, g.info
        with pytest.raises(ValueError, match="shift_min_log_snr=0.0: .* needs decouple=True"):
            fit_grid(DDIM(1), sf, SDE, jax.random.key(0), (1,), n_fit=32, shift_min_log_snr=0.0)
        return
    assert g.info["mse_fit"] < 1e-6, g.info
    np.testing.assert_allclose(float(g.eval_shifts[0]), want, atol=2e-3)
    x = SDE.prior_sample(jax.random.key(5), (256, 1))
    y = sample(DDIM(1, grid=g), sf, SDE, jax.random.key(0), x).samples
    np.testing.assert_allclose(np.asarray(y), c_star * np.asarray(x), atol=5e-4)

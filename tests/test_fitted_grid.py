"""Fitted time grids (scoresde.sampling.fitted): the fit lowers the error on fresh noise,
is deterministic given its key, round-trips through its file, and refuses another step
count. Exact mixture score (2-D, two components), DDIM with 3 steps from the uniform-t grid:
the fitted grid's paired RMSE on fresh noise is 0.60 against 0.75 (a wrong gradient or a
fit on the wrong target leaves it at or above the start)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import DDIM, FittedGrid, GaussianMixture, ProbabilityFlowODE, UniformTimeGrid, VPSDE, fit_grid, sample

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
    loaded = FittedGrid.load(path)
    np.testing.assert_allclose(np.asarray(loaded(SDE, 3)), np.asarray(grid(SDE, 3)), rtol=1e-6)
    assert loaded.info["n_steps"] == 3


def test_wrong_step_count_and_bad_fractions_fail(case):
    _, _, grid, _, _ = case
    with pytest.raises(ValueError, match="n_steps=3"):
        grid(SDE, 5)
    with pytest.raises(ValueError, match="increase strictly"):
        FittedGrid(jnp.array([0.0, 0.6, 0.4, 1.0]))

"""eps / score / x0 / v conversions, EDM preconditioning and the network adapter.

Ground truth: for a known pair (x0, eps) and x_t = alpha x0 + sigma eps, every target is
known exactly (eps, x0, v = alpha eps - sigma x0, score = -eps / sigma), so each
conversion is checked against it, not only against its own inverse."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from scoresde import (CosineVPSDE, EDMPreconditioning, EpsPrediction, SubVPSDE, VESDE, VPSDE,
                      VPrediction, X0Prediction, ScorePrediction, convert, denoiser_from_score,
                      score_fn_from_network, score_from_x0, x0_from_score)
from scoresde.analytic import GaussianMixture

SDES = [VPSDE(), CosineVPSDE(), SubVPSDE(), VESDE()]


def _times(sde):
    return np.concatenate([[sde.eps, 1.01 * sde.eps, 2 * sde.eps],
                           np.linspace(0.01, 0.99, 25), [sde.T - 1e-3, sde.T]]).astype(np.float32)


def _round_trip(eps, x, t, sde):
    score = convert(eps, frm="eps", to="score", x=x, t=t, sde=sde)
    x0 = convert(score, frm="score", to="x0", x=x, t=t, sde=sde)
    v = convert(x0, frm="x0", to="v", x=x, t=t, sde=sde)
    return convert(v, frm="v", to="eps", x=x, t=t, sde=sde)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_round_trip_float32(sde):
    """eps -> score -> x0 -> v -> eps is exact to float32 precision at every t.

    x = alpha x0 + sigma eps is built from the same eps, so the only error is rounding.
    Going through x0 amplifies the rounding of x by |x| / sigma (the conversion's
    condition number), so the tolerance is 8 ulp * (1 + |x| / sigma) per element.
    """
    key = jax.random.PRNGKey(0)
    t = jnp.asarray(_times(sde))
    k1, k2 = jax.random.split(key)
    x0 = jax.random.normal(k1, (t.shape[0], 6))
    eps = jax.random.normal(k2, (t.shape[0], 6))
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    x = a * x0 + s * eps
    back = _round_trip(eps, x, t, sde)
    ulp = np.finfo(np.float32).eps
    tol = 8 * ulp * (1 + (np.abs(x) + np.abs(a * x0)) / s) * (1 + np.abs(eps))
    err = np.abs(np.asarray(back) - np.asarray(eps))
    assert np.all(err <= tol), (float((err / tol).max()), np.asarray(t)[np.argmax((err / tol).max(1))])


KINDS = ("eps", "score", "x0", "v")


def _ground_truth(sde_idx, seed, dim):
    """(sde, t, x_t, targets) in float64 (call under enable_x64) for a random known pair
    (x0, eps) per time t in [eps, T]: x_t = alpha x0 + sigma eps and every target written
    from the definitions, eps, x0, v = alpha eps - sigma x0 (Salimans & Ho 2022) and
    score = -eps / sigma (the conditional score of x_t | x0), with alpha, sigma the SDE's
    closed forms."""
    sde = [VPSDE(), CosineVPSDE(), SubVPSDE(), VESDE()][sde_idx]
    t = jnp.asarray(_times(sde), jnp.float64)
    x0 = 2 * jax.random.normal(jax.random.PRNGKey(seed), (t.shape[0], dim), jnp.float64)
    eps = jax.random.normal(jax.random.PRNGKey(seed + 1), (t.shape[0], dim), jnp.float64)
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    x = a * x0 + s * eps
    return sde, t, x, {"eps": eps, "x0": x0, "v": a * eps - s * x0, "score": -eps / s}


def _edm_by_hand(sd, sde, t, x):
    """EDM's Table 1 (Karras et al. 2022) on x_hat = x / alpha at sigma_hat = sigma / alpha,
    written out here from the paper, not through `EDMPreconditioning.coefficients`."""
    a, s = sde.alpha(t), sde.sigma(t)
    sh = s / a
    c_skip = sd**2 / (sh**2 + sd**2)
    c_out = sh * sd / jnp.sqrt(sh**2 + sd**2)
    c_in = 1 / jnp.sqrt(sh**2 + sd**2)
    return x / a[:, None], c_skip[:, None], c_out[:, None], c_in[:, None], jnp.log(sh) / 4


def _assert_rowwise_close(got, want, rel):
    """|got - want| <= rel * (1 + max_j |want_ij|) in every row i (one row per time, so a
    large score at t = eps does not loosen the check at t = T)."""
    got, want = np.asarray(got), np.asarray(want)
    tol = rel * (1 + np.abs(want).max(axis=1, keepdims=True))
    err = np.abs(got - want)
    assert np.all(err <= tol), float((err / tol).max())


@pytest.mark.parametrize("sde_idx", range(4))
def test_every_conversion_matches_ground_truth(sde_idx):
    """convert(frm=a, to=b) maps the true a-target of a known (x0, eps) pair to the true
    b-target, for all 16 pairs, at every t in [eps, T] (float64, rows within 1e-9).

    Each value is built from the definitions, so a pair of wrong formulas that are each
    other's inverse fails here (a round trip alone would pass)."""
    with enable_x64():
        sde, t, x, truth = _ground_truth(sde_idx, 1, 5)
        for frm in KINDS:
            for to in KINDS:
                _assert_rowwise_close(convert(truth[frm], frm=frm, to=to, x=x, t=t, sde=sde), truth[to], 1e-9)
        # The Tweedie pair (the one home of the formula) on the same ground truth.
        _assert_rowwise_close(x0_from_score(sde, x, t, truth["score"]), truth["x0"], 1e-9)
        _assert_rowwise_close(score_from_x0(sde, x, t, truth["x0"]), truth["score"], 1e-9)


PARAMS = [EpsPrediction(), ScorePrediction(), X0Prediction(), VPrediction(), EDMPreconditioning(sigma_data=0.7)]


def _true_output(param, sde, t, x, truth):
    """What an ideal network outputs for a known (x0, eps): its kind's target, or for EDM
    F = (x0 - c_skip x_hat) / c_out (Karras et al. 2022, eq. 7-8's effective target)."""
    if isinstance(param, EDMPreconditioning):
        x_hat, c_skip, c_out, _, _ = _edm_by_hand(param.sigma_data, sde, t, x)
        return (truth["x0"] - c_skip * x_hat) / c_out
    return truth[param.kind]


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("sde_idx", range(4))
def test_ideal_network_output_gives_x0_and_score(param, sde_idx):
    """For x_t = alpha x0 + sigma eps with (x0, eps) known, the ideal output of each
    parameterisation denoises to x0 and maps to the conditional score -eps / sigma; the
    network sees (x_t, t), or (c_in x_hat, c_noise) for EDM, written out by hand."""
    with enable_x64():
        sde, t, x, truth = _ground_truth(sde_idx, 3, 4)
        out = _true_output(param, sde, t, x, truth)
        _assert_rowwise_close(param.denoise(out, x, t, sde), truth["x0"], 1e-9)
        _assert_rowwise_close(param.to_score(out, x, t, sde), truth["score"], 1e-9)
        x_in, t_in = param.network_inputs(x, t, sde)
        if isinstance(param, EDMPreconditioning):
            x_hat, _, _, c_in, c_noise = _edm_by_hand(param.sigma_data, sde, t, x)
            np.testing.assert_allclose(x_in, c_in * x_hat, rtol=1e-12)
            np.testing.assert_allclose(t_in, c_noise, rtol=1e-12, atol=1e-12)
        else:
            np.testing.assert_array_equal(x_in, x)
            np.testing.assert_array_equal(t_in, t)


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=lambda s: type(s).__name__)
def test_adapter_recovers_exact_score(param, sde):
    """A 'network' that outputs the exact target of a Gaussian mixture (built from the
    mixture's exact score and denoiser by the definitions, not by `convert`) yields the
    exact score and denoiser through `score_fn_from_network` / `denoiser_from_score`."""
    gm = GaussianMixture.isotropic(jnp.array([0.3, 0.7]), jnp.array([[1.0, -1.0], [-2.0, 0.5]]), 0.2)
    x = jax.random.normal(jax.random.PRNGKey(0), (7, 2)) * 2
    t = jnp.linspace(0.05, 0.95, 7)
    exact, D = gm.score(x, t, sde), gm.denoise(x, t, sde)
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    eps = -s * exact  # E[eps | x_t] = -sigma score
    targets = {"eps": eps, "score": exact, "x0": D, "v": a * eps - s * D}
    if isinstance(param, EDMPreconditioning):
        x_hat, c_skip, c_out, c_in, c_noise = _edm_by_hand(param.sigma_data, sde, t, x)
        targets["edm"] = (D - c_skip * x_hat) / c_out
    kind = getattr(param, "kind", "edm")

    def net(x_in, t_in):
        if kind == "edm":  # the network sees (c_in x_hat, c_noise) and nothing else
            np.testing.assert_allclose(x_in, c_in * x_hat, rtol=1e-5)
            np.testing.assert_allclose(t_in, c_noise, rtol=1e-5)
        return targets[kind]

    score = score_fn_from_network(net, sde, param)(x, t)
    np.testing.assert_allclose(score, exact, rtol=2e-4, atol=2e-4 * float(jnp.abs(exact).max()))
    got_D = denoiser_from_score(score_fn_from_network(net, sde, param), sde)(x, t)
    np.testing.assert_allclose(got_D, D, rtol=1e-3, atol=1e-3)


def test_edm_coefficients_match_paper_for_ve():
    """For alpha = 1 the coefficients are EDM's Table 1 at sigma = sigma(t)."""
    sde = VESDE()
    t = jnp.array([0.2, 0.6])
    s = sde.sigma(t)
    sd = 0.5
    c_skip, c_out, c_in, c_noise = EDMPreconditioning(sd).coefficients(t, sde)
    np.testing.assert_allclose(c_skip, sd**2 / (s**2 + sd**2), rtol=1e-5)
    np.testing.assert_allclose(c_out, s * sd / jnp.sqrt(s**2 + sd**2), rtol=1e-5)
    np.testing.assert_allclose(c_in, 1 / jnp.sqrt(s**2 + sd**2), rtol=1e-5)
    np.testing.assert_allclose(c_noise, jnp.log(s) / 4, rtol=1e-5)


def test_unknown_kind_errors():
    sde = VPSDE()
    with pytest.raises(ValueError, match="kind must be one of"):
        convert(jnp.ones((1, 2)), frm="noise", to="score", x=jnp.ones((1, 2)), t=0.5, sde=sde)

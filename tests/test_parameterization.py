"""eps / score / x0 / v conversions, EDM preconditioning and the network adapter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from scoresde import (CosineVPSDE, EDMPreconditioning, EpsPrediction, SubVPSDE, VESDE, VPSDE,
                      VPrediction, X0Prediction, ScorePrediction, convert, denoiser_from_score,
                      score_fn_from_network)
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


@pytest.mark.parametrize("sde_idx", range(4))
def test_round_trip_float64_is_exact(sde_idx):
    with enable_x64():
        sde = [VPSDE(), CosineVPSDE(), SubVPSDE(), VESDE()][sde_idx]
        t = jnp.asarray(_times(sde), jnp.float64)
        key = jax.random.PRNGKey(1)
        x = jax.random.normal(key, (t.shape[0], 5), jnp.float64) * 3
        eps = jax.random.normal(jax.random.PRNGKey(2), (t.shape[0], 5), jnp.float64)
        np.testing.assert_allclose(_round_trip(eps, x, t, sde), eps, rtol=1e-9, atol=1e-9)
        # Every pair of kinds is mutually inverse.
        for a in ("eps", "score", "x0", "v"):
            for b in ("eps", "score", "x0", "v"):
                val = convert(eps, frm="eps", to=a, x=x, t=t, sde=sde)
                there = convert(val, frm=a, to=b, x=x, t=t, sde=sde)
                back = convert(there, frm=b, to=a, x=x, t=t, sde=sde)
                np.testing.assert_allclose(back, val, rtol=1e-8, atol=1e-8 * float(jnp.abs(val).max()))


def test_v_definition():
    """v = alpha eps - sigma x0 (Salimans & Ho 2022)."""
    sde = CosineVPSDE()
    t = jnp.array([0.3, 0.7])
    x0 = jnp.array([[1.0, 2.0], [-1.0, 0.5]])
    eps = jnp.array([[0.3, -0.2], [0.1, 1.0]])
    x = sde.alpha(t)[:, None] * x0 + sde.sigma(t)[:, None] * eps
    v = convert(eps, frm="eps", to="v", x=x, t=t, sde=sde)
    np.testing.assert_allclose(v, sde.alpha(t)[:, None] * eps - sde.sigma(t)[:, None] * x0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("param", [EpsPrediction(), ScorePrediction(), X0Prediction(), VPrediction(),
                                   EDMPreconditioning(sigma_data=0.7)], ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=lambda s: type(s).__name__)
def test_adapter_recovers_exact_score(param, sde):
    """A 'network' that outputs the exact target for its parameterisation yields the exact score."""
    gm = GaussianMixture.isotropic(jnp.array([0.3, 0.7]), jnp.array([[1.0, -1.0], [-2.0, 0.5]]), 0.2)
    x = jax.random.normal(jax.random.PRNGKey(0), (7, 2)) * 2
    t = jnp.linspace(0.05, 0.95, 7)
    exact = gm.score(x, t, sde)

    if isinstance(param, EDMPreconditioning):
        def net(x_in, t_in):
            # Invert the preconditioning: F = (D - c_skip x_hat) / c_out with x_hat = x_in / c_in.
            c_skip, c_out, c_in, c_noise = param.coefficients(t, sde)
            np.testing.assert_allclose(t_in, c_noise, rtol=1e-6)
            x_hat = x_in / c_in[:, None]
            D = gm.denoise(x_hat * sde.alpha(t)[:, None], t, sde)
            return (D - c_skip[:, None] * x_hat) / c_out[:, None]
    else:
        def net(x_in, t_in):
            return convert(gm.score(x_in, t_in, sde), frm="score", to=param.kind, x=x_in, t=t_in, sde=sde)

    score = score_fn_from_network(net, sde, param)(x, t)
    np.testing.assert_allclose(score, exact, rtol=2e-4, atol=2e-4 * float(jnp.abs(exact).max()))
    D = denoiser_from_score(score_fn_from_network(net, sde, param), sde)(x, t)
    np.testing.assert_allclose(D, gm.denoise(x, t, sde), rtol=1e-3, atol=1e-3)


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

"""Shared test helpers: law and moment checks against exact Gaussian-mixture laws, and
the benchmark mixtures (one definition, in experiments/benchmarks/cases.py).

Tolerances are stated where they are used: means and variances within 4 standard errors
of the sample statistic (estimated from the sample itself), component weights within
3 standard errors sqrt(w (1 - w) / n).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from experiments.benchmarks.cases import mixture_b, mixture_full, ring  # noqa: F401 (re-exported)


def check_law(gm, sde, x, t_end, *, n_se_moments: float = 4.0, n_se_weights: float = 3.0):
    """Mean and variance of each coordinate within `n_se_moments` SE, and component weights
    (mean exact responsibilities at t_end) within `n_se_weights` SE, of the exact law p_t_end."""
    x = np.asarray(x, np.float64)
    assert np.all(np.isfinite(x)), "non-finite samples"
    n = x.shape[0]
    mean_true = np.asarray(gm.mean(t_end, sde))
    var_true = np.diag(np.asarray(gm.covariance(t_end, sde)))
    m = x.mean(0)
    d2 = (x - m) ** 2
    se_m = np.sqrt(d2.mean(0) / n)
    se_v = np.sqrt(d2.var(0) / n)
    assert np.all(np.abs(m - mean_true) < n_se_moments * se_m), (m, mean_true, se_m)
    assert np.all(np.abs(d2.mean(0) - var_true) < n_se_moments * se_v), (d2.mean(0), var_true, se_v)
    r = np.asarray(gm.posterior_weights(jnp.asarray(x, jnp.float32), jnp.float32(t_end), sde))
    w_hat = r.mean(0)
    w = np.asarray(gm.weights)
    assert np.all(np.abs(w_hat - w) < n_se_weights * np.sqrt(w * (1 - w) / n)), (w_hat, w)


def fitted_order(steps, errors) -> float:
    """Slope of -log(error) against log(steps): the observed order of convergence."""
    return float(-np.polyfit(np.log(np.asarray(steps, float)), np.log(np.asarray(errors, float)), 1)[0])


def ce_gap(gm, sde, x, t_end, n_true: int = 200_000, seed: int = 123) -> tuple[float, float]:
    """Cross-entropy gap mean_i -log p(x_i) - H(p) at t_end and its standard error
    (H by Monte Carlo on n_true exact samples)."""
    import jax

    lp = np.asarray(gm.log_prob(jnp.asarray(x), jnp.float32(t_end), sde), np.float64)
    xt = gm.sample(jax.random.key(seed), n_true, jnp.float32(t_end), sde)
    lt = np.asarray(gm.log_prob(xt, jnp.float32(t_end), sde), np.float64)
    gap = -lp.mean() + lt.mean()
    se = np.sqrt(lp.var() / lp.size + lt.var() / lt.size)
    return float(gap), float(se)

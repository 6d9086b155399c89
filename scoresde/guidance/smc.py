"""Twisted sequential Monte Carlo for linear inverse problems (asymptotically exact).

Twisted diffusion sampler (TDS; Wu, Trippe, Naesseth, Blei & Cunningham 2023, "Practical
and Asymptotically Exact Conditional Sampling in Diffusion Models", Alg. 1) with the
Pi-GDM twist. For every observation y, K particles walk the reverse SDE back with
Euler-Maruyama steps; the twisting function is

    p~_t(y | x_t) = N(y; A x0_hat(x_t), r_t^2 A A^T + sigma_y^2 I),   r_t^2 as in `pigdm_score`,

particles are proposed with the twisted score s + grad log p~_t (the Pi-GDM score) and
re-weighted by

    w <- w * p(x' | x) p~_{t'}(y | x') / (q(x' | x) p~_t(y | x)),

(p: the unguided EM kernel, q: the guided one, both Gaussian with variance g(t)^2 h), with
systematic resampling whenever the effective sample size drops below
`ess_threshold * K`. At t = eps the twist is the likelihood of y itself (r_eps -> 0), so the
weighted particles target p(x | y) whatever the quality of the twist: as K grows the
error vanishes (up to the EM discretisation). Pi-GDM alone is the K = 1 case without
weights, which is why its bias (the Gaussian approximation of p(x_0 | x_t)) is not
corrected there. One particle per observation is returned, drawn by the final weights.

sigma_y > 0 is needed (the weights of a noise-free observation degenerate at t -> eps);
for quantised images the quantisation noise is a natural choice (bin width / sqrt(12)).
Cost: one score evaluation and one vector-Jacobian product per particle and step.
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde._checks import check_batched, check_float_data
from scoresde._keys import per_example_keys
from scoresde.guidance.inverse import _check_sigma_y, _guidance_terms, _pigdm_r2
from scoresde.guidance.operators import AbstractLinearOperator
from scoresde.sampling.base import SampleResult
from scoresde.sampling.grids import AbstractTimeGrid, UniformTimeGrid
from scoresde._util import bcast
from scoresde.sde import AbstractSDE

Array = jax.Array


class TwistedSMC(eqx.Module):
    """Settings: n_steps EM steps, n_particles per observation, resampling when
    ESS < ess_threshold * n_particles. NFE per particle = n_steps + 1, each with a
    vector-Jacobian product (the final denoising reuses the last score).

    proposal_scale: the proposal's guidance is proposal_scale * grad log p~_t, a constant
    or a function of t (shape (batch,)). The weights correct for any proposal, so this
    changes the variance, never the target: with a trained network the twist gradient
    is unreliable at large t (x0_hat = (x + sigma^2 s) / alpha divides the network's
    error by alpha_T ~ 0.007 on VP), and e.g. `lambda t: sde.alpha(t) ** 2` keeps the
    proposal stable there."""

    n_steps: int = eqx.field(static=True)
    n_particles: int = eqx.field(static=True)
    ess_threshold: float = 0.5
    grid: AbstractTimeGrid = UniformTimeGrid()
    proposal_scale: float | Callable = 1.0

    def __check_init__(self):
        for name in ("n_steps", "n_particles"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}.")


def _systematic(key, logw, K):
    """Indices of a systematic resample of K particles with log-weights logw (K,)."""
    w = jax.nn.softmax(logw)
    u = (jax.random.uniform(key, ()) + jnp.arange(K)) / K
    return jnp.clip(jnp.searchsorted(jnp.cumsum(w), u), 0, K - 1)


def sample_twisted_smc(sampler: TwistedSMC, score_fn: Callable, sde: AbstractSDE, op: AbstractLinearOperator,
                       y: Array, key, x_T: Array, *, sigma_y, data_var=1.0, denoise: bool = True
                       ) -> SampleResult:
    """Sample p(x | y) for y = A x + sigma_y n by twisted SMC (module docstring).

    y: (B, *obs_shape); x_T: (B, K, ...) prior noise, K = sampler.n_particles particles per
    observation; key: one PRNG key or B keys (randomness of example b from its own key).
    Returns SampleResult with samples (B, ...) (one particle per observation, drawn by the
    final weights) and nfe per particle.
    """
    _check_sigma_y(sigma_y, positive=True)
    x_T = jnp.asarray(x_T)
    check_float_data(x_T, "x_T")
    check_batched(x_T, "x_T")
    B, K = x_T.shape[0], sampler.n_particles
    if x_T.ndim < 3 or x_T.shape[1] != K:
        raise ValueError(f"x_T must have shape (batch, n_particles={K}, ...), got {x_T.shape}.")
    ex = x_T.shape[2:]
    y = jnp.asarray(y, x_T.dtype)
    op.check_observation(y, (B,) + ex)
    yK = jnp.repeat(y, K, axis=0)  # (B K, *obs)
    keys = per_example_keys(key, B)
    ts = sampler.grid(sde, sampler.n_steps, x_T.dtype)
    r2, s2y = _pigdm_r2(data_var), jnp.asarray(sigma_y, x_T.dtype) ** 2

    def flat(a):
        return a.reshape((B * K,) + a.shape[2:])

    def unflat(a):
        return a.reshape((B, K) + a.shape[1:])

    def evaluate(x, t):
        """score, log twist (B K,), grad log twist at flat particles x and scalar time t."""
        sc, res, u, g = _guidance_terms(score_fn, sde, op, yK, x, jnp.full(x.shape[:1], t, x.dtype), r2, s2y)
        # (the twist's normalising constant depends on t only: the same for all particles
        # of an observation, so it cancels in the normalised weights)
        logt = -0.5 * jnp.sum((res * u).reshape(res.shape[0], -1), axis=1)
        return sc, logt, g

    def normal(i):
        return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), (K,) + ex, x_T.dtype))(keys)

    x = flat(x_T)
    sc, logt, g = evaluate(x, ts[0])
    logw = unflat(logt)  # initial weights: the twist at T (target prior x twist)

    def body(carry, inp):
        x, sc, logt, g, logw = carry
        i, t, t_next = inp
        h = t - t_next
        f, g2 = sde.f(t), sde.g2(t)
        mean_p = x - h * (f * x - g2 * sc)
        lam = sampler.proposal_scale
        lam = jnp.asarray(lam(jnp.full(x.shape[:1], t, x.dtype)) if callable(lam) else lam, x.dtype)
        mean_q = mean_p + h * g2 * bcast(lam, g) * g
        var = g2 * h
        x_new = mean_q + jnp.sqrt(var) * flat(normal(i))
        sc_n, logt_n, g_n = evaluate(x_new, t_next)
        d = lambda m: jnp.sum(((x_new - m) ** 2).reshape(B * K, -1), axis=1)  # noqa: E731
        log_pq = (d(mean_q) - d(mean_p)) / (2.0 * var)
        logw = logw + unflat(log_pq + logt_n - logt)
        # systematic resampling, per observation, where the ESS is low
        wn = jax.nn.softmax(logw, axis=1)
        ess = 1.0 / jnp.sum(wn**2, axis=1)
        idx = jax.vmap(lambda k, lw: _systematic(jax.random.fold_in(k, sampler.n_steps + i), lw, K))(keys, logw)
        do = ess < sampler.ess_threshold * K

        def pick(a):
            a = unflat(a)
            r = jax.vmap(lambda ai, ii: ai[ii])(a, idx)
            return flat(jnp.where(bcast(do, r), r, a))

        x_new, sc_n, logt_n, g_n = pick(x_new), pick(sc_n), pick(logt_n), pick(g_n)
        logw = jnp.where(do[:, None], 0.0, logw)
        return (x_new, sc_n, logt_n, g_n, logw), ess

    n = sampler.n_steps
    (x, sc, logt, g, logw), _ = jax.lax.scan(body, (x, sc, logt, g, logw), (jnp.arange(n), ts[:-1], ts[1:]))
    nfe = n + 1
    if denoise:
        tb = jnp.full(x.shape[:1], ts[-1], x.dtype)
        x = (x + bcast(sde.sigma(tb) ** 2, x) * sc) / bcast(sde.alpha(tb), x)
    choice = jax.vmap(lambda k, lw: jax.random.categorical(jax.random.fold_in(k, 2 * n + 1), lw))(keys, logw)
    out = jax.vmap(lambda a, c: a[c])(unflat(x), choice)
    return SampleResult(out, jnp.asarray(nfe, jnp.int32), None)

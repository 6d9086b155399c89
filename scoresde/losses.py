"""Denoising score matching (Vincent 2011; Song et al. 2021) with the standard weightings.

The continuous-time objective for a score function s(x, t) and a weighting lambda(t):

    J(s) = E_{t ~ U[eps, T]} lambda(t) E_{x_0, z} || s(x_t, t) - grad log p(x_t | x_0) ||^2,
    x_t = alpha(t) x_0 + sigma(t) z,   grad log p(x_t | x_0) = -z / sigma(t).

It is computed as lambda(t) / sigma^2 * || sigma s + z ||^2, which stays well
conditioned as sigma -> 0. A time sampler draws t from a density q and returns the
weight w(t) = 1 / ((T - eps) q(t)), so E_q[w lambda loss] = J whatever q is
(importance sampling), except `LogNormalTime`, EDM's own objective, which returns w = 1.

Weightings (`__call__(t, sde) -> lambda(t)`):
  SimpleWeighting      lambda = sigma^2: || eps_hat - z ||^2, DDPM's L_simple (Ho et al. 2020)
  LikelihoodWeighting  lambda = g^2: J = an upper bound on the negative log-likelihood
                       (Song, Durkan, Murray & Ermon 2021, Thm. 1)
  EDMWeighting         lambda = (sh^2 + sd^2)/(sh sd)^2 * sigma^4 / alpha^2 with sh = sigma/alpha:
                       EDM's lambda(sigma) || D - x_0 ||^2 (Karras et al. 2022) in score units.
  FlowMatchingWeighting lambda = g^4 / 4: the flow-matching loss || u_hat - u ||^2 of
                       the velocity u = alpha' x_0 + sigma' z (Lipman et al. 2023), by
                       u_hat - u = -(g^2 / (2 sigma)) (sigma s + z) for u_hat = f x - g^2/2 s.

Time samplers (`__call__(key, n, sde) -> (t, w)`):
  unit samplers (`unit(key, n) -> u in [0, 1]`, t = eps + (T - eps) u): UniformTime,
  AntitheticTime (u_i = u_0 + i/n mod 1; Kingma et al. 2021), StratifiedTime
  (u_i in [i/n, (i+1)/n)), DiscreteTime (uniform over an N-point grid: DDPM's discrete chain);
  LikelihoodImportanceTime(base=...) (lambda = log-SNR uniform, driven by a unit sampler's
  variates; since g^2/sigma^2 = -d lambda/dt for every SDE here, q(t) ~ g^2/sigma^2 and
  w lambda/sigma^2 = const for the likelihood weighting: Song et al. 2021's variance
  reduction); LogNormalTime (EDM).
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde._checks import check_choice, check_same_shape, check_time, data_batch
from scoresde._types import Array
from scoresde._util import bcast, call_score
from scoresde.sde import AbstractSDE


# --- weightings ----------------------------------------------------------------------
class AbstractWeighting(eqx.Module):
    """lambda(t) of the DSM objective; `over_sigma2` gives lambda / sigma^2 stably.

    A final weighting implements `over_sigma2` only; lambda(t) itself is
    `over_sigma2(t) * sigma(t)^2`, written once here.
    """

    @abc.abstractmethod
    def over_sigma2(self, t, sde: AbstractSDE) -> Array:
        """lambda(t) / sigma(t)^2, the factor `dsm_loss` multiplies || sigma s + z ||^2 by."""

    def __call__(self, t, sde: AbstractSDE) -> Array:
        return self.over_sigma2(t, sde) * sde.sigma(t) ** 2


class SimpleWeighting(AbstractWeighting):
    """lambda(t) = sigma(t)^2: the eps-loss || eps_hat - z ||^2 (DDPM's L_simple)."""

    def over_sigma2(self, t, sde):
        return jnp.ones_like(sde.sigma(t))


class LikelihoodWeighting(AbstractWeighting):
    """lambda(t) = g(t)^2 (Song, Durkan, Murray & Ermon 2021): J bounds -log p."""

    def over_sigma2(self, t, sde):
        return sde.g2(t) / sde.sigma(t) ** 2


class EDMWeighting(AbstractWeighting):
    """EDM's lambda(sh) = (sh^2 + sd^2) / (sh sd)^2 on || D - x_0 ||^2 (Karras et al. 2022).

    With D - x_0 = sigma^2 (s - grad log p(x_t|x_0)) / alpha, in score units
    lambda(t) = (sh^2 + sd^2) / (sh sd)^2 * sigma^4 / alpha^2, sh = sigma / alpha.
    """

    sigma_data: float = 0.5

    def over_sigma2(self, t, sde):
        sh2 = jnp.exp(-sde.log_snr(t))  # (sigma/alpha)^2
        sd2 = self.sigma_data**2
        return (sh2 + sd2) / (sh2 * sd2) * sde.sigma(t) ** 2 / sde.alpha(t) ** 2


class FlowMatchingWeighting(AbstractWeighting):
    """lambda(t) = g(t)^4 / 4: the conditional flow-matching loss (Lipman et al. 2023,
    "Flow Matching for Generative Modeling", eq. 9; Liu et al. 2023's rectified flow).

    The identity. With x_t = alpha x_0 + sigma z, the conditional velocity u = d x_t / dt =
    alpha' x_0 + sigma' z and the model's velocity u_hat = f x_t - g^2/2 s(x_t, t) (the
    probability-flow drift of the score s; `parameterization.convert(..., to="velocity")`),
    f x_t = alpha' x_0 + f sigma z and sigma' - f sigma = g^2 / (2 sigma) give

        u_hat - u = -(g^2 / (2 sigma)) (sigma s + z),
        || u_hat - u ||^2 = (g^2 / (2 sigma))^2 || sigma s + z ||^2 = lambda / sigma^2 || sigma s + z ||^2,

    so `dsm_loss(score, sde, ..., weighting=FlowMatchingWeighting())` of a velocity network
    (`VelocityPrediction`) is exactly E_t E || u_hat - u ||^2. On `FlowMatchingPath`,
    g^2 / (2 sigma) = 1 / (1 - t) and u = z - x_0.
    """

    def over_sigma2(self, t, sde):
        return (sde.g2(t) / (2.0 * sde.sigma(t))) ** 2


# --- time samplers ---------------------------------------------------------------------
class AbstractTimeSampler(eqx.Module):
    """Draws n times in [eps, T] and importance weights w = 1 / ((T - eps) q(t)), with q
    the density the times are drawn from (w = 1 for uniform times)."""

    @abc.abstractmethod
    def __call__(self, key: Array, n: int, sde: AbstractSDE) -> tuple[Array, Array]:
        """(t, w), each of shape (n,)."""


class AbstractUnitSampler(AbstractTimeSampler):
    """A time sampler made of n variates u in [0, 1] that are each uniform (or, for
    `DiscreteTime`, uniform over a grid), mapped to t = eps + (T - eps) u with w = 1.

    The variates themselves (`unit`) are what composed samplers transform, the way optax
    chains transformations: `LikelihoodImportanceTime(base=AntitheticTime())` spreads
    its importance-sampled times by the base's low-discrepancy variates.
    """

    @abc.abstractmethod
    def unit(self, key: Array, n: int) -> Array:
        """n variates in [0, 1], shape (n,)."""

    def __call__(self, key, n, sde):
        u = self.unit(key, n)
        return sde.eps + (sde.T - sde.eps) * u, jnp.ones((n,))


class UniformTime(AbstractUnitSampler):
    """t ~ U[eps, T] independently per example."""

    def unit(self, key, n):
        return jax.random.uniform(key, (n,))


class AntitheticTime(AbstractUnitSampler):
    """Low-discrepancy times u_i = (u_0 + i/n) mod 1 (Kingma et al. 2021, VDM)."""

    def unit(self, key, n):
        return jnp.mod(jax.random.uniform(key, ()) + jnp.arange(n) / n, 1.0)


class StratifiedTime(AbstractUnitSampler):
    """One time per stratum: u_i ~ U[i/n, (i+1)/n), then shuffled over the batch."""

    def unit(self, key, n):
        k1, k2 = jax.random.split(key)
        u = (jnp.arange(n) + jax.random.uniform(k1, (n,))) / n
        return jax.random.permutation(k2, u)


class DiscreteTime(AbstractUnitSampler):
    """t uniform over the grid t_i = eps + (T - eps) i / (N - 1), i = 0..N-1.

    With `SimpleWeighting` and an eps-network this is DDPM's discrete L_simple with
    alpha_bar_i = alpha(t_i)^2 (Ho et al. 2020, eq. 14).
    """

    n_steps: int = eqx.field(static=True, default=1000)

    def unit(self, key, n):
        i = jax.random.randint(key, (n,), 0, self.n_steps)
        return i / max(self.n_steps - 1, 1)


class LikelihoodImportanceTime(AbstractTimeSampler):
    """q(t) proportional to g^2/sigma^2 = -d lambda/dt: log-SNR uniform on [lambda(T), lambda(eps)].

    lambda = lambda(eps) + u (lambda(T) - lambda(eps)) for the base sampler's variates u,
    t = lambda^{-1}, and w(t) = Z / ((T - eps) g^2/sigma^2) with Z = lambda(eps) - lambda(T),
    so the likelihood weighting's integrand becomes Z / (T - eps) || sigma s + z ||^2
    (Song et al. 2021, Sec. 5).

    Args:
      base: the variates u (default `StratifiedTime()`, one per stratum of the batch;
        `UniformTime()` for independent times, `AntitheticTime()` for VDM's).
      stratified: shorthand kept from before `base` existed: True is
        `base=StratifiedTime()`, False is `base=UniformTime()`. Give one of the two.
    """

    base: AbstractUnitSampler

    def __init__(self, base: AbstractUnitSampler | None = None, *, stratified: bool | None = None):
        if base is not None and stratified is not None:
            raise ValueError(f"give base or stratified, not both (got base={base!r}, "
                             f"stratified={stratified!r}); stratified=True is base=StratifiedTime().")
        if base is None:
            base = UniformTime() if stratified is False else StratifiedTime()
        if not isinstance(base, AbstractUnitSampler):
            raise TypeError(f"base must be an AbstractUnitSampler (UniformTime, AntitheticTime, "
                            f"StratifiedTime, DiscreteTime), got {type(base).__name__}.")
        self.base = base

    def __call__(self, key, n, sde):
        u = self.base.unit(key, n)
        lam_hi, lam_lo = sde.log_snr(sde.eps), sde.log_snr(sde.T)
        t = sde.t_from_log_snr(lam_hi + u * (lam_lo - lam_hi))
        t = jnp.clip(t, sde.eps, sde.T)
        w = (lam_hi - lam_lo) / ((sde.T - sde.eps) * sde.g2(t) / sde.sigma(t) ** 2)
        return t, w


class LogNormalTime(AbstractTimeSampler):
    """EDM's training noise levels: log(sigma/alpha) ~ N(p_mean, p_std^2), mapped to t, clipped.

    Returns w = 1: the objective is EDM's own average over this distribution.
    """

    p_mean: float = -1.2
    p_std: float = 1.2

    def __call__(self, key, n, sde):
        log_sh = self.p_mean + self.p_std * jax.random.normal(key, (n,))
        t = jnp.clip(sde.t_from_log_snr(-2.0 * log_sh), sde.eps, sde.T)
        return t, jnp.ones((n,))


# --- the objective -------------------------------------------------------------------------
def dsm_loss(score_fn, sde: AbstractSDE, key, x0, *, weighting: AbstractWeighting = SimpleWeighting(),
             time_sampler: AbstractTimeSampler = UniformTime(), labels=None, t=None,
             reduce_dims: str = "sum", reduction: str = "mean"):
    """Monte Carlo estimate of the weighted DSM objective J(s) (module docstring).

    Per example i: w_i lambda(t_i)/sigma_i^2 * reduce_dims(|| sigma_i s(x_t, t_i) + z_i ||^2),
    then `reduction` ("mean" or "sum") over the batch. `score_fn(x_t, t)` -- or
    `score_fn(x_t, t, labels)` when labels are given -- returns an array like x0. Pass
    `t` (shape (batch,)) to fix the times (weights are then 1). Pure and jit-able.

    Returns (loss, per_example_losses).
    """
    x0 = data_batch(x0, "x0")
    check_choice(reduce_dims, "reduce_dims", ("sum", "mean"))
    check_choice(reduction, "reduction", ("sum", "mean"))
    n = x0.shape[0]
    kt, kz = jax.random.split(key)
    if t is None:
        t, w = time_sampler(kt, n, sde)
    else:
        check_time(t, sde, "t", batch=n)
        t = jnp.broadcast_to(jnp.asarray(t, x0.dtype), (n,))
        w = jnp.ones((n,), x0.dtype)
    t = t.astype(x0.dtype)
    xt, z = sde.sample_marginal(kz, x0, t)
    s = call_score(score_fn, xt, t, labels)
    check_same_shape(s, x0, "score_fn(x_t, t)", "x0")
    resid = bcast(sde.sigma(t), x0) * s + z
    sq = resid.reshape(n, -1) ** 2
    per = jnp.sum(sq, axis=-1) if reduce_dims == "sum" else jnp.mean(sq, axis=-1)
    per = w * weighting.over_sigma2(t, sde) * per
    loss = jnp.mean(per) if reduction == "mean" else jnp.sum(per)
    return loss, per


__all__ = ["AbstractWeighting", "SimpleWeighting", "LikelihoodWeighting", "EDMWeighting", "FlowMatchingWeighting",
           "AbstractTimeSampler",
           "AbstractUnitSampler", "UniformTime", "AntitheticTime", "StratifiedTime", "DiscreteTime",
           "LikelihoodImportanceTime", "LogNormalTime", "dsm_loss"]

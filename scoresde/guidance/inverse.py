"""Linear inverse problems y = A x (+ sigma_y n) with a pretrained (or exact) score.

Two families:

* Score transforms (`pigdm_score`, `dps_score`, `tweedie_cov_score`): they return a score function of x_t that
  approximates the *conditional* score grad log p_t(x_t | y) = s(x_t) + grad log p_t(y | x_t),
  so they work with every sampler of `scoresde.sampling` (reverse SDE, PC, probability-flow
  ODE, few-step solvers) and through pmap. Both write p_t(y | x_t) = int p(y | x_0)
  p(x_0 | x_t) dx_0 with a Gaussian approximation of p(x_0 | x_t) centred at the Tweedie
  denoiser x0_hat(x_t) = (x_t + sigma_t^2 s(x_t, t)) / alpha_t, and differentiate through
  x0_hat (one vector-Jacobian product of the score per call).
* The replacement method (`ReplacementSampler` / `sample_replacement`), which needs a hook
  after every step; `scoresde.sampling.sample` has none, so it is its own lax.scan loop here,
  reusing the predictor and corrector modules of `scoresde.sampling.pc` (reverse SDE,
  reverse diffusion, ancestral, Langevin) and the probability-flow Euler step below.

Per-example conditioning (y with a batch axis) is closed over by the guided score; the
diffrax samplers (ProbabilityFlowODE, ReverseSRK) vmap their solve per example and call the
score with a batch of one, so use `sample_conditional`, which vmaps the whole sampler.
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde._checks import check_batched, check_float_data, concrete_or_none
from scoresde.guidance.operators import AbstractLinearOperator
from scoresde._keys import per_example_keys
from scoresde.sampling.base import SampleResult
from scoresde.sampling.grids import AbstractTimeGrid, UniformTimeGrid
from scoresde.sampling.pc import (AbstractCorrector, AbstractPredictor, NoneCorrector,
                                  NonePredictor, ReverseDiffusionPredictor)
from scoresde._util import bcast
from scoresde.sde import AbstractSDE

Array = jax.Array


def _tb(t, x):
    t = jnp.asarray(t, x.dtype)
    return t if t.ndim else jnp.broadcast_to(t, x.shape[:1])


def _check_sigma_y(sigma_y, positive: bool):
    s = concrete_or_none(sigma_y)
    if s is None:
        return
    if s.ndim or not (s >= 0) or (positive and not s > 0):
        need = "> 0" if positive else ">= 0"
        raise ValueError(f"sigma_y must be a scalar {need} (the observation noise std), got {s}.")


def _scale_at(scale, tb, dtype):
    """Guidance scale: a constant, or a function of t (shape (batch,)) -> scalar or (batch,)."""
    return jnp.asarray(scale(tb) if callable(scale) else scale, dtype)


def _denoise_vjp(score_fn, sde, x, t):
    """Tweedie's x0_hat = (x + sigma^2 s(x, t)) / alpha at (x, t), with the VJP of
    x -> x0_hat and the score (one score call): (x0_hat, vjp, score, alpha, sigma)."""
    tb = _tb(t, x)
    a, s = sde.alpha(tb), sde.sigma(tb)

    def denoise(v):
        sc = score_fn(v, t)
        return (v + bcast(s**2, v) * sc) / bcast(a, v), sc

    x0, vjp, sc = jax.vjp(denoise, x, has_aux=True)
    return x0, vjp, sc, a, s


def _guidance_terms(score_fn, sde, op, y, x, t, r2_fn, s2):
    """At (x, t): the score s, the residual res = y - A x0_hat, u = (r2 A A^T + s2 I)^{-1} res
    and g = J^T A^T u with J = d x0_hat / d x_t (one score call and one VJP)."""
    x0, vjp, sc, a, s = _denoise_vjp(score_fn, sde, x, t)
    res = y - op.apply(x0)
    u = op.gram_solve(res, r2_fn(a, s), s2)
    (g,) = vjp(op.transpose(u))
    return sc, res, u, g


def _pigdm_r2(v):
    """Pi-GDM's variance of p(x_0 | x_t): r_t^2 = v sigma_t^2 / (alpha_t^2 v + sigma_t^2)."""
    return lambda a, s: v * s**2 / (a**2 * v + s**2)


def _likelihood_guidance(score_fn, sde, op, y, r2_fn, sigma_y, scale):
    """s(x, t) + scale * J^T A^T (r2 A A^T + sigma_y^2 I)^{-1} (y - A x0_hat), J = d x0_hat / d x_t."""

    def score(x, t):
        op.check_observation(y, x.shape)
        sc, _, _, g = _guidance_terms(score_fn, sde, op, y, x, t, r2_fn, sigma_y**2)
        return sc + bcast(_scale_at(scale, _tb(t, x), x.dtype), x) * g

    return score


def pigdm_score(score_fn: Callable, sde: AbstractSDE, op: AbstractLinearOperator, y: Array, *,
                sigma_y=0.0, data_var=1.0, scale=1.0) -> Callable:
    """Pseudoinverse-guided score (Pi-GDM; Song, Vahdat, Mardani & Kautz 2023,
    "Pseudoinverse-Guided Diffusion Models for Inverse Problems", eq. 7-8):

        grad log p_t(y | x_t) ~ [ (y - A x0_hat)^T (r_t^2 A A^T + sigma_y^2 I)^{-1} A  d x0_hat/d x_t ]^T,
        r_t^2 = v sigma_t^2 / (alpha_t^2 v + sigma_t^2)       (v = data_var; v = 1 is the
                                                               paper's VP choice sigma_t^2/(alpha_t^2+sigma_t^2)),

    returned as s(x_t, t) + scale * that (scale = 1: the paper's unweighted form; scale may
    also be a function of t, shape (batch,), e.g. `lambda t: sde.alpha(t) ** 2`, which keeps
    a trained network's guidance finite at large t, where x0_hat's Jacobian divides the
    network's error by alpha_t).

    What it approximates: p(x_0 | x_t) by N(x0_hat(x_t), r_t^2 I), the exact posterior when
    the data are N(mu, v I); then p_t(y | x_t) = N(A x0_hat, r_t^2 A A^T + sigma_y^2 I)
    exactly, and sampling with this score samples p(x | y) exactly (up to the sampler's
    discretisation). For other data the error is that of the Gaussian, isotropic
    posterior approximation (and that r_t^2 ignores the x_t-dependence of Cov[x_0|x_t]).

    y: observations (B, *obs_shape) = op.apply(x) (+ noise); sigma_y: noise std (0 allowed
    since A A^T is invertible on the observation space). Costs one score evaluation and
    one vector-Jacobian product through it per call.
    """
    _check_sigma_y(sigma_y, positive=False)
    return _likelihood_guidance(score_fn, sde, op, jnp.asarray(y), _pigdm_r2(data_var), sigma_y, scale)


def dps_score(score_fn: Callable, sde: AbstractSDE, op: AbstractLinearOperator, y: Array, *,
              sigma_y, scale=1.0) -> Callable:
    """Diffusion posterior sampling (DPS; Chung, Kim, Mccann, Klasky & Ye 2023, "Diffusion
    Posterior Sampling for General Noisy Inverse Problems", Alg. 1 with Gaussian noise):

        grad log p_t(y | x_t) ~ grad_x log N(y; A x0_hat(x_t), sigma_y^2 I)
                              = (d x0_hat/d x_t)^T A^T (y - A x0_hat) / sigma_y^2,

    returned as s + scale * that. What it approximates: p(x_0 | x_t) by a point mass at
    x0_hat (r_t = 0 in Pi-GDM), which over-weights the likelihood at large t; it is not
    exact even for Gaussian data (the bias shrinks as sigma_y grows relative to the
    posterior spread). The paper's step size zeta_i / ||y - A x0_hat|| corresponds to a
    data-dependent `scale`; here scale is a constant. Needs sigma_y > 0.
    """
    _check_sigma_y(sigma_y, positive=True)
    return _likelihood_guidance(score_fn, sde, op, jnp.asarray(y), lambda a, s: 0.0 * s,
                                sigma_y, scale)


def tweedie_cov_score(score_fn: Callable, sde: AbstractSDE, op: AbstractLinearOperator, y: Array, *,
                      sigma_y=0.0, scale=1.0) -> Callable:
    """Guidance with the exact Tweedie posterior covariance (moment projection; Boys, Girolami,
    Pidstrigach, Reich, Mosca & Akyildiz 2023, "Tweedie Moment Projected Diffusions for
    Inverse Problems"; Finzi et al. 2023):

        Cov[x_0 | x_t] = (sigma_t^2 / alpha_t) d x0_hat / d x_t =: C_t(x_t)   (second-order Tweedie),
        p_t(y | x_t) ~ N(A x0_hat, A C_t A^T + sigma_y^2 I),
        grad log p_t(y | x_t) ~ J^T A^T (A C_t A^T + sigma_y^2 I)^{-1} (y - A x0_hat),

    with J = d x0_hat / d x_t and the x_t-dependence of C_t neglected in the gradient.
    What it approximates: p(x_0 | x_t) by the Gaussian with its exact first two moments;
    exact for Gaussian data of *any* covariance (C_t then does not depend on x_t), where
    Pi-GDM's isotropic r_t^2 I is not; for mixtures the error is the moment projection.
    Costs one score evaluation and M + 1 vector-Jacobian products per call (M = number of
    observed values per example), so it is meant for small observations / tests.
    """
    _check_sigma_y(sigma_y, positive=False)
    y = jnp.asarray(y)

    def score(x, t):
        op.check_observation(y, x.shape)
        tb = _tb(t, x)
        x0, vjp, sc, a, s = _denoise_vjp(score_fn, sde, x, t)
        B = x.shape[0]
        obs_shape = y.shape[1:]
        M = y[0].size
        rows = (op.apply(jnp.ones((1,) + x.shape[1:], x.dtype))[0] != 0).reshape(-1)
        basis = jnp.eye(M, dtype=x.dtype).reshape((M, 1) + obs_shape)
        # JtAt[m] = J^T A^T e_m for every example: (M, B, ...); then A J^T A^T -> (B, M, M)
        JtAt = jax.vmap(lambda e: vjp(op.transpose(jnp.broadcast_to(e, (B,) + obs_shape)))[0])(basis)
        AJA = jax.vmap(op.apply)(JtAt).reshape(M, B, M).transpose(1, 2, 0)
        cov = bcast(s**2 / a, AJA) * 0.5 * (AJA + jnp.swapaxes(AJA, 1, 2))
        cov = cov + sigma_y**2 * jnp.eye(M, dtype=x.dtype) + jnp.diag((~rows).astype(x.dtype))
        r = (y - op.apply(x0)).reshape(B, M) * rows
        u = jnp.linalg.solve(cov, r[..., None])[..., 0] * rows
        (g,) = vjp(op.transpose(u.reshape(y.shape)))
        return sc + bcast(_scale_at(scale, tb, x.dtype), x) * g

    return score


class ODEEulerPredictor(AbstractPredictor):
    """Probability-flow Euler step x' = x + (t_next - t) [f x - g^2 s / 2] (deterministic),
    so the replacement method can run on the ODE as well as on the reverse SDE."""

    n_evals = 1

    def step(self, score_fn, sde, keys, x, t, t_next, idx):
        return x + (t_next - t) * sde.ode_drift(score_fn, x, _tb(t, x))


class ReplacementSampler(eqx.Module):
    """Settings of the replacement method (Song et al. 2021, "Score-Based Generative
    Modeling through SDEs", App. I.2 / G): n_steps grid steps, each a corrector then a
    predictor step from `scoresde.sampling.pc` (or `ODEEulerPredictor`), then replacement.
    NFE = n_steps * (predictor.n_evals + corrector.n_evals) (+1 for the final denoise)."""

    n_steps: int = eqx.field(static=True)
    predictor: AbstractPredictor = ReverseDiffusionPredictor()
    corrector: AbstractCorrector = NoneCorrector()
    grid: AbstractTimeGrid = UniformTimeGrid()

    def __check_init__(self):
        if not isinstance(self.n_steps, int) or isinstance(self.n_steps, bool) or self.n_steps < 1:
            raise ValueError(f"n_steps must be an integer >= 1, got {self.n_steps!r}.")


def _normal(keys, x, *idx):
    def one(k):
        for i in idx:
            k = jax.random.fold_in(k, i)
        return jax.random.normal(k, x.shape[1:], x.dtype)

    return jax.vmap(one)(keys)


def sample_replacement(sampler: ReplacementSampler, score_fn: Callable, sde: AbstractSDE,
                       op: AbstractLinearOperator, y: Array, key, x_T: Array, *,
                       denoise: bool = True) -> SampleResult:
    """Replacement method for noise-free linear observations y = A x.

    After every step to time t (and at t = T), the observed part of x is overwritten by a
    forward-noised observation, x <- x - A^+ (A x - y_t) with y_t = alpha_t y + sigma_t A z,
    z ~ N(0, I) (for a mask: x_obs <- alpha_t y + sigma_t z). With denoise=True the last
    state is denoised with Tweedie's formula x0 = (x + sigma_eps^2 s) / alpha_eps and its
    observed part is set to the *noise-free* y, so the output satisfies A x = y exactly
    (bit for bit for inpainting) and the filled region is the denoiser's mean (the original
    code's final step used the noisy x in x_mean, leaving noise in the filled pixels).

    What it approximates: it samples the unobserved part from the reverse process driven by
    the *unconditional* score at (x_unknown, y_t), with y_t drawn independently of the
    sampled history; this equals p(x_unknown | y) when the observed and unobserved parts are
    independent under the data law (e.g. isotropic Gaussian data), and is biased otherwise
    (the unobserved part only feels y through p_t(x_unknown | x_obs,t = y_t), not through the
    whole observation history; Lugmayr et al. 2022 and Chung et al. 2022 discuss this).

    y: (B, *obs_shape) observations; key: one PRNG key or B keys (per-example randomness,
    so pmap over the batch gives the same samples); x_T: (B, ...) prior noise.
    """
    x_T = jnp.asarray(x_T)
    check_float_data(x_T, "x_T")
    check_batched(x_T, "x_T")
    y = jnp.asarray(y, x_T.dtype)
    op.check_observation(y, x_T.shape)
    keys = per_example_keys(key, x_T.shape[0])
    ts = sampler.grid(sde, sampler.n_steps, x_T.dtype)
    n = sampler.n_steps

    def replace(x, t, i):
        z = _normal(keys, x, i, 2)
        return op.replace(x, sde.alpha(t) * y + sde.sigma(t) * op.apply(z))

    def body(x, inp):
        i, t, t_next = inp
        x = sampler.corrector.step(score_fn, sde, keys, x, t, t_next, (i, 1))
        x = replace(x, t, i + n + 1) if not isinstance(sampler.corrector, NoneCorrector) else x
        x = sampler.predictor.step(score_fn, sde, keys, x, t, t_next, (i, 0))
        return replace(x, t_next, i), None

    x = replace(x_T, ts[0], n)
    x, _ = jax.lax.scan(body, x, (jnp.arange(n), ts[:-1], ts[1:]))
    per = sampler.predictor.n_evals + sampler.corrector.n_evals
    nfe = n * per
    if denoise:
        t = jnp.full(x.shape[:1], sde.eps, x.dtype)
        x = (x + bcast(sde.sigma(t) ** 2, x) * score_fn(x, t)) / bcast(sde.alpha(t), x)
        x = op.replace(x, y)
        nfe += 1
    return SampleResult(x, jnp.asarray(nfe, jnp.int32), None)


def sample_conditional(sampler, make_score: Callable, sde: AbstractSDE, key, x_T: Array, cond, *,
                       denoise: bool = False) -> SampleResult:
    """Sample with a per-example conditioning (observations y, class labels...) and any sampler.

    make_score(cond_b) -> score(x, t) builds the guided score for a batch whose conditioning
    is cond_b (a pytree with leading batch axis), e.g.
    `lambda y: pigdm_score(score_fn, sde, op, y)` or
    `lambda lab: classifier_free_guidance(net_score, lab, w, num_classes=10)`.
    Each example is sampled on its own (vmapped, batch of one), so samplers that vmap
    their solve per example (the diffrax ones: ProbabilityFlowODE, ReverseSRK), which
    cannot see a batch-wide closure, get the right conditioning; for the lax.scan samplers
    this is the same computation as the batched call. Randomness of example b comes from
    its own key only. nfe is the largest over the batch.
    """
    from scoresde.sampling import sample  # local: keep the module import light

    x_T = jnp.asarray(x_T)
    check_batched(x_T, "x_T")
    keys = per_example_keys(key, x_T.shape[0])

    def one(k, x, c):
        c1 = jax.tree_util.tree_map(lambda v: v[None], c)
        res = sample(sampler, make_score(c1), sde, k[None], x[None], denoise=denoise)
        return res.samples[0], res.nfe

    xs, nfe = jax.vmap(one)(keys, x_T, cond)
    return SampleResult(xs, jnp.max(nfe), None)

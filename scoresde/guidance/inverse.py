"""Guided scores for linear inverse problems y = A x + sigma_y n (n ~ N(0, I)).

Each returns a score `score(x, t, y)` that approximates the *conditional* score
grad log p_t(x_t | y) = s(x_t, t) + grad log p_t(y | x_t), so it plugs into every sampler
of `scoresde.sampling` through the one entry point

    sample(sampler, pigdm_score(prior, sde, op, sigma_y=0.05), sde, key, x_T, cond=y)

with y of shape (B, *obs) = op.apply(x) (+ noise): one observation per example, passed as
conditioning (per-example solves slice it). One observation for the whole batch can be
bound at construction instead, `pigdm_score(..., y=y1)` with y1 of shape obs (no batch
axis), and is broadcast to the batch; the score is then called `score(x, t)`.

All three write p_t(y | x_t) = int p(y | x_0) p(x_0 | x_t) dx_0 with a Gaussian
approximation of p(x_0 | x_t) centred at Tweedie's denoiser x0_hat(x_t) =
(x_t + sigma_t^2 s(x_t, t)) / alpha_t (`scoresde.parameterization.x0_from_score`) and
differentiate through x0_hat (one vector-Jacobian product of the score per call):

    pigdm_score        Cov[x_0 | x_t] ~ r_t^2 I with r_t^2 = v sigma_t^2 / (alpha_t^2 v + sigma_t^2)
    dps_score          Cov[x_0 | x_t] ~ 0 (a point mass), with Chung et al.'s step-size rule
    tweedie_cov_score  Cov[x_0 | x_t] = (sigma_t^2 / alpha_t) d x0_hat / d x_t (exact second moment)

The first two are `AbstractTwistedScore`s: besides the guided score they expose their
twist log p~_t(y | x_t), which `scoresde.guidance.TwistedSMC` turns into an
asymptotically exact sampler.
"""

import abc
from typing import Callable, ClassVar, NamedTuple, Optional, Union

import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde._types import Array, ScoreFn
from scoresde._util import batch_time, bcast
from scoresde.guidance._common import check_sigma_y, denoise_vjp, observation, scale_at
from scoresde.guidance.operators import AbstractLinearOperator
from scoresde.sde import AbstractSDE

Scale = Union[float, Callable]


class TwistTerms(NamedTuple):
    """What a twisted score computes at (x, t, y), from one score call and one VJP.

    score: the prior score s(x, t); log_twist: (B,) log p~_t(y | x) up to a constant that
    depends on (t, y) only; grad_log_twist: its gradient in x; guided: the guided score the
    module returns (s plus its scaled guidance term)."""

    score: Array
    log_twist: Array
    grad_log_twist: Array
    guided: Array


class AbstractTwistedScore(eqx.Module):
    """A guided score `score(x, t, y)` that exposes its twisting function p~_t(y | x_t):
    `terms(x, t, y)` returns `TwistTerms`. The normalising constant of p~_t may depend on
    (t, y) but not on x (it then cancels in the weights of twisted SMC)."""

    @abc.abstractmethod
    def terms(self, x: Array, t, y: Optional[Array] = None) -> TwistTerms:
        """Prior score, log twist, its gradient and the guided score at (x, t, y)."""

    def __call__(self, x: Array, t, y: Optional[Array] = None) -> Array:
        return self.terms(x, t, y).guided


class AbstractGaussianTwistScore(AbstractTwistedScore):
    """The twist p~_t(y | x_t) = N(y; A x0_hat(x_t), r_t^2 A A^T + sigma_y^2 I) and the guided score

        s(x_t, t) + scale(t) * m(res) * J^T A^T (r_t^2 A A^T + sigma_y^2 I)^{-1} res,
        res = y - A x0_hat(x_t),   J = d x0_hat / d x_t,

    where J^T A^T (...)^{-1} res = grad_x log p~_t(y | x_t) (x0_hat's own dependence on x is
    the only one: r_t does not depend on x). Subclasses give r_t^2 (`r2`) and the
    per-example step multiplier m (`step_weight`, 1 for the plain gradient)."""

    builder: eqx.AbstractClassVar[str]
    prior: eqx.AbstractVar[ScoreFn]
    sde: eqx.AbstractVar[AbstractSDE]
    op: eqx.AbstractVar[AbstractLinearOperator]
    sigma_y: eqx.AbstractVar[float]
    scale: eqx.AbstractVar[Scale]
    y: eqx.AbstractVar[Optional[Array]]

    @abc.abstractmethod
    def r2(self, alpha: Array, sigma: Array) -> Array:
        """r_t^2, the variance of p(x_0 | x_t) that the twist assumes, per example."""

    @abc.abstractmethod
    def step_weight(self, res: Array, x: Array) -> Array:
        """m: a per-example multiplier (B,) of the guidance term (or the scalar 1), from the
        residual res = y - A x0_hat (B, *obs) at data x."""

    def terms(self, x, t, y=None):
        yb = observation(self.op, self.y, y, x.shape, self.builder).astype(x.dtype)
        tb = batch_time(t, x)
        x0, vjp, sc = denoise_vjp(self.prior, self.sde, x, tb)
        res = yb - self.op.apply(x0)
        u = self.op.gram_solve(res, self.r2(self.sde.alpha(tb), self.sde.sigma(tb)), self.sigma_y**2)
        (g,) = vjp(self.op.transpose(u))
        # (the twist's normalising constant depends on t only, through r_t: dropped)
        log_twist = -0.5 * jnp.sum((res * u).reshape(res.shape[0], -1), axis=1)
        guided = sc + bcast(scale_at(self.scale, tb, x) * self.step_weight(res, x), x) * g
        return TwistTerms(sc, log_twist, g, guided)


class PiGDMScore(AbstractGaussianTwistScore):
    """Pi-GDM's guided score; built by `pigdm_score` (see there)."""

    builder: ClassVar[str] = "pigdm_score"
    prior: ScoreFn = eqx.field(static=True)
    sde: AbstractSDE
    op: AbstractLinearOperator
    sigma_y: float = 0.0
    data_var: float = 1.0
    scale: Scale = eqx.field(static=True, default=1.0)
    y: Optional[Array] = None

    def __check_init__(self):
        check_sigma_y(self.sigma_y, positive=False)

    def r2(self, alpha, sigma):
        v = self.data_var
        return v * sigma**2 / (alpha**2 * v + sigma**2)

    def step_weight(self, res, x):
        return jnp.ones((), res.dtype)


class DPSScore(AbstractGaussianTwistScore):
    """DPS's guided score; built by `dps_score` (see there)."""

    builder: ClassVar[str] = "dps_score"
    prior: ScoreFn = eqx.field(static=True)
    sde: AbstractSDE
    op: AbstractLinearOperator
    sigma_y: float
    zeta: Optional[float] = None
    normalize: bool = eqx.field(static=True, default=True)
    scale: Scale = eqx.field(static=True, default=1.0)
    y: Optional[Array] = None

    def __check_init__(self):
        check_sigma_y(self.sigma_y, positive=True)

    def r2(self, alpha, sigma):
        return jnp.zeros_like(sigma)

    def step_weight(self, res, x):
        if not self.normalize:
            return jnp.ones((), res.dtype)
        if self.zeta is None:  # sqrt(M) / sigma_y, M = observed values per example
            n_obs = jnp.sum(self.op.apply(jnp.ones((1,) + x.shape[1:], x.dtype)) != 0)
            zeta = jnp.sqrt(n_obs.astype(res.dtype)) / self.sigma_y
        else:
            zeta = self.zeta
        norm = jnp.sqrt(jnp.sum(res.reshape(res.shape[0], -1) ** 2, axis=1))
        # zeta sigma_y^2 / ||res|| turns J^T A^T res / sigma_y^2 into zeta J^T A^T res / ||res||
        return zeta * self.sigma_y**2 / jnp.maximum(norm, jnp.finfo(res.dtype).tiny)


def pigdm_score(score_fn: ScoreFn, sde: AbstractSDE, op: AbstractLinearOperator, *, sigma_y=0.0,
                data_var=1.0, scale: Scale = 1.0, y: Optional[Array] = None) -> PiGDMScore:
    """Pseudoinverse-guided score (Pi-GDM; Song, Vahdat, Mardani & Kautz 2023,
    "Pseudoinverse-Guided Diffusion Models for Inverse Problems", eq. 7-8):

        grad log p_t(y | x_t) ~ [ (y - A x0_hat)^T (r_t^2 A A^T + sigma_y^2 I)^{-1} A  d x0_hat/d x_t ]^T,
        r_t^2 = v sigma_t^2 / (alpha_t^2 v + sigma_t^2)       (v = data_var; v = 1 is the
                                                               paper's VP choice sigma_t^2/(alpha_t^2+sigma_t^2)),

    returned as `score(x, t, y) = s(x, t) + scale * that` (scale = 1: the paper's
    unweighted form; scale may also be a function of t, shape (batch,), e.g.
    `lambda t: sde.alpha(t) ** 2`, which keeps a trained network's guidance finite at large
    t, where x0_hat's Jacobian divides the network's error by alpha_t).

    What it approximates: p(x_0 | x_t) by N(x0_hat(x_t), r_t^2 I), the exact posterior when
    the data are N(mu, v I); then p_t(y | x_t) = N(A x0_hat, r_t^2 A A^T + sigma_y^2 I)
    exactly, and sampling with this score samples p(x | y) exactly (up to the sampler's
    discretisation). For other data the error is that of the Gaussian, isotropic
    posterior approximation (and that r_t^2 ignores the x_t-dependence of Cov[x_0|x_t]).

    Choosing data_var (v). r_t^2 is the error of the best *linear* estimate of x_0 from x_t
    for data of per-coordinate variance v, and that linear-MMSE error bounds the average of
    the true Var[x_0 | x_t] from above. So:
    * Gaussian-like data: v = the data's per-coordinate variance tr(Cov[x_0]) / D (exact
      for N(mu, v I); images scaled to [-1, 1] have per-pixel variances below 1, the
      paper's default).
    * As the twist of `TwistedSMC`: the per-coordinate variance too; the twist is then
      never too sharp on average, and too sharp a twist starves the particles (on the ring
      below, v = 0.25 leaves mean |x_1| at 4.20 +- 0.02 with 256 particles, exact 4.00).
    * Pi-GDM alone on clustered data: no single v is right, since the true Var[x_0 | x_t]
      jumps from the between-cluster spread to the within-cluster one as t decreases;
      measure it. On the 2-D ring (8 modes of variance 0.25 on a circle of radius 4,
      per-coordinate variance 8.25; x_0 observed with sigma_y = 0.05, 200 EM steps;
      results/inverse_problems.md) the W1 distance of |x_1| to the exact posterior is
      0.057 / 0.009 / 0.067 at y = 0 and 0.014 / 0.281 / 0.327 at y = 2.8 for
      v = 0.25 / 1 / 8.25: the within-mode variance is best at y = 2.8 (20 times better
      than v = 1), v = 1 at y = 0 (6 times better than v = 0.25), and the per-coordinate
      variance is worst at both.

    y: bound single observation (shape obs, no batch axis), or None to take one per
    example from cond; sigma_y: noise std (0 allowed since A A^T is invertible on the
    observation space). Costs one score evaluation and one VJP through it per call.
    """
    return PiGDMScore(score_fn, sde, op, sigma_y, data_var, scale, y)


def dps_score(score_fn: ScoreFn, sde: AbstractSDE, op: AbstractLinearOperator, *, sigma_y,
              zeta=None, normalize: bool = True, scale: Scale = 1.0, y: Optional[Array] = None) -> DPSScore:
    """Diffusion posterior sampling (DPS; Chung, Kim, Mccann, Klasky & Ye 2023, "Diffusion
    Posterior Sampling for General Noisy Inverse Problems", Alg. 1 and App. C).

    DPS replaces p(x_0 | x_t) by a point mass at x0_hat (r_t = 0 in Pi-GDM), i.e. uses the
    twist p~_t(y | x_t) = N(y; A x0_hat(x_t), sigma_y^2 I), whose gradient is

        grad log p~_t(y | x_t) = J^T A^T (y - A x0_hat) / sigma_y^2,   J = d x0_hat / d x_t.

    With normalize=False the score is s + scale * that (the plain gradient). It is stiff:
    1 / sigma_y^2 multiplies the residual, so an explicit step of the reverse SDE (step h,
    drift weight g(t)^2 h) overshoots whenever g^2 h |A J|^2 / sigma_y^2 > 2, and the
    samples diverge (on the 2-D ring with sigma_y = 0.05 and 200 Euler-Maruyama steps, 96%
    of the samples end with |x_1| > 8 at y = 2.8, where the posterior's modes are at 2.8).

    normalize=True (default) is the step-size rule of the paper (App. C): its update
    x <- x' - zeta_i grad ||y - A x0_hat||^2 with zeta_i = zeta' / ||y - A x0_hat|| is a
    step of length proportional to zeta' along -grad ||y - A x0_hat||, whatever the size
    of the residual. As a score term (so that it works with every sampler):

        score(x, t, y) = s(x, t) + scale * zeta * J^T A^T res / ||res||,   res = y - A x0_hat,

    i.e. 1 / sigma_y^2 is replaced by zeta / ||res|| (per example). A reverse-SDE step then
    moves x by at most h g(t)^2 zeta |A J| through the guidance, bounded whatever the
    residual, so the sampler stays stable; zeta' of the paper's per-step form is
    h g(t)^2 zeta / 2 on a grid of step h. Default zeta = sqrt(M) / sigma_y (M = observed
    values per example): the normalised term equals the plain gradient when the residual
    has its typical size under the noise (||res|| = sigma_y sqrt(M)), is weaker for larger
    residuals (which is what keeps the sampler stable) and stronger for smaller ones. Near
    t = 0 it pulls like a Laplace likelihood exp(-zeta ||res||), whose residual norm is
    M / zeta = sigma_y sqrt(M) on average, the Gaussian noise's typical size. On the ring
    (M = 1, sigma_y = 0.05, 200 EM steps; results/inverse_problems.md) this keeps every
    sample bounded where the plain gradient diverges. A smaller zeta spreads the unobserved
    part better and fits y less tightly: on the ring at y = 2.8 we measured W1 distances to
    the exact posterior of 0.09 (x_1) and 0.07 (x_0) at zeta = 0.25 / sigma_y against 0.24
    and 0.004 at the default. The twist (`terms(...).log_twist`, used by `TwistedSMC`) is
    the Gaussian one in both cases.

    What it approximates: the point mass over-weights the likelihood at large t; DPS is
    not exact even for Gaussian data (the bias shrinks as sigma_y grows relative to the
    posterior spread). y as in `pigdm_score`; sigma_y > 0 is needed.
    """
    return DPSScore(score_fn, sde, op, sigma_y, zeta, normalize, scale, y)


class TweedieCovScore(eqx.Module):
    """The exact-Tweedie-covariance guided score; built by `tweedie_cov_score` (see there)."""

    prior: ScoreFn = eqx.field(static=True)
    sde: AbstractSDE
    op: AbstractLinearOperator
    sigma_y: float = 0.0
    scale: Scale = eqx.field(static=True, default=1.0)
    y: Optional[Array] = None

    def __check_init__(self):
        check_sigma_y(self.sigma_y, positive=False)

    def __call__(self, x, t, y=None):
        op = self.op
        yb = observation(op, self.y, y, x.shape, "tweedie_cov_score").astype(x.dtype)
        tb = batch_time(t, x)
        x0, vjp, sc = denoise_vjp(self.prior, self.sde, x, tb)
        a, s = self.sde.alpha(tb), self.sde.sigma(tb)
        B = x.shape[0]
        obs_shape = yb.shape[1:]
        M = yb[0].size
        rows = (op.apply(jnp.ones((1,) + x.shape[1:], x.dtype))[0] != 0).reshape(-1)
        basis = jnp.eye(M, dtype=x.dtype).reshape((M, 1) + obs_shape)
        # JtAt[m] = J^T A^T e_m for every example: (M, B, ...); then A J^T A^T -> (B, M, M)
        JtAt = jax.vmap(lambda e: vjp(op.transpose(jnp.broadcast_to(e, (B,) + obs_shape)))[0])(basis)
        AJA = jax.vmap(op.apply)(JtAt).reshape(M, B, M).transpose(1, 2, 0)
        cov = bcast(s**2 / a, AJA) * 0.5 * (AJA + jnp.swapaxes(AJA, 1, 2))
        cov = cov + self.sigma_y**2 * jnp.eye(M, dtype=x.dtype) + jnp.diag((~rows).astype(x.dtype))
        r = (yb - op.apply(x0)).reshape(B, M) * rows
        u = jnp.linalg.solve(cov, r[..., None])[..., 0] * rows
        (g,) = vjp(op.transpose(u.reshape(yb.shape)))
        return sc + bcast(scale_at(self.scale, tb, x), x) * g


def tweedie_cov_score(score_fn: ScoreFn, sde: AbstractSDE, op: AbstractLinearOperator, *, sigma_y=0.0,
                      scale: Scale = 1.0, y: Optional[Array] = None) -> TweedieCovScore:
    """Guidance with the exact Tweedie posterior covariance (moment projection; Boys, Girolami,
    Pidstrigach, Reich, Mosca & Akyildiz 2023, "Tweedie Moment Projected Diffusions for
    Inverse Problems"; Finzi et al. 2023):

        Cov[x_0 | x_t] = (sigma_t^2 / alpha_t) d x0_hat / d x_t =: C_t(x_t)   (second-order Tweedie),
        p_t(y | x_t) ~ N(A x0_hat, A C_t A^T + sigma_y^2 I),
        grad log p_t(y | x_t) ~ J^T A^T (A C_t A^T + sigma_y^2 I)^{-1} (y - A x0_hat),

    returned as `score(x, t, y) = s + scale * that`, with J = d x0_hat / d x_t and the
    x_t-dependence of C_t neglected in the gradient. What it approximates: p(x_0 | x_t) by
    the Gaussian with its exact first two moments; exact for Gaussian data of *any*
    covariance (C_t then does not depend on x_t), where Pi-GDM's isotropic r_t^2 I is not;
    for mixtures the error is the moment projection. y as in `pigdm_score`. Costs one score
    evaluation and M + 1 vector-Jacobian products per call (M = number of observed values
    per example), so it is meant for small observations / tests. (Its twist's normalising
    constant depends on x through C_t, so it is not an `AbstractTwistedScore`.)
    """
    return TweedieCovScore(score_fn, sde, op, sigma_y, scale, y)

"""Consistency distillation, consistency training and consistency tuning objectives.

For a pair of times eps <= r < t on one probability-flow trajectory the consistency
function must agree with itself (Song et al. 2023, eq. 7 and 10):

    L = E w(t, r) d( f_theta(x_t, t), stopgrad f_target(x_r, r) ),   x_t = alpha_t x_0 + sigma_t z,

where x_r is
  * distillation (CD): one step of the teacher's probability-flow ODE from (x_t, t) to r
    with a score function (a trained network or an exact one), `teacher_step`;
  * training (CT, iCT, ECT): x_r = alpha_r x_0 + sigma_r z with the SAME z, a one-sample
    estimate of that ODE step (Song et al. 2023, Thm. 2) that needs no teacher.
`f_target` is the EMA of the student (Song et al. 2023) or the student itself under a
stop-gradient (iCT, Song & Dhariwal 2023; ECT, Geng et al. 2024): pass the function.

Pairs of times (`__call__(key, n, sde, step) -> (t, r, w)`), all in the noise level
sh = sigma / alpha = exp(-lambda / 2) and mapped to t by `sde.t_from_log_snr`:
  KarrasPairs       CD of Song et al. 2023: N Karras boundaries sh_i (rho = 7), i uniform, w = 1.
  ICTPairs          iCT: the number of boundaries doubles from s0 to s1 over training,
                    i drawn from the discretised log-normal(p_mean, p_std), w = 1/(sh_t - sh_r).
  ECTPairs          ECT's continuous schedule: log sh_t ~ N(p_mean, p_std^2) and
                    sh_r = sh_t (1 - n(sh_t) / q^floor(step / stage_steps)),
                    n(sh) = 1 + k sigmoid(-b sh), w = 1/(sh_t - sh_r); consistency TUNING is
                    this objective started from a diffusion model's weights.
Distances: `SquaredL2` (sum of squares) and `PseudoHuber` (iCT: sqrt(||a - b||^2 + c^2) - c,
c = 0.00054 sqrt(D) by default).
"""

from __future__ import annotations

import abc
import math
from typing import Callable, Optional

import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde._checks import check_choice, check_same_shape, data_batch
from scoresde._types import Array
from scoresde._util import batch_time, bcast, call_score
from scoresde.consistency.function import sigma_hat
from scoresde.parameterization import x0_from_score
from scoresde.sde import AbstractSDE


def _t_of_sh(sde: AbstractSDE, sh: Array) -> Array:
    return jnp.clip(sde.t_from_log_snr(-2.0 * jnp.log(sh)), sde.eps, sde.T)


def _sh_range(sde: AbstractSDE, dtype=jnp.float32):
    return sigma_hat(sde, jnp.asarray(sde.eps, dtype)), sigma_hat(sde, jnp.asarray(sde.T, dtype))


# --- the teacher's ODE step --------------------------------------------------------------------
def teacher_step(score_fn: Callable, sde: AbstractSDE, x: Array, t: Array, r: Array, *, cond=None,
                 solver: str = "heun", substeps: int = 1) -> Array:
    """The teacher's probability-flow ODE from (x, t) to r < t: `substeps` steps of `solver`.

    In x_hat = x / alpha, sh = sigma / alpha the ODE is dx_hat/dsh = (x_hat - D(x, t)) / sh with
    D = E[x_0 | x_t] (Tweedie, `x0_from_score`) for every linear SDE (Karras et al. 2022, eq. 4);
    "euler" takes Euler steps in sh, "heun" adds the trapezoidal correction (Song et al.
    2023 distil with one Heun step), "dpm2" is DPM-Solver++(2S) (Lu et al. 2022b, "DPM-Solver++",
    data prediction, midpoint r = 1/2), which integrates the linear part exactly and is far more
    accurate than Heun on long steps. The substeps are uniform in log sh (= uniform in
    log-SNR; a few make the target accurate on the long steps of a coarse discretisation).
    t, r: shape (batch,). Returns x_r ((1 or 2) * substeps score evaluations).
    """
    if solver not in ("euler", "heun", "dpm2"):
        raise ValueError(f"solver must be 'euler', 'heun' or 'dpm2', got {solver!r}.")
    if not isinstance(substeps, int) or substeps < 1:
        raise ValueError(f"substeps must be an integer >= 1, got {substeps!r}.")
    t, r = batch_time(t, x), batch_time(r, x)
    log_t, log_r = jnp.log(sigma_hat(sde, t)), jnp.log(sigma_hat(sde, r))
    xh = x / bcast(sde.alpha(t), x)

    def slope(xh_, tt, sh):
        xx = xh_ * bcast(sde.alpha(tt), x)
        d = x0_from_score(sde, xx, tt, call_score(score_fn, xx, tt, cond))
        return (xh_ - d) / bcast(sh, x)

    def denoise(xh_, tt):
        xx = xh_ * bcast(sde.alpha(tt), x)
        return x0_from_score(sde, xx, tt, call_score(score_fn, xx, tt, cond))

    def substep(xh, k):
        # one substep from sh_a to sh_b, uniform in log sh; the end points are t and r exactly
        la = log_t + (log_r - log_t) * (k / substeps)
        lb = log_t + (log_r - log_t) * ((k + 1) / substeps)
        sa, sb = jnp.exp(la), jnp.exp(lb)
        ta = jnp.where(k == 0, t, _t_of_sh(sde, sa))
        tb = jnp.where(k == substeps - 1, r, _t_of_sh(sde, sb))
        if solver == "dpm2":
            # DPM-Solver++(2S) with r = 1/2 (Lu et al. 2022b) in x_hat: with q = sb / sa,
            # x_hat_b = q x_hat_a + (1 - q) D(midpoint), the midpoint an exact-exponential (DDIM)
            # half step: the linear part is integrated exactly, second order overall.
            sm = jnp.sqrt(sa * sb)
            qm, qb = bcast(sm / sa, x), bcast(sb / sa, x)
            xh_m = qm * xh + (1 - qm) * denoise(xh, ta)
            return qb * xh + (1 - qb) * denoise(xh_m, _t_of_sh(sde, sm)), None
        h = bcast(sb - sa, x)
        d_a = slope(xh, ta, sa)
        xh_b = xh + h * d_a
        if solver == "heun":
            xh_b = xh + 0.5 * h * (d_a + slope(xh_b, tb, sb))
        return xh_b, None

    # a lax.scan over the substeps: one compiled substep, whatever their number
    xh, _ = jax.lax.scan(substep, xh, jnp.arange(substeps))
    return xh * bcast(sde.alpha(r), x)


# --- distances ----------------------------------------------------------------------------------------
class AbstractDistance(eqx.Module):
    """d(a, b) per example, shape (batch,)."""

    @abc.abstractmethod
    def __call__(self, a: Array, b: Array) -> Array:
        """Per-example distance."""


class SquaredL2(AbstractDistance):
    """||a - b||^2 summed over all but the batch axis."""

    def __call__(self, a, b):
        return jnp.sum(((a - b) ** 2).reshape(a.shape[0], -1), axis=-1)


class PseudoHuber(AbstractDistance):
    """sqrt(||a - b||^2 + c^2) - c (Charbonnier; iCT, Song & Dhariwal 2023, Sec. 3.3); c = None:
    0.00054 sqrt(D), iCT's choice for D-dimensional data."""

    c: Optional[float] = None

    def __call__(self, a, b):
        d = math.prod(a.shape[1:])
        c = 0.00054 * math.sqrt(d) if self.c is None else self.c
        sq = jnp.sum(((a - b) ** 2).reshape(a.shape[0], -1), axis=-1)
        return jnp.sqrt(sq + c * c) - c


# --- pairs of times ------------------------------------------------------------------------------------
class AbstractConsistencyPairs(eqx.Module):
    """Draws n pairs eps <= r < t and weights: `__call__(key, n, sde, step) -> (t, r, w)`,
    each of shape (n,); `step` (an int, may be traced) is the training step for schedules
    that tighten over training."""

    @abc.abstractmethod
    def __call__(self, key: Array, n: int, sde: AbstractSDE, step=0) -> tuple[Array, Array, Array]:
        """(t, r, w)."""


def _karras_sh(sde, n_points, rho, dtype, size=None):
    """Karras boundaries sh_0 = sh_min < ... < sh_{N-1} = sh_max (N = n_points, may be traced),
    as an array of `size` entries (entries past N - 1 repeat sh_max)."""
    size = n_points if size is None else size
    lo, hi = _sh_range(sde, dtype)
    i = jnp.minimum(jnp.arange(size, dtype=dtype), n_points - 1) / (n_points - 1)
    return (lo ** (1 / rho) + i * (hi ** (1 / rho) - lo ** (1 / rho))) ** rho


class KarrasPairs(AbstractConsistencyPairs):
    """Song et al. (2023)'s CD discretisation: boundaries sh_i = (sh_min^(1/rho) + (i / (N-1))
    (sh_max^(1/rho) - sh_min^(1/rho)))^rho, i = 0..N-1, i ~ U{0..N-2}, (t, r) = (t(sh_{i+1}),
    t(sh_i)), w = 1 (N = 18 for CIFAR-10 CD)."""

    n_points: int = eqx.field(static=True, default=18)
    rho: float = 7.0

    def __check_init__(self):
        if not isinstance(self.n_points, int) or self.n_points < 2:
            raise ValueError(f"n_points must be an integer >= 2, got {self.n_points!r}.")

    def __call__(self, key, n, sde, step=0):
        sh = _karras_sh(sde, self.n_points, self.rho, jnp.float32)
        i = jax.random.randint(key, (n,), 0, self.n_points - 1)
        return _t_of_sh(sde, sh[i + 1]), _t_of_sh(sde, sh[i]), jnp.ones((n,))


class ICTPairs(AbstractConsistencyPairs):
    """iCT (Song & Dhariwal 2023, "Improved Techniques for Training Consistency Models", Sec. 3.4-3.5):

        N(k) = min(s0 2^floor(k / K'), s1) + 1,   K' = floor(K / (log2(s1 / s0) + 1)),
        p(i) ~ erf((log sh_{i+1} - p_mean) / (sqrt 2 p_std)) - erf((log sh_i - p_mean) / (sqrt 2 p_std)),
        w = 1 / (sh_{i+1} - sh_i),

    on Karras boundaries (rho = 7) of N(k) points; K = total_steps."""

    total_steps: int = eqx.field(static=True, default=400_000)
    s0: int = eqx.field(static=True, default=10)
    s1: int = eqx.field(static=True, default=1280)
    p_mean: float = -1.1
    p_std: float = 2.0
    rho: float = 7.0

    def __check_init__(self):
        if not (isinstance(self.s0, int) and isinstance(self.s1, int) and 1 <= self.s0 <= self.s1):
            raise ValueError(f"s0 and s1 must be integers with 1 <= s0 <= s1, got s0={self.s0!r}, s1={self.s1!r}.")
        if not isinstance(self.total_steps, int) or self.total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer, got {self.total_steps!r}.")

    def n_points(self, step) -> Array:
        """N(k), the number of boundaries at training step k."""
        kp = max(self.total_steps // int(math.log2(self.s1 / self.s0) + 1), 1)
        return jnp.minimum(self.s0 * 2 ** (jnp.asarray(step) // kp), self.s1) + 1

    def __call__(self, key, n, sde, step=0):
        n_pts = self.n_points(step)
        sh = _karras_sh(sde, n_pts, self.rho, jnp.float32, size=self.s1 + 1)
        cdf = jax.scipy.special.erf((jnp.log(sh) - self.p_mean) / (math.sqrt(2.0) * self.p_std))
        p = cdf[1:] - cdf[:-1]
        valid = jnp.arange(self.s1) < n_pts - 1
        logits = jnp.where(valid & (p > 0), jnp.log(jnp.where(p > 0, p, 1.0)), -jnp.inf)
        i = jax.random.categorical(key, logits, shape=(n,))
        return _t_of_sh(sde, sh[i + 1]), _t_of_sh(sde, sh[i]), 1.0 / (sh[i + 1] - sh[i])


class ECTPairs(AbstractConsistencyPairs):
    """ECT's continuous-time pairs (Geng et al. 2024, "Consistency Models Made Easy", Sec. 3):

        log sh_t ~ N(p_mean, p_std^2) (clipped to [sh_min, sh_max]),
        sh_r = max(sh_t (1 - n(sh_t) / q^a), sh_min),  a = floor(step / stage_steps),
        n(sh) = 1 + k sigmoid(-b sh),   w = 1 / (sh_t - sh_r),

    so sh_t - sh_r shrinks by q every `stage_steps` (dt -> 0: the diffusion model's own
    loss at a = 0 turns into the consistency condition). Started from a diffusion model it is
    consistency tuning; from scratch, consistency training. `weight="uniform"` sets w = 1
    (Song et al. 2023's lambda = 1): 1 / (sh_t - sh_r) makes the high-noise pairs, where the
    one-step map is learnt, count ~sh_max / sd times less than the low-noise ones."""

    stage_steps: int = eqx.field(static=True, default=25_000)
    q: float = 2.0
    p_mean: float = -1.1
    p_std: float = 2.0
    k: float = 8.0
    b: float = 1.0
    weight: str = eqx.field(static=True, default="inverse_dt")

    def __check_init__(self):
        if not isinstance(self.stage_steps, int) or self.stage_steps < 1:
            raise ValueError(f"stage_steps must be a positive integer, got {self.stage_steps!r}.")
        if self.weight not in ("inverse_dt", "uniform"):
            raise ValueError(f"weight must be 'inverse_dt' (ECT) or 'uniform', got {self.weight!r}.")

    def __call__(self, key, n, sde, step=0):
        lo, hi = _sh_range(sde)
        sh_t = jnp.clip(jnp.exp(self.p_mean + self.p_std * jax.random.normal(key, (n,))), lo * 1.0001, hi)
        a = jnp.floor(jnp.asarray(step, jnp.float32) / self.stage_steps)
        ratio = (1.0 + self.k * jax.nn.sigmoid(-self.b * sh_t)) / self.q**a
        sh_r = jnp.maximum(sh_t * (1.0 - ratio), lo)
        t, r = _t_of_sh(sde, sh_t), _t_of_sh(sde, sh_r)
        # weights from the times actually used (clipping may move r)
        w = 1.0 / (sigma_hat(sde, t) - sigma_hat(sde, r))
        return t, r, (w if self.weight == "inverse_dt" else jnp.ones_like(w))


# --- the objective ------------------------------------------------------------------------------
def consistency_loss(consistency_fn: Callable, target_fn: Callable, sde: AbstractSDE, key: Array, x0: Array, *,
                     pairs: AbstractConsistencyPairs = KarrasPairs(), score_fn: Optional[Callable] = None,
                     step=0, distance: AbstractDistance = SquaredL2(), solver: str = "heun", substeps: int = 1,
                     labels=None, reduction: str = "mean"):
    """Monte Carlo estimate of the consistency objective (module docstring).

    Per example i: w_i d(consistency_fn(x_t, t), stop_gradient(target_fn(x_r, r))) with
    (t, r, w) from `pairs`. `score_fn` given: distillation, x_r = `teacher_step` of the
    teacher's probability-flow ODE (`solver` "heun", "euler" or "dpm2", `substeps` steps); None: training, x_r =
    alpha_r x_0 + sigma_r z with the same z. Functions are called as fn(x, t) or fn(x, t,
    labels). Pure and jit-able.

    Returns (loss, per_example_losses).
    """
    x0 = data_batch(x0, "x0")
    check_choice(reduction, "reduction", ("sum", "mean"))
    n = x0.shape[0]
    kt, kz = jax.random.split(key)
    t, r, w = pairs(kt, n, sde, step)
    t, r = t.astype(x0.dtype), r.astype(x0.dtype)
    z = jax.random.normal(kz, x0.shape, x0.dtype)
    x_t = bcast(sde.alpha(t), x0) * x0 + bcast(sde.sigma(t), x0) * z
    if score_fn is None:
        x_r = bcast(sde.alpha(r), x0) * x0 + bcast(sde.sigma(r), x0) * z
    else:
        x_r = teacher_step(score_fn, sde, x_t, t, r, cond=labels, solver=solver, substeps=substeps)
    student = call_score(consistency_fn, x_t, t, labels)
    check_same_shape(student, x0, "consistency_fn(x_t, t)", "x0")
    target = jax.lax.stop_gradient(call_score(target_fn, jax.lax.stop_gradient(x_r), r, labels))
    per = w.astype(x0.dtype) * distance(student, target)
    loss = jnp.mean(per) if reduction == "mean" else jnp.sum(per)
    return loss, per


__all__ = ["teacher_step", "AbstractDistance", "SquaredL2", "PseudoHuber", "AbstractConsistencyPairs",
           "KarrasPairs", "ICTPairs", "ECTPairs", "consistency_loss"]

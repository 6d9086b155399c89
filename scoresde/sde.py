"""Forward SDEs with exact Gaussian marginals.

Every SDE here is linear with scalar coefficients (Song et al. 2021, "Score-Based
Generative Modeling through Stochastic Differential Equations", ICLR):

    dx = f(t) x dt + g(t) dW,        t in [eps, T],

so that, started from a point x_0 at time 0, the marginal is exactly Gaussian:

    x_t = alpha(t) x_0 + sigma(t) z,   z ~ N(0, I),
    f(t)   = d log alpha / dt,
    g(t)^2 = d sigma^2 / dt - 2 f(t) sigma(t)^2.

All derived quantities (log-SNR lambda = log(alpha^2 / sigma^2), transition kernels,
the DDPM/SMLD discretisation, reverse drifts) are computed from alpha and sigma once,
in the base class; a concrete SDE only states its schedule. Two identities used
throughout the package: g^2 / sigma^2 = -d lambda / dt for every such SDE, and the
transition from s < t is x_t | x_s ~ N(alpha_{t|s} x_s, sigma_t^2 - alpha_{t|s}^2
sigma_s^2) with alpha_{t|s} = alpha_t / alpha_s.

SDEs are immutable pytrees (equinox Modules): they pass through jit, vmap and pmap
as ordinary arguments. Arguments are validated when an SDE is built.
"""

# No `from __future__ import annotations`: equinox reads `eqx.AbstractVar[...]` from the
# evaluated annotation (as a string it would become a dataclass field of the abstract class).
import abc
import math
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde._checks import check_time, concrete_or_none
from scoresde._types import Array
from scoresde._util import bcast



class AbstractSDE(eqx.Module):
    """Interface of a linear forward SDE dx = f(t) x dt + g(t) dW on [eps, T].

    Subclasses implement `log_alpha`, `sigma`, `log_snr`, `f`, `g2`, `t_from_log_snr`
    and `prior_std` in closed form (equinox's abstract / final pattern: every concrete
    method below is written once and never overridden); everything else follows from
    them. `log_snr` is part of the schedule, not derived here, because each SDE has a
    form without the cancellation of 2 (log alpha - log sigma) at small t.
    """

    eps: eqx.AbstractVar[float]
    T: eqx.AbstractVar[float]

    # --- the schedule (closed forms, implemented per SDE) -----------------------
    @abc.abstractmethod
    def log_alpha(self, t: Array) -> Array:
        """log alpha(t), the log of the signal coefficient of the marginal."""

    @abc.abstractmethod
    def sigma(self, t: Array) -> Array:
        """sigma(t), the noise standard deviation of the marginal."""

    @abc.abstractmethod
    def log_snr(self, t: Array) -> Array:
        """lambda(t) = log(alpha(t)^2 / sigma(t)^2), decreasing in t."""

    @abc.abstractmethod
    def f(self, t: Array) -> Array:
        """Drift coefficient f(t) = d log alpha / dt."""

    @abc.abstractmethod
    def g2(self, t: Array) -> Array:
        """Squared diffusion g(t)^2 = d sigma^2/dt - 2 f sigma^2."""

    @abc.abstractmethod
    def t_from_log_snr(self, log_snr: Array) -> Array:
        """Inverse of `log_snr`: the time t at which log(alpha^2/sigma^2) = log_snr."""

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the Gaussian prior N(0, prior_std^2 I) at time T."""

    # --- derived quantities ------------------------------------------------------
    def alpha(self, t: Array) -> Array:
        """alpha(t) = exp(log_alpha(t))."""
        return jnp.exp(self.log_alpha(t))

    def diffusion(self, t: Array) -> Array:
        """g(t)."""
        return jnp.sqrt(self.g2(t))

    def d_alpha(self, t: Array) -> Array:
        """d alpha / dt, by forward-mode differentiation of the closed form alpha(t)
        (equal to f(t) alpha(t); written this way it stays finite where f is not, e.g.
        the flow-matching path near t = 1)."""
        t = jnp.asarray(t, jnp.result_type(float))
        return jax.jvp(self.alpha, (t,), (jnp.ones_like(t),))[1]

    def d_sigma(self, t: Array) -> Array:
        """d sigma / dt, by forward-mode differentiation of the closed form sigma(t)
        (equal to (g^2 / 2 + f sigma^2) / sigma)."""
        t = jnp.asarray(t, jnp.result_type(float))
        return jax.jvp(self.sigma, (t,), (jnp.ones_like(t),))[1]

    def drift(self, x: Array, t: Array) -> Array:
        """Forward drift f(t) x."""
        return bcast(self.f(t), x) * x

    def marginal(self, x0: Array, t: Array) -> tuple[Array, Array]:
        """Mean alpha(t) x_0 and std sigma(t) of p_t(x | x_0), broadcast against x0."""
        check_time(t, self, "t")
        return bcast(self.alpha(t), x0) * x0, bcast(self.sigma(t), x0)

    def sample_marginal(self, key: Array, x0: Array, t: Array) -> tuple[Array, Array]:
        """Draw x_t = alpha(t) x_0 + sigma(t) z. Returns (x_t, z)."""
        mean, std = self.marginal(x0, t)
        z = jax.random.normal(key, x0.shape, x0.dtype)
        return mean + std * z, z

    def transition(self, s: Array, t: Array) -> tuple[Array, Array]:
        """Exact kernel x_t | x_s ~ N(a x_s, v I) for s < t. Returns (a, v).

        a = alpha_t / alpha_s and v = sigma_t^2 - a^2 sigma_s^2 (Kingma et al. 2021,
        "Variational Diffusion Models", eq. 3-4).
        """
        a = jnp.exp(self.log_alpha(t) - self.log_alpha(s))
        v = self.sigma(t) ** 2 - (a * self.sigma(s)) ** 2
        return a, v

    def prior_sample(self, key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        """Sample the prior x_T ~ N(0, prior_std^2 I)."""
        return self.prior_std * jax.random.normal(key, shape, dtype)

    def prior_logp(self, z: Array) -> Array:
        """log N(z; 0, prior_std^2 I), summed over all but the first (batch) axis."""
        z = jnp.asarray(z)
        d = math.prod(z.shape[1:])
        s2 = self.prior_std**2
        sq = jnp.sum(z.reshape(z.shape[0], -1) ** 2, axis=-1)
        return -0.5 * d * jnp.log(2 * jnp.pi * s2) - 0.5 * sq / s2

    def discretize(self, x: Array, t: Array, dt: Array) -> tuple[Array, Array]:
        """One step of the forward chain from s = t - dt to t: x_t = x_s + F + G z.

        Returns (F, G) with F = (alpha_{t|s} - 1) x and G = sqrt(sigma_t^2 -
        alpha_{t|s}^2 sigma_s^2), the exact transition. For VP this is the DDPM chain
        (Ho et al. 2020), beta_i = 1 - alpha_{t|s}^2; for VE it is the SMLD chain
        (Song & Ermon 2019), G^2 = sigma_t^2 - sigma_s^2. The reverse-diffusion and
        ancestral predictors of Song et al. (2021) are built on it.
        """
        a, v = self.transition(t - dt, t)
        return bcast(a - 1.0, x) * x, bcast(jnp.sqrt(jnp.maximum(v, 0.0)), x)

    def reverse_drift(self, score_fn, x: Array, t: Array) -> Array:
        """Drift of the reverse-time SDE (Anderson 1982): f(t) x - g(t)^2 score(x, t).

        The reverse SDE is dx = [f x - g^2 score] dt + g dW_bar with dt < 0.
        """
        return self.drift(x, t) - bcast(self.g2(t), x) * score_fn(x, t)

    def ode_drift(self, score_fn, x: Array, t: Array) -> Array:
        """Probability-flow ODE drift: dx/dt = f(t) x - g(t)^2 score(x, t) / 2."""
        return self.drift(x, t) - 0.5 * bcast(self.g2(t), x) * score_fn(x, t)

    def __check_init__(self):
        # Runs after the concrete class's own checks (equinox calls every __check_init__
        # along the MRO), so a bad schedule is reported before a bad time range.
        eps, T = concrete_or_none(self.eps), concrete_or_none(self.T)
        if eps is None or T is None:
            return
        if not (eps > 0):
            raise ValueError(f"eps must be > 0 (got eps={eps}); the score diverges at t=0.")
        if not (eps < T):
            raise ValueError(f"eps must be smaller than T (got eps={eps}, T={T}); choose 0 < eps < T.")


def _check_schedule(name_lo: str, lo, name_hi: str, hi, *, strict: bool = True):
    lo_c, hi_c = concrete_or_none(lo), concrete_or_none(hi)
    if lo_c is None or hi_c is None:
        return
    if lo_c <= 0:
        raise ValueError(f"{name_lo} must be positive (got {name_lo}={lo_c}).")
    if hi_c < lo_c or (strict and hi_c == lo_c and name_lo.startswith("sigma")):
        raise ValueError(
            f"{name_hi} must be larger than {name_lo} (got {name_lo}={lo_c}, {name_hi}={hi_c}); "
            "the noise schedule has to increase with t."
        )


class AbstractLinearBetaSDE(AbstractSDE):
    """The linear-beta schedule shared by `VPSDE` and `SubVPSDE` (Song et al. 2021, eq. 32-33).

        beta(t) = beta_min + t (beta_max - beta_min),
        B(t)    = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2,
        alpha(t) = exp(-B(t)/2),   f(t) = d log alpha / dt = -beta(t)/2,

    and a prior N(0, I). The two SDEs differ in sigma(t) (hence g^2 and the log-SNR);
    both invert the log-SNR through B, with `t_from_int_beta`.
    """

    beta_min: eqx.AbstractVar[float]
    beta_max: eqx.AbstractVar[float]

    def __check_init__(self):
        _check_schedule("beta_min", self.beta_min, "beta_max", self.beta_max, strict=False)

    def beta(self, t: Array) -> Array:
        """beta(t) = beta_min + t (beta_max - beta_min)."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def int_beta(self, t: Array) -> Array:
        """B(t) = int_0^t beta(s) ds = beta_min t + (beta_max - beta_min) t^2 / 2."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def t_from_int_beta(self, b: Array) -> Array:
        """The t >= 0 with B(t) = b: the root of (beta_max - beta_min) t^2 / 2 + beta_min t - b,
        written as 2 b / (beta_min + sqrt(beta_min^2 + 2 (beta_max - beta_min) b)), which has
        no cancellation for small b and stays finite when beta_max = beta_min."""
        d = self.beta_max - self.beta_min
        return 2.0 * b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * d * b))

    def log_alpha(self, t):
        return -0.5 * self.int_beta(t)

    def f(self, t):
        return -0.5 * self.beta(t)

    @property
    def prior_std(self):
        return 1.0


class VPSDE(AbstractLinearBetaSDE):
    """Variance-preserving SDE with linear beta (Song et al. 2021; DDPM, Ho et al. 2020).

        dx = -beta(t)/2 x dt + sqrt(beta(t)) dW,  beta(t) = beta_min + t (beta_max - beta_min)
        alpha(t) = exp(-B(t)/2),  B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2/2
        sigma(t)^2 = 1 - exp(-B(t)).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    eps: float = 1e-3
    T: float = 1.0

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(-self.int_beta(t)))

    def log_snr(self, t):
        b = self.int_beta(t)
        return -b - jnp.log(-jnp.expm1(-b))

    def g2(self, t):
        return self.beta(t)

    def t_from_log_snr(self, log_snr):
        # B(t) = log(1 + e^{-lambda}).
        return self.t_from_int_beta(jax.nn.softplus(-log_snr))


class CosineVPSDE(AbstractSDE):
    """Variance-preserving SDE with the cosine schedule (Nichol & Dhariwal 2021, eq. 17).

        alpha(t)^2 = cos^2(theta(t)) / cos^2(theta_0),   sigma(t)^2 = 1 - alpha(t)^2,
        theta(t) = theta_0 + t (theta_1 - theta_0),  theta_0 = pi/2 * s / (1 + s),

    which is the paper's alpha_bar(t) = f(t)/f(0), f(t) = cos^2(pi/2 (t + s)/(1 + s)),
    except that theta_1 is set by the log-SNR at T, alpha(T)^2 = sigmoid(log_snr_min),
    instead of pi/2 (where beta = g^2 is infinite; the paper clips its discrete betas
    at 0.999 for the same reason). The default -12 gives alpha(T) ~ 2.5e-3 and
    beta(T) ~ 1.3e3 (linear VP: 6.6e-3 and 20).
        f(t) = -theta' tan(theta(t)),  g(t)^2 = beta(t) = 2 theta' tan(theta(t)),
        theta' = theta_1 - theta_0.
    """

    s: float = 0.008
    log_snr_min: float = -12.0
    eps: float = 1e-3
    T: float = 1.0

    def __check_init__(self):
        s = concrete_or_none(self.s)
        if s is not None and s < 0:
            raise ValueError(f"s must be >= 0 (got s={s}).")

    def _theta01(self):
        th0 = 0.5 * jnp.pi * self.s / (1.0 + self.s)
        th1 = jnp.arccos(jnp.cos(th0) * jnp.sqrt(jax.nn.sigmoid(self.log_snr_min)))
        return th0, th1

    def _theta(self, t):
        th0, th1 = self._theta01()
        return th0 + t * (th1 - th0)

    def log_alpha(self, t):
        th0, _ = self._theta01()
        return jnp.log(jnp.cos(self._theta(t))) - jnp.log(jnp.cos(th0))

    def _sigma2(self, t):
        # 1 - cos^2(th)/cos^2(th0) = sin(th - th0) sin(th + th0) / cos^2(th0), no cancellation.
        th0, _ = self._theta01()
        th = self._theta(t)
        return jnp.sin(th - th0) * jnp.sin(th + th0) / jnp.cos(th0) ** 2

    def sigma(self, t):
        return jnp.sqrt(self._sigma2(t))

    def log_snr(self, t):
        return 2.0 * self.log_alpha(t) - jnp.log(self._sigma2(t))

    def f(self, t):
        th0, th1 = self._theta01()
        return -(th1 - th0) * jnp.tan(self._theta(t))

    def g2(self, t):
        th0, th1 = self._theta01()
        return 2.0 * (th1 - th0) * jnp.tan(self._theta(t))

    def t_from_log_snr(self, log_snr):
        # cos(theta) = cos(theta_0) alpha, via atan2 (arccos is ill-conditioned near 1):
        # sin(theta)^2 = sin^2(theta_0) + cos^2(theta_0) sigma^2, sigma^2 = sigmoid(-lambda).
        th0, th1 = self._theta01()
        c0 = jnp.cos(th0)
        sin_th = jnp.sqrt(jnp.sin(th0) ** 2 + c0**2 * jax.nn.sigmoid(-log_snr))
        th = jnp.arctan2(sin_th, c0 * jnp.sqrt(jax.nn.sigmoid(log_snr)))
        return (th - th0) / (th1 - th0)

    @property
    def prior_std(self):
        return 1.0


class SubVPSDE(AbstractLinearBetaSDE):
    """Sub-variance-preserving SDE (Song et al. 2021, eq. 30).

        dx = -beta(t)/2 x dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dW
        alpha(t) = exp(-B(t)/2),  sigma(t) = 1 - exp(-B(t)) = 1 - alpha^2,
    with beta and B as for `VPSDE`. Its variance is below the VP one at every t.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    eps: float = 1e-3
    T: float = 1.0

    def sigma(self, t):
        return -jnp.expm1(-self.int_beta(t))

    def log_snr(self, t):
        return 2.0 * (self.log_alpha(t) - jnp.log(self.sigma(t)))

    def g2(self, t):
        return self.beta(t) * (-jnp.expm1(-2.0 * self.int_beta(t)))

    def t_from_log_snr(self, log_snr):
        # a = alpha^2 = e^{-B} solves r (1 - a)^2 = a with r = e^lambda; its root in (0, 1)
        # gives B = log1p(q), q = (e^{-lambda} + e^{-lambda/2} sqrt(4 + e^{-lambda})) / 2,
        # written without the cancellation of 1 - a for large lambda.
        em = jnp.exp(-log_snr)
        return self.t_from_int_beta(jnp.log1p(0.5 * (em + jnp.exp(-0.5 * log_snr) * jnp.sqrt(4.0 + em))))


class VESDE(AbstractSDE):
    """Variance-exploding SDE with a geometric noise schedule (SMLD; Song et al. 2021).

        dx = sqrt(d sigma^2/dt) dW,   alpha(t) = 1,
        sigma(t)^2 = sigma_min^2 ((sigma_max/sigma_min)^(2t) - 1),
        g(t)^2 = 2 log(sigma_max/sigma_min) sigma_min^2 (sigma_max/sigma_min)^(2t).

    This is the exact marginal of the SDE started at t=0. The original code uses
    sigma(t) = sigma_min (sigma_max/sigma_min)^t, which differs by sigma_min^2 in the
    variance (it assumes the data were already blurred by sigma_min at t=0).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    eps: float = 1e-5
    T: float = 1.0

    def __check_init__(self):
        _check_schedule("sigma_min", self.sigma_min, "sigma_max", self.sigma_max)

    def _log_ratio(self):
        return jnp.log(self.sigma_max / self.sigma_min)

    def log_alpha(self, t):
        return jnp.zeros_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def sigma(self, t):
        return self.sigma_min * jnp.sqrt(jnp.expm1(2.0 * t * self._log_ratio()))

    def log_snr(self, t):
        return -2.0 * jnp.log(self.sigma_min) - jnp.log(jnp.expm1(2.0 * t * self._log_ratio()))

    def f(self, t):
        return jnp.zeros_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def g2(self, t):
        lr = self._log_ratio()
        return 2.0 * lr * self.sigma_min**2 * jnp.exp(2.0 * t * lr)

    def t_from_log_snr(self, log_snr):
        return jnp.log1p(jnp.exp(-log_snr) / self.sigma_min**2) / (2.0 * self._log_ratio())

    @property
    def prior_std(self):
        return self.sigma_max


def _check_end_below_one(T):
    T_c = concrete_or_none(T)
    if T_c is not None and not (T_c < 1.0):
        raise ValueError(
            f"T must be smaller than 1 for the flow-matching path (got T={float(T_c)}): at t = 1, alpha = 0, "
            "so f = -1/(1 - t) and g^2 = 2t/(1 - t) are infinite and the probability-flow velocity "
            "x - E[x_0 | x_1] cannot be recovered from a score (the score at t = 1 is exactly -x); "
            "use T = 1 - 1e-3 (the default) or closer to 1 in float64.")


class FlowMatchingPath(AbstractSDE):
    """The flow-matching / rectified-flow path (Lipman et al. 2023, "Flow Matching for
    Generative Modeling"; Liu et al. 2023, "Flow Straight and Fast"; the conditional
    optimal-transport path with sigma_min = 0) as a linear SDE:

        x_t = (1 - t) x_0 + t z,   alpha(t) = 1 - t,   sigma(t) = t,
        f(t)   = d log alpha / dt = -1 / (1 - t),
        g(t)^2 = d sigma^2/dt - 2 f sigma^2 = 2t + 2t^2 / (1 - t) = 2t / (1 - t),
        lambda(t) = 2 log((1 - t) / t),   t(lambda) = 1 / (1 + e^{lambda/2}) = sigmoid(-lambda/2),

    prior N(0, I). Its probability-flow velocity f x - g^2/2 score is the flow-matching
    velocity E[z - x_0 | x_t] (see `scoresde.parameterization`, kind "velocity"), so every
    ODE sampler integrates the rectified flow, and the reverse SDE dx = [f x - g^2 score]
    dt + g dW_bar is the member of the path's SDE family whose forward marginals are
    these. The end point t = 1 (alpha = 0) is excluded: f and g^2 blow up as 1/(1 - t)
    and the velocity at t = 1, x - E[x_0], is not a function of the score there, so the
    default T = 1 - 1e-3 stops where alpha(T) = 1e-3 (the linear VP SDE stops at
    alpha(1) = 6.7e-3); the prior N(0, I) then differs from p_T by as much as VP's does.
    """

    eps: float = 1e-3
    T: float = 1.0 - 1e-3

    def __check_init__(self):
        _check_end_below_one(self.T)

    def log_alpha(self, t):
        return jnp.log1p(-jnp.asarray(t, jnp.result_type(float)))

    def sigma(self, t):
        return jnp.asarray(t, jnp.result_type(float))

    def log_snr(self, t):
        t = jnp.asarray(t, jnp.result_type(float))
        return 2.0 * (jnp.log1p(-t) - jnp.log(t))

    def f(self, t):
        return -1.0 / (1.0 - jnp.asarray(t, jnp.result_type(float)))

    def g2(self, t):
        t = jnp.asarray(t, jnp.result_type(float))
        return 2.0 * t / (1.0 - t)

    def t_from_log_snr(self, log_snr):
        return jax.nn.sigmoid(-0.5 * log_snr)

    @property
    def prior_std(self):
        return 1.0


def _bisect_decreasing(fn, target, lo, hi, n_iter: int = 60):
    """The t in [lo, hi] with fn(t) = target for a decreasing fn, elementwise, by bisection."""
    target = jnp.asarray(target)
    lo = jnp.full(target.shape, lo, target.dtype)
    hi = jnp.full(target.shape, hi, target.dtype)

    def body(_, bounds):
        a, b = bounds
        m = 0.5 * (a + b)
        above = fn(m) > target  # fn decreasing: the root lies to the right of m
        return jnp.where(above, m, a), jnp.where(above, b, m)

    a, b = jax.lax.fori_loop(0, n_iter, body, (lo, hi))
    return 0.5 * (a + b)


class Interpolant(AbstractSDE):
    """A user-defined linear path x_t = alpha(t) x_0 + sigma(t) z as an SDE (the stochastic
    interpolants of Albergo, Boffi & Vanden-Eijnden 2023 with a Gaussian base; flow
    matching with a general Gaussian path, Lipman et al. 2023, Sec. 4).

        f(t)   = alpha'(t) / alpha(t),
        g(t)^2 = 2 sigma sigma' - 2 f sigma^2 = 2 sigma (sigma' - f sigma),
        lambda(t) = 2 (log alpha - log sigma),

    with alpha' and sigma' by forward-mode differentiation of the given functions; the
    inverse of the log-SNR is found by bisection on [0, T] (60 halvings). The prior is
    N(0, prior_std^2 I) with prior_std^2 = alpha(T)^2 + sigma(T)^2, the variance of x_T for
    unit-variance data.

    Args:
      alpha: t -> alpha(t), elementwise in jax.numpy, positive and differentiable on
        [eps, T] (e.g. `lambda t: jnp.cos(jnp.pi / 2 * t)`).
      sigma: t -> sigma(t), elementwise, positive on [eps, T], with alpha / sigma
        strictly decreasing (checked on a grid when the path is built).
      eps, T: the time range.

    The functions are static fields: pass the same function objects to reuse a compiled
    sampler (a new lambda is a new static value and recompiles). `FlowMatchingPath` is
    this class for alpha = 1 - t, sigma = t, in closed form.
    """

    alpha_fn: Callable = eqx.field(static=True)
    sigma_fn: Callable = eqx.field(static=True)
    eps: float = 1e-3
    T: float = 1.0 - 1e-3

    def __check_init__(self):
        for name in ("alpha_fn", "sigma_fn"):
            if not callable(getattr(self, name)):
                raise TypeError(f"{name[:-3]} must be a function t -> array (jax.numpy, elementwise), "
                                f"got {type(getattr(self, name)).__name__}.")
        eps, T = concrete_or_none(self.eps), concrete_or_none(self.T)
        if eps is None or T is None or not (0 < eps < T):
            return  # the base class reports a bad range
        ts = jnp.linspace(float(eps), float(T), 257)
        a, s = self.alpha_fn(ts), self.sigma_fn(ts)
        if jnp.shape(a) != ts.shape or jnp.shape(s) != ts.shape:
            raise ValueError(f"alpha and sigma must be elementwise functions of t (shape {ts.shape} in, "
                             f"got {jnp.shape(a)} and {jnp.shape(s)} out).")
        if not (bool(jnp.all(a > 0)) and bool(jnp.all(jnp.isfinite(a)))):
            raise ValueError(f"alpha(t) must be finite and > 0 on [eps, T] = [{float(eps)}, {float(T)}] "
                             f"(min {float(jnp.min(a)):g}); stop T before alpha reaches 0.")
        if not (bool(jnp.all(s > 0)) and bool(jnp.all(jnp.isfinite(s)))):
            raise ValueError(f"sigma(t) must be finite and > 0 on [eps, T] (min {float(jnp.min(s)):g}); "
                             "raise eps.")
        if not bool(jnp.all(jnp.diff(jnp.log(a) - jnp.log(s)) < 0)):
            raise ValueError("alpha(t) / sigma(t) must decrease strictly on [eps, T] (the log-SNR is "
                             "inverted by bisection and samplers integrate from low to high SNR).")

    def log_alpha(self, t):
        return jnp.log(self.alpha_fn(jnp.asarray(t, jnp.result_type(float))))

    def sigma(self, t):
        return self.sigma_fn(jnp.asarray(t, jnp.result_type(float)))

    def log_snr(self, t):
        return 2.0 * (self.log_alpha(t) - jnp.log(self.sigma(t)))

    def f(self, t):
        return self.d_alpha(t) / self.alpha(t)

    def g2(self, t):
        s = self.sigma(t)
        return 2.0 * s * (self.d_sigma(t) - self.f(t) * s)

    def t_from_log_snr(self, log_snr):
        log_snr = jnp.asarray(log_snr, jnp.result_type(float))
        return _bisect_decreasing(self.log_snr, log_snr, 0.0, self.T)

    @property
    def prior_std(self):
        return jnp.sqrt(self.alpha(self.T) ** 2 + self.sigma(self.T) ** 2)


__all__ = ["AbstractSDE", "AbstractLinearBetaSDE", "VPSDE", "CosineVPSDE", "SubVPSDE", "VESDE",
           "FlowMatchingPath", "Interpolant"]

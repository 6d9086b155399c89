"""What a network predicts, and the one adapter from a network to a score function.

With x_t = alpha x_0 + sigma eps (see `scoresde.sde`), the four usual targets are
interchangeable given (x_t, t):

    score = grad log p_t(x_t)  = -eps / sigma                    (Vincent 2011; Tweedie)
    x0    = E[x_0 | x_t]       = (x_t - sigma eps) / alpha
    eps                        = (x_t - alpha x0) / sigma = -sigma score
    v     = alpha eps - sigma x0                               (Salimans & Ho 2022)
        => x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2),
           eps = (sigma x_t + alpha v) / (alpha^2 + sigma^2)

(the v relations hold for any alpha, sigma, not only alpha^2 + sigma^2 = 1).

The fifth target, "velocity", is the flow-matching velocity (Lipman et al. 2023; Liu et
al. 2023), the time derivative of the conditional path x_t = alpha x_0 + sigma eps:

    u     = alpha' x0 + sigma' eps                (' = d/dt; u = eps - x0 on FlowMatchingPath)
          = f x - g^2 / 2 score                   (the probability-flow ODE drift, for E[.|x_t])
    =>  x0  = (sigma' x - sigma u) / det,   eps = (alpha u - alpha' x) / det,
        det = alpha sigma' - sigma alpha' = alpha g^2 / (2 sigma)   (1 on FlowMatchingPath),

(alpha', sigma' from `AbstractSDE.d_alpha`, `d_sigma`). It is not Salimans & Ho's v, which
is the derivative along the angle of a variance-preserving path.

EDM preconditioning (Karras et al. 2022, "Elucidating the Design Space...", Table 1)
is written for x_hat = x / alpha with noise level sigma_hat = sigma / alpha, so it
applies to VP, sub-VP and VE alike:

    D(x_t) = c_skip x_hat + c_out F(c_in x_hat, c_noise),
    c_skip = sd^2 / (sigma_hat^2 + sd^2),  c_out = sigma_hat sd / sqrt(sigma_hat^2 + sd^2),
    c_in = 1 / sqrt(sigma_hat^2 + sd^2),   c_noise = log(sigma_hat) / 4,

with sd = sigma_data and D the x0 prediction.

`score_fn_from_network` is the single place where a network becomes a score function
`score(x, t, *cond)`; samplers, losses and guidance only see that function.
"""

# No `from __future__ import annotations`: equinox reads `kind: eqx.AbstractClassVar[str]`
# from the evaluated annotation (a string annotation would make `kind` a dataclass field).
import abc
from typing import Callable, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde._types import Array
from scoresde._util import batch_time, bcast
from scoresde.sde import AbstractSDE


def _coeffs(sde: AbstractSDE, t, x):
    return bcast(sde.alpha(t), x), bcast(sde.sigma(t), x)


def x0_from_score(sde: AbstractSDE, x: Array, t, score: Array) -> Array:
    """Tweedie's formula (Efron 2011): the denoiser D(x, t) = E[x_0 | x_t = x] from the score,

        D = (x + sigma_t^2 score(x, t)) / alpha_t.

    t is a scalar or has shape (batch,). The one place this formula is written."""
    a, s = _coeffs(sde, t, x)
    return (x + s * s * score) / a


def score_from_x0(sde: AbstractSDE, x: Array, t, x0: Array) -> Array:
    """The inverse of `x0_from_score`: score(x, t) = -(x - alpha_t D) / sigma_t^2, the score
    of a denoiser D(x, t) = E[x_0 | x_t = x] (analytic machines, x0-predicting networks)."""
    a, s = _coeffs(sde, t, x)
    return -(x - a * x0) / (s * s)


def _rates(sde: AbstractSDE, t, x):
    """(alpha', sigma', det = alpha sigma' - sigma alpha') broadcast against x."""
    a, s = _coeffs(sde, t, x)
    da, ds = bcast(sde.d_alpha(t), x), bcast(sde.d_sigma(t), x)
    return da, ds, a * ds - s * da


_KINDS = ("eps", "score", "x0", "v", "velocity")


def _check_kind(kind, name="kind"):
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, _KINDS))}; got {name}={kind!r}.")


def to_eps(kind: str, value: Array, x: Array, t: Array, sde: AbstractSDE) -> Array:
    """Convert a prediction of `kind` ('eps', 'score', 'x0', 'v', 'velocity') at (x, t) into eps."""
    _check_kind(kind)
    a, s = _coeffs(sde, t, x)
    if kind == "velocity":
        da, _, det = _rates(sde, t, x)
        return (a * value - da * x) / det
    if kind == "eps":
        return value
    if kind == "score":
        return -s * value
    if kind == "x0":
        return (x - a * value) / s
    return (s * x + a * value) / (a * a + s * s)  # "v"


def from_eps(kind: str, eps: Array, x: Array, t: Array, sde: AbstractSDE) -> Array:
    """Convert eps at (x, t) into a prediction of `kind` ('eps', 'score', 'x0', 'v', 'velocity').

    velocity = alpha' x0 + sigma' eps with x0 = (x - sigma eps) / alpha, i.e.
    f x + (sigma' - f sigma) eps = f x + g^2 / (2 sigma) eps."""
    _check_kind(kind)
    a, s = _coeffs(sde, t, x)
    if kind == "velocity":
        _, ds, _ = _rates(sde, t, x)
        f = bcast(sde.f(t), x)
        return f * x + (ds - f * s) * eps
    if kind == "eps":
        return eps
    if kind == "score":
        return -eps / s
    if kind == "x0":
        return (x - s * eps) / a
    return a * eps - s * (x - s * eps) / a  # "v"


def convert(value: Array, *, frm: str, to: str, x: Array, t: Array, sde: AbstractSDE) -> Array:
    """Convert a prediction between eps-, score-, x0- and v-parameterisations.

    The direct formulas in the module docstring are used where they avoid a detour
    through eps (x0 <-> score, v -> x0), so conversions stay as well conditioned as
    the target allows.
    """
    _check_kind(frm, "frm")
    _check_kind(to, "to")
    if frm == to:
        return value
    if frm == "x0" and to == "score":
        return score_from_x0(sde, x, t, value)
    if frm == "score" and to == "x0":
        return x0_from_score(sde, x, t, value)
    a, s = _coeffs(sde, t, x)
    if frm == "v" and to == "x0":
        return (a * x - s * value) / (a * a + s * s)
    if frm == "x0" and to == "v":
        eps = (x - a * value) / s
        return a * eps - s * value
    if frm == "velocity" and to == "x0":
        _, ds, det = _rates(sde, t, x)
        return (ds * x - s * value) / det
    if frm == "x0" and to == "velocity":
        da, ds, _ = _rates(sde, t, x)
        return da * value + ds * (x - a * value) / s
    if frm == "score" and to == "velocity":
        return sde.ode_drift(lambda _x, _t: value, x, t)
    return from_eps(to, to_eps(frm, value, x, t, sde), x, t, sde)


class AbstractParameterization(eqx.Module):
    """How a raw network output (and its inputs) relate to the score.

    `network_inputs` maps (x_t, t) to what the network is fed; `to_score` maps its
    output back to grad log p_t(x_t) and `denoise` to E[x_0 | x_t] (the two are tied by
    Tweedie's formula, `x0_from_score`). All three are abstract: each final class states
    them once (equinox's abstract / final pattern, no concrete method is overridden).
    """

    @abc.abstractmethod
    def network_inputs(self, x: Array, t: Array, sde: AbstractSDE) -> tuple[Array, Array]:
        """(x_in, t_in) fed to the network at (x, t)."""

    @abc.abstractmethod
    def to_score(self, out: Array, x: Array, t: Array, sde: AbstractSDE) -> Array:
        """Score implied by the network output `out` at (x, t)."""

    @abc.abstractmethod
    def denoise(self, out: Array, x: Array, t: Array, sde: AbstractSDE) -> Array:
        """E[x_0 | x_t = x] implied by the network output `out`."""


class AbstractTargetPrediction(AbstractParameterization):
    """The network sees (x_t, t) unchanged and predicts one of the targets of the module
    docstring, named by the class variable `kind` ('eps', 'score', 'x0' or 'v'); score and
    denoiser follow by `convert`."""

    kind: eqx.AbstractClassVar[str]

    def network_inputs(self, x, t, sde):
        return x, t

    def to_score(self, out, x, t, sde):
        return convert(out, frm=self.kind, to="score", x=x, t=t, sde=sde)

    def denoise(self, out, x, t, sde):
        return convert(out, frm=self.kind, to="x0", x=x, t=t, sde=sde)


class EpsPrediction(AbstractTargetPrediction):
    """The network predicts the noise eps (DDPM, Ho et al. 2020): score = -eps/sigma."""
    kind: ClassVar[str] = "eps"


class ScorePrediction(AbstractTargetPrediction):
    """The network predicts the score directly (NCSN, Song & Ermon 2019)."""
    kind: ClassVar[str] = "score"


class X0Prediction(AbstractTargetPrediction):
    """The network predicts E[x_0 | x_t]: score = -(x - alpha x0) / sigma^2."""
    kind: ClassVar[str] = "x0"


class VPrediction(AbstractTargetPrediction):
    """The network predicts v = alpha eps - sigma x0 (Salimans & Ho 2022)."""
    kind: ClassVar[str] = "v"


class VelocityPrediction(AbstractTargetPrediction):
    """The network predicts the flow-matching velocity u = alpha' x0 + sigma' eps, the
    probability-flow drift (Lipman et al. 2023; u = eps - x0 on `FlowMatchingPath`):
    score = -(alpha u - alpha' x) / (det sigma), det = alpha sigma' - sigma alpha'."""
    kind: ClassVar[str] = "velocity"


class EDMPreconditioning(AbstractParameterization):
    """EDM preconditioning (Karras et al. 2022) on x_hat = x/alpha, sigma_hat = sigma/alpha.

    Coefficients are in the module docstring; the network sees (c_in x_hat, c_noise).
    """

    sigma_data: float = 0.5

    def coefficients(self, t, sde: AbstractSDE):
        """(c_skip, c_out, c_in, c_noise) at time t, each of the shape of t."""
        sh = jnp.exp(-0.5 * sde.log_snr(t))  # sigma / alpha
        sd2 = self.sigma_data**2
        denom = sh * sh + sd2
        return sd2 / denom, sh * self.sigma_data / jnp.sqrt(denom), 1.0 / jnp.sqrt(denom), jnp.log(sh) / 4.0

    def network_inputs(self, x, t, sde):
        _, _, c_in, c_noise = self.coefficients(t, sde)
        return bcast(c_in / sde.alpha(t), x) * x, c_noise

    def denoise(self, out, x, t, sde):
        c_skip, c_out, _, _ = self.coefficients(t, sde)
        return bcast(c_skip / sde.alpha(t), x) * x + bcast(c_out, x) * out

    def to_score(self, out, x, t, sde):
        return score_from_x0(sde, x, t, self.denoise(out, x, t, sde))


def score_fn_from_network(net: Callable, sde: AbstractSDE,
                          parameterization: AbstractParameterization) -> Callable:
    """Turn `net(x_in, t_in, *cond) -> out` into `score(x, t, *cond) -> grad log p_t(x)`.

    `t` may be a scalar or have shape (batch,); the network always receives t_in of
    shape (batch,). Conditioning arguments (class labels, ...) pass through unchanged.
    For a Flax module: `net = lambda x, t, *c: module.apply(params, x, t, *c)`.
    """

    def score(x, t, *cond):
        t = batch_time(t, x)
        x_in, t_in = parameterization.network_inputs(x, t, sde)
        return parameterization.to_score(net(x_in, t_in, *cond), x, t, sde)

    return score


def denoiser_from_score(score_fn: Callable, sde: AbstractSDE) -> Callable:
    """Tweedie denoiser D(x, t) = E[x_0 | x_t] = (x + sigma^2 score(x, t)) / alpha."""

    def denoise(x, t, *cond):
        return x0_from_score(sde, x, t, score_fn(x, t, *cond))

    return denoise


__all__ = ["x0_from_score", "score_from_x0", "to_eps", "from_eps", "convert", "AbstractParameterization",
           "AbstractTargetPrediction",
           "EpsPrediction", "ScorePrediction", "X0Prediction", "VPrediction", "VelocityPrediction",
           "EDMPreconditioning",
           "score_fn_from_network", "denoiser_from_score"]

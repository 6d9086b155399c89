"""The consistency function and its boundary condition (Song, Dhariwal, Chen & Sutskever
2023, "Consistency Models", ICML, Sec. 3 and App. C).

A consistency function maps every point of a probability-flow ODE trajectory to the
trajectory's origin at t = eps: f(x_t, t) = x_eps, so f(x, eps) = x. It is built in by
the skip / out scalings, written (as `EDMPreconditioning` is) on the scaled variables
x_hat = x / alpha and sigma_hat = sigma / alpha = exp(-lambda / 2), whose ODE is the VE
one for every linear SDE (Karras et al. 2022, Sec. 4):

    f(x, t) = alpha(eps) [c_skip(sh) x / alpha(t) + c_out(sh) F(c_in x / alpha(t), c_noise)],
    c_skip = sd^2 / ((sh - sh_min)^2 + sd^2),     c_out = sd (sh - sh_min) / sqrt(sd^2 + sh^2),
    c_in   = 1 / sqrt(sh^2 + sd^2),               c_noise = log(sh) / 4,

with sh_min = sigma_hat(eps) and sd = sigma_data. At t = eps, c_skip = 1 and c_out = 0, so
f(x, eps) = x for any network F (the ratio alpha(eps)/alpha(t) is exp(log alpha(eps) -
log alpha(t)), exactly 1 there). The consistency scalings differ from EDM's only by the
shift sh_min, so a network trained with `EDMPreconditioning` is an initial consistency
model (ECT, Geng et al. 2024: consistency tuning starts from the diffusion model).
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax.numpy as jnp

from scoresde._types import Array
from scoresde._util import batch_time, bcast, call_score
from scoresde.parameterization import x0_from_score
from scoresde.sde import AbstractSDE


def sigma_hat(sde: AbstractSDE, t) -> Array:
    """sigma(t) / alpha(t) = exp(-lambda(t) / 2), the noise level of x / alpha (EDM's sigma)."""
    return jnp.exp(-0.5 * sde.log_snr(t))


class ConsistencyParameterization(eqx.Module):
    """Skip / out scalings of a consistency model (module docstring): `coefficients` gives
    (c_skip, c_out, c_in, c_noise), `network_inputs` what the network is fed and `output`
    the consistency function from the network output."""

    sigma_data: float = 0.5

    def coefficients(self, t, sde: AbstractSDE):
        """(c_skip, c_out, c_in, c_noise) at time t, each of the shape of t."""
        sh = sigma_hat(sde, t)
        sh_min = sigma_hat(sde, jnp.asarray(sde.eps, jnp.result_type(sh)))
        sd2 = self.sigma_data**2
        d = sh - sh_min
        c_skip = sd2 / (d * d + sd2)
        c_out = self.sigma_data * d / jnp.sqrt(sd2 + sh * sh)
        return c_skip, c_out, 1.0 / jnp.sqrt(sh * sh + sd2), jnp.log(sh) / 4.0

    def network_inputs(self, x: Array, t: Array, sde: AbstractSDE) -> tuple[Array, Array]:
        """(c_in x / alpha(t), c_noise)."""
        _, _, c_in, c_noise = self.coefficients(t, sde)
        return bcast(c_in / sde.alpha(t), x) * x, c_noise

    def output(self, out: Array, x: Array, t: Array, sde: AbstractSDE) -> Array:
        """f(x, t) = alpha(eps) c_skip x / alpha(t) + alpha(eps) c_out out."""
        c_skip, c_out, _, _ = self.coefficients(t, sde)
        la_eps = sde.log_alpha(jnp.asarray(sde.eps, jnp.result_type(c_skip)))
        ratio = jnp.exp(la_eps - sde.log_alpha(t))
        return bcast(c_skip * ratio, x) * x + bcast(jnp.exp(la_eps) * c_out, x) * out


def consistency_fn_from_network(net: Callable, sde: AbstractSDE,
                                parameterization: ConsistencyParameterization = ConsistencyParameterization()
                                ) -> Callable:
    """Turn `net(x_in, t_in, *cond) -> out` into the consistency function `f(x, t, *cond)`,
    with f(x, eps) = x built in. `t` is a scalar or has shape (batch,); the network gets
    t_in = c_noise of shape (batch,). For a Flax module:
    `net = lambda x, t, *c: module.apply(params, x, t, *c)`."""

    def f(x, t, *cond):
        t = batch_time(t, x)
        x_in, t_in = parameterization.network_inputs(x, t, sde)
        return parameterization.output(net(x_in, t_in, *cond), x, t, sde)

    return f


def consistency_fn_from_score(score_fn: Callable, sde: AbstractSDE,
                              parameterization: ConsistencyParameterization = ConsistencyParameterization()
                              ) -> Callable:
    """A diffusion model (any score function, e.g. an eps-, x0- or v-network through
    `score_fn_from_network`) used as the network of a consistency function, so a diffusion
    checkpoint is an initial consistency model whatever its parameterisation (consistency
    tuning, ECT, Geng et al. 2024; distillation students start from the teacher, Song et al.
    2023, Sec. 6).

    With D(x, t) = E[x_0 | x_t] from the score (Tweedie, `x0_from_score`), x_hat = x / alpha(t),
    sh = sigma_hat(t), the network's output in EDM's form is F = (D - c_skip^EDM x_hat) /
    c_out^EDM (c_skip^EDM = sd^2 / (sh^2 + sd^2), c_out^EDM = sd sh / sqrt(sh^2 + sd^2);
    Karras et al. 2022, Table 1) and

        f(x, t) = alpha(eps) [c_skip(sh) x_hat + c_out(sh) F],

    with the consistency scalings of `ConsistencyParameterization` (module docstring). So
    f(x, eps) = x exactly (c_out = 0 there) and f = alpha(eps) D wherever sh >> sh_min: the
    untrained consistency model is the one-step DDIM map of the diffusion model.
    `score_fn(x, t, *cond)`; returns f(x, t, *cond).
    """
    p = parameterization

    def f(x, t, *cond):
        t = batch_time(t, x)
        c_skip, c_out, _, _ = p.coefficients(t, sde)
        sh = sigma_hat(sde, t)
        sd2 = p.sigma_data**2
        d = x0_from_score(sde, x, t, call_score(score_fn, x, t, cond[0] if cond else None))
        xh = x / bcast(sde.alpha(t), x)
        out = (d - bcast(sd2 / (sh * sh + sd2), x) * xh) / bcast(p.sigma_data * sh / jnp.sqrt(sh * sh + sd2), x)
        la_eps = sde.log_alpha(jnp.asarray(sde.eps, jnp.result_type(c_skip)))
        ratio = jnp.exp(la_eps - sde.log_alpha(t))  # alpha(eps) / alpha(t), exactly 1 at t = eps
        return bcast(c_skip * ratio, x) * x + bcast(jnp.exp(la_eps) * c_out, x) * out

    return f


__all__ = ["sigma_hat", "ConsistencyParameterization", "consistency_fn_from_network", "consistency_fn_from_score"]

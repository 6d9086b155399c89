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
from scoresde._util import batch_time, bcast
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


__all__ = ["sigma_hat", "ConsistencyParameterization", "consistency_fn_from_network"]

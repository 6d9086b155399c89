"""One-step and multistep consistency sampling through `scoresde.sample`.

Song et al. (2023), Algorithm 1: x = f(x_T, T); then for tau_1 > ... > tau_{n-1}: re-noise
x_eps to tau_i with the exact forward kernel and map back with f. For a linear SDE the
kernel from eps to tau is x_tau = alpha_{tau|eps} x + sqrt(sigma_tau^2 - alpha_{tau|eps}^2
sigma_eps^2) z (`AbstractSDE.transition`; Song et al. write x + sqrt(tau^2 - eps^2) z for VE).

`stochastic=False` re-noises with the noise the previous state implies instead of fresh
z (z_hat = (x_prev - alpha_{t|eps} x) / sqrt(v_{t|eps}), DDIM's deterministic update with
the consistency model as denoiser): then the n-step map is a deterministic function of x_T,
comparable pathwise with the probability-flow ODE map.

The function handed to `sample` with this sampler is the CONSISTENCY function f(x, t)
(e.g. `consistency_fn_from_network`), not a score; do not ask `sample` for the final
Tweedie step (`denoise=True` would treat f as a score): f already returns x_eps.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from scoresde._util import batch_time, bcast, call_score, check_steps, normal_like
from scoresde.sampling.base import AbstractSampler
from scoresde.sampling.grids import AbstractTimeGrid, LogSNRGrid


class ConsistencySampler(AbstractSampler):
    """n_steps evaluations of a consistency function at the times t_0 = T > t_1 > ... >
    t_{n-1} of `grid(sde, n_steps)` (its last point, eps, is not evaluated: f(x, eps) = x).

    n_steps = 1 is the one-step sample f(x_T, T). NFE = n_steps."""

    n_steps: int = eqx.field(static=True, default=1)
    grid: AbstractTimeGrid = LogSNRGrid()
    stochastic: bool = eqx.field(static=True, default=True)
    order = None
    evals_per_step = 1
    takes_score = False  # sample(..., denoise=True) is refused

    def __check_init__(self):
        check_steps(self.n_steps)

    def run(self, consistency_fn, sde, keys, x_T, cond, save_trajectory):
        ts = self.grid(sde, self.n_steps, x_T.dtype)
        eps = jnp.asarray(sde.eps, x_T.dtype)
        x_in = x_T
        x = call_score(consistency_fn, x_T, batch_time(ts[0], x_T), cond)
        traj = [x_T, x]
        for i in range(1, self.n_steps):
            a, v = sde.transition(eps, ts[i])
            a_prev, v_prev = sde.transition(eps, ts[i - 1])
            if self.stochastic:
                z = normal_like(keys, x, i)
            else:
                z = (x_in - bcast(a_prev, x) * x) / bcast(jnp.sqrt(v_prev), x)
            x_in = bcast(a, x) * x + bcast(jnp.sqrt(v), x) * z
            x = call_score(consistency_fn, x_in, batch_time(ts[i], x), cond)
            traj.append(x)
        return x, jnp.asarray(self.n_steps), (jnp.stack(traj) if save_trajectory else None)


__all__ = ["ConsistencySampler"]

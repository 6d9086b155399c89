"""One-step and multistep consistency sampling through `scoresde.sample`.

Song et al. (2023), Algorithm 1: x = f(x_T, T); then for tau_1 > ... > tau_{n-1}: re-noise
x_eps to tau_i with the exact forward kernel and map back with f. For a linear SDE the
kernel from eps to tau is x_tau = alpha_{tau|eps} x + sqrt(sigma_tau^2 - alpha_{tau|eps}^2
sigma_eps^2) z (`AbstractSDE.transition`; Song et al. write x + sqrt(tau^2 - eps^2) z for VE).

`stochastic=False` re-noises with the noise the previous state implies instead of fresh
z (z_hat = (x_prev - alpha_{t|eps} x) / sqrt(v_{t|eps}), DDIM's deterministic update with
the consistency model as denoiser): then the n-step map is a deterministic function of x_T,
comparable pathwise with the probability-flow ODE map.

`gamma` in [0, 1] mixes the two (partial re-noising, as DDIM's eta or EDM's churn mix a
deterministic update with fresh noise): z = sqrt(1 - gamma^2) z_hat + gamma z_fresh, so a
unit-variance z_hat and an independent z_fresh give a unit-variance z for every gamma.
gamma = 0 is the implied noise (`stochastic=False`), gamma = 1 fresh noise (`stochastic=True`,
the default when gamma is not given); both ends run exactly the code of those two settings.

The first evaluation need not be at T: with `TruncatedLogSNRGrid` whose first log-SNR fraction
u_0 > 0 the prior draw x_T ~ N(0, I) (VP; the SDE's prior in general) stands in for a draw at
t_0 = t(u_0) < T: the approximation EDM and consistency models make at sigma_max = 80, where
pure noise stands in for data plus noise (Karras et al. 2022; Song et al. 2023), at a smaller
noise level. For a VP SDE the mismatch is the signal alpha_{t_0} x_0 that a true x_{t_0}
carries and N(0, I) lacks (at u_0 = 0.3 of the default VP SDE's log-SNR range sh = sigma /
alpha = 8.6, alpha = 0.12; sigma_max = 80 is sh = 80); in exchange the network is first
evaluated where a briefly trained consistency model is accurate, not at T (sh ~ 150).

The function handed to `sample` with this sampler is the CONSISTENCY function f(x, t)
(e.g. `consistency_fn_from_network`), not a score; do not ask `sample` for the final
Tweedie step (`denoise=True` would treat f as a score): f already returns x_eps.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from scoresde._util import batch_time, bcast, call_score, check_steps, normal_like
from scoresde.sampling.base import AbstractSampler
from scoresde.sampling.grids import AbstractTimeGrid, LogSNRGrid, times_from_fractions


class TruncatedLogSNRGrid(AbstractTimeGrid):
    """Times at given log-SNR fractions u_0 < u_1 < ... < u_n = 1 of the way from T to eps,
    lambda_i = lambda(T) + u_i (lambda(eps) - lambda(T)), where u_0 >= 0 may be above 0: the
    grid then starts at t(u_0) < T (a truncated start; module docstring). u_0 = 0 starts at T
    exactly, and then the times are those of `FittedGrid(fractions)`. Valid only for
    n_steps = len(fractions) - 1."""

    fractions: tuple = eqx.field(static=True)

    def __check_init__(self):
        u = self.fractions
        ok = isinstance(u, tuple) and len(u) >= 2 and all(isinstance(v, (int, float)) for v in u)
        if not (ok and 0 <= u[0] and abs(u[-1] - 1) < 1e-6 and all(b > a for a, b in zip(u, u[1:]))):
            raise ValueError(f"fractions={u!r} must be a tuple of log-SNR fractions increasing strictly from "
                             "u_0 >= 0 (0: start at T) to 1 (eps), e.g. (0.3, 0.5, 1.0) for 2 steps.")

    def __call__(self, sde, n_steps, dtype=jnp.float32):
        check_steps(n_steps)
        if n_steps != len(self.fractions) - 1:
            raise ValueError(f"this TruncatedLogSNRGrid has {len(self.fractions) - 1} steps (fractions="
                             f"{self.fractions}), got n_steps={n_steps}; give one fraction per step plus the end 1.")
        return times_from_fractions(sde, jnp.asarray(self.fractions, dtype), dtype, pin_start=self.fractions[0] == 0)


class ConsistencySampler(AbstractSampler):
    """n_steps evaluations of a consistency function at the times t_0 > t_1 > ... > t_{n-1}
    of `grid(sde, n_steps)` (t_0 = T, or below T for a `TruncatedLogSNRGrid`; its last point,
    eps, is not evaluated: f(x, eps) = x).

    n_steps = 1 is the one-step sample f(x_T, T). NFE = n_steps.

    Re-noising between steps: stochastic=True draws fresh noise, stochastic=False uses the
    noise the previous state implies; gamma (optional, in [0, 1]) is the fresh share,
    z = sqrt(1 - gamma^2) z_hat + gamma z_fresh (gamma > 0 needs stochastic=True; gamma = 1
    is stochastic=True, gamma = 0 is stochastic=False)."""

    n_steps: int = eqx.field(static=True, default=1)
    grid: AbstractTimeGrid = LogSNRGrid()
    stochastic: bool = eqx.field(static=True, default=True)
    gamma: float | None = eqx.field(static=True, default=None)
    order = None
    evals_per_step = 1
    takes_score = False  # sample(..., denoise=True) is refused

    def __check_init__(self):
        check_steps(self.n_steps)
        if self.gamma is None:
            return
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)) or not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma={self.gamma!r} must be a number in [0, 1] (the share of fresh noise when "
                             "re-noising between steps: 0 implied noise, 1 fresh noise), or None.")
        if self.stochastic != (self.gamma > 0):
            raise ValueError(f"gamma={self.gamma!r} with stochastic={self.stochastic}: stochastic says whether "
                             "fresh noise is drawn, so use stochastic=True for gamma > 0 and stochastic=False "
                             "for gamma = 0.")

    def run(self, consistency_fn, sde, keys, x_T, cond, save_trajectory):
        ts = self.grid(sde, self.n_steps, x_T.dtype)
        eps = jnp.asarray(sde.eps, x_T.dtype)
        x_in = x_T
        x = call_score(consistency_fn, x_T, batch_time(ts[0], x_T), cond)
        traj = [x_T, x]
        gamma = float(self.stochastic) if self.gamma is None else float(self.gamma)
        for i in range(1, self.n_steps):
            a, v = sde.transition(eps, ts[i])
            a_prev, v_prev = sde.transition(eps, ts[i - 1])
            if gamma == 1.0:  # Song et al. 2023, Algorithm 1
                z = normal_like(keys, x, i)
            else:  # the noise that maps x back to x_in: x_in = a_prev x + sqrt(v_prev) z_hat
                z = (x_in - bcast(a_prev, x) * x) / bcast(jnp.sqrt(v_prev), x)
                if gamma > 0.0:
                    z = (1.0 - gamma**2) ** 0.5 * z + gamma * normal_like(keys, x, i)
            x_in = bcast(a, x) * x + bcast(jnp.sqrt(v), x) * z
            x = call_score(consistency_fn, x_in, batch_time(ts[i], x), cond)
            traj.append(x)
        return x, jnp.asarray(self.n_steps), (jnp.stack(traj) if save_trajectory else None)


__all__ = ["ConsistencySampler", "TruncatedLogSNRGrid"]

"""Few-step deterministic / low-NFE samplers, lax.scan loops with the `sample` interface.

* `EDMHeun`: Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based
  Generative Models"), Algorithm 2, with stochastic churn (S_churn, S_min, S_max,
  S_noise). It is written in the scaled variables x_hat = x / alpha and
  sigma_hat = sigma / alpha = exp(-lambda/2), in which every linear SDE's
  probability-flow ODE is EDM's  dx_hat / dsigma_hat = (x_hat - D(x_hat)) / sigma_hat
  with the denoiser D = E[x_0 | x_t] = (x + sigma^2 score(x, t)) / alpha, so one code
  path serves VP, sub-VP and VE.
* `DDIM`: first-order DPM-Solver++ on a uniform-t grid. `DPMSolverPP` and the other
  multistep solvers live in `scoresde.sampling.multistep` (re-exported here for
  compatibility).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde._util import check_steps, normal_like, scan_grid
from scoresde.sampling.base import AbstractSampler, tweedie_denoise
from scoresde.sampling.grids import AbstractTimeGrid, EDMGrid, UniformTimeGrid
from scoresde.sampling.multistep import DPMSolverPP


class EDMHeun(AbstractSampler):
    """EDM's stochastic Heun sampler (Karras et al. 2022, Alg. 2), per step i:

        gamma_i = min(S_churn / N, sqrt(2) - 1) if S_min <= sh_i <= S_max else 0
        sh_up   = sh_i (1 + gamma_i)          [capped at sh(T): the SDE ends at T]
        x_up    = x_i + sqrt(sh_up^2 - sh_i^2) S_noise z_i
        d_i     = (x_up - D(x_up; sh_up)) / sh_up
        x_{i+1} = x_up + (sh_{i+1} - sh_up) d_i                       (Euler)
        d'_i    = (x_{i+1} - D(x_{i+1}; sh_{i+1})) / sh_{i+1}
        x_{i+1} = x_up + (sh_{i+1} - sh_up) (d_i + d'_i) / 2           (Heun)

    in x_hat = x / alpha, sh = sigma / alpha (see module docstring); the time of a noise
    level comes from sde.t_from_log_snr(-2 log sh). The last step is a Heun step too
    (sh_N = sh(eps) > 0, unlike EDM's sigma_N = 0), so NFE = 2 n_steps. S_churn = 0
    (default) is the deterministic Heun sampler (EDM Alg. 1). Default grid: EDM rho=7.
    """

    n_steps: int = eqx.field(static=True)
    grid: AbstractTimeGrid = EDMGrid()
    s_churn: float = 0.0
    s_min: float = 0.0
    s_max: float = float("inf")
    s_noise: float = 1.0
    order = 2
    evals_per_step = 2

    def __check_init__(self):
        check_steps(self.n_steps)

    def run(self, score_fn, sde, keys, x_T, cond, save_trajectory):
        ts = self.grid(sde, self.n_steps, x_T.dtype)
        sh_T = jnp.exp(-0.5 * sde.log_snr(ts[0]))
        gamma_max = min(self.s_churn / self.n_steps, math.sqrt(2.0) - 1.0) \
            if isinstance(self.s_churn, (int, float)) else \
            jnp.minimum(self.s_churn / self.n_steps, math.sqrt(2.0) - 1.0)

        def D_hat(xh, t):  # denoiser in scaled variables: D(alpha x_hat, t)
            return tweedie_denoise(score_fn, sde, sde.alpha(t) * xh, t, cond)

        def step(i, xh, t, t_next):
            sh = jnp.exp(-0.5 * sde.log_snr(t))
            sh_next = jnp.exp(-0.5 * sde.log_snr(t_next))
            gamma = jnp.where((sh >= self.s_min) & (sh <= self.s_max), gamma_max, 0.0)
            sh_up = jnp.minimum(sh * (1.0 + gamma), sh_T)
            t_up = jnp.where(sh_up > sh, sde.t_from_log_snr(-2.0 * jnp.log(sh_up)), t)
            xh_up = xh + jnp.sqrt(jnp.maximum(sh_up**2 - sh**2, 0.0)) * self.s_noise * normal_like(keys, xh, i)
            d = (xh_up - D_hat(xh_up, t_up)) / sh_up
            x_eul = xh_up + (sh_next - sh_up) * d
            d2 = (x_eul - D_hat(x_eul, t_next)) / sh_next
            return xh_up + (sh_next - sh_up) * 0.5 * (d + d2)

        xh_T = x_T / sde.alpha(ts[0])
        xh, traj = scan_grid(step, xh_T, ts, save_trajectory)
        x = sde.alpha(ts[-1]) * xh
        if save_trajectory:
            traj = traj * sde.alpha(ts).reshape((-1,) + (1,) * x_T.ndim)
        return x, jnp.asarray(2 * self.n_steps), traj


class DDIM(AbstractSampler):
    """DDIM (Song, Meng & Ermon 2021, eta = 0) = first-order DPM-Solver(++):

        x_{i+1} = (sigma_{i+1}/sigma_i) x_i + alpha_{i+1} (1 - e^{-h}) D(x_i, t_i),
        h = lambda_{i+1} - lambda_i,

    the exact solution of the probability-flow ODE for a constant data prediction.
    NFE = n_steps. Default grid: uniform in t.
    """

    n_steps: int = eqx.field(static=True)
    grid: AbstractTimeGrid = UniformTimeGrid()
    order = 1
    evals_per_step = 1

    def __check_init__(self):
        check_steps(self.n_steps)

    def run(self, score_fn, sde, keys, x_T, cond, save_trajectory):
        return DPMSolverPP(self.n_steps, 1, self.grid).run(score_fn, sde, keys, x_T, cond, save_trajectory)

"""Few-step deterministic / low-NFE samplers, lax.scan loops with the `sample` interface.

* `EDMHeun`: Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based
  Generative Models"), Algorithm 2, with stochastic churn (S_churn, S_min, S_max,
  S_noise). It is written in the scaled variables x_hat = x / alpha and
  sigma_hat = sigma / alpha = exp(-lambda/2), in which every linear SDE's
  probability-flow ODE is EDM's  dx_hat / dsigma_hat = (x_hat - D(x_hat)) / sigma_hat
  with the denoiser D = E[x_0 | x_t] = (x + sigma^2 score(x, t)) / alpha, so one code
  path serves VP, sub-VP and VE.
* `DPMSolverPP`: DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++: Fast Solver
  for Guided Sampling of Diffusion Probabilistic Models", Alg. 2 and the third-order
  update of the reference implementation), data prediction in the variable
  lambda = log(alpha / sigma) (half the log-SNR). Order 1 is DDIM (`DDIM`).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde._util import check_steps, normal_like, scan_grid
from scoresde.sampling.base import AbstractSampler, tweedie_denoise
from scoresde.sampling.grids import AbstractTimeGrid, EDMGrid, LogSNRGrid, UniformTimeGrid


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


def _dpm_orders(order: int, n: int, lower_order_final: bool):
    """Order used at step i = 0..n-1: warm-up min(order, i + 1) (only i + 1 past data
    predictions exist) and, as in the reference implementation, min(order, n - i) at
    the end when lower_order_final and n < 10 (stabilises very few steps)."""
    i = jnp.arange(n)
    o = jnp.minimum(order, i + 1)
    if lower_order_final and n < 10:
        o = jnp.minimum(o, n - i)
    return o


class DPMSolverPP(AbstractSampler):
    """DPM-Solver++ multistep, data prediction (Lu et al. 2022, Alg. 2; order 3 as in the
    reference implementation `multistep_dpm_solver_third_update`). With
    lambda = log(alpha / sigma), h = lambda_{i+1} - lambda_i, m_k = D(x_k, t_k) and
    phi_1 = expm1(-h):

      order 1 (DDIM):  x_{i+1} = (sigma_{i+1}/sigma_i) x_i - alpha_{i+1} phi_1 m_i
      order 2:  r0 = h_{i-1}/h, D1 = (m_i - m_{i-1}) / r0,
                x_{i+1} = (sigma_{i+1}/sigma_i) x_i - alpha_{i+1} phi_1 m_i
                          - alpha_{i+1} phi_1 D1 / 2
      order 3:  r0 = h_{i-1}/h, r1 = h_{i-2}/h, D1_0 = (m_i - m_{i-1})/r0,
                D1_1 = (m_{i-1} - m_{i-2})/r1, D1 = D1_0 + r0 (D1_0 - D1_1)/(r0 + r1),
                D2 = (D1_0 - D1_1)/(r0 + r1), phi_2 = phi_1/h + 1, phi_3 = phi_2/h - 1/2,
                x_{i+1} = (sigma_{i+1}/sigma_i) x_i - alpha_{i+1} (phi_1 m_i - phi_2 D1 + phi_3 D2)

    One score evaluation per step (at t_i; none at eps): NFE = n_steps. Step counts:
    any n_steps >= 1 works; the first steps use lower order (warm-up: step i has only
    i + 1 data predictions), and with `lower_order_final` (default) and n_steps < 10
    the last steps do too, exactly as the reference implementation. So order 3 with
    1 step is DDIM, with 2 steps orders (1, 1), with 5 steps (1, 2, 3, 2, 1).
    Default grid: uniform in log-SNR (the reference's "logSNR" skip type).
    """

    n_steps: int = eqx.field(static=True)
    order: int = eqx.field(static=True, default=2)
    grid: AbstractTimeGrid = LogSNRGrid()
    lower_order_final: bool = eqx.field(static=True, default=True)
    evals_per_step = 1

    def __check_init__(self):
        check_steps(self.n_steps)
        if self.order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3 (DPM-Solver++ multistep), got {self.order!r}.")

    def run(self, score_fn, sde, keys, x_T, cond, save_trajectory):
        del keys
        n = self.n_steps
        ts = self.grid(sde, n, x_T.dtype)
        lam = 0.5 * sde.log_snr(ts)
        al, sg = sde.alpha(ts), sde.sigma(ts)
        orders = _dpm_orders(self.order, n, self.lower_order_final)

        def body(carry, i):
            x, m1, m2 = carry
            m0 = tweedie_denoise(score_fn, sde, x, ts[i], cond)
            h = lam[i + 1] - lam[i]
            h0 = jnp.where(i >= 1, lam[i] - lam[jnp.maximum(i - 1, 0)], h)
            h1 = jnp.where(i >= 2, lam[jnp.maximum(i - 1, 0)] - lam[jnp.maximum(i - 2, 0)], h)
            a = al[i + 1]
            phi1 = jnp.expm1(-h)
            base = (sg[i + 1] / sg[i]) * x
            x1 = base - a * phi1 * m0
            r0, r1 = h0 / h, h1 / h
            D1_0 = (m0 - m1) / r0
            x2 = x1 - 0.5 * a * phi1 * D1_0
            D1_1 = (m1 - m2) / r1
            D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)
            D2 = (D1_0 - D1_1) / (r0 + r1)
            phi2 = phi1 / h + 1.0
            phi3 = phi2 / h - 0.5
            x3 = x1 + a * phi2 * D1 - a * phi3 * D2
            o = orders[i]
            x_next = jnp.where(o == 1, x1, jnp.where(o == 2, x2, x3))
            return (x_next, m0, m1), (x_next if save_trajectory else None)

        zeros = jnp.zeros_like(x_T)
        (x, _, _), ys = jax.lax.scan(body, (x_T, zeros, zeros), jnp.arange(n))
        traj = jnp.concatenate([x_T[None], ys], 0) if save_trajectory else None
        return x, jnp.asarray(n), traj


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

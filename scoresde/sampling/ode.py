"""Probability-flow ODE samplers (Song et al. 2021, eq. 13):

    dx/dt = f(t) x - g(t)^2 score(x, t) / 2,   integrated from t = T down to t = eps.

`ProbabilityFlowODE` is an adaptive diffrax solve (Tsit5 by default; Dopri5 or any
explicit RK tableau) with a PID step-size controller; each example is its own ODE
solve (vmapped), so its error control, its result and its NFE do not depend on the
rest of the batch. `ODEEuler` and `ODEHeun` are fixed-step lax.scan loops on a time
grid (uniform in t, EDM's rho=7 grid or uniform in log-SNR).
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde._util import add_batch_axis, batch_time, call_score, rk_evaluations
from scoresde.sampling.base import AbstractGridSampler, AbstractSampler
from scoresde.sampling.grids import AbstractTimeGrid, UniformTimeGrid


class ProbabilityFlowODE(AbstractSampler):
    """Adaptive solve of the probability-flow ODE with diffrax.

    solver: an explicit RK solver (Tsit5 (Tsitouras 2011) default, Dopri5...);
    rtol, atol: the PIDController tolerances (error norm: RMS over the example);
    max_steps: cap on attempted steps (a solve that hits it returns its last state;
    check `nfe`); n_save: number of trajectory points, uniform in t from T to eps.
    NFE = stages * attempted steps (FSAL reuse counted), the largest over the batch
    (the vmapped solve evaluates the score for every example until all are done).
    """

    solver: diffrax.AbstractSolver = diffrax.Tsit5()
    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = eqx.field(static=True, default=4096)
    n_save: int = eqx.field(static=True, default=11)
    evals_per_step = None  # adaptive: the controller decides

    def __check_init__(self):
        rk_evaluations(self.solver, 0)  # fail early on a solver whose cost cannot be counted

    @property
    def order(self):
        return self.solver.order(None)

    def run(self, score_fn, sde, keys, x_T, cond, save_trajectory):
        del keys  # deterministic
        T = jnp.asarray(sde.T, x_T.dtype)
        eps = jnp.asarray(sde.eps, x_T.dtype)

        def vf(t, y, c):
            return sde.ode_drift(lambda x, tt: call_score(score_fn, x, tt, c), y[None], t[None])[0]

        saveat = (diffrax.SaveAt(ts=jnp.linspace(T, eps, self.n_save)) if save_trajectory
                  else diffrax.SaveAt(t1=True))

        def one(y0, c):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(vf), self.solver, T, eps, dt0=None, y0=y0, args=add_batch_axis(c),
                saveat=saveat,
                stepsize_controller=diffrax.PIDController(rtol=self.rtol, atol=self.atol),
                max_steps=self.max_steps, adjoint=diffrax.DirectAdjoint(), throw=False)
            return sol.ys, sol.stats["num_steps"]

        ys, steps = jax.vmap(one)(x_T, cond)
        ys = jnp.swapaxes(ys, 0, 1)
        return ys[-1], rk_evaluations(self.solver, jnp.max(steps)), (ys if save_trajectory else None)


class ODEEuler(AbstractGridSampler):
    """Euler's method on the probability-flow ODE over a fixed grid (order 1):

        x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_i),  v = f x - g^2 score / 2.

    NFE = n_steps.
    """

    n_steps: int = eqx.field(static=True)
    grid: AbstractTimeGrid = UniformTimeGrid()
    order = 1
    evals_per_step = 1

    def step(self, score, sde, keys, i, x, t, t_next):
        return x + (t_next - t) * sde.ode_drift(score, x, batch_time(t, x))


class ODEHeun(AbstractGridSampler):
    """Heun's method (explicit trapezoid, order 2) on the probability-flow ODE:

        k1 = v(x_i, t_i),  k2 = v(x_i + h k1, t_{i+1}),  x_{i+1} = x_i + h (k1 + k2) / 2,
        h = t_{i+1} - t_i < 0.

    Every step is a Heun step (t_n = eps > 0, so unlike EDM there is no final Euler
    step). NFE = 2 n_steps. For Heun in EDM's scaled variables with churn see `EDMHeun`.
    """

    n_steps: int = eqx.field(static=True)
    grid: AbstractTimeGrid = UniformTimeGrid()
    order = 2
    evals_per_step = 2

    def step(self, score, sde, keys, i, x, t, t_next):
        h = t_next - t
        k1 = sde.ode_drift(score, x, batch_time(t, x))
        k2 = sde.ode_drift(score, x + h * k1, batch_time(t_next, x))
        return x + 0.5 * h * (k1 + k2)

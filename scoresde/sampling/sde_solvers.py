"""Reverse-time SDE samplers (Song et al. 2021, "Score-Based Generative Modeling through
Stochastic Differential Equations", eq. 6; Anderson 1982):

    dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dW_bar,   t from T down to eps.

The noise is additive (g depends on t only). In forward time s = T - t the same law is

    dy = -[f(t) y - g(t)^2 score(y, t)] ds + g(t) dB_s,    t = T - s, s in [0, T - eps],

which is how every diffrax solve here runs: diffrax's stochastic Runge-Kutta solvers
(ShARK, SRA1, SEA) are wrong when integrated backwards in time (diffrax issue #598),
so we never give them a decreasing time axis. The Brownian path of example b is
built from keys[b] alone (the solve is vmapped over examples), so results do not
depend on how a batch is split.
"""

from __future__ import annotations

from typing import Optional

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

from scoresde._types import Array
from scoresde._util import (add_batch_axis, batch_time, bind_cond, call_score, check_steps,
                            normal_like, rk_evaluations, scan_grid)
from scoresde.sampling.base import AbstractSampler
from scoresde.sampling.grids import AbstractTimeGrid, UniformTimeGrid


def _reverse_sde_forward_time(score_fn, sde, solver, ts, keys, x_T, cond, save_trajectory,
                              brownian_tol, levy_area):
    """Solve the reverse SDE per example in forward time s = T - t on the grid ts (t).

    brownian_tol None: UnsafeBrownianPath (fresh increments per step, valid for fixed
    steps); otherwise a VirtualBrownianTree with that tolerance, i.e. one continuous
    Brownian path per key that different step counts sample consistently.
    """
    T = jnp.asarray(sde.T, x_T.dtype)
    ss = (T - ts).astype(x_T.dtype)  # increasing, s_0 = 0, s_n = T - eps
    shape = jax.ShapeDtypeStruct(x_T.shape[1:], x_T.dtype)

    def drift(s, y, c):
        t = T - s
        return -sde.reverse_drift(lambda x, tt: call_score(score_fn, x, tt, c), y[None], t[None])[0]

    def diffusion(s, y, args):
        g = jnp.sqrt(sde.g2(T - s)).astype(y.dtype)
        return lx.DiagonalLinearOperator(jnp.full(y.shape, g, y.dtype))

    def one(key, y0, c):
        if brownian_tol is None:
            bm = diffrax.UnsafeBrownianPath(shape=shape, key=key, levy_area=levy_area)
        else:
            bm = diffrax.VirtualBrownianTree(ss[0], ss[-1], tol=brownian_tol, shape=shape,
                                             key=key, levy_area=levy_area)
        terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
        saveat = diffrax.SaveAt(ts=ss) if save_trajectory else diffrax.SaveAt(t1=True)
        sol = diffeqsolve_fixed(terms, solver, ss, y0, saveat, add_batch_axis(c))
        return sol.ys, sol.stats["num_steps"]

    ys, steps = jax.vmap(one)(keys, x_T, cond)
    ys = jnp.swapaxes(ys, 0, 1)  # (n_saved, B, ...)
    traj = ys if save_trajectory else None
    return ys[-1], rk_evaluations(solver, jnp.max(steps)), traj


def diffeqsolve_fixed(terms, solver, ts, y0, saveat, args=None):
    """diffrax.diffeqsolve on the fixed grid ts (StepTo), no adjoint bookkeeping."""
    return diffrax.diffeqsolve(
        terms, solver, ts[0], ts[-1], dt0=None, y0=y0, args=args, saveat=saveat,
        stepsize_controller=diffrax.StepTo(ts=ts), max_steps=ts.shape[0] - 1,
        adjoint=diffrax.DirectAdjoint(), throw=False)


class EulerMaruyama(AbstractSampler):
    """Euler-Maruyama for the reverse SDE on a fixed grid t_0 = T > ... > t_n = eps:

        x_{i+1} = x_i - h_i [f(t_i) x_i - g(t_i)^2 score(x_i, t_i)] + g(t_i) sqrt(h_i) z_i,
        h_i = t_i - t_{i+1},  z_i ~ N(0, I)

    (Song et al. 2021, Alg. "Euler-Maruyama"; noise is added at every step, also the
    last; use `sample(..., denoise=True)` for the Tweedie step). Weak order 1; for this
    additive-noise SDE also strong order 1. NFE = n_steps.

    use_diffrax=False (default) runs a lax.scan loop with z_i drawn from
    fold_in(keys[b], i); use_diffrax=True runs diffrax.Euler through StepTo in forward
    time (fresh Brownian increments per step, or a VirtualBrownianTree when
    `brownian_tol` is set). Both are correct; the scan loop was faster here (diffrax
    issue #517), see the report in experiments/benchmarks.
    """

    n_steps: int = eqx.field(static=True)
    grid: AbstractTimeGrid = UniformTimeGrid()
    use_diffrax: bool = eqx.field(static=True, default=False)
    brownian_tol: Optional[float] = eqx.field(static=True, default=None)
    order = 1  # strong (and weak) order: the noise of the reverse SDE is additive
    evals_per_step = 1

    def __check_init__(self):
        check_steps(self.n_steps)

    def run(self, score_fn, sde, keys, x_T, cond, save_trajectory):
        ts = self.grid(sde, self.n_steps, x_T.dtype)
        if self.use_diffrax:
            # With a VirtualBrownianTree, build it with the Levy area ReverseSRK uses: the
            # levy_area setting changes the path, and one key should mean one path.
            levy = diffrax.BrownianIncrement if self.brownian_tol is None else diffrax.SpaceTimeLevyArea
            return _reverse_sde_forward_time(score_fn, sde, diffrax.Euler(), ts, keys, x_T, cond,
                                             save_trajectory, self.brownian_tol, levy)
        score = bind_cond(score_fn, cond)

        def step(i, x, t, t_next):
            h = t - t_next
            drift = sde.reverse_drift(score, x, batch_time(t, x))
            g = jnp.sqrt(sde.g2(t) * h)
            return x - h * drift + g * normal_like(keys, x, i)

        x, traj = scan_grid(step, x_T, ts, save_trajectory)
        return x, jnp.asarray(self.n_steps), traj


class ReverseSRK(AbstractSampler):
    """High-order stochastic Runge-Kutta for the additive-noise reverse SDE, in diffrax.

    Default solver: ShARK (Foster, dos Reis & Strange 2023, "High order splitting
    methods for SDEs satisfying a commutativity condition", eq. 6.1): two drift
    evaluations per step, strong order 1.5 for additive noise, using the space-time
    Levy area of the Brownian path. `diffrax.SRA1()` (Roessler 2010) works as well.
    Solved in forward time s = T - t (see module docstring, diffrax issue #598).
    NFE = n_steps * stages (2 for ShARK / SRA1).

    brownian_tol None: independent increments and Levy areas per step (valid for fixed
    steps, fastest); a float: a VirtualBrownianTree with this tolerance (in units of
    s), so the same key gives one Brownian path whatever n_steps is - used to check
    strong convergence against a fine reference.
    """

    n_steps: int = eqx.field(static=True)
    grid: AbstractTimeGrid = UniformTimeGrid()
    solver: diffrax.AbstractSolver = diffrax.ShARK()
    brownian_tol: Optional[float] = eqx.field(static=True, default=None)

    def __check_init__(self):
        check_steps(self.n_steps)
        rk_evaluations(self.solver, 1)  # fail early on a solver whose cost cannot be counted

    @property
    def order(self):
        """Strong order for this additive-noise SDE (1.5 for ShARK and SRA1, 1 for SEA)."""
        return self.solver.strong_order(None)

    @property
    def evals_per_step(self):
        return rk_evaluations(self.solver, 1)

    def run(self, score_fn, sde, keys, x_T, cond, save_trajectory):
        ts = self.grid(sde, self.n_steps, x_T.dtype)
        return _reverse_sde_forward_time(score_fn, sde, self.solver, ts, keys, x_T, cond,
                                         save_trajectory, self.brownian_tol,
                                         diffrax.SpaceTimeLevyArea)

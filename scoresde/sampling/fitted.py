"""Time grids fitted to a score function and a solver (in the spirit of LD3, Tong et al.
2025, "Learning to Discretize Denoising Diffusion ODEs", and GITS, Chen et al. 2024).

A few-step solver's error depends mostly on where its n + 1 times sit. Given a score
function, a fixed-step sampler (its n_steps and solver settings) and a small batch of
prior noise x_T^(j), `fit_grid` chooses the grid that minimises

    L(theta) = mean_j || x_n(theta; x_T^(j)) - x*(x_T^(j)) ||^2,

x_n the sampler's output on the grid theta and x* a fine reference solve of the
probability-flow ODE from the same noise (an adaptive `ProbabilityFlowODE` by default).
The grid is parametrised monotonically in log-SNR,

    lambda_i = lambda(T) + u_i (lambda(eps) - lambda(T)),   u = (0, cumsum(softmax(theta))),

so every theta gives a valid decreasing grid from T to eps, and theta = log(diff(u0))
starts from any given grid. L is differentiated through the whole sampler (a lax.scan)
and minimised with BFGS (`jax.scipy.optimize.minimize`): deterministic given the key
(the key draws the fitting noise only).

The result is an ordinary `AbstractTimeGrid`, a `FittedGrid` holding the fractions u,
that saves to and loads from a small JSON file. Evaluate it on fresh noise, never on the
noise it was fitted on (the benchmark does; the fitting key is stored in the file).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.optimize import minimize

from scoresde._types import Array, PyTree, ScoreFn
from scoresde._util import check_steps
from scoresde.sampling.base import AbstractSampler, sample
from scoresde.sampling.grids import (AbstractTimeGrid, EDMGrid, LogSNRGrid, UniformTimeGrid, log_snr_fractions,
                                     times_from_fractions)
from scoresde.sampling.ode import ProbabilityFlowODE
from scoresde.sde import AbstractSDE


class FittedGrid(AbstractTimeGrid):
    """A grid given by its log-SNR fractions u_0 = 0 < u_1 < ... < u_n = 1:
    lambda_i = lambda(T) + u_i (lambda(eps) - lambda(T)). Made by `fit_grid`; valid only
    for its own n_steps (another step count raises). `info_json` is free-form metadata
    (solver, loss, fitting key...) as a JSON string, kept in the saved file; `info` is it
    as a dict."""

    fractions: Array
    info_json: str = eqx.field(static=True, default="{}")

    @property
    def info(self) -> dict:
        return json.loads(self.info_json)

    def __check_init__(self):
        u = np.asarray(self.fractions) if not isinstance(self.fractions, jax.core.Tracer) else None
        if u is not None:
            if u.ndim != 1 or u.shape[0] < 2:
                raise ValueError(f"fractions must have shape (n_steps + 1,) with n_steps >= 1, got {u.shape}.")
            if not (abs(u[0]) < 1e-6 and abs(u[-1] - 1) < 1e-6 and np.all(np.diff(u) > 0)):
                raise ValueError("fractions must increase strictly from 0 to 1 (log-SNR fractions of the grid), "
                                 f"got {u}.")

    @property
    def n_steps(self) -> int:
        return int(self.fractions.shape[0]) - 1

    def __call__(self, sde, n_steps, dtype=jnp.float32):
        check_steps(n_steps)
        if n_steps != self.n_steps:
            raise ValueError(f"this FittedGrid was fitted for n_steps={self.n_steps}, got n_steps={n_steps}; "
                             "fit a grid for this step count with fit_grid.")
        return times_from_fractions(sde, jnp.asarray(self.fractions, dtype), dtype)

    def save(self, path: str) -> None:
        """Write the grid as JSON (atomically: a temporary file renamed into place)."""
        payload = {"fractions": [float(v) for v in np.asarray(self.fractions, np.float64)],
                   "info": self.info}
        d = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".grid-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "FittedGrid":
        """Read a grid written by `save`."""
        with open(path) as f:
            payload = json.load(f)
        if "fractions" not in payload:
            raise ValueError(f"{path} is not a saved FittedGrid (no 'fractions' entry).")
        return cls(jnp.asarray(payload["fractions"], jnp.float32), json.dumps(payload.get("info") or {}))


def _fractions(theta):
    w = jax.nn.softmax(theta)
    return jnp.concatenate([jnp.zeros((1,), theta.dtype), jnp.cumsum(w)]).at[-1].set(1.0)


def fit_grid(sampler: AbstractSampler, score_fn: ScoreFn, sde: AbstractSDE, key, shape: tuple[int, ...], *,
             n_fit: int = 256, init=None, reference: Optional[AbstractSampler] = None,
             cond: PyTree = None, maxiter: int = 200, dtype=jnp.float32) -> FittedGrid:
    """Fit the time grid of a fixed-step `sampler` to `score_fn` (see the module docstring).

    Args:
      sampler: a fixed-step sampler with fields `n_steps` and `grid` (e.g. UniPC(10),
        DPMSolverPP(10, 3), ODEHeun(5)); its grid is replaced during the fit.
      score_fn, sde, cond: as for `sample`.
      key: draws the n_fit fitting noises x_T ~ p_T (nothing else is random).
      shape: the shape of one example, e.g. (2,) or (8, 8, 1).
      n_fit: number of fitting noises.
      init: the starting grid, or a sequence of them (multi-start: BFGS from each, the
        lowest loss wins); default: the sampler's own grid, a log-SNR grid, EDM's rho = 7
        grid and the uniform-t grid.
      reference: the fine solve x* (default: ProbabilityFlowODE(rtol=atol=1e-5), Tsit5).
      maxiter: BFGS iterations.

    Returns: a FittedGrid, with `info` recording the loss before and after the fit.
    """
    if not hasattr(sampler, "n_steps") or not hasattr(sampler, "grid"):
        raise TypeError(f"sampler must be a fixed-step sampler with `n_steps` and `grid` fields, got "
                        f"{type(sampler).__name__}.")
    n = sampler.n_steps
    if init is None:
        init = (sampler.grid, LogSNRGrid(), EDMGrid(), UniformTimeGrid())
    inits = tuple(init) if isinstance(init, (tuple, list)) else (init,)
    reference = ProbabilityFlowODE() if reference is None else reference
    x_T = sde.prior_sample(key, (n_fit,) + tuple(shape), dtype)
    x_ref = jax.lax.stop_gradient(sample(reference, score_fn, sde, jax.random.key(0), x_T, cond=cond).samples)
    def loss(theta):
        grid = FittedGrid(_fractions(theta))
        x = sample(eqx.tree_at(lambda s: s.grid, sampler, grid), score_fn, sde, jax.random.key(0), x_T,
                   cond=cond).samples
        return jnp.mean(jnp.sum((x - x_ref).reshape(n_fit, -1) ** 2, axis=-1))

    loss_jit = jax.jit(loss)
    best = None
    for g in inits:
        theta0 = jnp.log(jnp.maximum(jnp.diff(log_snr_fractions(sde, g(sde, n, dtype))), 1e-6))
        res = minimize(loss_jit, theta0, method="BFGS", options={"maxiter": maxiter})
        cand = [(float(loss_jit(theta0)), theta0, type(g).__name__, "init"),
                (float(loss_jit(res.x)), res.x, type(g).__name__, "fit")]
        for c in cand:
            if np.isfinite(c[0]) and (best is None or c[0] < best[0]):
                best = c
        if best is None:
            raise FloatingPointError(f"fit_grid: the loss is not finite from the {type(g).__name__} start; check "
                                     "the score function and the sampler.")
    mse, theta, start, _ = best
    mse_inits = {type(g).__name__: float(loss_jit(jnp.log(jnp.maximum(jnp.diff(log_snr_fractions(
        sde, g(sde, n, dtype))), 1e-6)))) for g in inits}
    info = {"n_steps": n, "sampler": type(sampler).__name__, "start": start, "n_fit": n_fit,
            "fit_key": np.asarray(jax.random.key_data(key)).tolist(), "mse_inits": mse_inits, "mse_fit": mse}
    return FittedGrid(_fractions(theta), json.dumps(info))


__all__ = ["FittedGrid", "fit_grid"]

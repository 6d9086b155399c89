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

Rare errors (`n_screen`): where the data law has well-separated modes, a few-step
solver's squared error is dominated by the rare samples it sends to the wrong mode
(case B of the sampler benchmark: 0.4% of samples at 10 steps, 0.06% at 20, yet most of
the error). A batch of a few hundred noises holds none or one of them, so a plain fit
cannot learn to avoid them. With `n_screen = N`, the fit draws N screening noises and
their reference solves, and minimises an importance-weighted estimate of the mean
squared error over all N: every "hard" noise (one that some grid tried so far leaves at
least `hard_distance` from its reference) enters with weight 1, and a uniform subset of
n_fit of the others stands in for all of them (weight n_rest / n_fit),

    L(theta) = (1/N) [ sum_hard ||x_n - x*||^2 + (n_rest / n_fit) sum_subset ||x_n - x*||^2 ],

an unbiased estimate given the partition, whose variance comes from the easy samples
only. Each of `rounds` rounds re-screens the N noises with the current grid, adds the
samples it now leaves far to the hard set, and refits from the current grid; round 0 fits
on a uniform subset of n_fit (the hard set is empty until a fitted grid screens). Each
starting grid goes through all rounds with its own hard set, and the lowest final
estimate wins. With n_fit >= N and one round, the fit is the plain fit on the N noises,
step for step.

Choosing among starts (`n_validate`): BFGS from different starting grids ends in
different local minima, and each start's loss is measured on its own fitting noises (with
screening, on its own hard set), which favours the start that fits its noises best rather
than the one that generalises. With `n_validate = M` every start's fitted grid is scored
on M further noises (drawn apart, with their reference solves) and the lowest mean squared
error there wins; with `restarts = R` the whole fit is repeated on R sets of fitting noises
and the validation noises choose among all of them.

Measured (experiments/benchmarks/results/samplers.md, case B: 16-D, 5 modes, UniPC bh2-3,
n_screen = 40000, hard_distance = 1, 3 rounds, n_validate = 40000; paired RMSE on 20000
fresh noises / pooled over 200000 more): 10 steps 0.432 / 0.408 (plain fit on 256 noises:
0.80), 20 steps 0.202 / 0.174 with restarts=1 and 0.131 / 0.151 with restarts=3 (plain:
0.23); at 5 steps 1.50 / 1.45, and 1.05 / 1.00 with `decouple=True` (below). The result
depends on the basin BFGS lands in: at 10 steps two other keys gave 0.43-0.51 on 200000
validation noises (0.35-0.44 with restarts=3), at 20 steps a change of round-off alone (the
same times computed with the end points pinned in another order) moved the same key's
grid from 0.162 / 0.119 to 0.202 / 0.174, and 200000 screening noises instead of 40000 gave
a better grid at 20 steps but a worse one at 10 (0.43-0.55 against 0.36-0.43).

Decoupled evaluation times (`decouple=True`): with very few steps the model's output at
a step's own start t_i is a poor stand-in for the data prediction over the whole step; on
case B at 5 steps the plain fitted grid's samples come out contracted towards their mode's
mean (squared distance 0.77 of the exact solutions'). The decoupled fit also chooses, per
step, the time t'_i at which the model is evaluated, as a log-SNR shift from t_i (x_i and
the step's weights unchanged; `FittedGrid.eval_shifts`): evaluating a denoiser at another
noise level than the state's is the time shift of Li et al. 2024 ("Alleviating Exposure
Bias in Diffusion Models through Sampling with Shifted Time Steps"), here fitted. Each
round fits the grid alone first and then both (far from its optimum the loss can be concave
in a shift, and BFGS's line search fails there). Measured (same protocol and keys, paired
RMSE on the benchmark's fresh noise, plain (restarts=1) -> decoupled): on the 2-D ring A 0.082 -> 0.026,
0.0072 -> 0.0039, 0.0031 -> 0.0018 at 5 / 10 / 20 steps; on the 8-D mixture C 0.50 -> 0.28,
0.073 -> 0.057, 0.012 -> 0.0078; on B 1.50 -> 1.05 at 5 steps, but 0.43 -> 0.48 and 0.20 ->
0.25 at 10 and 20, where the error is a few wrong-mode samples and 2n parameters fit the hard
set rather than the law (the samples within 1 of their solution do improve: 0.19 -> 0.10 at 10
steps). So fit both variants with the same key and keep the one with the lower validation
error (`info["mse_validate"][info["start"]]`; the same validation noises for both): on 8 of
the benchmark's 9 cells that picks the variant that is better on the fresh noise (not on B at
20 steps, where neither is good).

Late shifts (`shift_min_log_snr`): at 20 steps on case B the two kinds of error sit at
different noise levels. The wrong-mode samples are decided between log-SNR -1.8 and -1.2;
the bias within a mode (which drives the CE distance: the samples of a plain fitted grid came
out contracted, -0.07 nats of CE gap, or spread, +0.21, depending on the basin) comes from
the last, long steps. Held fixed, a plain grid (fitted on 10^6 screening noises) was given
fitted shifts in two ways (prototype, 200000 other noises; paired RMSE / CE distance on
200000 validation noises): every step's shift, 0.089 / 0.071 -> 0.175 / 0.072 (shifts of
0.003 at the deciding steps, fitted to the hard set, doubled the wrong-mode samples on fresh
noise); only the shifts of the steps from log-SNR 0 on, 0.089 / 0.071 -> 0.086 / 0.015.
So `shift_min_log_snr=lambda_min` holds the starting grid(s) and fits only the shifts of the
steps that start at log-SNR >= lambda_min; start it from a plain fitted grid (`init=`).

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
from scoresde.sampling.grids import (DECOUPLED_SOLVERS, AbstractTimeGrid, EDMGrid, LogSNRGrid, UniformTimeGrid,
                                     log_snr_fractions, times_from_fractions)
from scoresde.sampling.fewstep import DDIM
from scoresde.sampling.multistep import AbstractMultistepSampler
from scoresde.sampling.ode import ProbabilityFlowODE
from scoresde.sde import AbstractSDE


class FittedGrid(AbstractTimeGrid):
    """A grid given by its log-SNR fractions u_0 = 0 < u_1 < ... < u_n = 1:
    lambda_i = lambda(T) + u_i (lambda(eps) - lambda(T)). Made by `fit_grid`; valid only
    for its own n_steps (another step count raises). `info_json` is free-form metadata
    (solver, loss, fitting key...) as a JSON string, kept in the saved file; `info` is it
    as a dict.

    eval_shifts (keyword; None, or shape (n_steps,), from `fit_grid(decouple=True)`): the
    model evaluation of step i (t_i -> t_{i+1}) is made at the time t'_i whose log-SNR is
    log_snr(t_i) + eval_shifts[i] (clipped to [log_snr(T), log_snr(eps)]), the state x_i
    and the step's weights unchanged. Only the deterministic multistep solvers (UniPC,
    DPMSolverPP, DEIS, IPNDM, DDIM) apply it (`with_eval_times`); called as an ordinary grid,
    `grid(sde, n)`, such a grid raises rather than be used without its shifts."""

    fractions: Array
    info_json: str = eqx.field(static=True, default="{}")
    eval_shifts: Optional[Array] = eqx.field(default=None, kw_only=True)

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
        d = self.eval_shifts
        if d is not None and not isinstance(d, jax.core.Tracer):
            d = np.asarray(d)
            if d.shape != (self.n_steps,) or not np.all(np.isfinite(d)):
                raise ValueError(f"eval_shifts must be None or {self.n_steps} finite log-SNR shifts (one per step of "
                                 f"this {self.n_steps}-step grid), got shape {d.shape}: {d}.")

    @property
    def n_steps(self) -> int:
        return int(self.fractions.shape[0]) - 1

    def __call__(self, sde, n_steps, dtype=jnp.float32):
        if self.eval_shifts is not None:
            raise ValueError("this FittedGrid was fitted with decouple=True: its model evaluations are at times of "
                             f"their own (eval_shifts), which only the deterministic multistep solvers "
                             f"({DECOUPLED_SOLVERS}) apply; use it with one of them, or fit this sampler's grid with "
                             "decouple=False.")
        return self._times(sde, n_steps, dtype)

    def _times(self, sde, n_steps, dtype):
        check_steps(n_steps)
        if n_steps != self.n_steps:
            raise ValueError(f"this FittedGrid was fitted for n_steps={self.n_steps}, got n_steps={n_steps}; "
                             "fit a grid for this step count with fit_grid (a sampler with final='denoise' asks "
                             "its grid for n_steps - 1 steps).")
        return times_from_fractions(sde, jnp.asarray(self.fractions, dtype), dtype)

    def with_eval_times(self, sde, n_steps, dtype=jnp.float32):
        """(ts, t_eval): the grid and, with eval_shifts, the shifted evaluation times t'_i
        (else None: the steps' own t_i)."""
        ts = self._times(sde, n_steps, dtype)
        if self.eval_shifts is None:
            return ts, None
        lo, hi = sde.log_snr(jnp.asarray(sde.T, dtype)), sde.log_snr(jnp.asarray(sde.eps, dtype))
        shifted = jnp.clip(sde.log_snr(ts[:-1]) + jnp.asarray(self.eval_shifts, dtype), lo, hi)
        return ts, sde.t_from_log_snr(shifted).astype(dtype)

    def save(self, path: str) -> None:
        """Write the grid as JSON (atomically: a temporary file renamed into place)."""
        payload = {"fractions": [float(v) for v in np.asarray(self.fractions, np.float64)]}
        if self.eval_shifts is not None:
            payload["eval_shifts"] = [float(v) for v in np.asarray(self.eval_shifts, np.float64)]
        payload["info"] = self.info
        d = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".grid-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would make it (mkstemp's file is private, 0600)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "FittedGrid":
        """Read a grid written by `save`."""
        with open(path) as f:
            payload = json.load(f)
        if "fractions" not in payload:
            raise ValueError(f"{path} is not a saved FittedGrid (no 'fractions' entry).")
        shifts = payload.get("eval_shifts")
        return cls(jnp.asarray(payload["fractions"], jnp.float32), json.dumps(payload.get("info") or {}),
                   eval_shifts=None if shifts is None else jnp.asarray(shifts, jnp.float32))


_VALIDATE_STREAM = 2**20  # fold_in(key, this) draws the validation noises (subsets use 1, 2, ...)
_RESTART_STREAM = 2**21  # restart r > 0 fits on the noises of fold_in(key, this + r)


def _fractions(theta):
    w = jax.nn.softmax(theta)
    return jnp.concatenate([jnp.zeros((1,), theta.dtype), jnp.cumsum(w)]).at[-1].set(1.0)


def fit_grid(sampler: AbstractSampler, score_fn: ScoreFn, sde: AbstractSDE, key, shape: tuple[int, ...], *,
             n_fit: int = 256, init=None, reference: Optional[AbstractSampler] = None,
             cond: PyTree = None, maxiter: int = 200, dtype=jnp.float32, n_screen: Optional[int] = None,
             hard_distance: float = 0.3, rounds: int = 4, n_validate: Optional[int] = None,
             restarts: int = 1, decouple: bool = False, shift_min_log_snr: Optional[float] = None) -> FittedGrid:
    """Fit the time grid of a fixed-step `sampler` to `score_fn` (see the module docstring).

    Args:
      sampler: a fixed-step sampler with fields `n_steps` and `grid` (e.g. UniPC(10),
        DPMSolverPP(10, 3), ODEHeun(5)); its grid is replaced during the fit. With
        final="denoise" the grid has n_steps - 1 steps (the last evaluation denoises).
      score_fn, sde, cond: as for `sample` (with `n_screen`, cond must be None).
      key: draws the fitting (or screening) noises x_T ~ p_T and, with `n_screen`, the
        subsets of easy noises; the fit is deterministic given it.
      shape: the shape of one example, e.g. (2,) or (8, 8, 1).
      n_fit: number of fitting noises (with `n_screen`: of easy noises per round).
      init: the starting grid, or a sequence of them (multi-start: BFGS from each, the
        lowest loss, or with n_validate the lowest validation error, wins); default: the
        sampler's own grid, a log-SNR grid, EDM's rho = 7 grid and the uniform-t grid (the
        sampler's grid not repeated).
      reference: the fine solve x* (default: ProbabilityFlowODE(rtol=atol=1e-5), Tsit5).
      maxiter: BFGS iterations (per start, and per round with `n_screen`).
      n_screen: None (plain fit on n_fit noises) or N: fit on N screening noises with
        the rare-error weighting of the module docstring (N reference solves).
      hard_distance: with n_screen, the distance ||x_n - x*|| from which a noise is hard.
      rounds: with n_screen, fitting rounds: round 0 on a uniform subset, each later one
        re-screens with the current grid and refits from it.
      n_validate: None (the start whose fit has the lowest loss wins) or M: the start
        whose fitted grid has the lowest mean squared error on M further noises (and
        their reference solves), drawn apart from the fitting ones, wins. Each start's
        loss is measured on the noises it was fitted on (with n_screen, on its own hard
        set), so it favours the start that fits its own noises best; where starts end in
        different basins (few steps, rare errors) the validation noises choose fairly.
      restarts: the whole fit (every start) repeated on R sets of fitting noises (the first
        drawn from `key` itself, so restarts=1 is the fit above); needs n_validate, which
        chooses among all R x starts fitted grids. Where the outcome depends on the fitting
        noises (the basin BFGS lands in), this buys reliability at R times the cost.
      decouple: also fit, per step, the time at which the model is evaluated (a log-SNR
        shift of t_i, starting from 0: `FittedGrid.eval_shifts`), 2n parameters instead of
        n. Only for the deterministic multistep solvers (UniPC, DPMSolverPP, DEIS, IPNDM, DDIM),
        which apply the shifts; the grid then works with them only.
      shift_min_log_snr: with decouple, None (every step's shift fitted together with the
        grid) or a log-SNR lambda_min: the starting grids are held fixed and only the shifts
        of their steps that start at log-SNR >= lambda_min are fitted (the others are 0): e.g.
        `init=` a plain fitted grid, whose times then stay as they are. Where the error is a
        few wrong-mode samples, decided at low log-SNR, shifts there fit the hard set rather
        than the law; above the log-SNR where modes are decided they correct the bias within
        a mode only (see the module docstring).

    Returns: a FittedGrid, with `info` recording the loss before and after the fit (with
    n_screen: the weighted estimate of the mean squared error over the N screening noises,
    on the last round's weights, and the hard-set size after each round; with n_validate:
    each start's validation mean squared error).
    """
    if not hasattr(sampler, "n_steps") or not hasattr(sampler, "grid"):
        raise TypeError(f"sampler must be a fixed-step sampler with `n_steps` and `grid` fields, got "
                        f"{type(sampler).__name__}.")
    if decouple and not isinstance(sampler, (AbstractMultistepSampler, DDIM)):
        raise ValueError(f"decouple=True fits evaluation times that only the deterministic multistep solvers "
                         f"({DECOUPLED_SOLVERS}) apply, got {type(sampler).__name__}; fit its grid with "
                         "decouple=False.")
    if shift_min_log_snr is not None and not (decouple and np.isfinite(shift_min_log_snr)):
        raise ValueError(f"shift_min_log_snr={shift_min_log_snr!r}: it chooses which steps get a fitted evaluation "
                         "shift, so it needs decouple=True and a finite log-SNR (e.g. 0.0: steps whose noise is "
                         "below the signal); or pass None.")
    check_steps(n_fit, "n_fit")
    if n_screen is not None:
        check_steps(n_screen, "n_screen")
        check_steps(rounds, "rounds")
        if not hard_distance >= 0:
            raise ValueError(f"hard_distance must be >= 0 (a distance to the reference solve), got {hard_distance!r}.")
        if cond is not None:
            raise ValueError("cond: screened fitting (n_screen) takes subsets of the noises and has no way to take "
                             "the same subsets of cond; fit with n_screen=None, or fit an unconditional score.")
    check_steps(restarts, "restarts")
    if restarts > 1 and n_validate is None:
        raise ValueError(f"restarts={restarts} fits on {restarts} sets of noises, whose losses cannot be compared; "
                         "pass n_validate=M (e.g. as many noises as one fit uses) to choose among them.")
    if n_validate is not None:
        check_steps(n_validate, "n_validate")
        if cond is not None:
            raise ValueError("cond: validation (n_validate) draws new noises and has no cond for them; fit with "
                             "n_validate=None, or fit an unconditional score.")
    n = getattr(sampler, "n_grid_steps", sampler.n_steps)  # final="denoise": one step fewer on the grid
    if n < 1:
        raise ValueError(f"sampler: {type(sampler).__name__}(n_steps={sampler.n_steps}, final='denoise') takes no "
                         "step on its grid (its one evaluation is the final denoise), so there is no grid to fit; "
                         "use n_steps >= 2.")
    if init is None:  # the sampler's own grid and the three standard ones, each once
        init = [sampler.grid]
        for g in (LogSNRGrid(), EDMGrid(), UniformTimeGrid()):
            if not any(type(g) is type(h) and bool(eqx.tree_equal(g, h)) for h in init):
                init.append(g)
    inits = tuple(init) if isinstance(init, (tuple, list)) else (init,)
    reference = ProbabilityFlowODE() if reference is None else reference

    def run(theta, x, c):  # theta: n log-weights of the steps, then (decouple) n evaluation shifts
        grid = FittedGrid(_fractions(theta[:n]), eval_shifts=theta[n:] if decouple else None)
        return sample(eqx.tree_at(lambda s: s.grid, sampler, grid), score_fn, sde, jax.random.key(0), x, cond=c).samples

    def sq_err(theta, x, ref, c):  # ||x_n - x*||^2 per example
        return jnp.sum((run(theta, x, c) - ref).reshape(x.shape[0], -1) ** 2, axis=-1)

    def loss(theta, x, ref, c, scale):  # mean_i scale_i ||x_n - x*||^2 (scale = None: the plain mean)
        sq = sq_err(theta, x, ref, c)
        return jnp.mean(sq if scale is None else scale * sq)

    loss_jit = jax.jit(loss)

    def theta_of(g):  # a grid's parameters: log(diff(u)), and with decouple its shifts (0 where it has none)
        theta = jnp.log(jnp.maximum(jnp.diff(log_snr_fractions(sde, g.with_eval_times(sde, n, dtype)[0])), 1e-6))
        if not decouple:
            return theta
        shifts = getattr(g, "eval_shifts", None)
        return jnp.concatenate([theta, jnp.zeros(n, dtype) if shifts is None else jnp.asarray(shifts, dtype)])

    thetas0 = [theta_of(g) for g in inits]

    def fit_from(theta0, name, data):  # (loss, theta, name), or None where the loss is not finite
        if decouple and shift_min_log_snr is not None:  # the grid held: the shifts of its steps that start at
            # log-SNR >= shift_min_log_snr alone (the others 0)
            u = theta0[:n]
            starts = sde.log_snr(times_from_fractions(sde, _fractions(u), dtype)[:-1])
            mask = (starts >= shift_min_log_snr).astype(u.dtype)
            d0 = theta0[n:] * mask
            res = minimize(lambda d: loss_jit(jnp.concatenate([u, d * mask]), *data), d0, method="BFGS",
                           options={"maxiter": maxiter})
            tried = [jnp.concatenate([u, d0]), jnp.concatenate([u, res.x * mask])]
        else:
            tried = [theta0]
            if decouple:  # the grid alone first (the shifts' gradients are small and the loss concave in them far
                # from their optimum, where BFGS's line search fails), then everything from there
                res = minimize(lambda u: loss_jit(jnp.concatenate([u, theta0[n:]]), *data), theta0[:n],
                               method="BFGS", options={"maxiter": maxiter})
                tried.append(jnp.concatenate([res.x, theta0[n:]]))
            tried.append(minimize(lambda th: loss_jit(th, *data), tried[-1], method="BFGS",
                                  options={"maxiter": maxiter}).x)
        best = None
        for theta in tried:
            value = float(loss_jit(theta, *data))
            if np.isfinite(value) and (best is None or value < best[0]):
                best = (value, theta, name)
        return best

    kinds = [type(g).__name__ for g in inits]  # a start's name: its class, numbered where a class repeats
    names = [k if kinds.count(k) == 1 else f"{k}#{kinds[:i].count(k) + 1}" for i, k in enumerate(kinds)]
    starts = list(zip(thetas0, names))
    sq_err_jit = jax.jit(sq_err)  # the noises as arguments, not constants folded into the program

    def candidates_for(key, tag):  # every start fitted on the noises `key` draws: (loss, theta, name, n_hard, data)
        x_T = sde.prior_sample(key, ((n_fit if n_screen is None else n_screen),) + tuple(shape), dtype)
        x_ref = jax.lax.stop_gradient(sample(reference, score_fn, sde, jax.random.key(0), x_T, cond=cond).samples)
        if n_screen is None:
            data = (x_T, x_ref, cond, None)
            return [c + (None, data) for c in (fit_from(t, nm + tag, data) for t, nm in starts) if c is not None]

        def screened(start_theta, name):  # every round from one start; its own hard set
            hard, n_hard, theta = np.zeros(n_screen, bool), [], start_theta
            for r in range(rounds):
                if r > 0:  # round 0: a uniform subset; then screen with the current grid
                    hard |= np.sqrt(np.asarray(sq_err_jit(theta, x_T, x_ref, None))) >= hard_distance
                rest = np.flatnonzero(~hard)
                m = min(n_fit, rest.size)
                pick = (np.sort(np.asarray(jax.random.choice(jax.random.fold_in(key, r + 1), rest.size, (m,),
                                                             replace=False))) if m else np.zeros(0, int))
                idx = np.concatenate([np.flatnonzero(hard), rest[pick]])
                k = idx.size
                # (1/N)[sum_hard + (n_rest/m) sum_subset] written as a mean over the k chosen noises
                scale = np.concatenate([np.full(hard.sum(), k / n_screen),
                                        np.full(m, k * rest.size / (n_screen * m) if m else 0.0)])
                data = (x_T[idx], x_ref[idx], None, jnp.asarray(scale, dtype))
                fit = fit_from(theta, name, data)
                if fit is None:
                    return None
                mse, theta, _ = fit
                n_hard.append(int(hard.sum()))
            return mse, theta, name, n_hard, data

        return [c for c in (screened(t, nm + tag) for t, nm in starts) if c is not None]

    candidates = [c for r in range(restarts)
                  for c in candidates_for(key if r == 0 else jax.random.fold_in(key, _RESTART_STREAM + r),
                                          "" if r == 0 else f"@{r}")]
    extra = {"n_screen": n_screen, "hard_distance": hard_distance, "rounds": rounds} if n_screen is not None else {}
    if restarts > 1:
        extra["restarts"] = restarts
    if decouple:
        extra["decouple"] = True
        if shift_min_log_snr is not None:
            extra["shift_min_log_snr"] = float(shift_min_log_snr)
    if not candidates:
        names = ", ".join(nm for _, nm in starts)
        raise FloatingPointError(f"fit_grid: the loss is not finite from any start ({names}); check the score "
                                 "function and the sampler.")
    if n_validate is None:
        # each start's own loss: on the same noises (plain), or an estimate of the MSE over the same N (screened)
        mse, theta, start, n_hard, data = min(candidates, key=lambda c: c[0])
    else:  # each start's fitted grid on noises no fit has seen; the lowest mean squared error wins
        x_val = sde.prior_sample(jax.random.fold_in(key, _VALIDATE_STREAM), (n_validate,) + tuple(shape), dtype)
        ref_val = jax.lax.stop_gradient(sample(reference, score_fn, sde, jax.random.key(0), x_val).samples)
        val = [float(jnp.mean(sq_err_jit(c[1], x_val, ref_val, None))) for c in candidates]
        mse, theta, start, n_hard, data = candidates[int(np.argmin(val))]
        extra.update(n_validate=n_validate, mse_validate={c[2]: v for c, v in zip(candidates, val)})
    if n_hard is not None:
        extra["n_hard"] = n_hard
    mse_inits = {nm: float(loss_jit(t, *data)) for t, nm in starts}
    info = {"n_steps": n, "sampler": type(sampler).__name__, "start": start, "n_fit": n_fit,
            "fit_key": np.asarray(jax.random.key_data(key)).tolist(), "mse_inits": mse_inits, "mse_fit": mse, **extra}
    return FittedGrid(_fractions(theta[:n]), json.dumps(info), eval_shifts=theta[n:] if decouple else None)


__all__ = ["FittedGrid", "fit_grid"]

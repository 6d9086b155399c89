"""The sampler interface: `sample(sampler, score_fn, sde, key, x_T, cond=None)`.

A sampler is an immutable equinox Module holding its settings (number of steps,
time grid, solver...). It implements one method, `AbstractSampler.run`, that walks
a batch x_T from t = T down to t = eps with a score function; the public entry point
`sample` adds what is common to all samplers: input checks, per-example PRNG keys,
the optional final Tweedie denoising step and the NFE bookkeeping.

Conditioning travels as an argument, the way diffrax passes `args`: `cond` is any
pytree whose leaves have a leading batch axis (class labels, measurements y, guidance
weights...) and the score is called as `score(x, t, cond)` (as `score(x, t)` when cond
is None). A sampler that solves each example on its own (the diffrax samplers) hands
the score example i's slice of cond with a batch axis of one, so a score function never
closes over batch-shaped arrays.

Randomness is per example: example i draws every random number from its own key
keys[i] (e.g. `jax.random.fold_in(keys[i], step)`), never from a batch-wide key, so a
batch split over devices gives the same samples as one device for the same keys.
"""


import abc
from typing import NamedTuple, Optional

import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde._checks import check_batched, check_float_data
from scoresde._keys import per_example_keys
from scoresde._types import Array, PyTree, ScoreFn
from scoresde._util import batch_time, bind_cond, call_score, check_cond, check_score, check_steps, scan_grid
from scoresde.parameterization import x0_from_score
from scoresde.sampling.grids import AbstractTimeGrid
from scoresde.sde import AbstractSDE


class SampleResult(NamedTuple):
    """What `sample` returns.

    samples: (B, ...) the final states (at t = eps, or E[x_0 | x_eps] with denoise=True).
    nfe: int32 scalar array, score evaluations spent per example (the batch is
        evaluated together, so this is also the number of batched score calls).
    trajectory: (n_saved, B, ...) intermediate states from x_T to the end, or None.
    """

    samples: Array
    nfe: Array
    trajectory: Optional[Array]


class AbstractSampler(eqx.Module):
    """A sampler of the reverse process from t = T to t = eps.

    Subclasses implement `run(score_fn, sde, keys, x_T, cond, save_trajectory)` returning
    (x_eps, nfe, trajectory or None); `keys` is a typed key array of shape (B,), one key
    per example, and `cond` the conditioning pytree (or None), to be passed to the score
    as `call_score(score_fn, x, t, cond)` for the whole batch.

    Every sampler states `order`, its order of convergence (weak order for stochastic
    samplers, None for an adaptive solve whose accuracy is set by tolerances) and
    `evals_per_step`, its score evaluations per step (None where steps are adaptive);
    the tests fit the order and count the evaluations against these.
    """

    order: eqx.AbstractVar[Optional[int]]
    evals_per_step: eqx.AbstractVar[Optional[int]]
    # False for a sampler driven by another function than a score (a consistency
    # function): `sample` then refuses the final Tweedie step, which needs a score.
    takes_score = True

    @abc.abstractmethod
    def run(self, score_fn: ScoreFn, sde: AbstractSDE, keys: Array, x_T: Array, cond: PyTree,
            save_trajectory: bool) -> tuple[Array, Array, Optional[Array]]:
        """Integrate from x_T at t=T to t=eps; see the class docstring."""


class AbstractGridSampler(AbstractSampler):
    """A fixed-step sampler on a time grid t_0 = T > ... > t_n = eps (`grid(sde, n_steps)`),
    one `step` per grid interval, run as one lax.scan; NFE = n_steps * evals_per_step.

    Subclasses implement `step(score, sde, keys, i, x, t, t_next) -> x_next`, where
    `score(x, t)` is the batch's score with its conditioning bound and step i draws its
    noise from the per-example keys folded with i."""

    n_steps: eqx.AbstractVar[int]
    grid: eqx.AbstractVar[AbstractTimeGrid]

    def __check_init__(self):
        check_steps(self.n_steps)

    @abc.abstractmethod
    def step(self, score: ScoreFn, sde: AbstractSDE, keys: Array, i, x: Array, t, t_next) -> Array:
        """One step from t to t_next < t."""

    def run(self, score_fn, sde, keys, x_T, cond, save_trajectory):
        ts = self.grid(sde, self.n_steps, x_T.dtype)
        score = bind_cond(score_fn, cond)
        x, traj = scan_grid(lambda i, x, t, t_next: self.step(score, sde, keys, i, x, t, t_next),
                            x_T, ts, save_trajectory)
        return x, jnp.asarray(self.n_steps * self.evals_per_step), traj


def tweedie_denoise(score_fn: ScoreFn, sde: AbstractSDE, x: Array, t, cond: PyTree = None) -> Array:
    """E[x_0 | x_t = x] = (x + sigma_t^2 score(x, t)) / alpha_t (Tweedie's formula;
    Efron 2011). One score evaluation."""
    tb = batch_time(t, x)
    return x0_from_score(sde, x, tb, call_score(score_fn, x, tb, cond))


def sample(sampler: AbstractSampler, score_fn: ScoreFn, sde: AbstractSDE, key, x_T: Array, *,
           cond: PyTree = None, denoise: bool = False, trajectory: bool = False) -> SampleResult:
    """Draw samples of p_eps by running `sampler` backwards from x_T ~ p_T.

    Args:
      sampler: any `AbstractSampler` (EulerMaruyama, ReverseSRK, ProbabilityFlowODE,
        ODEEuler, ODEHeun, PredictorCorrector, EDMHeun, DPMSolverPP, DDIM, ...).
      score_fn: pure `score(x, t)` (or `score(x, t, cond)` when cond is given), x
        batch-first, t of shape (B,).
      sde: the forward SDE (its eps and T bound the integration).
      key: one PRNG key (split into one key per example) or B keys; the
        randomness of example i comes from its key only.
      x_T: (B, ...) initial noise, e.g. `sde.prior_sample(key, shape)`.
      cond: conditioning, a pytree whose leaves all have a leading axis of B (labels
        (B,), observations (B, ...), per-example guidance weights...), or None.
      denoise: finish with one Tweedie step x_0 = (x + sigma^2 score(x, eps)) / alpha
        at t = eps (one more NFE, counted) - removes the residual noise sigma(eps).
      trajectory: also return the intermediate states.

    Returns: SampleResult(samples, nfe, trajectory).

    Jit with the sampler and sde as arguments, e.g.
    `eqx.filter_jit(sample)(sampler, score_fn, sde, key, x_T)` or
    `jax.jit(sample, static_argnums=1, static_argnames=("denoise", "trajectory"))`.
    """
    if not isinstance(sampler, AbstractSampler):
        raise TypeError(f"sampler must be an AbstractSampler (e.g. EulerMaruyama(n_steps=100)), "
                        f"got {type(sampler).__name__}.")
    if not isinstance(sde, AbstractSDE):
        raise TypeError(f"sde must be an AbstractSDE (e.g. VPSDE()), got {type(sde).__name__}.")
    x_T = jnp.asarray(x_T)
    check_float_data(x_T, "x_T")
    check_batched(x_T, "x_T")
    check_cond(cond, x_T.shape[0])
    check_score(score_fn, x_T, sde.T, cond, "x_T")
    if denoise and not sampler.takes_score:
        raise ValueError(f"denoise=True needs a score function, but {type(sampler).__name__} is driven by "
                         "another function (a consistency function already returns x at t = eps); "
                         "drop denoise.")
    keys = per_example_keys(key, x_T.shape[0])
    x, nfe, traj = sampler.run(score_fn, sde, keys, x_T, cond, bool(trajectory))
    nfe = jnp.asarray(nfe, jnp.int32)
    if denoise:
        x = tweedie_denoise(score_fn, sde, x, sde.eps, cond)
        nfe = nfe + 1
    return SampleResult(x, nfe, traj if trajectory else None)

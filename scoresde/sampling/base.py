"""The sampler interface: `sample(sampler, score_fn, sde, key, x_T)`.

A sampler is an immutable equinox Module holding its settings (number of steps,
time grid, solver...). It implements one method, `AbstractSampler.run`, that walks
a batch x_T from t = T down to t = eps with a score function `score(x, t)`; the
public entry point `sample` adds what is common to all samplers: per-example PRNG
keys, the optional final Tweedie denoising step and the NFE bookkeeping.

Randomness is per example: example i draws every random number from its own key
keys[i] (e.g. `jax.random.fold_in(keys[i], step)`), never from a batch-wide key, so a
batch split over devices gives the same samples as one device for the same keys.
"""

from __future__ import annotations

import abc
from typing import Callable, NamedTuple, Optional

import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde._checks import check_batched, check_float_data, check_same_shape
from scoresde._keys import per_example_keys
from scoresde.sde import AbstractSDE, _bcast

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


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

    Subclasses implement `run(score_fn, sde, keys, x_T, save_trajectory)` returning
    (x_eps, nfe, trajectory or None); `keys` is a typed key array of shape (B,),
    one key per example.
    """

    @abc.abstractmethod
    def run(self, score_fn: ScoreFn, sde: AbstractSDE, keys: Array, x_T: Array,
            save_trajectory: bool) -> tuple[Array, Array, Optional[Array]]:
        """Integrate from x_T at t=T to t=eps; see the class docstring."""


def tweedie_denoise(score_fn: ScoreFn, sde: AbstractSDE, x: Array, t) -> Array:
    """E[x_0 | x_t = x] = (x + sigma_t^2 score(x, t)) / alpha_t (Tweedie's formula;
    Efron 2011). One score evaluation."""
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
    s = score_fn(x, t)
    return (x + _bcast(sde.sigma(t) ** 2, x) * s) / _bcast(sde.alpha(t), x)


def sample(sampler: AbstractSampler, score_fn: ScoreFn, sde: AbstractSDE, key, x_T: Array, *,
           denoise: bool = False, trajectory: bool = False) -> SampleResult:
    """Draw samples of p_eps by running `sampler` backwards from x_T ~ p_T.

    Args:
      sampler: any `AbstractSampler` (EulerMaruyama, ReverseSRK, ProbabilityFlowODE,
        ODEEuler, ODEHeun, PredictorCorrector, EDMHeun, DPMSolverPP, DDIM).
      score_fn: pure `score(x, t)`, x batch-first, t of shape (B,).
      sde: the forward SDE (its eps and T bound the integration).
      key: one PRNG key (split into one key per example) or B keys; the
        randomness of example i comes from its key only.
      x_T: (B, ...) initial noise, e.g. `sde.prior_sample(key, shape)`.
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
    out = jax.eval_shape(score_fn, x_T, jnp.full(x_T.shape[:1], sde.T, x_T.dtype))
    check_same_shape(out, x_T, "score_fn(x_T, t)", "x_T")
    keys = per_example_keys(key, x_T.shape[0])
    x, nfe, traj = sampler.run(score_fn, sde, keys, x_T, bool(trajectory))
    nfe = jnp.asarray(nfe, jnp.int32)
    if denoise:
        x = tweedie_denoise(score_fn, sde, x, sde.eps)
        nfe = nfe + 1
    return SampleResult(x, nfe, traj if trajectory else None)


# --- helpers shared by the samplers (private) ---------------------------------------
def _tb(t, x):
    """Time t (scalar) as a (B,) array in x's dtype, as score functions expect."""
    return jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])


def _noise(keys: Array, x: Array, *idx) -> Array:
    """Standard normal shaped like x; example b uses only keys[b] folded with idx."""

    def one(k):
        for i in idx:
            k = jax.random.fold_in(k, i)
        return jax.random.normal(k, x.shape[1:], x.dtype)

    return jax.vmap(one)(keys)


def _check_steps(n_steps, name="n_steps"):
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {n_steps!r}.")


def _scan_grid(step, x_T: Array, ts: Array, save_trajectory: bool):
    """Run x_{i+1} = step(i, x_i, t_i, t_{i+1}) for i = 0..n-1 with lax.scan.

    Returns (x_n, trajectory (n+1, B, ...) or None)."""
    n = ts.shape[0] - 1

    def body(x, inp):
        i, t, t_next = inp
        x = step(i, x, t, t_next)
        return x, (x if save_trajectory else None)

    x, ys = jax.lax.scan(body, x_T, (jnp.arange(n), ts[:-1], ts[1:]))
    traj = jnp.concatenate([x_T[None], ys], 0) if save_trajectory else None
    return x, traj

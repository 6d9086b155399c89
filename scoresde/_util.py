"""Small numerical helpers shared by the numerical core: one home for each (private
module, public names; nothing here is re-exported from `scoresde`).

* `bcast`, `batch_time`: per-example coefficients and times against a batch-first x.
* `check_steps`: the one validation of a step count.
* `normal_like`: per-example Gaussian noise from per-example keys.
* `scan_grid`: a fixed-step loop over a time grid as one `lax.scan`.
* `rk_evaluations`: vector-field evaluations of a diffrax Runge-Kutta solve.
* `call_score`, `bind_cond`, `add_batch_axis`, `check_cond`: how conditioning reaches a score function.
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp

from scoresde._checks import check_same_shape
from scoresde._types import Array, PyTree, ScoreFn


def bcast(c, x: Array) -> Array:
    """A per-example coefficient (scalar or shape (batch,)) shaped to broadcast against x:
    c[:, None, ..., None] with x.ndim axes, or c itself when it is a scalar."""
    c = jnp.asarray(c)
    if c.ndim == 0:
        return c
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def batch_time(t, x: Array) -> Array:
    """Time t (a scalar or shape (batch,)) as a (batch,) array in x's dtype, as score
    functions receive it."""
    return jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])


def check_steps(n_steps, name: str = "n_steps", minimum: int = 1) -> None:
    """Raise unless n_steps is an int >= minimum (bool is rejected: True is not a count)."""
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {n_steps!r}.")


def normal_like(keys: Array, x: Array, *idx) -> Array:
    """Standard normal shaped like x; example b uses only keys[b] folded with idx, so a
    batch split over devices draws the same numbers."""

    def one(k):
        for i in idx:
            k = jax.random.fold_in(k, i)
        return jax.random.normal(k, x.shape[1:], x.dtype)

    return jax.vmap(one)(keys)


def scan_grid(step, x0: Array, ts: Array, save_trajectory: bool):
    """x_{i+1} = step(i, x_i, t_i, t_{i+1}) for i = 0..n-1 as one lax.scan over the grid ts.

    Returns (x_n, trajectory (n + 1, B, ...) or None)."""
    n = ts.shape[0] - 1

    def body(x, inp):
        i, t, t_next = inp
        x = step(i, x, t, t_next)
        return x, (x if save_trajectory else None)

    x, ys = jax.lax.scan(body, x0, (jnp.arange(n), ts[:-1], ts[1:]))
    traj = jnp.concatenate([x0[None], ys], 0) if save_trajectory else None
    return x, traj


def rk_evaluations(solver, num_steps, *, name: str = "solver"):
    """Vector-field evaluations of a diffrax solve that attempted `num_steps` steps.

    A Runge-Kutta tableau with s stages costs s per step; with FSAL (first same as last:
    Tsit5, Dopri5, Dopri8, Bosh3) the first stage reuses the previous step's last one, so
    a solve costs 1 + (s - 1) num_steps (checked against a counting callback in the tests).
    A stochastic Runge-Kutta (ShARK, SRA1, SEA: a `tableau` with `c` but no stage count)
    costs len(c) + 1 drift evaluations per step; Euler 1, Heun / EulerHeun 2.
    """
    tab = getattr(solver, "tableau", None)
    if tab is not None and hasattr(tab, "num_stages"):
        s = tab.num_stages
        return (1 + (s - 1) * num_steps) if tab.fsal else s * num_steps
    if tab is not None and hasattr(tab, "c"):
        return (len(tab.c) + 1) * num_steps
    if isinstance(solver, diffrax.Euler):
        return num_steps
    if isinstance(solver, (diffrax.Heun, diffrax.EulerHeun)):
        return 2 * num_steps
    raise TypeError(f"{name} must be a diffrax solver whose evaluations can be counted (an explicit "
                    f"Runge-Kutta such as Tsit5 / Dopri5, a stochastic Runge-Kutta such as ShARK / "
                    f"SRA1 / SEA, Euler or Heun), got {type(solver).__name__}.")


def call_score(score_fn: ScoreFn, x: Array, t: Array, cond: PyTree = None) -> Array:
    """score(x, t) without conditioning, score(x, t, cond) with it."""
    return score_fn(x, t) if cond is None else score_fn(x, t, cond)


def bind_cond(score_fn: ScoreFn, cond: PyTree = None) -> ScoreFn:
    """The two-argument score x, t -> score(x, t, cond) for a whole batch (no slicing)."""
    if cond is None:
        return score_fn
    return lambda x, t: score_fn(x, t, cond)


def add_batch_axis(cond: PyTree) -> PyTree:
    """One example's conditioning (inside a per-example vmap) with a batch axis of one,
    so a batch-first score function can be called on that example alone."""
    if cond is None:
        return None
    return jax.tree_util.tree_map(lambda c: jnp.asarray(c)[None], cond)


def check_score(score_fn: ScoreFn, x: Array, t, cond: PyTree = None, name: str = "x") -> None:
    """Raise unless score_fn maps the batch x, and also its first example alone (with its
    slice of cond), to arrays shaped like its input (shapes only: jax.eval_shape, nothing
    runs). The second check catches a score that closes over batch-shaped arrays: it
    works on the whole batch but breaks where a solver calls it one example at a time."""
    def shape_of(xs, c):
        ts = jax.ShapeDtypeStruct(xs.shape[:1], xs.dtype)
        return jax.eval_shape(lambda x_, t_, c_: call_score(score_fn, x_, jnp.full_like(t_, t), c_), xs, ts, c)

    check_same_shape(shape_of(x, cond), x, "score_fn(x, t)", name)
    if x.shape[0] > 1:
        one = jax.ShapeDtypeStruct((1,) + x.shape[1:], x.dtype)
        c1 = None if cond is None else jax.tree_util.tree_map(lambda c: jnp.asarray(c)[:1], cond)
        out = shape_of(one, c1)
        if out.shape != one.shape:
            raise ValueError(
                f"score_fn returned shape {out.shape} for one example of shape {one.shape} (it works on "
                f"the whole batch {x.shape}): it depends on batch-shaped arrays that it closes over. "
                "Solvers that treat each example on its own (ProbabilityFlowODE, EulerMaruyama with "
                "diffrax, the likelihood) call it one example at a time; pass per-example labels or "
                "measurements as cond= (the score is then called as score(x, t, cond) with each "
                "example's slice).")


def check_cond(cond: PyTree, batch: int, name: str = "cond") -> None:
    """Raise unless every leaf of cond has a leading batch axis of size `batch`."""
    if cond is None:
        return
    for path, leaf in jax.tree_util.tree_leaves_with_path(cond):
        shape = getattr(leaf, "shape", None)
        if shape is None or len(shape) == 0 or shape[0] != batch:
            where = jax.tree_util.keystr(path) or ""
            raise ValueError(
                f"{name}{where} has shape {shape} but the batch has {batch} examples; conditioning "
                f"must carry a leading batch axis (one entry per example: broadcast a shared "
                f"value with jnp.broadcast_to(value, ({batch},) + value.shape)).")

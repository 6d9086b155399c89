"""Pieces shared by the guidance modules (private module, public names; nothing here is
re-exported from `scoresde.guidance`).

* `check_sigma_y`: validation of an observation noise std.
* `scale_at`: a guidance scale that is a constant or a function of t.
* `denoise_vjp`: Tweedie's denoiser x0_hat(x_t) with its vector-Jacobian product.
* `observation`: where the observation y of a batch comes from (cond, or one observation
  bound at construction and broadcast to the batch), with the errors a user meets.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scoresde._checks import concrete_or_none
from scoresde._types import Array, ScoreFn
from scoresde._util import batch_time
from scoresde.guidance.operators import AbstractLinearOperator
from scoresde.parameterization import x0_from_score
from scoresde.sde import AbstractSDE


def check_sigma_y(sigma_y, positive: bool) -> None:
    """Raise unless sigma_y is a scalar >= 0 (> 0 when `positive`); traced values pass."""
    s = concrete_or_none(sigma_y)
    if s is None:
        return
    if s.ndim or not (s >= 0) or (positive and not s > 0):
        need = "> 0" if positive else ">= 0"
        raise ValueError(f"sigma_y must be a scalar {need} (the observation noise std), got {s}.")


def scale_at(scale, t: Array, x: Array) -> Array:
    """A guidance scale at time t (shape (batch,)): the constant itself, or scale(t) when
    it is a function of t (returning a scalar or shape (batch,)), in x's dtype."""
    return jnp.asarray(scale(t) if callable(scale) else scale, x.dtype)


def denoise_vjp(score_fn: ScoreFn, sde: AbstractSDE, x: Array, t):
    """Tweedie's x0_hat(x) = (x + sigma_t^2 s(x, t)) / alpha_t (`parameterization.x0_from_score`)
    at (x, t) with its vector-Jacobian product: (x0_hat, vjp, s(x, t)), one score call.
    vjp(v) returns (J^T v,) with J = d x0_hat / d x (per example: examples are independent)."""
    tb = batch_time(t, x)

    def denoise(v):
        sc = score_fn(v, tb)
        return x0_from_score(sde, v, tb, sc), sc

    x0, vjp, sc = jax.vjp(denoise, x, has_aux=True)
    return x0, vjp, sc


def observation(op: AbstractLinearOperator, bound, cond, x_shape: tuple[int, ...], who: str) -> Array:
    """The observations (B, *obs) of a batch of data of shape x_shape.

    They come either per example through `cond` (shape (B, *obs); a single observation of
    shape obs, without batch axis, is broadcast when the function is called directly), or
    from `bound`, one observation given at construction (shape obs, broadcast to the batch).
    A bound observation with a batch axis is rejected: a batch-shaped closure breaks the
    samplers that solve each example on its own (the diffrax ones).
    """
    want = tuple(op.observation_shape(tuple(x_shape)))
    if cond is not None and bound is not None:
        raise ValueError(f"{who} got the observation twice: y was bound at construction and is also "
                         "passed as cond; pass it one way.")
    if cond is None and bound is None:
        raise ValueError(f"{who} has no observation: pass one observation per example as "
                         f"sample(..., cond=y) with y of shape (batch, *obs) = {want}, or bind one "
                         f"observation for the whole batch with {who}(..., y=y) (shape {want[1:]}).")
    y = jnp.asarray(bound if cond is None else cond)
    if y.shape == want[1:]:
        return jnp.broadcast_to(y, want)
    if cond is None:
        raise ValueError(f"{who}(..., y=...) binds ONE observation for the whole batch, of shape {want[1:]}; "
                         f"got shape {y.shape}. Pass per-example observations as sample(..., cond=y) "
                         f"instead (shape {want}).")
    if y.shape != want:
        raise ValueError(f"y has shape {y.shape} but {type(op).__name__} maps data of shape "
                         f"{tuple(x_shape)} to observations of shape {want}; build y with op.apply(x) "
                         f"(one observation per example) or give one observation of shape {want[1:]}.")
    return y

"""The interface of every exact score in `scoresde.analytic` (private module, public names).

An exact score knows a data law (a Gaussian mixture, the empirical law of a training
set, or the patch-wise laws of the LS / ELS machines) and gives, for any linear SDE
x_t = alpha x_0 + sigma z,

    score(x, t, sde)   = grad_x log p_t(x),
    denoise(x, t, sde) = E[x_0 | x_t = x],

tied by Tweedie's formula (Efron 2011) D = (x + sigma^2 score) / alpha
(`scoresde.parameterization.x0_from_score` / `score_from_x0`, the one home of it).
`score_fn(sde)` and `denoiser(sde)` bind the SDE, giving the functions `score(x, t)` /
`score(x, t, cond)` that samplers, losses and guidance take. Equinox's abstract / final
pattern: abstract classes name the interface, final classes implement each abstract
method once, and no concrete method is overridden.
"""

from __future__ import annotations

import abc
import math
from typing import Callable

import equinox as eqx
import jax.numpy as jnp

from scoresde._checks import check_batched, check_float_data, check_time
from scoresde._types import Array
from scoresde.parameterization import score_from_x0
from scoresde.sde import AbstractSDE


class AbstractExactScore(eqx.Module):
    """An exact score and denoiser of a known data law under any linear SDE.

    Final classes implement `score` and `denoise` (both batch-first, shaped like x; t a
    scalar or of shape (batch,); optional conditioning after the SDE, e.g. a class label
    per example). `score_fn` and `denoiser` are written here once.
    """

    @abc.abstractmethod
    def score(self, x: Array, t: Array, sde: AbstractSDE, *cond) -> Array:
        """grad_x log p_t(x) at x_t = x."""

    @abc.abstractmethod
    def denoise(self, x: Array, t: Array, sde: AbstractSDE, *cond) -> Array:
        """E[x_0 | x_t = x]."""

    def score_fn(self, sde: AbstractSDE) -> Callable:
        """score(x, t[, cond]) with the SDE bound, for samplers, losses and guidance."""
        return lambda x, t, *cond: self.score(x, t, sde, *cond)

    def denoiser(self, sde: AbstractSDE) -> Callable:
        """denoise(x, t[, cond]) with the SDE bound."""
        return lambda x, t, *cond: self.denoise(x, t, sde, *cond)


class AbstractDenoiserScore(AbstractExactScore):
    """An exact score defined by its denoiser D (the training-set posterior means of the
    ideal score and of the LS / ELS machines):

        score(x, t) = -(x - alpha_t D(x, t)) / sigma_t^2      (Tweedie; `score_from_x0`).

    Final classes implement `denoise` only.
    """

    def score(self, x: Array, t: Array, sde: AbstractSDE, *cond) -> Array:
        """score(x, t) = -(x - alpha D(x, t)) / sigma^2 with D = `denoise`."""
        x = jnp.asarray(x)
        return score_from_x0(sde, x, t, self.denoise(x, t, sde, *cond))


def check_example(x, t, sde: AbstractSDE, shape: tuple, *, same_size_ok: bool = False) -> Array:
    """x as a batch-first float array of examples of `shape` (or, with same_size_ok, of
    any shape with as many values), and t in [eps, T] for every example; raises otherwise."""
    x = jnp.asarray(x)
    check_float_data(x, "x")
    check_batched(x, "x")
    if x.shape[1:] != shape and not (same_size_ok and math.prod(x.shape[1:]) == math.prod(shape)):
        raise ValueError(f"x has example shape {x.shape[1:]} but the exact score was built for "
                         f"examples of shape {shape}; pass x of shape (batch, *{shape}).")
    check_time(t, sde, "t", batch=x.shape[0])
    return x


__all__ = ["AbstractExactScore", "AbstractDenoiserScore", "check_example"]

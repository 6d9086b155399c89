"""Variational dequantisation: a small Flax q(u | k) and its training with the score model fixed.

For integer data k (levels in {0, ..., L-1}, cell width w in the data scale), any
density q(u | k) on [0, 1)^D gives the bound (scoresde.likelihood.dequantization, eq. 2)

    log P(k) >= E_q[log p(x) - log q(u | k)] + D log w,   x = a + w (k + u),

and a q fitted to the model's density inside each cell makes it tighter (variational
dequantisation: Ho et al. 2019, "Flow++", Sec. 3.1; Song et al. 2021, "Maximum
Likelihood Training of Score-Based Diffusion Models", Sec. 5).

`DequantizerNet` is a conditional logistic-normal q: given the whole example k, a small
MLP gives a location mu(k) and log-scale log s(k) per value, and

    u = sigmoid(mu + s l),   l ~ Logistic(0, 1),
    log q(u | k) = sum_d [log sigmoid'(l_d) - log s_d - log sigmoid'(mu_d + s_d l_d)],

(change of variables through sigmoid; sigmoid'(a) = sigmoid(a) sigmoid(-a)). Its last
layer starts at zero, so an untrained q is exactly the uniform dequantiser (mu = 0,
s = 1: sigmoid of a standard logistic is U(0, 1)).

`fit_dequantizer` maximises the bound over q's parameters with the score model fixed,
by the reparameterisation gradient

    grad_phi E_q[log p(x) - log q] = E[grad_x log p(x) . dx/dphi] - grad_phi E_q[log q],

where grad_x log p(x) of the probability-flow density at eps is taken to be the model's
score s(x, eps) (exact for an exact score; for a trained network, the score it learned
at eps). One score call per example and step, no ODE solve: cheap. The bound itself
is then evaluated with the ODE (`bits_per_dim_bound(..., dequantizer=...)`), so it is
a valid bound whatever the quality of this training signal.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from scoresde.likelihood import LearnedDequantizer
from scoresde.sde import AbstractSDE


def _log_dsigmoid(a):
    """log sigmoid'(a) = -softplus(a) - softplus(-a)."""
    return -jax.nn.softplus(a) - jax.nn.softplus(-a)


class DequantizerNet(nn.Module):
    """q(u | k): per-value logistic-normal with location and log-scale from an MLP of k.

    Attributes:
      num_levels: L (the levels are fed to the MLP as (k + 1/2) / L * 2 - 1).
      hidden: width of the hidden layers; depth: their number.
    Call: (levels (B, ...) int, noise (B, ...) standard logistic) -> (u (B, ...), log q (B,)).
    """

    num_levels: int
    hidden: int = 256
    depth: int = 2

    @nn.compact
    def __call__(self, levels, noise):
        b, shape = levels.shape[0], levels.shape[1:]
        dim = math.prod(shape)
        h = (levels.reshape(b, dim).astype(jnp.float32) + 0.5) / self.num_levels * 2.0 - 1.0
        for _ in range(self.depth):
            h = nn.silu(nn.Dense(self.hidden)(h))
        out = nn.Dense(2 * dim, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)(h)
        mu, log_s = out[:, :dim], out[:, dim:]
        l = noise.reshape(b, dim)  # noqa: E741
        z = mu + jnp.exp(log_s) * l
        u = jnp.clip(jax.nn.sigmoid(z), 0.0, 1.0 - 2.0**-24)
        logq = jnp.sum(_log_dsigmoid(l) - log_s - _log_dsigmoid(z), axis=-1)
        return u.reshape(levels.shape), logq

    def draw(self, params, keys, levels):
        """(u, log q(u | k)) with example b's noise from keys[b]."""
        noise = jax.vmap(lambda k: jax.random.logistic(k, levels.shape[1:], jnp.float32))(keys)
        return self.apply(params, levels, noise)

    def as_dequantizer(self, params) -> LearnedDequantizer:
        """This q with fixed parameters, for `bits_per_dim_bound(..., dequantizer=...)`."""
        return LearnedDequantizer(lambda keys, levels: self.draw(params, keys, levels))


def fit_dequantizer(
    net: DequantizerNet,
    score_fn: Callable,
    sde: AbstractSDE,
    levels: np.ndarray,
    *,
    key,
    data_range=(-1.0, 1.0),
    steps: int = 500,
    batch: int = 128,
    learning_rate: float = 3e-3,
    params=None,
):
    """Train q(u | k) to maximise E_q[log p_eps(x) - log q(u | k)] with the score model fixed.

    Surrogate objective per example (its gradient is the bound's, module docstring):

        J(phi) = stop_grad(s(x, eps)) . x(phi) - log q(u(phi) | k),   x = a + w (k + u),

    averaged over a random batch of `levels` each step (Adam). Returns (params, history)
    with history the per-step mean of -log q(u | k) (the entropy of q in nats, 0 for the
    uniform start; it falls as q concentrates where the model puts its mass).
    """
    a, b = (float(v) for v in data_range)
    width = (b - a) / net.num_levels
    levels = np.asarray(levels)
    k_init, k_loop = jax.random.split(key)
    if params is None:
        params = net.init(k_init, jnp.asarray(levels[:1]), jnp.zeros(levels[:1].shape, jnp.float32))
    opt = optax.adam(learning_rate)
    state = opt.init(params)
    eps = jnp.asarray(sde.eps, jnp.float32)

    def objective(p, keys, lv):
        u, logq = net.draw(p, keys, lv)
        x = a + width * (lv.astype(jnp.float32) + u)
        s = jax.lax.stop_gradient(score_fn(x, jnp.full(x.shape[:1], eps)))
        return -jnp.mean(jnp.sum((s * x).reshape(x.shape[0], -1), axis=-1) - logq), -jnp.mean(logq)

    @jax.jit
    def step(p, st, k, lv):
        keys = jax.random.split(k, lv.shape[0])
        (_, entropy), grads = jax.value_and_grad(objective, has_aux=True)(p, keys, lv)
        updates, st = opt.update(grads, st, p)
        return optax.apply_updates(p, updates), st, entropy

    rng = np.random.default_rng(int(jax.random.randint(k_loop, (), 0, 2**31 - 1)))
    history = []
    for i in range(steps):
        idx = rng.integers(0, len(levels), size=min(batch, len(levels)))
        params, state, entropy = step(params, state, jax.random.fold_in(k_loop, i), jnp.asarray(levels[idx]))
        history.append(float(entropy))
    return params, np.asarray(history)


__all__ = ["DequantizerNet", "fit_dequantizer"]

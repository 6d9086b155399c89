"""Train state, optimiser and EMA.

The state is a pytree of arrays only (so orbax saves it as it is and pmap replicates
it); the optimiser (an optax GradientTransformation) and the network live outside it
and are passed to `make_train_step`.

Optimiser (as in Song et al. 2021, score_sde `losses.optimization_manager`, with AdamW
as an option; Loshchilov & Hutter 2019):

    g <- g * min(1, c / ||g||_2)                       global-norm clipping at c
    lr(k) = lr * min(1, (k + 1) / warmup)              linear warm-up over `warmup` steps
    Adam(W) update with (b1, b2, eps) and decoupled weight decay wd.

EMA of the parameters with the usual warm-up (TensorFlow's ExponentialMovingAverage
with num_updates; Song et al. 2021 use decay 0.9999 / 0.999):

    d_k = min(decay, (1 + k) / (10 + k)),   ema <- d_k ema + (1 - d_k) params,

so early averages do not remember the random initialisation for thousands of steps.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

Array = jax.Array


@flax.struct.dataclass
class TrainState:
    """step (int32 scalar), params, opt_state, ema_params and the run's PRNG key.

    The key is a raw uint32 key (shape (2,)) so the state checkpoints as plain arrays;
    step k uses fold_in(key, k), so the state never needs to carry a split key forward.
    """

    step: Array
    params: Any
    opt_state: Any
    ema_params: Any
    key: Array


def make_optimizer(learning_rate: float | optax.Schedule, *, warmup_steps: int = 0,
                   grad_clip: float | None = 1.0, weight_decay: float = 0.0, b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """Global-norm clipping, then Adam (weight_decay = 0) or AdamW with linear warm-up.

    lr(k) = learning_rate * min(1, (k + 1) / warmup_steps) (module docstring); the first
    step already moves (lr(0) = lr / warmup_steps), unlike a warm-up that starts at 0.
    `learning_rate` may also be an optax schedule k -> lr(k) (e.g.
    `optax.warmup_cosine_decay_schedule`), used as it is; then warmup_steps must be 0.
    """
    if callable(learning_rate):
        if warmup_steps:
            raise ValueError(f"warmup_steps={warmup_steps} with a schedule as learning_rate: put the "
                             "warm-up into the schedule and pass warmup_steps=0.")
    elif learning_rate <= 0:
        raise ValueError(f"optim.lr must be > 0, got {learning_rate}.")
    if warmup_steps < 0:
        raise ValueError(f"optim.warmup must be >= 0, got {warmup_steps}.")
    if callable(learning_rate):
        schedule = learning_rate
    elif warmup_steps > 0:
        schedule = lambda k: learning_rate * jnp.minimum(1.0, (k + 1.0) / warmup_steps)  # noqa: E731
    else:
        schedule = learning_rate
    parts = []
    if grad_clip is not None and grad_clip > 0:
        parts.append(optax.clip_by_global_norm(grad_clip))
    if weight_decay > 0:
        parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    else:
        parts.append(optax.adam(schedule, b1=b1, b2=b2, eps=eps))
    return optax.chain(*parts)


def ema_decay_at(step, decay: float) -> Array:
    """d_k = min(decay, (1 + k) / (10 + k)) (module docstring)."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema_params, params, step, decay: float):
    """ema <- d_k ema + (1 - d_k) params with the warm-up decay d_k of `ema_decay_at`."""
    d = ema_decay_at(step, decay)
    return jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, ema_params, params)


def init_params(model: nn.Module, key: Array, example_x: Array, example_y: Array | None = None):
    """Initialise a scoresde model (`apply(variables, x, t, y, train)`) on example inputs."""
    k_params, k_drop = jax.random.split(key)
    t = jnp.full(example_x.shape[:1], 0.5, example_x.dtype)
    variables = model.init({"params": k_params, "dropout": k_drop}, example_x, t, example_y, train=False)
    return variables["params"]


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, key: Array,
                       example_x: Array, example_y: Array | None = None) -> TrainState:
    """A fresh TrainState: params from `model.init`, EMA = params, step 0.

    `key` (a raw uint32 key, e.g. jax.random.PRNGKey(seed)) seeds the initialisation
    (fold_in(key, 0)) and the training noise (fold_in(key, 1)).
    """
    key = jnp.asarray(key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    params = init_params(model, jax.random.fold_in(key, 0), example_x, example_y)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=jax.tree_util.tree_map(jnp.copy, params),
                      key=jax.random.fold_in(key, 1))

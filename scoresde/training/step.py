"""The pure train step (single device or pmapped) and the network-to-score adapter.

One step on a global batch x_0 of B examples, with run key K and step k:

    key_k = fold_in(K, k);  (t_i, w_i)_{i<B} = time_sampler(fold_in(key_k, 0), B)
    L(theta) = 1/B sum_i w_i lambda(t_i)/sigma_i^2 || sigma_i s_theta(x_t,i, t_i) + z_i ||^2
    with z_i and the dropout masks of example i drawn from fold_in(fold_in(key_k, 1), i),

then clipped Adam(W) and the EMA (`scoresde.training.state`). All randomness of example
i comes from its GLOBAL index i, and the times are drawn for the whole global batch on
every device, so the data-parallel step -- each of n devices takes B/n examples,
gradients averaged with lax.pmean -- gives the same update as one device on the whole
batch (up to float summation order). The per-example loss is `scoresde.losses.dsm_loss`
vmapped over examples (with the times fixed), so the objective is defined in one place.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from scoresde.losses import AbstractTimeSampler, AbstractWeighting, SimpleWeighting, UniformTime, dsm_loss
from scoresde.parallel import ordered_pmean
from scoresde.parameterization import AbstractParameterization, score_fn_from_network
from scoresde.sde import AbstractSDE
from scoresde.training.state import TrainState, ema_update

Array = jax.Array


def network_score_fn(model: nn.Module, params, sde: AbstractSDE, parameterization: AbstractParameterization,
                     *, train: bool = False, dropout_key: Array | None = None) -> Callable:
    """score(x, t[, y]) of a Flax model through `score_fn_from_network`.

    With train=True the model runs in training mode (dropout, label dropout) with
    rngs={"dropout": dropout_key}; evaluation uses train=False (deterministic).
    """
    rngs = {"dropout": dropout_key} if train else None

    def net(x, t, *cond):
        y = cond[0] if cond else None
        return model.apply({"params": params}, x, t, y, train=train, rngs=rngs)

    return score_fn_from_network(net, sde, parameterization)


def make_train_step(model: nn.Module, sde: AbstractSDE, parameterization: AbstractParameterization,
                    tx: optax.GradientTransformation, *, weighting: AbstractWeighting = SimpleWeighting(),
                    time_sampler: AbstractTimeSampler = UniformTime(), ema_decay: float = 0.999,
                    conditional: bool = False, axis_name: str | None = None,
                    n_devices: int = 1, ordered_mean: bool = False) -> Callable:
    """Return `step(state, batch) -> (state, metrics)` (pure; jit or pmap it).

    batch: {"image": (b, ...) float, "label": (b,) int} -- the whole global batch on one
    device (axis_name=None), or this device's b = B / n_devices slice inside
    `jax.pmap(step, axis_name=axis_name)`, where n_devices counts the devices of ALL
    processes and device i of the pmapped axis holds global rows [i b, (i + 1) b).
    conditional=True feeds the labels to the network. ordered_mean=True averages the
    gradients with `scoresde.parallel.ordered_pmean` (the same bits for every split of
    the n_devices over processes) instead of `lax.pmean`. metrics: loss, grad_norm
    (before clipping), finite (loss and gradients).
    """
    def per_example(params, key_noise, idx, x, t, w, y):
        k = jax.random.fold_in(key_noise, idx)
        k_loss, k_drop = jax.random.split(k)
        score = network_score_fn(model, params, sde, parameterization, train=True, dropout_key=k_drop)
        _, per = dsm_loss(score, sde, k_loss, x[None], weighting=weighting, t=t[None],
                          labels=None if y is None else y[None])
        return w * per[0]

    def loss_fn(params, key, x, y, offset, global_batch):
        b = x.shape[0]
        t_all, w_all = time_sampler(jax.random.fold_in(key, 0), global_batch, sde)
        idx = offset + jnp.arange(b)
        t, w = t_all[idx].astype(x.dtype), w_all[idx].astype(x.dtype)
        per = jax.vmap(per_example, in_axes=(None, None, 0, 0, 0, 0, 0 if y is not None else None))(
            params, jax.random.fold_in(key, 1), idx, x, t, w, y)
        return jnp.mean(per)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        x = batch["image"]
        y = batch.get("label") if conditional else None
        b = x.shape[0]
        if axis_name is None:
            offset, global_batch = 0, b
        else:
            offset, global_batch = jax.lax.axis_index(axis_name) * b, b * n_devices
        key = jax.random.fold_in(state.key, state.step)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, key, x, y, offset, global_batch)
        return apply_gradients(state, loss, grads, tx, ema_decay=ema_decay, axis_name=axis_name,
                               ordered_mean=ordered_mean)

    return step


def apply_gradients(state: TrainState, loss: jax.Array, grads: Any, tx: optax.GradientTransformation, *,
                    ema_decay: float, axis_name: str | None = None,
                    ordered_mean: bool = False) -> tuple[TrainState, dict]:
    """The end of every train step: average `loss` and `grads` over `axis_name` (pmap;
    `ordered_pmean` if ordered_mean), one optimiser update, the EMA, step + 1. Returns
    (new state, {"loss", "grad_norm", "finite"})."""
    if axis_name is not None:
        grads = ordered_pmean(grads, axis_name) if ordered_mean else jax.lax.pmean(grads, axis_name)
        loss = jax.lax.pmean(loss, axis_name)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = ema_update(state.ema_params, params, state.step, ema_decay)
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    return new, {"loss": loss, "grad_norm": grad_norm, "finite": finite}


def make_eval_loss(model: nn.Module, sde: AbstractSDE, parameterization: AbstractParameterization, *,
                   weighting: AbstractWeighting = SimpleWeighting(),
                   time_sampler: AbstractTimeSampler = UniformTime(), conditional: bool = False) -> Callable:
    """`eval_loss(params, key, batch) -> (B,)` per-example DSM losses, deterministic network.

    Used for validation: with `LikelihoodWeighting` and `LikelihoodImportanceTime` the mean
    is Song et al. (2021)'s upper bound on -log p (up to the prior and t->eps terms).
    """
    def eval_loss(params, key, batch):
        x = batch["image"]
        y = batch.get("label") if conditional else None
        score = network_score_fn(model, params, sde, parameterization, train=False)
        return dsm_loss(score, sde, key, x, weighting=weighting, time_sampler=time_sampler, labels=y)[1]

    return eval_loss

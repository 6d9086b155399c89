"""The pure consistency train step (single device or pmapped), the counterpart of
`scoresde.training.make_train_step` for consistency distillation and tuning.

One step on a global batch x_0 of B examples, with run key K and step k:

    key_k = fold_in(K, k);   example i uses fold_in(key_k, i) -> (pair key, dropout key)
    L(theta) = 1/B sum_i w_i d( f_theta(x_t,i, t_i), stopgrad f_theta(x_r,i, r_i) )

(`consistency_loss`, Song et al. 2023 eq. 7 / 10; the target is the student under a
stop-gradient with the SAME dropout mask, as in iCT / ECT, so the loss vanishes as r -> t).
(t_i, r_i, w_i) come from `pairs` at schedule step k + step_offset; x_r is the teacher's
probability-flow ODE step (`teacher_step`, distillation) when `teacher_params` are given,
else alpha_r x_0 + sigma_r z with the same z (consistency training; started from a
diffusion model's weights it is consistency tuning, ECT). The student is the Flax model
through `consistency_fn_from_score`: the same network (and parameterisation) as the
diffusion model, so the diffusion checkpoint is its initialisation. Then clipped Adam(W)
and the EMA, as in `make_train_step`. All randomness of example i comes from its GLOBAL
index, so the data-parallel step equals the one-device step on the whole batch (up to
float summation order).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from scoresde.consistency.function import ConsistencyParameterization, consistency_fn_from_score
from scoresde.consistency.losses import (
    AbstractConsistencyPairs, AbstractDistance, ECTPairs, PseudoHuber, consistency_loss,
)
from scoresde.parameterization import AbstractParameterization
from scoresde.sde import AbstractSDE
from scoresde.training import TrainState, apply_gradients, network_score_fn


def network_consistency_fn(model: nn.Module, params, sde: AbstractSDE, parameterization: AbstractParameterization,
                           consistency: ConsistencyParameterization = ConsistencyParameterization(), *,
                           train: bool = False, dropout_key=None) -> Callable:
    """f(x, t[, y]) of a Flax diffusion network used as a consistency model:
    `consistency_fn_from_score(network_score_fn(...))` (train=True: dropout with dropout_key)."""
    score = network_score_fn(model, params, sde, parameterization, train=train, dropout_key=dropout_key)
    return consistency_fn_from_score(score, sde, consistency)


def make_consistency_train_step(model: nn.Module, sde: AbstractSDE, parameterization: AbstractParameterization,
                                tx: optax.GradientTransformation, *,
                                consistency: ConsistencyParameterization = ConsistencyParameterization(),
                                pairs: AbstractConsistencyPairs = ECTPairs(),
                                distance: AbstractDistance = PseudoHuber(), teacher_params: Any = None,
                                solver: str = "dpm2", substeps: int = 1, step_offset: int = 0,
                                ema_decay: float = 0.999, conditional: bool = False,
                                axis_name: str | None = None, n_devices: int = 1,
                                ordered_mean: bool = False) -> Callable:
    """Return `step(state, batch) -> (state, metrics)` (pure; jit or pmap it), the
    consistency objective of the module docstring with the batch conventions of
    `scoresde.training.make_train_step` (axis_name / n_devices / ordered_mean likewise).

    teacher_params: parameters of the diffusion network (same `model` and
    `parameterization`) whose probability-flow ODE gives x_r (distillation); None:
    consistency training / tuning. step_offset shifts the pairs' schedule (start at a
    later, shorter-interval stage). metrics: loss, grad_norm, finite.
    """
    if not isinstance(step_offset, int) or step_offset < 0:
        raise ValueError(f"step_offset must be an integer >= 0, got {step_offset!r}.")
    teacher = None
    if teacher_params is not None:
        teacher = network_score_fn(model, teacher_params, sde, parameterization, train=False)

    def per_example(params, key, idx, x, y, k):
        k_loss, k_drop = jax.random.split(jax.random.fold_in(key, idx))
        student = network_consistency_fn(model, params, sde, parameterization, consistency, train=True,
                                          dropout_key=k_drop)
        target = network_consistency_fn(model, jax.lax.stop_gradient(params), sde, parameterization,
                                        consistency, train=True, dropout_key=k_drop)
        _, per = consistency_loss(student, target, sde, k_loss, x[None], pairs=pairs, score_fn=teacher,
                                  step=k + step_offset, distance=distance, solver=solver, substeps=substeps,
                                  labels=None if y is None else y[None])
        return per[0]

    def loss_fn(params, key, x, y, offset, k):
        idx = offset + jnp.arange(x.shape[0])
        per = jax.vmap(per_example, in_axes=(None, None, 0, 0, 0 if y is not None else None, None))(
            params, key, idx, x, y, k)
        return jnp.mean(per)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        x = batch["image"]
        y = batch.get("label") if conditional else None
        offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * x.shape[0]
        key = jax.random.fold_in(state.key, state.step)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, key, x, y, offset, state.step)
        return apply_gradients(state, loss, grads, tx, ema_decay=ema_decay, axis_name=axis_name,
                               ordered_mean=ordered_mean)

    return step


__all__ = ["network_consistency_fn", "make_consistency_train_step"]

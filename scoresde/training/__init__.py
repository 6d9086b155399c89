"""Training: state (params, optimiser state, EMA, step, key), the pure train step,
orbax checkpoints and the loop (NaN guard, SIGTERM, TensorBoard, progress bar).

    tx = make_optimizer(2e-4, warmup_steps=500, grad_clip=1.0)
    state = create_train_state(model, tx, jax.random.PRNGKey(0), x_example)
    step = jax.jit(make_train_step(model, sde, EpsPrediction(), tx))
    state = train_loop(state, step, batches, start_step=0, num_steps=10_000, checkpointer=Checkpointer(dir))

Data parallel: `scoresde.parallel.pmap_train_step(make_train_step(..., axis_name="batch",
n_devices=n))` on a replicated state and sharded batches gives the single-device update;
with several processes n counts the devices of all of them, each process feeds its rows
of the global batch, saves and restores go through every process (`Checkpointer`), and
`train_loop(stop_agreement=scoresde.parallel.any_process)` stops them together on a signal.
"""

from scoresde.training.checkpoint import Checkpointer, fingerprint, read_meta
from scoresde.training.loop import MetricWriter, NonFiniteLossError, Preempted, ProgressBar, train_loop
from scoresde.training.state import (
    TrainState,
    create_train_state,
    ema_decay_at,
    ema_update,
    init_params,
    make_optimizer,
)
from scoresde.training.step import apply_gradients, make_eval_loss, make_train_step, network_score_fn

__all__ = [
    "Checkpointer", "MetricWriter", "NonFiniteLossError", "Preempted", "ProgressBar", "TrainState", "apply_gradients",
    "create_train_state", "ema_decay_at", "ema_update", "fingerprint", "init_params", "make_eval_loss",
    "make_optimizer", "make_train_step", "network_score_fn", "read_meta", "train_loop",
]

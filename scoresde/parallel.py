"""The only module that knows about devices: pmap, replication, batch sharding.

Data parallelism follows the classic pmap recipe: a global batch of B examples on
one host is reshaped to (n_local_devices, B / n_local_devices, ...) and a function is
`jax.pmap`-ed over the leading axis. Everything else in scoresde is device-agnostic.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np


def local_device_count() -> int:
    return jax.local_device_count()


def check_divisible(batch_size: int, n_devices: int | None = None, name: str = "batch_size"):
    n = n_devices or jax.local_device_count()
    if batch_size % n:
        raise ValueError(f"{name}={batch_size} is not divisible by the number of local devices "
                         f"({n}); choose a multiple of {n}.")


def shard(tree: Any, n_devices: int | None = None) -> Any:
    """Reshape every leaf from (B, ...) to (n_devices, B / n_devices, ...)."""
    n = n_devices or jax.local_device_count()

    def one(x):
        check_divisible(x.shape[0], n, "leading (batch) dimension")
        return x.reshape((n, x.shape[0] // n) + x.shape[1:])

    return jax.tree_util.tree_map(one, tree)


def unshard(tree: Any) -> Any:
    """Inverse of `shard`: (n_devices, b, ...) -> (n_devices * b, ...)."""
    return jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)


def replicate(tree: Any, n_devices: int | None = None) -> Any:
    """A copy of `tree` per local device: leaves get a leading axis of n_devices copies.

    Host arrays; pmap places slice i on local device i at the first call and keeps its
    outputs there. (`jax.device_put_replicated` is gone in jax 0.10.)
    """
    n = n_devices or jax.local_device_count()
    return jax.tree_util.tree_map(lambda x: np.broadcast_to(np.asarray(x)[None], (n,) + np.shape(x)).copy(), tree)


def unreplicate(tree: Any) -> Any:
    """Take the copy on the first device."""
    return jax.tree_util.tree_map(lambda x: x[0], tree)


def pmap_over_batch(fn: Callable, *, batched_argnums: tuple[int, ...], static_broadcasted_argnums=(),
                    n_devices: int | None = None) -> Callable:
    """Run `fn(*args)` with the arguments in `batched_argnums` split over local devices.

    The batched arguments (pytrees with a leading batch axis) are sharded, the others
    are broadcast to every device, and the outputs (pytrees with a leading batch axis)
    are gathered back to (B, ...). `fn` must treat examples independently, so the
    result equals `fn(*args)` on one device.
    """
    n = n_devices or jax.local_device_count()

    def wrapped(*args):
        in_axes = tuple(0 if i in batched_argnums else None for i in range(len(args)))
        pf = jax.pmap(fn, in_axes=in_axes, static_broadcasted_argnums=static_broadcasted_argnums,
                      devices=jax.local_devices()[:n])
        sharded = [shard(a, n) if i in batched_argnums else a for i, a in enumerate(args)]
        return unshard(pf(*sharded))

    return wrapped


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Multi-host setup: call `jax.distributed.initialize` before any other JAX call.

    On TPU pods and SLURM/Open MPI clusters all arguments may be None (JAX detects
    them); elsewhere pass the coordinator's `host:port`, the number of processes and
    this process's id. Single-process runs skip the call.
    """
    if coordinator_address is None and num_processes in (None, 1):
        return
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)


def process_info() -> tuple[int, int]:
    """(process_index, process_count) for per-host data sharding."""
    return jax.process_index(), jax.process_count()


def to_host(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)


def pmap_train_step(step_fn: Callable, *, axis_name: str = "batch", donate_state: bool = True) -> Callable:
    """Data-parallel `step(state, batch)` over the local devices (added for scoresde.training).

    `step_fn` must average its gradients with `lax.pmean(..., axis_name)`; `state` is
    replicated (`replicate`) and `batch` sharded (`shard`), each device taking its slice
    of the host's global batch. With `donate_state` the input state's buffers are reused.
    """
    return jax.pmap(step_fn, axis_name=axis_name, donate_argnums=(0,) if donate_state else ())


__all__ = ["local_device_count", "check_divisible", "shard", "unshard", "replicate", "unreplicate",
           "pmap_over_batch", "initialize_distributed", "process_info", "to_host", "pmap_train_step"]

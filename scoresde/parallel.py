"""The only module that knows about devices: pmap, replication, batch sharding, multi-host.

Data parallelism follows the classic pmap recipe: a host batch of b examples is
reshaped to (n_local_devices, b / n_local_devices, ...) and a function is
`jax.pmap`-ed over the leading axis. Everything else in scoresde is device-agnostic.

Several processes (hosts) run the same program under JAX's multi-controller runtime
(`jax.distributed`): `initialize_distributed` joins them, after which `jax.pmap` spans
every device of every process. With P processes of n local devices each, process p's
local device d is position p n + d of the pmapped axis (`lax.axis_index`), so a global
batch of B examples is laid out as P host slices of B / P rows, each cut into n device
slices; a `lax.pmean` then averages over all P n devices. On one machine the processes
talk through CPU collectives (gloo, `use_cpu_collectives`); on TPU pods and GPU
clusters through the accelerator's own.

Host-side helpers for evaluation across processes: `process_slice` / `split_work`
give each process its share of a list of work items, `allgather_rows` puts the
per-process results back together on every process, `any_process` agrees on a flag
(e.g. "a SIGTERM arrived here") and `sync` is a barrier. Each is one collective that
every process must call the same number of times, in the same order.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
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
    """Inverse of `shard`: (n_devices, b, ...) -> (n_devices * b, ...).

    An array spread over several devices is copied to the host first (numpy): reshaping
    it on the devices would compile an XLA program with collectives between them, and
    in a multi-process run (gloo CPU collectives) two processes setting those up at once
    can deadlock. Host arrays and single-device arrays are reshaped where they are.
    """
    def one(x):
        if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
            x = np.asarray(x)
        return x.reshape((-1,) + x.shape[2:])

    return jax.tree_util.tree_map(one, tree)


def replicate(tree: Any, n_devices: int | None = None) -> Any:
    """A copy of `tree` per local device: leaves get a leading axis of n_devices copies.

    Host arrays; pmap places slice i on local device i at the first call and keeps its
    outputs there. (`jax.device_put_replicated` is gone in jax 0.10.)
    """
    n = n_devices or jax.local_device_count()
    return jax.tree_util.tree_map(lambda x: np.broadcast_to(np.asarray(x)[None], (n,) + np.shape(x)).copy(), tree)


def unreplicate(tree: Any) -> Any:
    """Take the copy on the first local device.

    The copy is read from this process's first addressable shard, with no computation
    across devices: `x[0]` on an array spread over devices compiles an all-reduce over
    them, which in a multi-process run (gloo CPU collectives) deadlocked a checkpoint
    save (both processes setting up their local collective at once).
    """
    def one(x):
        if isinstance(x, jax.Array):
            local = x.addressable_data(0)
            return local[0] if local.ndim == x.ndim else local
        return x[0]

    return jax.tree_util.tree_map(one, tree)


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


def use_cpu_collectives(implementation: str = "gloo") -> None:
    """Let pmap collectives cross process boundaries on CPU (`jax_cpu_collectives_implementation`).

    Needed for several processes on CPU devices (local multi-process runs and tests);
    call it before `initialize_distributed` and before any computation. It has no
    effect on GPU or TPU devices.
    """
    jax.config.update("jax_cpu_collectives_implementation", implementation)


def _wait_for_port(address: str, timeout_s: float) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"coordinator_address must be 'host:port', got {address!r}.")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=min(2.0, timeout_s)):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ConnectionError(
                    f"could not reach the coordinator at {address} within {timeout_s:g} s ({e}). Start "
                    "process 0 (it runs the coordinator) on that host and port, check the address and "
                    "firewall, or raise the timeout (--init_timeout).") from None
            time.sleep(0.2)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, timeout_s: float = 300.0,
                           auto: bool = False) -> None:
    """Multi-host setup: call `jax.distributed.initialize` before any other JAX call.

    On TPU pods and SLURM/Open MPI clusters all arguments may be None (JAX detects
    them); elsewhere pass the coordinator's `host:port`, the number of processes and
    this process's id; with auto=True and no arguments JAX detects them. Without an
    address and with num_processes None or 1 (and auto=False) the call is skipped.

    Failing to connect never hangs: a process other than 0 first waits at most
    `timeout_s` for the coordinator's port to accept connections and raises a
    ConnectionError naming the address otherwise; then (every process) if the
    processes have not all joined within `timeout_s`, a one-line message goes to stderr
    and the process exits with status 3 (JAX's own timeout would abort with a C++
    stack trace).
    """
    if coordinator_address is None and num_processes in (None, 1) and not auto:
        return
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}.")
    if coordinator_address is not None and process_id not in (None, 0):
        _wait_for_port(coordinator_address, timeout_s)

    def give_up():
        sys.stderr.write(f"error: jax.distributed.initialize did not complete within {timeout_s:g} s "
                         f"(coordinator {coordinator_address or 'auto-detected'}, {num_processes} "
                         f"processes, this is process {process_id}): not every process joined. Start all "
                         "processes with the same coordinator address and --num_processes, or raise "
                         "the timeout (--init_timeout).\n")
        sys.stderr.flush()
        os._exit(3)

    watchdog = threading.Timer(timeout_s, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=int(timeout_s) + 30)
    finally:
        watchdog.cancel()


def process_info() -> tuple[int, int]:
    """(process_index, process_count) for per-host data sharding."""
    return jax.process_index(), jax.process_count()


def global_device_count() -> int:
    """Devices of all processes together (the size of a pmapped axis)."""
    return jax.device_count()


def to_host(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)


def pmap_train_step(step_fn: Callable, *, axis_name: str = "batch", donate_state: bool = True) -> Callable:
    """Data-parallel `step(state, batch)` over all devices of all processes.

    `step_fn` must average its gradients with `lax.pmean(..., axis_name)` (or
    `ordered_pmean`); `state` is replicated over the local devices (`replicate`) and
    `batch` is this host's slice of the global batch, sharded (`shard`). With
    `donate_state` the input state's buffers are reused.
    """
    return jax.pmap(step_fn, axis_name=axis_name, donate_argnums=(0,) if donate_state else ())


def ordered_pmean(tree: Any, axis_name: str) -> Any:
    """Mean over a pmapped axis, summed in device order: (g_0 + g_1 + ... + g_{N-1}) / N.

    `lax.pmean` leaves the summation order to the collective's implementation, which
    differs between one process with N devices and P processes with N / P each (gloo
    across processes), so float32 means differ in the last bits. Gathering every
    device's value (`lax.all_gather`, exact) and reducing the (N, ...) stack on each
    device gives the same bits for every process layout with the same N, at the cost of
    N copies of the tree in each device's memory: for reproducibility checks and small
    models, not for large ones.
    """
    return jax.tree_util.tree_map(lambda x: jnp.mean(jax.lax.all_gather(x, axis_name), axis=0), tree)


def process_slice(n: int, process_index: int | None = None, process_count: int | None = None) -> range:
    """The items of a list of `n` this process handles: a contiguous block, the first
    n mod P processes taking one more (blocks in process order cover 0..n-1 once)."""
    p = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    q, r = divmod(n, count)
    lo = p * q + min(p, r)
    return range(lo, lo + q + (p < r))


def allgather_rows(local: Any) -> Any:
    """Concatenate every process's rows of `local` (a pytree of arrays with a leading axis
    of rows, any number per process) in process order, on every process.

    Two collectives (the row counts, then the rows padded to the largest count), which
    every process must call, in the same order; single-process runs return `local`.
    """
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    leaves = jax.tree_util.tree_leaves(local)
    rows = len(leaves[0]) if leaves else 0
    counts = np.asarray(multihost_utils.process_allgather(np.asarray([rows], np.int64))).reshape(-1)
    size = int(counts.max())

    def pad(x):
        x = np.asarray(x)
        return np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)])

    gathered = multihost_utils.process_allgather(jax.tree_util.tree_map(pad, local))
    return jax.tree_util.tree_map(
        lambda g: np.concatenate([np.asarray(g)[p, :int(c)] for p, c in enumerate(counts)]), gathered)


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is True on any (one collective; False alone when
    single-process, without communicating)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray([bool(flag)]))))


def sync(name: str) -> None:
    """Barrier: return when every process has reached `sync(name)` (no-op single-process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


__all__ = ["local_device_count", "global_device_count", "check_divisible", "shard", "unshard", "replicate",
           "unreplicate", "pmap_over_batch", "use_cpu_collectives", "initialize_distributed",
           "process_info", "to_host", "pmap_train_step", "ordered_pmean", "process_slice",
           "allgather_rows", "any_process", "sync"]

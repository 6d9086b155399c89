"""Checkpoints with orbax: periodic, keep-last-N, atomic, verified on restore.

Layout: `directory/<step>/{state, meta}` written by `orbax.checkpoint.CheckpointManager`.
Atomicity is orbax's: a step is written into `<step>.orbax-checkpoint-tmp...` and
renamed to `<step>` only when complete (`AtomicRenameTemporaryPath`, the default on
local file systems), so a run killed mid-save leaves no directory that looks finished;
leftover tmp directories are never listed as steps and are cleaned on the next start.

Several processes (jax.distributed): every process constructs the Checkpointer and
calls `save` / `restore` with the same steps in the same order (orbax's multi-process
protocol; a save by process 0 alone waits forever for the others, orbax #211). Each
process first checks that its copy of the state has process 0's fingerprint (one
collective; `meta["processes"]` records how many took part), then process 0 writes the
files of the (host, replicated) state and finalises the step, the others take part in
the barriers. The barriers go through the jax.distributed coordination
service (`MultiprocessingOptions.active_processes`), not through device collectives:
a collective barrier issued from orbax's background thread could interleave with the
training step's collectives differently on different processes and deadlock. The
directory must be on a file system all processes see (local disk for processes on
one machine, a shared one across hosts).

`meta` (JSON) holds what a resumed run needs besides the arrays -- the data iterator
position and seed, the best validation value so far -- and a SHA-256 fingerprint of
every array of the state. `restore_latest` walks the steps from newest to oldest and
returns the first one that restores AND matches its fingerprint; a truncated or
corrupted newest checkpoint is moved to `<directory>_corrupted/<step>` with a warning
and the previous one is used.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def fingerprint(tree: Any) -> str:
    """SHA-256 over the dtype, shape and bytes of every leaf (in tree order)."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        a = np.asarray(jax.device_get(leaf))
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class Checkpointer:
    """Thin wrapper around `ocp.CheckpointManager` for a TrainState plus JSON metadata.

    directory: where steps go (created); max_to_keep: the last N steps are kept;
    async_save: orbax writes in a background thread (call `wait` before exiting).
    """

    def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 (or None to keep all), got {max_to_keep}.")
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self._multi = jax.process_count() > 1
        if self._multi:  # barriers through the coordination service (module docstring)
            mp = ocp.options.MultiprocessingOptions(
                primary_host=0, active_processes=set(range(jax.process_count())),
                barrier_sync_key_prefix="scoresde_" + hashlib.sha1(self.directory.encode()).hexdigest()[:12])
            options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=False,
                                                   enable_async_checkpointing=async_save,
                                                   multiprocessing_options=mp)
        else:
            options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                   enable_async_checkpointing=async_save)
        self._mgr = ocp.CheckpointManager(self.directory, item_names=("state", "meta"), options=options)

    def all_steps(self) -> list[int]:
        return sorted((self._mgr.reload(), self._mgr.all_steps())[1])

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, meta: dict | None = None) -> bool:
        """Save `state` (host copy) and `meta` (+ fingerprint) as step `step`."""
        state = jax.device_get(state)
        meta = dict(meta or {})
        meta["fingerprint"] = fingerprint(state)
        meta["step"] = int(step)
        if self._multi:
            meta["processes"] = self._agree(step, meta["fingerprint"])
        return self._mgr.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def _agree(self, step: int, fp: str) -> int:
        """Every process's fingerprint of the state it saves (one collective, on the main
        thread at the same step everywhere): the saved copy is every replica's, not just
        process 0's. Returns the number of processes that took part; raises if a
        replica differs (the processes diverged: nondeterministic input or a bug)."""
        from jax.experimental import multihost_utils

        mine = np.frombuffer(bytes.fromhex(fp), np.uint8)
        every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, mine.size)
        differ = [p for p in range(len(every)) if not np.array_equal(every[p], every[0])]
        if differ:
            raise RuntimeError(f"checkpoint {step} in {self.directory}: the state of process(es) {differ} "
                               "differs from process 0's (the replicas diverged); not saving.")
        return int(len(every))

    def restore(self, step: int, target: Any) -> tuple[Any, dict]:
        """Restore step `step` into the structure of `target`; raise if it does not verify."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, jax.device_get(target))
        out = self._mgr.restore(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        state, meta = out["state"], dict(out["meta"])
        if meta.get("fingerprint") != fingerprint(state):
            raise ValueError(f"checkpoint {step} in {self.directory} does not match its fingerprint "
                             "(corrupted data)")
        return state, meta

    def read_meta(self, step: int) -> dict:
        """The JSON metadata of step `step` (orbax restores the `meta` item only, no arrays)."""
        out = self._mgr.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def latest_meta(self) -> dict | None:
        """The metadata of the newest step, or None if there is no step."""
        step = self.latest_step()
        return None if step is None else self.read_meta(step)

    def restore_latest(self, target: Any) -> tuple[Any, dict] | None:
        """Newest checkpoint that restores and verifies, or None if there is none.

        Broken checkpoints are moved aside to `<directory>_corrupted/` with a warning,
        so later saves at the same step do not collide with them.
        """
        for step in reversed(self.all_steps()):
            try:
                return self.restore(step, target)
            except Exception as e:  # noqa: BLE001 - any failure means "not a good checkpoint"
                warnings.warn(f"checkpoint at step {step} in {self.directory} is unreadable or corrupted "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                              "falling back to the previous checkpoint.", RuntimeWarning, stacklevel=2)
                self._quarantine(step)
        return None

    def _quarantine(self, step: int):
        src = os.path.join(self.directory, str(step))
        dst_dir = self.directory.rstrip("/") + "_corrupted"
        if self._multi and jax.process_index() != 0:  # process 0 moves it; all wait for that
            _barrier(f"quarantine_{step}_{self.directory}")
            self._mgr.reload()
            return
        os.makedirs(dst_dir, exist_ok=True)
        if os.path.exists(src):
            dst = os.path.join(dst_dir, str(step))
            if os.path.exists(dst):
                shutil.rmtree(dst)
            shutil.move(src, dst)
        if self._multi:
            _barrier(f"quarantine_{step}_{self.directory}")
        self._mgr.reload()

    def wait(self):
        """Block until pending asynchronous saves are on disk."""
        self._mgr.wait_until_finished()

    def close(self):
        self._mgr.wait_until_finished()
        self._mgr.close()


def _barrier(name: str):
    from scoresde.parallel import sync

    sync(name)


def read_meta(directory: str, step: int) -> dict:
    """The JSON metadata of a saved step of the Checkpointer in `directory` (no arrays)."""
    ckpt = Checkpointer(directory, async_save=False)
    try:
        return ckpt.read_meta(step)
    finally:
        ckpt.close()

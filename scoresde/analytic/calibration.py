"""Time-dependent patch sizes P(t) for the LS / ELS machines, and their calibration.

Kamb & Ganguli 2025 ("An analytic theory of creativity in convolutional diffusion
models", ICML, Sec. 5) give the machines a patch size that changes with the noise
level: a CNN's effective receptive field shrinks as t -> 0. P(t) is calibrated
against a trained network: along the network's own deterministic trajectory
x_{t_0}, x_{t_1}, ... (t_0 = T > t_1 > ... the times at which the sampler evaluates
the score), for each step i pick

    P_i = argmax_P  median_b  cos( s_P(x_{t_i}^b, t_i), s_net(x_{t_i}^b, t_i) ),

the odd P whose machine score s_P is most aligned with the network score s_net
(cosine similarity of the flattened scores, median over samples b).

Indexing convention (one, used everywhere here): `sizes[i]` is the patch size
calibrated at, and used at, the i-th score evaluation of the sampler, i.e. at time
`times[i]`; no shift. The authors' released code stores the size found for
t = i/n at index i - 1 and reads index i when sampling at t = i/n, so every step
uses the size calibrated one grid point later (one step less noisy) than its own
time. We do not reproduce that off-by-one: calibrating and using the size at the
same (x, t) is what the argmax above asks for, and it leaves no size for a time the
calibration never saw.
"""

from __future__ import annotations

from typing import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from scoresde._types import Array
from scoresde.sde import AbstractSDE


def cosine_similarity(a: Array, b: Array, eps: float = 1e-12) -> Array:
    """Per-example cosine similarity <a, b> / (||a|| ||b||) of batch-first arrays, (B,)."""
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    num = jnp.sum(a * b, axis=-1)
    return num / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), eps)


class PatchSchedule(eqx.Module):
    """P(t) on a sampler's time grid: `sizes[i]` is used at `times[i]` (see module doc).

    times: (n,) the times at which the sampler evaluates the score (any order).
    sizes: n odd integers.
    """

    times: Array
    sizes: tuple = eqx.field(static=True)

    def __init__(self, times, sizes: Sequence[int]):
        times = jnp.asarray(times, jnp.float32).reshape(-1)
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) != times.shape[0]:
            raise ValueError(f"sizes has {len(sizes)} entries but times has {times.shape[0]}; "
                             "give one patch size per sampling step.")
        if any(s < 1 or s % 2 == 0 for s in sizes):
            raise ValueError(f"every patch size must be a positive odd integer, got {sizes}.")
        self.times = times
        self.sizes = sizes

    @property
    def unique_sizes(self) -> tuple:
        return tuple(sorted(set(self.sizes)))

    def step_index(self, t: Array) -> Array:
        """Index i of the grid time nearest to t (scalar t)."""
        return jnp.argmin(jnp.abs(self.times - jnp.asarray(t, self.times.dtype)))

    def size_at(self, t) -> int:
        """P(t) for a concrete scalar t."""
        return self.sizes[int(self.step_index(t))]


def scheduled_score_fn(machines: dict, schedule: PatchSchedule, sde: AbstractSDE) -> Callable:
    """score(x, t) that uses machines[P(t)] (an LS / ELS machine per patch size).

    The size is looked up at the grid time nearest to t and selected with
    `lax.switch`, so the function can be jitted and scanned over by a sampler; a
    (batch,) t is handled per example (then every size is evaluated and selected).
    """
    sizes = schedule.unique_sizes
    missing = [p for p in sizes if p not in machines]
    if missing:
        raise ValueError(f"machines has no entry for patch sizes {missing}; build one machine "
                         f"per size in {sizes}.")
    branch_of_step = jnp.asarray([sizes.index(p) for p in schedule.sizes], jnp.int32)
    branches = [machines[p].score_fn(sde) for p in sizes]

    def score(x, t):
        t = jnp.asarray(t)
        if t.ndim == 0:
            k = branch_of_step[schedule.step_index(t)]
            return jax.lax.switch(k, branches, x, t)

        def one(xi, ti):
            k = branch_of_step[schedule.step_index(ti)]
            return jax.lax.switch(k, branches, xi[None], ti)[0]

        return jax.vmap(one)(x, t)

    return score


def calibrate_patch_sizes(net_score: Callable, machine_score: Callable[[int], Callable],
                          trajectory: Array, times: Array, candidate_sizes: Sequence[int], *,
                          batch_size: int | None = None):
    """Calibrate P(t) against a network (Kamb & Ganguli 2025, Sec. 5).

    Args:
      net_score: score(x, t) of the trained network.
      machine_score: P -> score(x, t) of the machine with patch size P. Pass jitted
        functions (ideally with the machine's arrays as jit arguments, not closed-over
        constants, which XLA would fold at compile time); nothing is jitted here.
      trajectory: (n, B, ...) the network's own states x_{t_i} at which it evaluated
        its score (state before step i of its deterministic sampler).
      times: (n,) the matching times t_i.
      candidate_sizes: odd patch sizes to choose from.
      batch_size: evaluate samples in batches of this size (memory).

    Returns:
      (schedule, cos) with schedule a PatchSchedule (sizes[i] = argmax of the median
      cosine similarity at step i; ties go to the smaller P) and cos an (n, len(sizes))
      NumPy array of the median cosine similarities.
    """
    trajectory = jnp.asarray(trajectory)
    times = jnp.asarray(times).reshape(-1)
    if trajectory.shape[0] != times.shape[0]:
        raise ValueError(f"trajectory has {trajectory.shape[0]} steps but times has "
                         f"{times.shape[0]}; pass one time per saved state.")
    cands = sorted(int(p) for p in candidate_sizes)
    if not cands or any(p < 1 or p % 2 == 0 for p in cands):
        raise ValueError(f"candidate_sizes must be non-empty positive odd integers, got {cands}.")
    b = trajectory.shape[1]
    bs = b if batch_size is None else int(batch_size)
    fns = {p: machine_score(p) for p in cands}
    net = net_score
    med = np.zeros((times.shape[0], len(cands)))
    for i in range(times.shape[0]):
        x, t = trajectory[i], times[i]
        cos = [[] for _ in cands]
        for lo in range(0, b, bs):
            xb = x[lo:lo + bs]
            s_net = net(xb, t)
            for j, p in enumerate(cands):
                cos[j].append(np.asarray(cosine_similarity(fns[p](xb, t), s_net)))
        med[i] = [np.median(np.concatenate(c)) for c in cos]
    sizes = [cands[int(np.argmax(row))] for row in med]
    return PatchSchedule(times, sizes), med

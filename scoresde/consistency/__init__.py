"""Consistency models (Song, Dhariwal, Chen & Sutskever 2023; iCT, Song & Dhariwal 2023;
ECT, Geng et al. 2024) on any linear SDE of `scoresde.sde`:

* `function`: the consistency function f(x_t, t) -> x_eps with f(x, eps) = x built in
  (`ConsistencyParameterization`, `consistency_fn_from_network`);
* `losses`: consistency distillation from any score function (`teacher_step`) and
  consistency training / tuning (`consistency_loss` with `KarrasPairs`, `ICTPairs`,
  `ECTPairs`; `SquaredL2`, `PseudoHuber`);
* `sampler`: `ConsistencySampler`, one-step and multistep sampling through `scoresde.sample`;
* `step`: the pure train step of a Flax network as a consistency model
  (`make_consistency_train_step`, `network_consistency_fn`), used by experiments/train.py.
"""

from scoresde.consistency import function, losses, sampler, step
from scoresde.consistency.function import *  # noqa: F401,F403
from scoresde.consistency.losses import *  # noqa: F401,F403
from scoresde.consistency.sampler import *  # noqa: F401,F403
from scoresde.consistency.step import *  # noqa: F401,F403

__all__ = [*function.__all__, *losses.__all__, *sampler.__all__, *step.__all__]

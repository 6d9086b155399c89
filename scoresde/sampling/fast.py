"""A sampler by budget: `fast(nfe)` returns the fixed-budget sampler that measured best
at that number of score evaluations (experiments/benchmarks/results/samplers.md: paired
RMSE to the exact probability-flow solution on the benchmark's Gaussian mixtures, the
exact score, VP SDE; the digits U-Net section checks the choice on a trained network).

| NFE | recommended | why |
|---|---|---|
| 5 | UniPC bh2, UniP-3 + UniC, log-SNR grid, lower-order final steps | see RECOMMENDED |
| 10, 20, 50 | the same | |

For fewer than 5 or other budgets the entry of the largest tabulated budget not above
nfe is used (the 5 entry below 5). A grid fitted to your own score function
(`fit_grid`) usually does better still at 5-20 evaluations: pass it as `grid=`.
"""

from __future__ import annotations

from typing import Callable, Optional

from scoresde._util import check_steps
from scoresde.sampling.base import AbstractSampler
from scoresde.sampling.grids import AbstractTimeGrid
from scoresde.sampling.multistep import UniPC

# budget -> (factory(nfe, grid or None) -> sampler, one-line description)
RECOMMENDED: dict[int, tuple[Callable, str]] = {
    5: (lambda n, g: UniPC(n) if g is None else UniPC(n, grid=g), "UniPC bh2-3 + UniC, log-SNR grid"),
    10: (lambda n, g: UniPC(n) if g is None else UniPC(n, grid=g), "UniPC bh2-3 + UniC, log-SNR grid"),
    20: (lambda n, g: UniPC(n) if g is None else UniPC(n, grid=g), "UniPC bh2-3 + UniC, log-SNR grid"),
    50: (lambda n, g: UniPC(n) if g is None else UniPC(n, grid=g), "UniPC bh2-3 + UniC, log-SNR grid"),
}


def fast(nfe: int, *, grid: Optional[AbstractTimeGrid] = None) -> AbstractSampler:
    """The recommended deterministic sampler for `nfe` score evaluations (module docstring).

    Every entry spends exactly nfe evaluations (one per step). `grid` replaces the
    sampler's time grid (e.g. a `FittedGrid` fitted for n_steps = nfe).
    """
    check_steps(nfe, "nfe")
    budget = max([b for b in RECOMMENDED if b <= nfe], default=min(RECOMMENDED))
    return RECOMMENDED[budget][0](nfe, grid)


__all__ = ["RECOMMENDED", "fast"]

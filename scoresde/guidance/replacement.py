"""The replacement method: a predictor-corrector sampler with a projection hook.

Song et al. 2021 ("Score-Based Generative Modeling through SDEs", App. I.2 / G) impute the
unobserved part of x by running the unconditional reverse process and, after every step
to time t, overwriting the observed part by a forward-noised observation:

    x <- x - A^+ (A x - y_t),   y_t = alpha_t y + sigma_t A z,  z ~ N(0, I)

(for a mask: x_obs <- alpha_t y + sigma_t z). `ReplacementSampler` is exactly
`scoresde.sampling.PredictorCorrector` with its predictor and corrector wrapped so that
each is followed by that projection (no loop of its own), so every predictor and
corrector of `scoresde.sampling.pc` works here, and `ODEEulerPredictor` runs it on the
probability-flow ODE.
"""

from typing import Optional, Union

import equinox as eqx

from scoresde._types import Array
from scoresde._util import batch_time, check_steps, normal_like
from scoresde.guidance._common import observation
from scoresde.guidance.operators import AbstractLinearOperator
from scoresde.sampling.base import AbstractSampler
from scoresde.sampling.grids import AbstractTimeGrid, UniformTimeGrid
from scoresde.sampling.pc import (AbstractCorrector, AbstractPredictor, NoneCorrector, PredictorCorrector,
                                  ReverseDiffusionPredictor)


class ODEEulerPredictor(AbstractPredictor):
    """Probability-flow Euler step x' = x + (t_next - t) [f x - g^2 s / 2] (deterministic),
    so the replacement method can run on the ODE as well as on the reverse SDE."""

    n_evals = 1

    def step(self, score_fn, sde, keys, x, t, t_next, idx):
        return x + (t_next - t) * sde.ode_drift(score_fn, x, batch_time(t, x))


class _Projection(eqx.Module):
    """x <- op.replace(x, alpha_t y + sigma_t A z): z is drawn from keys folded with
    (i + offset, 2), so the projections after the predictor (offset 0), after the corrector
    (offset n + 1) and at t = T (i = n) never share their noise."""

    op: AbstractLinearOperator
    y: Array
    offset: int = eqx.field(static=True)

    def __call__(self, sde, keys, x, t, i):
        z = normal_like(keys, x, i + self.offset, 2)
        return self.op.replace(x, sde.alpha(t) * self.y + sde.sigma(t) * self.op.apply(z))


class _Projected(AbstractPredictor, AbstractCorrector):
    """A predictor or corrector (`inner`) followed by the projection at the time it ends
    at: t_next after a predictor (at_next=True), t after a corrector (none after a
    corrector that does nothing: there is nothing to re-project)."""

    inner: Union[AbstractPredictor, AbstractCorrector]
    project: _Projection
    at_next: bool = eqx.field(static=True)

    @property
    def n_evals(self):
        return self.inner.n_evals

    def step(self, score_fn, sde, keys, x, t, t_next, idx):
        if not self.at_next and self.inner.n_evals == 0:
            return x
        x = self.inner.step(score_fn, sde, keys, x, t, t_next, idx)
        return self.project(sde, keys, x, t_next if self.at_next else t, idx[0])


class ReplacementSampler(AbstractSampler):
    """The replacement method for noise-free linear observations y = A x, as a sampler:

        res = sample(ReplacementSampler(op, n_steps=200), score, sde, key, x_T, cond=y, denoise=True)
        x = op.replace(res.samples, y)      # observed part = y exactly, if wanted

    At t = T and after every corrector and predictor step (`scoresde.sampling.pc`, or
    `ODEEulerPredictor`), the observed part of x is overwritten by alpha_t y + sigma_t A z
    (module docstring). y: one observation per example through `cond` (shape (B, *obs) =
    op.apply(x)), or one observation for the whole batch bound here (`y=`, shape obs; the
    score is then called without cond). The score drives the predictor and corrector as in
    `PredictorCorrector`; with cond it is called score(x, t, y): for the plain method
    pass the unconditional score ignoring y, `lambda x, t, y: prior(x, t)` (a guided score
    of y gives a hybrid of guidance and replacement). With `sample(..., denoise=True)` the
    last state is denoised by Tweedie's formula (unobserved part = the denoiser's mean);
    `op.replace(x, y)` afterwards sets the observed part to the noise-free y, bit for bit
    for a mask. NFE = n_steps * (predictor.n_evals + corrector.n_evals) (+1 to denoise).

    What it approximates: it samples the unobserved part from the reverse process driven by
    the *unconditional* score at (x_unknown, y_t), with y_t drawn independently of the
    sampled history; this equals p(x_unknown | y) when the observed and unobserved parts are
    independent under the data law (e.g. isotropic Gaussian data), and is biased otherwise
    (the unobserved part only feels y through p_t(x_unknown | x_obs,t = y_t), not through the
    whole observation history; Lugmayr et al. 2022 and Chung et al. 2022 discuss this).
    """

    op: AbstractLinearOperator
    n_steps: int = eqx.field(static=True)
    predictor: AbstractPredictor = ReverseDiffusionPredictor()
    corrector: AbstractCorrector = NoneCorrector()
    grid: AbstractTimeGrid = UniformTimeGrid()
    y: Optional[Array] = None
    order = 1

    def __check_init__(self):
        check_steps(self.n_steps)
        if not isinstance(self.op, AbstractLinearOperator):
            raise TypeError(f"op must be an AbstractLinearOperator (e.g. Inpainting(mask)), got "
                            f"{type(self.op).__name__}.")

    @property
    def evals_per_step(self):
        return self.predictor.n_evals + self.corrector.n_evals

    def run(self, score_fn, sde, keys, x_T, cond, save_trajectory):
        n = self.n_steps
        y = observation(self.op, self.y, cond, x_T.shape, "ReplacementSampler").astype(x_T.dtype)
        after_predictor, after_corrector = _Projection(self.op, y, 0), _Projection(self.op, y, n + 1)
        pc = PredictorCorrector(n, predictor=_Projected(self.predictor, after_predictor, True),
                                corrector=_Projected(self.corrector, after_corrector, False), grid=self.grid)
        x = after_predictor(sde, keys, x_T, self.grid(sde, n, x_T.dtype)[0], n)  # at t = T
        return pc.run(score_fn, sde, keys, x, cond, save_trajectory)

"""Samplers of the reverse process: reverse SDE, probability-flow ODE, predictor-corrector
and few-step solvers, all behind one entry point

    res = sample(sampler, score_fn, sde, key, x_T, cond=None, denoise=False, trajectory=False)

and `fast(nfe)`, the recommended sampler for a budget of score evaluations.

returning SampleResult(samples, nfe, trajectory)."""

from scoresde.sampling.base import AbstractSampler, SampleResult, sample, tweedie_denoise
from scoresde.sampling.grids import AbstractTimeGrid, EDMGrid, LogSNRGrid, UniformTimeGrid
from scoresde.sampling.fitted import FittedGrid, fit_grid
from scoresde.sampling.sde_solvers import EulerMaruyama, ReverseSRK
from scoresde.sampling.ode import ODEEuler, ODEHeun, ProbabilityFlowODE
from scoresde.sampling.pc import (
    AbstractCorrector, AbstractPredictor, AncestralPredictor, EulerMaruyamaPredictor,
    LangevinCorrector, NoneCorrector, NonePredictor, PredictorCorrector, ReverseDiffusionPredictor,
)
from scoresde.sampling.fewstep import DDIM, EDMHeun
from scoresde.sampling.multistep import (
    DEIS, IPNDM, AbstractMultistepSampler, DPMSolverPP, DPMSolverPPUpdate, UniC, UniP, UniPC,
)
from scoresde.sampling.fast import RECOMMENDED, fast
from scoresde.sampling.sde_multistep import SDEDPMSolverPP

__all__ = [
    "AbstractSampler", "SampleResult", "sample", "tweedie_denoise",
    "AbstractTimeGrid", "EDMGrid", "LogSNRGrid", "UniformTimeGrid", "FittedGrid", "fit_grid",
    "EulerMaruyama", "ReverseSRK", "ODEEuler", "ODEHeun", "ProbabilityFlowODE",
    "AbstractCorrector", "AbstractPredictor", "AncestralPredictor", "EulerMaruyamaPredictor",
    "LangevinCorrector", "NoneCorrector", "NonePredictor", "PredictorCorrector",
    "ReverseDiffusionPredictor", "DDIM", "DPMSolverPP", "EDMHeun", "AbstractMultistepSampler",
    "DPMSolverPPUpdate", "UniP", "UniC", "UniPC", "DEIS", "IPNDM", "RECOMMENDED", "fast", "SDEDPMSolverPP",
]

"""Controllable generation: class-conditional / guided scores and linear inverse problems.

Guidance is a score-function combinator: every function returns `score(x, t)`, which
plugs into every sampler of `scoresde.sampling`. The replacement method needs a per-step
hook and has its own sampler loop (`sample_replacement`); so does twisted SMC
(`sample_twisted_smc`), which carries weighted particles.
"""

from scoresde.guidance.conditional import (
    check_labels, cfg_score, classifier_free_guidance, classifier_guided_score, with_labels)
from scoresde.guidance.operators import AbstractLinearOperator, AveragePool, Colorization, Inpainting
from scoresde.guidance.inverse import (
    ODEEulerPredictor, ReplacementSampler, dps_score, pigdm_score, sample_conditional,
    sample_replacement, tweedie_cov_score)
from scoresde.guidance.smc import TwistedSMC, sample_twisted_smc
from scoresde.guidance.exact import (
    exact_posterior, gaussian_condition, mixture_condition, operator_matrix, operator_rows)

__all__ = [
    "check_labels", "cfg_score", "classifier_free_guidance", "classifier_guided_score", "with_labels",
    "AbstractLinearOperator", "AveragePool", "Colorization", "Inpainting",
    "ODEEulerPredictor", "ReplacementSampler", "dps_score", "pigdm_score", "sample_conditional",
    "sample_replacement", "tweedie_cov_score", "TwistedSMC", "sample_twisted_smc",
    "exact_posterior", "gaussian_condition", "mixture_condition", "operator_matrix", "operator_rows",
]

"""Controllable generation: class-conditional / guided scores and linear inverse problems.

Guidance is a score-function combinator: every guided score is `score(x, t, cond)`, with
the labels, guidance weights or observations passed as conditioning, so it plugs into
every sampler of `scoresde.sampling` through `sample(..., cond=...)`. Two methods need more
than a score and are samplers themselves, used the same way: the replacement method
(`ReplacementSampler`, a predictor-corrector with a projection after each step) and
twisted SMC (`TwistedSMC`, weighted particles driven by a twisted score).

Modules: `conditional` (CFG, classifier guidance), `operators` (A x), `inverse` (Pi-GDM,
DPS, Tweedie-covariance scores), `replacement`, `smc`, `exact` (closed-form posteriors).
"""

from scoresde.guidance.conditional import (
    cfg_score, check_labels, classifier_free_guidance, classifier_guided_score)
from scoresde.guidance.operators import AbstractLinearOperator, AveragePool, Colorization, Inpainting
from scoresde.guidance.inverse import (
    AbstractGaussianTwistScore, AbstractTwistedScore, DPSScore, PiGDMScore, TweedieCovScore, TwistTerms,
    dps_score, pigdm_score, tweedie_cov_score)
from scoresde.guidance.replacement import ODEEulerPredictor, ReplacementSampler
from scoresde.guidance.smc import TwistedSMC
from scoresde.guidance.exact import (
    exact_posterior, gaussian_condition, mixture_condition, operator_matrix, operator_rows)

__all__ = [
    "cfg_score", "check_labels", "classifier_free_guidance", "classifier_guided_score",
    "AbstractLinearOperator", "AveragePool", "Colorization", "Inpainting",
    "AbstractGaussianTwistScore", "AbstractTwistedScore", "DPSScore", "PiGDMScore", "TweedieCovScore",
    "TwistTerms", "dps_score", "pigdm_score", "tweedie_cov_score",
    "ODEEulerPredictor", "ReplacementSampler", "TwistedSMC",
    "exact_posterior", "gaussian_condition", "mixture_condition", "operator_matrix", "operator_rows",
]

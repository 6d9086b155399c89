"""Exact scores: Gaussian mixtures (test oracles), the ideal (empirical) score of a
training set, and the local (LS) and equivariant local (ELS) score machines of Kamb &
Ganguli (ICML 2025) with their patch-size schedule. Every one of them is an
`AbstractExactScore`: `score(x, t, sde)`, `denoise(x, t, sde)`, `score_fn(sde)`,
`denoiser(sde)`."""

from scoresde.analytic._base import AbstractDenoiserScore, AbstractExactScore
from scoresde.analytic.gaussian import GaussianMixture
from scoresde.analytic.ideal import IdealScore, ideal_denoiser, ideal_score_fn, subsample
from scoresde.analytic.local import AbstractLocalMachine, ELSMachine, LSMachine, extract_patches
from scoresde.analytic.calibration import (PatchSchedule, calibrate_patch_sizes, cosine_similarity,
                                           scheduled_score_fn)

__all__ = ["AbstractExactScore", "AbstractDenoiserScore", "GaussianMixture", "IdealScore", "ideal_denoiser",
           "ideal_score_fn", "subsample", "AbstractLocalMachine", "ELSMachine", "LSMachine", "extract_patches",
           "PatchSchedule", "calibrate_patch_sizes", "cosine_similarity", "scheduled_score_fn"]

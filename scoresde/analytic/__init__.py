"""Exact scores: Gaussian mixtures (test oracles), ideal (empirical) score, LS/ELS machines."""

from scoresde.analytic.gaussian import GaussianMixture

__all__ = ["GaussianMixture"]

"""Likelihood of score models: the probability-flow ODE log-density (`ode`) and the
bits/dim bounds of integer data under a choice of dequantisation (`dequantization`)."""

from scoresde.likelihood import dequantization, ode
from scoresde.likelihood.dequantization import *  # noqa: F401,F403
from scoresde.likelihood.ode import *  # noqa: F401,F403

__all__ = [*ode.__all__, *dequantization.__all__]

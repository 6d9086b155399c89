"""scoresde: continuous-time score-based generative modelling in JAX.

The numerical core (sde, parameterization, analytic, losses, sampling, likelihood)
takes score functions `score(x, t)` and arrays; it knows nothing of Flax, optax,
files or devices.
"""

from scoresde.sde import AbstractSDE, CosineVPSDE, SubVPSDE, VESDE, VPSDE
from scoresde.parameterization import (
    AbstractParameterization,
    EDMPreconditioning,
    EpsPrediction,
    ScorePrediction,
    VPrediction,
    X0Prediction,
    convert,
    denoiser_from_score,
    score_fn_from_network,
)
from scoresde.analytic import GaussianMixture
from scoresde.losses import (
    AbstractTimeSampler,
    AbstractWeighting,
    AntitheticTime,
    DiscreteTime,
    EDMWeighting,
    LikelihoodImportanceTime,
    LikelihoodWeighting,
    LogNormalTime,
    SimpleWeighting,
    StratifiedTime,
    UniformTime,
    dsm_loss,
)

__version__ = "0.1.0"

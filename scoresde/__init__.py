"""scoresde: continuous-time score-based generative modelling in JAX.

The numerical core (sde, parameterization, analytic, losses, sampling, likelihood)
takes score functions `score(x, t)` and arrays; it knows nothing of Flax, optax,
files or devices, and is re-exported here together with `scoresde.guidance` (guided
sampling, inverse problems). The rest is imported explicitly: `scoresde.models` (Flax
networks), `scoresde.data` (TFDS pipelines), `scoresde.training`, `scoresde.metrics`
and `scoresde.parallel` (the only module that knows about devices).
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
from scoresde.analytic import (
    ELSMachine,
    GaussianMixture,
    IdealScore,
    LSMachine,
    PatchSchedule,
    calibrate_patch_sizes,
    ideal_score_fn,
    scheduled_score_fn,
)
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
from scoresde.sampling import (
    AbstractCorrector,
    AbstractPredictor,
    AbstractSampler,
    AbstractTimeGrid,
    AncestralPredictor,
    DDIM,
    DPMSolverPP,
    EDMGrid,
    EDMHeun,
    EulerMaruyama,
    EulerMaruyamaPredictor,
    LangevinCorrector,
    LogSNRGrid,
    NoneCorrector,
    NonePredictor,
    ODEEuler,
    ODEHeun,
    PredictorCorrector,
    ProbabilityFlowODE,
    ReverseDiffusionPredictor,
    ReverseSRK,
    SampleResult,
    UniformTimeGrid,
    sample,
    tweedie_denoise,
)
from scoresde.likelihood import bits_per_dim, data_bits_per_dim, dequantize, log_likelihood
from scoresde.guidance import (
    AveragePool,
    Colorization,
    Inpainting,
    ReplacementSampler,
    cfg_score,
    classifier_free_guidance,
    classifier_guided_score,
    dps_score,
    exact_posterior,
    pigdm_score,
    sample_conditional,
    sample_replacement,
    tweedie_cov_score,
)

__version__ = "0.1.0"

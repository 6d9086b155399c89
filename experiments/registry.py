"""The one explicit name -> object mapping of the experiments (DESIGN: no registries in
the library). Configs name things; `build_*` turns names into scoresde objects and a
wrong name fails with the option's path and the valid names.
"""

from __future__ import annotations

from typing import Any, Callable

from scoresde import losses, parameterization as param, sde as sde_lib
from scoresde import models, sampling
from scoresde.training import make_optimizer


def _pick(table: dict[str, Callable], name: str, option: str):
    if name not in table:
        raise ValueError(f"config option {option}={name!r} is not valid; valid choices: "
                         f"{', '.join(sorted(table))}.")
    return table[name]


SDES: dict[str, Callable[..., sde_lib.AbstractSDE]] = {
    "vp": sde_lib.VPSDE,
    "subvp": sde_lib.SubVPSDE,
    "ve": sde_lib.VESDE,
    "cosine_vp": sde_lib.CosineVPSDE,
    "flow_matching": sde_lib.FlowMatchingPath,
}
MODELS: dict[str, Callable[..., Any]] = {"mlp": models.MLP, "unet": models.UNet, "local_resnet": models.LocalResNet}
PARAMETERIZATIONS = {
    "eps": param.EpsPrediction, "score": param.ScorePrediction, "x0": param.X0Prediction,
    "v": param.VPrediction, "edm": param.EDMPreconditioning, "velocity": param.VelocityPrediction,
}
WEIGHTINGS = {"simple": losses.SimpleWeighting, "likelihood": losses.LikelihoodWeighting,
              "edm": losses.EDMWeighting, "flow_matching": losses.FlowMatchingWeighting}
TIME_SAMPLERS = {
    "uniform": losses.UniformTime, "antithetic": losses.AntitheticTime, "stratified": losses.StratifiedTime,
    "likelihood_importance": losses.LikelihoodImportanceTime, "lognormal": losses.LogNormalTime,
    "discrete": losses.DiscreteTime,
}
SAMPLERS = {
    "euler_maruyama": lambda n: sampling.EulerMaruyama(n_steps=n),
    "pc": lambda n: sampling.PredictorCorrector(n_steps=n),
    "ode_heun": lambda n: sampling.ODEHeun(n_steps=n),
    "ode_adaptive": lambda n: sampling.ProbabilityFlowODE(),
    "dpm_solver": lambda n: sampling.DPMSolverPP(n_steps=n),
    "ddim": lambda n: sampling.DDIM(n_steps=n),
    "edm_heun": lambda n: sampling.EDMHeun(n_steps=n),
}


def _kwargs(cfg) -> dict:
    return dict(cfg) if cfg is not None else {}


def build_sde(config) -> sde_lib.AbstractSDE:
    return _pick(SDES, config.sde.name, "sde.name")(**_kwargs(config.sde.get("kwargs")))


def build_model(config, num_classes: int | None = None):
    cls = _pick(MODELS, config.model.name, "model.name")
    kw = _kwargs(config.model.get("kwargs"))
    if config.training.get("conditional", False):
        kw["num_classes"] = num_classes
    return cls(**kw)


def build_parameterization(config):
    return _pick(PARAMETERIZATIONS, config.model.parameterization, "model.parameterization")()


def build_weighting(config):
    return _pick(WEIGHTINGS, config.training.weighting, "training.weighting")()


def build_time_sampler(config):
    return _pick(TIME_SAMPLERS, config.training.time_sampler, "training.time_sampler")()


def build_sampler(config):
    return _pick(SAMPLERS, config.sampling.method, "sampling.method")(config.sampling.n_steps)


def build_optimizer(config):
    """optim.* -> clipped Adam(W) with linear warm-up (`scoresde.training.make_optimizer`)."""
    o = config.optim
    return make_optimizer(o.lr, warmup_steps=o.warmup, grad_clip=o.grad_clip, weight_decay=o.weight_decay,
                          b1=o.get("b1", 0.9), b2=o.get("b2", 0.999), eps=o.get("eps", 1e-8))


def model_input_shape(config, data_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape one example has for the network: MLPs see flattened vectors."""
    if config.model.name == "mlp":
        n = 1
        for s in data_shape:
            n *= s
        return (n,)
    if len(data_shape) != 3:
        raise ValueError(f"config option model.name={config.model.name!r} needs images (H, W, C), but "
                         f"data.dataset={config.data.dataset!r} has examples of shape {data_shape}; "
                         "use model.name='mlp'.")
    return data_shape

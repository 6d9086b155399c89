"""Flax score networks: MLP (vectors), UNet (DDPM++/NCSN++ family), LocalResNet (ELS).

All share one call: `module.apply(variables, x, t, y=None, train=False, rngs=...)`
returning an array shaped like x; they become score functions only through
`scoresde.parameterization.score_fn_from_network`.
"""

from scoresde.models.embeddings import (
    AbstractConditionedNet,
    TimeEmbedding,
    count_params,
    gaussian_fourier_embedding,
    sinusoidal_embedding,
)
from scoresde.models.mlp import MLP
from scoresde.models.resnet import LocalResNet
from scoresde.models.unet import UNet

__all__ = ["AbstractConditionedNet", "LocalResNet", "MLP", "TimeEmbedding", "count_params", "gaussian_fourier_embedding",
           "sinusoidal_embedding", "UNet"]

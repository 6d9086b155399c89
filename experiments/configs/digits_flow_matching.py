"""The main job (digits_unet.py: same U-Net, budget and evaluation) on the flow-matching path
x_t = (1 - t) x_0 + t z (scoresde.FlowMatchingPath, t in [1e-3, 1 - 1e-3]).

Only the SDE changes, so bits/dim and samples compare with the VP model directly. The
likelihood weighting with log-SNR importance times is path-independent (g^2 / sigma^2 =
-d lambda / dt on every linear SDE); the plain flow-matching loss is this objective with
lambda = g^4 / 4 (scoresde.FlowMatchingWeighting), a different weighting over noise levels.
"""

import ml_collections

from experiments.configs.digits_unet import get_config as _unet


def get_config() -> ml_collections.ConfigDict:
    c = _unet()
    c.sde.name = "flow_matching"
    c.sde.kwargs = ml_collections.ConfigDict({"eps": 1e-3, "T": 1.0 - 1e-3})
    return c

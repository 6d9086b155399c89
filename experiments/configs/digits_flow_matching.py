"""The main job (digits_unet.py: same U-Net, budget and evaluation) on the flow-matching path
x_t = (1 - t) x_0 + t z (scoresde.FlowMatchingPath, t in [1e-3, 1 - 1e-3]).

Only the SDE and the sampler change, so bits/dim compares with the likelihood-weighted VP
model (the main job until 2026-12-04; digits_likelihood.py's objective) directly: the
objective stays that likelihood weighting, set here (the main job now trains with EDM's
objective). The likelihood weighting with log-SNR importance times is path-independent (g^2 / sigma^2 =
-d lambda / dt on every linear SDE); the plain flow-matching loss is this objective with
lambda = g^4 / 4 (scoresde.FlowMatchingWeighting), a different weighting over noise levels.

Sampler: DPM-Solver++ (20 steps, + the Tweedie step), not the VP job's 200-step
Euler-Maruyama on uniform t: on this path g^2 = 2t / (1 - t) reaches 2000 at T, so EM's
first steps have g^2 dt ~ 10 and its samples were poor (measured on this config's checkpoint:
FD 153.9, confident ratio 0.55, against DPM-Solver++ 3M at NFE 20: FD 11.4, ratio 0.84;
experiments/benchmarks/results/flow_matching_digits.md).
"""

import ml_collections

from experiments.configs.digits_unet import get_config as _unet
from experiments.configs.digits_vp import likelihood_objective


def get_config() -> ml_collections.ConfigDict:
    c = _unet()
    likelihood_objective(c)  # the objective of flow_matching_digits.md's measurements
    c.sde.name = "flow_matching"
    c.sde.kwargs = ml_collections.ConfigDict({"eps": 1e-3, "T": 1.0 - 1e-3})
    c.sampling.method = "dpm_solver"
    c.sampling.n_steps = 20
    return c

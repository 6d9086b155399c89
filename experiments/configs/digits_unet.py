"""The README's main job: embedded 8x8 digits, VP SDE, a small U-Net on the images.

U-Net (ch 16, ch_mult (1, 2), one residual block per level, no attention, dropout 0.1)
on the MLP config's training setup (digits_vp.py: likelihood weighting, importance-sampled
times, Adam 1e-3), 5000 steps. Checkpoint selection on validation bits/dim every 2500
steps with a looser ODE solve (rtol = atol = 1e-4); the test likelihood uses 1e-5. Sized
for <= 15 min on 2 CPU cores. Measured numbers, timings and the reasons for these
choices: experiments/benchmarks/results/digits_default.md.
"""

import ml_collections

from experiments.configs.digits_vp import get_config as _vp


def get_config() -> ml_collections.ConfigDict:
    c = _vp()
    c.model.name = "unet"
    c.model.kwargs = ml_collections.ConfigDict(
        {"ch": 16, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (), "dropout": 0.1})
    c.training.num_steps = 5000
    c.training.eval_every = 2500
    c.training.save_every = 500
    c.eval.val_metric = "bpd"
    c.eval.val_tol = 1e-4
    c.eval.n_probes = 1
    c.sampling.method = "euler_maruyama"
    c.sampling.n_steps = 200
    return c

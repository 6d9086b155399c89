"""A likelihood-oriented digits config: the main job's U-Net, likelihood weighting, 2.5x longer.

Same U-Net, data and SDE as the main job (digits_unet.py), and the objective the main job
used until 2026-12-04 (it now trains with EDM's objective, for sample quality): the likelihood
weighting lambda(t) = g(t)^2, for which the weighted DSM loss bounds -log p_eps
(Song et al. 2021, "Maximum Likelihood Training of Score-Based Diffusion Models", Thm. 1),
with times drawn from its importance distribution, uniform in log-SNR (ibid. Sec. 5;
Kingma et al. 2021, "Variational Diffusion Models", the variance-reduction argument;
i-DODE, Zheng et al. 2023, Sec. 5), checkpoint selection on validation bits/dim. What
changes is the budget: 12500 steps instead of 5000, validation every 2500. Nothing in
steps 1..5000 depends on num_steps (constant learning rate after the warm-up, same data
stream), so a copy of a workdir of this config's first 5000 steps (the main job's until
2026-12-04) resumed with this config equals this config run from scratch
(experiments/benchmarks/results/likelihood_digits.md, where the run was made that way from
the main job of that time). On that main job's curve (validation 2.058 at 2500, 1.927 at 5000)
bits/dim was still falling when its 15-minute budget ran out.

Slower than the main job (about 2.5x its training time): a separate config, not the default.
The test bits/dim that metrics.json reports is the main job's bound (uniform dequantisation,
one draw, one Hutchinson probe); the variational dequantiser (scoresde.models.dequantizer,
fitted on the training split with this model fixed) and the importance-weighted bound are
evaluated by `python -m experiments.benchmarks.likelihood_digits
--config=experiments/configs/digits_likelihood.py --workdir=...`.
"""

import ml_collections

from experiments.configs.digits_unet import get_config as _unet
from experiments.configs.digits_vp import likelihood_objective


def get_config() -> ml_collections.ConfigDict:
    c = _unet()
    likelihood_objective(c)
    c.training.num_steps = 12500
    c.training.eval_every = 2500
    c.training.save_every = 500
    c.eval.val_metric = "bpd"
    return c

"""Class-conditional U-Net on the embedded digits for classifier-free guidance
(--mode=guided, experiments/guided.py): the main-job U-Net with a label embedding and label
dropout 0.1 (the null label gives the unconditional score from the same network).
Objective: the likelihood weighting (importance-sampled times) that the main job used until
2026-12-04 and experiments/benchmarks/results/guided_digits.md was measured with; the main
job's EDM objective (weighting "edm", time sampler "lognormal") would likely give better
samples here too, but has not been measured for the guided runs.

Selection on the validation DSM loss with the true labels (cheap); no end-of-run
evaluation (--mode=guided evaluates the guided samples).
"""

import ml_collections

from experiments.configs.digits_unet import get_config as _unet
from experiments.configs.digits_vp import likelihood_objective


def get_config() -> ml_collections.ConfigDict:
    c = _unet()
    likelihood_objective(c)
    c.training.conditional = True
    c.model.kwargs.class_dropout = 0.1
    c.eval.val_metric = "loss"
    c.training.eval_every = 1000
    c.training.eval_at_end = False
    return c

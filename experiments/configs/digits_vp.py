"""Embedded 8x8 digits, VP SDE, MLP on flattened 64-D images: the non-convolutional baseline.

An MLP memorises the 1350 training digits, so this config uses dropout 0.5 and selects
the checkpoint on validation bits/dim (ODE), not on the DSM loss, which keeps falling
while bits/dim overfits. Measured numbers (and the dropout comparison behind these
choices): experiments/benchmarks/results/digits_default.md, "Baselines".
"""

import ml_collections

from experiments.configs.default import base


def likelihood_objective(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Set `c`'s objective (in place) to the likelihood weighting lambda = g^2 with its
    importance-sampled times (uniform in log-SNR): the bound on -log p of Song et al. 2021."""
    c.training.weighting = "likelihood"
    c.training.time_sampler = "likelihood_importance"
    return c


def get_config() -> ml_collections.ConfigDict:
    c = base()
    c.data.dataset = "digits"
    c.model.name = "mlp"
    c.model.kwargs = ml_collections.ConfigDict({"width": 512, "depth": 3, "dropout": 0.5})
    c.sde.name = "vp"
    likelihood_objective(c)
    c.training.num_steps = 10000
    c.training.eval_every = 500
    c.training.save_every = 500
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.0
    c.eval.val_metric = "bpd"      # the DSM loss keeps falling while bits/dim overfits
    c.eval.trace = "hutchinson"
    c.eval.n_probes = 1
    c.sampling.method = "euler_maruyama"
    c.sampling.n_steps = 500
    return c

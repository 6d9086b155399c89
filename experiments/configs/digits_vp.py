"""Embedded 8x8 digits, VP SDE, MLP on flattened 64-D images (the README's main job).

Tuned for <= 15 minutes on 2 CPU cores; checkpoint selected on validation bits/dim.
"""

import ml_collections

from experiments.configs.default import base


def get_config() -> ml_collections.ConfigDict:
    c = base()
    c.data.dataset = "digits"
    c.model.name = "mlp"
    c.model.kwargs = ml_collections.ConfigDict({"width": 512, "depth": 3, "dropout": 0.1})
    c.sde.name = "vp"
    c.training.weighting = "likelihood"
    c.training.time_sampler = "likelihood_importance"
    c.training.num_steps = 8000
    c.training.eval_every = 500
    c.training.save_every = 500
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.0
    c.eval.val_metric = "loss"     # likelihood-weighted DSM bound on validation: cheap
    c.eval.trace = "hutchinson"
    c.eval.n_probes = 4
    c.sampling.method = "euler_maruyama"
    c.sampling.n_steps = 500
    return c

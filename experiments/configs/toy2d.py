"""2-D toy data (ring of Gaussians by default; also checkerboard, swiss_roll, moons).

    --config=experiments/configs/toy2d.py            # ring
    --config=experiments/configs/toy2d.py:moons      # another set
Eval reports the test negative log-likelihood (nats) and a scatter-plot PNG.
"""

import ml_collections

from experiments.configs.default import base


def get_config(dataset: str = "ring") -> ml_collections.ConfigDict:
    c = base()
    c.data.dataset = dataset or "ring"
    c.data.batch_size = 256
    c.model.name = "mlp"
    c.model.kwargs = ml_collections.ConfigDict({"width": 128, "depth": 3})
    c.sde.name = "vp"
    c.training.num_steps = 5000
    c.training.eval_every = 1000
    c.training.save_every = 1000
    c.optim.lr = 1e-3
    c.optim.warmup = 200
    c.eval.val_metric = "loss"
    c.eval.trace = "exact"       # D = 2: the exact divergence costs 2 JVPs
    c.eval.max_examples = 2000
    c.eval.n_samples = 2000
    c.sampling.n_steps = 500
    return c

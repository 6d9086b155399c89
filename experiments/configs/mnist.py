"""MNIST 28x28 (TFDS, prepared by the user as array_record), VP SDE, small U-Net.

Needs `tfds build mnist --file_format=array_record` first (no download here). The
test split is for final numbers; checkpoint selection uses the last 10% of train
("train[90%:]"), fitting uses "train[:90%]". Meant for an accelerator.
"""

import ml_collections

from experiments.configs.default import base


def get_config() -> ml_collections.ConfigDict:
    c = base()
    c.data.dataset = "mnist"
    c.data.batch_size = 128
    c.data.train_split = "train[:90%]"
    c.data.val_split = "train[90%:]"
    c.model.name = "unet"
    c.model.kwargs = ml_collections.ConfigDict({"ch": 64, "ch_mult": (1, 2, 2), "num_res_blocks": 2,
                                                "attn_resolutions": (7,), "dropout": 0.1})
    c.sde.name = "vp"
    c.training.num_steps = 200_000
    c.training.save_every = 5000
    c.training.eval_every = 5000
    c.eval.val_metric = "loss"
    c.eval.max_examples = 1000
    c.eval.batch = 250
    c.eval.sample_quality = False
    c.sampling.method = "pc"
    c.sampling.n_steps = 1000
    c.sampling.batch = 250
    return c

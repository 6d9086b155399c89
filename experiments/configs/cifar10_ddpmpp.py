"""CIFAR-10, DDPM++ continuous VP (Song et al. 2021, Table 3 / configs/vp/cifar10_ddpmpp_continuous.py).

For users with accelerators and the TFDS cifar10 files (array_record). As in the paper:
batch 128, Adam lr 2e-4, warm-up 5000, grad clip 1, EMA 0.9999, random flips, eps
prediction with the DDPM (simple) loss, ch 128, ch_mult (1, 2, 2, 2), 4 res blocks per
level (the paper uses 8 for the deep model), attention at 16x16, dropout 0.1,
PC sampler (reverse diffusion + Langevin) with 1000 steps. Selection on the last 2% of
train ("train[98%:]"), never on test.
"""

import ml_collections

from experiments.configs.default import base


def get_config() -> ml_collections.ConfigDict:
    c = base()
    c.data.dataset = "cifar10"
    c.data.batch_size = 128
    c.data.flip = True
    c.data.train_split = "train[:98%]"
    c.data.val_split = "train[98%:]"
    c.model.name = "unet"
    c.model.kwargs = ml_collections.ConfigDict({"ch": 128, "ch_mult": (1, 2, 2, 2), "num_res_blocks": 4,
                                                "attn_resolutions": (16,), "dropout": 0.1,
                                                "embedding": "sinusoidal"})
    c.sde.name = "vp"
    c.training.num_steps = 1_300_000
    c.training.ema_decay = 0.9999
    c.training.save_every = 10_000
    c.training.eval_every = 10_000
    c.training.keep = 3
    c.optim.lr = 2e-4
    c.optim.warmup = 5000
    c.optim.grad_clip = 1.0
    c.eval.val_metric = "loss"
    c.eval.max_examples = 1000
    c.eval.batch = 100
    c.eval.sample_quality = False
    c.eval.n_samples = 1000
    c.sampling.method = "pc"
    c.sampling.n_steps = 1000
    c.sampling.batch = 100
    return c

"""Class-conditional U-Net on the embedded digits for classifier-free guidance
(--mode=guided, experiments/guided.py): the main-job U-Net with a label embedding and label
dropout 0.1 (the null label gives the unconditional score from the same network).

Selection on the validation DSM loss with the true labels (cheap); no end-of-run
evaluation (--mode=guided evaluates the guided samples).
"""

import ml_collections

from experiments.configs.digits_unet import get_config as _unet


def get_config() -> ml_collections.ConfigDict:
    c = _unet()
    c.training.conditional = True
    c.model.kwargs.class_dropout = 0.1
    c.eval.val_metric = "loss"
    c.training.eval_every = 1000
    c.training.eval_at_end = False
    return c

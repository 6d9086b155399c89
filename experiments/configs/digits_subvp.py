"""Embedded digits with the sub-VP SDE (Song et al. 2021, eq. 30); otherwise as digits_vp."""

from experiments.configs.digits_vp import get_config as _vp


def get_config():
    c = _vp()
    c.sde.name = "subvp"
    return c

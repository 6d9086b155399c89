"""Embedded digits with the VE SDE (SMLD; Song et al. 2021). sigma_max ~ the largest
pairwise distance of the [-1,1]-scaled 64-D data (Song & Ermon 2020, technique 1);
score parameterisation as in NCSN, likelihood weighting g^2."""

import ml_collections

from experiments.configs.digits_vp import get_config as _vp


def get_config():
    c = _vp()
    c.sde.name = "ve"
    c.sde.kwargs = ml_collections.ConfigDict({"sigma_min": 0.01, "sigma_max": 20.0})
    return c

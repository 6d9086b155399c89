"""Experiments: configs build, bad config values fail before training with the option and
the valid choices, a tiny 2-D run trains and resumes bitwise with the same command, and
the guided / inverse modes run end to end on a 2-step MLP (a smoke test of their files and
JSON; their numbers on trained U-Nets: experiments/benchmarks/results/guided_digits.md,
the eval mode's: results/digits_default.md). The inverse solvers' correctness is tested
against closed forms in test_guidance.py; here, the reported quantities that the mode
computes itself are checked against independent computations."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from experiments import registry, train
from experiments.configs import (cifar10_ddpmpp, digits_consistency, digits_flow_matching, digits_likelihood,
                                 digits_subvp, digits_unet, digits_unet_cond, digits_ve, digits_vp, mnist, toy2d)
from scoresde import data as data_lib
from scoresde.training import Checkpointer


def _tiny(c, width, steps, save_every):
    """A tiny MLP run of `steps` steps, batch 16, no validation or end-of-run evaluation."""
    c.data.batch_size = 16
    c.model.kwargs.width = width
    c.model.kwargs.depth = 1
    c.training.num_steps = steps
    c.training.save_every = save_every
    c.training.log_every = save_every
    c.training.eval_every = 0
    c.training.eval_at_end = False
    return c


def tiny_toy():
    c = _tiny(toy2d.get_config("ring"), width=16, steps=6, save_every=3)
    c.eval.max_examples = 16
    c.eval.batch = 16
    c.eval.trace = "hutchinson"
    c.eval.rtol = c.eval.atol = 1e-3
    c.eval.n_samples = 32
    c.sampling.n_steps = 10
    c.sampling.batch = 32
    return c


@pytest.mark.parametrize("make", [digits_vp.get_config, digits_subvp.get_config, digits_ve.get_config,
                                  digits_unet.get_config, digits_unet_cond.get_config,
                                  digits_flow_matching.get_config, digits_likelihood.get_config,
                                  lambda: digits_consistency.get_config("tuning"),
                                  lambda: digits_consistency.get_config("distillation"), toy2d.get_config,
                                  mnist.get_config, cifar10_ddpmpp.get_config])
def test_configs_build(make):
    """Every committed config passes build()'s validation (names, batch divisibility, data)."""
    exp = train.build(make())
    assert exp.host_batch % jax.local_device_count() == 0


@pytest.mark.parametrize("option, value, valid", [
    ("sde.name", "vpp", "subvp, ve, vp"),
    ("model.name", "transformer", "local_resnet, mlp, unet"),
    ("model.parameterization", "noise", "edm, eps, score, v, velocity, x0"),
    ("training.weighting", "fancy", "edm, flow_matching, likelihood, simple"),
    ("sampling.method", "magic", "ddim"),
])
def test_unknown_names_fail_listing_choices(tmp_path, option, value, valid):
    c = tiny_toy()
    section, key = option.split(".")
    c[section][key] = value
    with pytest.raises(ValueError, match=f"{option}={value!r}.*valid choices: .*{valid}"):
        train.train_and_evaluate(c, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")  # nothing started


def test_unknown_dataset_and_indivisible_batch_fail_early(tmp_path):
    c = tiny_toy()
    c.data.dataset = "imagenet"
    with pytest.raises(ValueError, match="data.dataset='imagenet'.*valid choices: .*digits"):
        train.train_and_evaluate(c, str(tmp_path))
    c = tiny_toy()
    c.data.batch_size = 15  # 2 forced devices
    with pytest.raises(ValueError, match="data.batch_size=15 .*not divisible by the 2 local devices"):
        train.train_and_evaluate(c, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")


def test_missing_tfds_dataset_fails_before_training(tmp_path):
    c = mnist.get_config()
    c.data.data_dir = str(tmp_path / "no_data")
    with pytest.raises(FileNotFoundError, match="mnist.*tfds build mnist"):
        train.train_and_evaluate(c, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_mlp_on_images_and_unet_on_vectors():
    c = toy2d.get_config()
    c.model.name = "unet"
    c.model.kwargs = {}
    with pytest.raises(ValueError, match="model.name='unet' needs images"):
        train.build(c)
    assert registry.model_input_shape(digits_vp.get_config(), (8, 8, 1)) == (64,)


def _final_state(workdir, exp):
    return Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False).restore_latest(train.init_state(exp))


def test_toy_run_resumes_bitwise(tmp_path):
    c = tiny_toy()
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    train.train_and_evaluate(c, full)                   # 6 steps (pmap over 2 devices)
    c3 = tiny_toy()
    c3.training.num_steps = 3
    train.train_and_evaluate(c3, part)                  # stopped after step 3 ...
    train.train_and_evaluate(c, part)                   # ... same command again: resumes to 6
    exp = train.build(c)
    a, ma = _final_state(full, exp)
    b, mb = _final_state(part, exp)
    assert ma["step"] == mb["step"] == 6 and mb["data_batches"] == 6
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(full, "tb")))


def tiny_digits(conditional: bool):
    c = _tiny(digits_vp.get_config(), width=32, steps=2, save_every=2)
    c.training.conditional = conditional
    if conditional:  # and validation of the conditional DSM loss (true labels) at step 2
        c.model.kwargs.class_dropout = 0.1
        c.training.eval_every = 2
        c.eval.val_metric = "loss"
    c.sampling.n_steps = 4
    c.sampling.batch = 32
    c.guidance.weights = (0.0, 2.0)
    c.guidance.per_class = 2
    c.guidance.n_examples = 12
    c.guidance.smc_particles = 3
    c.guidance.smc_steps = 4
    c.guidance.methods = ("replacement", "pigdm20", "smc")
    return c


def _png_size(png, rows, cols, side=8, scale=4, pad=1):
    """experiments.plots.grid_png's size for a rows x cols grid of side x side images."""
    assert Image.open(png).size == ((cols * (side + pad) + pad) * scale, (rows * (side + pad) + pad) * scale)
    return True


def test_guided_and_inverse_modes(tmp_path):
    """--mode=guided / --mode=inverse end to end on a 2-step MLP (flat inputs): one run of
    each. Checked: the files, rows per weight and method, and what the modes compute
    themselves -- the judge on the true images, the observation baseline's round trip
    through the data's levels, Pi-GDM's data variance and the label-recovery fractions."""
    from experiments import guided

    cond = str(tmp_path / "cond")
    train.train_and_evaluate(tiny_digits(True), cond)
    assert os.listdir(os.path.join(cond, "best")) == ["2"]  # validated and selected

    out = guided.guided(tiny_digits(True), cond)
    assert [r["w"] for r in out["rows"]] == [0.0, 2.0]
    for r in out["rows"]:  # 2 samples per class: a 10 x 2 grid, one row per class
        assert _png_size(r["png"], rows=10, cols=2) and 0.0 <= r["agreement"] <= 1.0 and np.isfinite(r["fd"])
        assert r["agreement"] * 20 == pytest.approx(round(r["agreement"] * 20))  # a fraction of 20 samples
    assert json.load(open(os.path.join(cond, "guided.json"))) == json.loads(json.dumps(out, default=float))

    with pytest.raises(ValueError, match="--mode=guided needs a class-conditional model"):
        guided.guided(tiny_digits(False), cond)
    bad = tiny_digits(True)
    bad.guidance.methods = ("replacement", "magic")
    with pytest.raises(ValueError, match=r"guidance.methods has unknown entries \['magic'\]"):
        guided.inverse(bad, cond)

    # the prior of the inverse problems: the conditional network at the null label
    inv = guided.inverse(tiny_digits(True), cond)
    assert json.load(open(os.path.join(cond, "inverse.json"))) == json.loads(json.dumps(inv, default=float))
    assert inv["n_examples"] == 12
    # Pi-GDM's isotropic prior variance: the mean per-pixel variance of the training digits
    # at their bins' centres (the data scale), computed here independently.
    levels, _ = data_lib.load_arrays("digits", "train")
    centres = (2.0 * (np.asarray(levels, np.float64).reshape(len(levels), -1) + 0.5) / 17 - 1.0)
    assert inv["data_var"] == pytest.approx(centres.var(axis=0).mean(), rel=1e-5)
    for name, n_methods in (("inpaint", 3), ("sr2x", 2)):  # SMC runs on inpainting only
        p = inv["problems"][name]
        assert _png_size(p["png"], rows=2 + n_methods, cols=10) and len(p["rows"]) == 2 + n_methods
        truth, observed = p["rows"][:2]
        assert truth["label_recovery"] > 0.9  # the judge recognises the true test digits
        if name == "inpaint":  # observed pixels shown at their bins' centres map back to the input levels
            assert observed["observed_levels_equal_input"]
        for r in p["rows"]:
            assert r["label_recovery"] * 12 == pytest.approx(round(r["label_recovery"] * 12))

"""The main.py consistency mode end to end on a tiny 2-D MLP (experiments/train.py with a
`consistency` section, experiments/configs/digits_consistency.consistency): a diffusion run,
consistency distillation from its checkpoint and consistency tuning from it, each a few
pmapped steps (2 forced devices) through train_and_evaluate: a stopped-and-restarted
distillation run equals the uninterrupted one bit for bit, evaluation and --mode=sample draw finite samples
of the right shape at 1 and 2 steps, and the trained network keeps the boundary condition
f(x, eps) = x. Bad consistency options fail before any step with the option's path.
Numbers on the digits U-Net: experiments/benchmarks/results/consistency_digits.md."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import train
from experiments.configs import digits_consistency, toy2d
from scoresde.training import Checkpointer


def tiny_diffusion():
    c = toy2d.get_config("ring")
    c.data.batch_size = 16
    c.model.kwargs.width = 16
    c.model.kwargs.depth = 1
    c.training.num_steps = 4
    c.training.save_every = 2
    c.training.log_every = 2
    c.training.eval_every = 0
    c.training.eval_at_end = False
    c.eval.n_samples = 32
    c.sampling.batch = 32
    return c


def tiny_consistency(mode, init_from, steps):
    c = digits_consistency.consistency(tiny_diffusion(), mode, init_from)
    c.training.num_steps = steps
    c.consistency.substeps = 1
    c.consistency.eval_steps = (1, 2)
    c.consistency.pairs.stage_steps = 2  # the ECT gap halves within the run
    c.sampling.n_steps = 2
    return c


def _last(workdir, cfg):
    exp = train.build(cfg)
    return Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False).restore_latest(train.init_state(exp))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("consistency_main")
    teacher = str(root / "teacher")
    train.train_and_evaluate(tiny_diffusion(), teacher)
    out = {"teacher": teacher}
    for mode in ("distillation", "tuning"):
        full, part = str(root / f"{mode}_full"), str(root / f"{mode}_part")
        train.train_and_evaluate(tiny_consistency(mode, teacher, 4), full)     # 4 steps
        if mode == "distillation":  # (the resume path is the same for both modes)
            train.train_and_evaluate(tiny_consistency(mode, teacher, 2), part)     # stopped after 2 ...
            train.train_and_evaluate(tiny_consistency(mode, teacher, 4), part)     # ... same command: resumes
        out[mode] = (full, part)
    return out


def test_resume_is_bitwise_and_starts_from_the_diffusion_checkpoint(runs):
    mode = "distillation"
    full, part = runs[mode]
    cfg = tiny_consistency(mode, runs["teacher"], 4)
    (a, ma), (b, mb) = _last(full, cfg), _last(part, cfg)
    assert ma["step"] == mb["step"] == 4 and mb["data_batches"] == 4
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # the student started as the diffusion model: Adam steps k = 0..3 of lr(k) = 1e-3 (k + 1) / 200
    # move each weight by at most sum_k lr(k) (1 - b1) / sqrt(1 - b2) ~ 3.2 sum_k lr(k) (a random
    # initialisation is ~0.1 away)
    teacher, _, _ = train.load_diffusion_params(train.build(cfg), runs["teacher"])
    diffs = [float(np.max(np.abs(np.asarray(p) - np.asarray(q))))
             for p, q in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(teacher))]
    assert 0.0 < max(diffs) <= 3.2 * 1e-3 * (1 + 2 + 3 + 4) / 200


@pytest.mark.parametrize("mode", ["distillation", "tuning"])
def test_eval_and_sample_modes_and_boundary_condition(runs, mode):
    full, _ = runs[mode]
    cfg = tiny_consistency(mode, runs["teacher"], 4)
    m = train.evaluate(cfg, full)
    with open(os.path.join(full, "metrics.json")) as f:
        assert json.load(f)["steps"].keys() == m["steps"].keys() == {"1", "2"}
    assert m["checkpoint"] == "last" and m["checkpoint_step"] == 4
    assert all(r["finite"] and r["n_samples"] == 32 for r in m["steps"].values())
    two = np.load(os.path.join(full, "samples.npz"))["samples"]
    cfg1 = tiny_consistency(mode, runs["teacher"], 4)
    cfg1.sampling.n_steps = 1
    train.sample(cfg1, full)  # --mode=sample at 1 step, from the same prior noise
    one = np.load(os.path.join(full, "samples.npz"))["samples"]
    assert one.shape == two.shape == (32, 2) and np.all(np.isfinite(one))
    assert not np.allclose(one, two)  # the second step re-noises and maps again
    exp = train.build(cfg)
    params, _, _ = train.load_for_eval(cfg, full, exp)
    f = exp.sample_fn(params)
    x = 3.0 * jax.random.normal(jax.random.key(5), (64, 2))
    np.testing.assert_allclose(np.asarray(f(x, jnp.full((64,), exp.sde.eps))), np.asarray(x), rtol=0, atol=1e-6)
    # away from eps the network acts: f(x, T) is not x (it maps noise to data)
    assert float(jnp.mean(jnp.abs(f(x, jnp.full((64,), exp.sde.T)) - x))) > 0.5


@pytest.mark.parametrize("change, match", [
    (("mode", "magic"), r"consistency.mode='magic' is not valid; valid choices: distillation, tuning, training"),
    (("init_from", ""), r"consistency.init_from is empty"),
    (("distance", "l1"), r"consistency.distance='l1' is not valid; valid choices: l2, pseudo_huber"),
    (("eval_steps", (0, 2)), r"consistency.eval_steps=\(0, 2\) must list step counts >= 1"),
    (("start_u", 0.6), r"consistency.start_u=0.6 must be in \[0, 1\) and below consistency.grid_u=0.5"),
])
def test_bad_consistency_options_fail_before_training(tmp_path, change, match):
    c = tiny_consistency("distillation", str(tmp_path / "nowhere"), 2)
    c.consistency[change[0]] = change[1]
    with pytest.raises(ValueError, match=match):
        train.train_and_evaluate(c, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_missing_diffusion_checkpoint_and_denoise_fail_before_training(tmp_path):
    c = tiny_consistency("tuning", str(tmp_path / "nowhere"), 2)
    with pytest.raises(FileNotFoundError, match="consistency.init_from=.*nowhere.*no checkpoint"):
        train.train_and_evaluate(c, str(tmp_path / "run"))
    c.sampling.denoise = True
    with pytest.raises(ValueError, match="sampling.denoise=True.*set sampling.denoise=False"):
        train.build(c)


def test_config_sampler_grids_with_a_truncated_start():
    """consistency.start_u > 0: the first evaluation at that log-SNR fraction, the second at
    grid_u, the rest evenly spaced after it (the digits tuning config: 0.3 and 0.5); start_u = 0
    keeps the grid that starts at T (FittedGrid([0, grid_u, ..., 1]))."""
    from scoresde.consistency import TruncatedLogSNRGrid
    from scoresde.sampling import FittedGrid

    cs = train.build_consistency(digits_consistency.get_config("tuning"))
    assert (cs.start_u, cs.grid_u, cs.stochastic) == (0.3, 0.5, False)
    for n, fr in ((1, (0.3, 1.0)), (2, (0.3, 0.5, 1.0)), (4, (0.3, 0.5, 0.5 + 0.5 / 3, 0.5 + 1.0 / 3, 1.0))):
        grid = cs.sampler(n).grid
        assert isinstance(grid, TruncatedLogSNRGrid)
        np.testing.assert_allclose(grid.fractions, fr, rtol=1e-12)
    cd = train.build_consistency(digits_consistency.get_config("distillation"))
    assert cd.start_u == 0.0 and isinstance(cd.sampler(2).grid, FittedGrid)
    np.testing.assert_allclose(np.asarray(cd.sampler(2).grid.fractions), [0.0, 0.4, 1.0], rtol=1e-6)

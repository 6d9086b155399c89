"""The creativity experiment (experiments/creativity.py).

End to end once, in process, on a tiny setting: cifar10 (32x32x3) under
tfds.testing.mock_data, a seeded 20-image subset, one 2-step ResNet. Its numbers are
checked against independent computations (numpy correlation and R^2, brute-force nearest
training images); the sampler wiring (DDIM + Tweedie denoiser, the P(t) schedule, the
network -> machine hand-over) is checked against a hand-written DDIM loop on the machines'
own denoisers. (The digits default is the run in experiments/benchmarks/results/creativity.md.)
"""

import json

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import creativity as C
from scoresde.analytic import ELSMachine, IdealScore, PatchSchedule

SETTINGS = dict(dataset="cifar10", max_train=20, nets=("resnet",), n_samples=3, n_steps=2, train_steps=2,
                resnet_channels=8, resnet_layers=2, patch_sizes=(1, 3), calib_samples=2, panel_images=2)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("creativity")
    s = C.Settings(workdir=str(d), results_md=str(d / "c.md"), **SETTINGS)
    with tfds.testing.mock_data(num_examples=50, policy=tfds.testing.MockPolicy.USE_CODE):
        log = C.run(s)
        x_train, _ = C.load_train(s.dataset, s.max_train, s.seed)
    C.write_markdown(s.results_md, log, s, "python -m experiments.creativity (test)")
    return s, log, dict(np.load(d / "resnet_outputs.npz")), x_train


def test_tiny_run_writes_its_files_and_table(tiny_run):
    s, log, out, x_train = tiny_run
    assert json.loads(open(f"{s.workdir}/creativity.json").read())["n_train"] == 20
    assert log["dataset"] == "cifar10" and log["shape"] == [32, 32, 3] and x_train.shape == (20, 32, 32, 3)
    e = log["nets"]["resnet"]
    assert e["boundary"] == "circular" and len(e["schedules"]["ELS"]) == s.n_steps
    assert set(e["schedules"]["ELS"]) <= {1, 3} and set(e["schedules"]["LS"]) <= {1, 3}
    assert out["network"].shape == (3, 32, 32, 3) and out["x_T"].shape == (3, 32, 32, 3)
    text = open(s.results_md).read()
    assert "cifar10 training split (20 images, a seeded subset" in text
    assert "| resnet (circular) | ELS |" in text and "alpha(T) = 0.0125" in text
    # One labelled row per network / machine / nearest training image, 2 images each.
    from PIL import Image
    w, h = Image.open(f"{s.workdir}/resnet_panel.png").size
    assert (w, h) == (60 + (1 + 2 * 33) * 4, (1 + 5 * 33) * 4)


def test_ideal_samples_are_training_images(tiny_run):
    """The ideal score only reproduces training images (Kamb & Ganguli 2025): brute-force
    RMS distance of each ideal sample to its nearest training image ~ 0, while the
    network's samples are far from every training image."""
    _, log, out, x_train = tiny_run
    rms = np.sqrt(((out["ideal"][:, None] - x_train[None]) ** 2).mean(axis=(2, 3, 4)))
    assert rms.min(1).max() < 1e-3 and log["nn_ideal_max"] < 1e-3
    np.testing.assert_allclose(out["nn_ideal"], rms.min(1), atol=1e-5)
    net_rms = np.sqrt(((out["network"][:, None] - x_train[None]) ** 2).mean(axis=(2, 3, 4))).min(1)
    assert net_rms.min() > 0.1
    np.testing.assert_allclose(out["nn_network"], net_rms, rtol=1e-5)


def test_reported_numbers_match_an_independent_computation(tiny_run):
    """corr = numpy's Pearson per image, R^2 = 1 - SS_res/SS_tot and the 'beats ideal'
    fractions, recomputed from the saved outputs."""
    _, log, out, _ = tiny_run
    e = log["nets"]["resnet"]
    net = out["network"].reshape(3, -1)
    corr, r2 = {}, {}
    for m in ("ELS", "LS", "ideal"):
        o = out[m].reshape(3, -1)
        corr[m] = np.array([np.corrcoef(o[i], net[i])[0, 1] for i in range(3)])
        r2[m] = 1 - ((net - o) ** 2).sum(1) / ((net - net.mean(1, keepdims=True)) ** 2).sum(1)
        np.testing.assert_allclose(out[f"corr_{m}"], corr[m], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out[f"r2_{m}"], r2[m], rtol=1e-4, atol=1e-6)
        assert e[m]["corr_median"] == pytest.approx(np.median(corr[m]), rel=1e-4, abs=1e-6)
        assert e[m]["r2_median"] == pytest.approx(np.median(r2[m]), rel=1e-4, abs=1e-6)
    for m in ("ELS", "LS"):
        assert e[m]["beats_ideal_corr"] == np.mean(corr[m] > corr["ideal"])
        assert e[m]["beats_ideal_r2"] == np.mean(r2[m] > r2["ideal"])


# --- the sampler wiring against a hand-written DDIM on the machines' own denoisers -------------
@eqx.filter_jit
def _denoise(machine, sde, x, t):
    return machine.denoise(x, t, sde)


def _reference_ddim(denoisers, sde, x_T, times):
    """x0_i = D_i(x_i, t_i), eps_i = (x_i - alpha_i x0_i) / sigma_i,
    x_{i+1} = alpha_{i+1} x0_i + sigma_{i+1} eps_i; output x0 at the last time (eps)."""
    x = np.asarray(x_T, np.float64)
    for i, t in enumerate(times):
        a, s = float(sde.alpha(t)), float(sde.sigma(t))
        x0 = np.asarray(denoisers[i](jnp.asarray(x, jnp.float32), jnp.float32(t)), np.float64)
        if i + 1 < len(times):
            eps = (x - a * x0) / s
            x = float(sde.alpha(times[i + 1])) * x0 + float(sde.sigma(times[i + 1])) * eps
    return x0


@pytest.fixture(scope="module")
def machines():
    rng = np.random.default_rng(0)
    train = rng.uniform(-1, 1, (12, 6, 6, 1)).astype(np.float32)
    x_T = rng.normal(size=(4, 6, 6, 1)).astype(np.float32)
    return train, jnp.asarray(x_T), {p: ELSMachine(train, p, boundary="circular") for p in (1, 3)}


def test_scheduled_machine_ddim_matches_reference(machines):
    """`ddim(ScheduledScore)` uses the machine of size sizes[i] at times[i] and ends with
    Tweedie's denoiser: equal to the reference loop on the machines' denoisers."""
    _, x_T, els = machines
    sde = C.make_sde()
    times = C.ddim_times(sde, 3)
    assert times.shape == (3,) and times[0] == sde.T and times[-1] == pytest.approx(sde.eps)
    sched = PatchSchedule(times, (3, 1, 1))
    got = np.asarray(C.ddim(C.ScheduledScore(els, sched, sde), sde, x_T, 3)[0])
    want = _reference_ddim([lambda x, t, p=p: _denoise(els[p], sde, x, t) for p in sched.sizes], sde, x_T, times)
    np.testing.assert_allclose(got, want, atol=2e-4)


def test_handover_uses_first_for_k_steps(machines):
    """Hand-over at k = 1 and 2 (the ideal score first, then an ELS machine) and, through
    `MachineScore`, each machine alone (k = 3 and 0): the reference loop with the first
    machine's denoiser for the first k evaluations."""
    train, x_T, els = machines
    sde = C.make_sde()
    times = C.ddim_times(sde, 3)
    ideal = IdealScore(train)
    first, then = C.MachineScore(ideal, sde), C.MachineScore(els[3], sde)
    for k in (0, 1, 2, 3):
        got = np.asarray(C.ddim(C.Handover(first, then, jnp.asarray(times), jnp.asarray(k)), sde, x_T, 3)[0])
        dens = [lambda x, t: _denoise(ideal, sde, x, t)] * k + [lambda x, t: _denoise(els[3], sde, x, t)] * (3 - k)
        np.testing.assert_allclose(got, _reference_ddim(dens, sde, x_T, times), atol=2e-4)
    alone = np.asarray(C.ddim(first, sde, x_T, 3)[0])
    np.testing.assert_allclose(alone, _reference_ddim([lambda x, t: _denoise(ideal, sde, x, t)] * 3, sde, x_T, times),
                               atol=2e-4)

"""Ideal score, LS / ELS machines and the patch-size calibration (scoresde.analytic).

Closed forms and exact identities (Kamb & Ganguli 2025, ICML):
- the ideal score is the score of the mixture (1/N) sum_n N(phi_n, ~0 I);
- LS with a patch covering the whole image (P >= 2 max(H, W) - 1) is the ideal score;
- circular ELS commutes with circular shifts;
- both machines equal a brute-force loop over pixels and patches;
- streaming in chunks does not change the result, and the per-sample running
  maximum survives a batch whose samples lie at very different distances;
- a deterministic sampler driven by the ideal score lands on training images.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from scoresde.analytic import AbstractExactScore, GaussianMixture
from scoresde.analytic.calibration import (PatchSchedule, calibrate_patch_sizes,
                                           cosine_similarity, scheduled_score_fn)
from scoresde.analytic.ideal import IdealScore, ideal_score_fn
from scoresde.analytic.local import ELSMachine, LSMachine, extract_patches
from scoresde.sampling import DDIM, sample
from scoresde.sde import CosineVPSDE, VESDE

SDE = CosineVPSDE()


def _data(seed, n, shape, batch):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n,) + shape), rng.normal(size=(batch,) + shape)


def _brute_local(x, train, a, s, p, kind, boundary="zeros"):
    """Pixel-by-pixel loop over the definitions (module docstring of local.py)."""
    r = p // 2
    mode = "wrap" if boundary == "circular" else "constant"
    tp = np.pad(train, ((0, 0), (r, r), (r, r), (0, 0)), mode=mode)
    xp = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode=mode)
    n, h, w, _ = train.shape
    out = np.zeros(x.shape)
    for b in range(x.shape[0]):
        for i in range(h):
            for j in range(w):
                xpatch = xp[b, i:i + p, j:j + p]
                if kind == "ls":
                    pats, cent = tp[:, i:i + p, j:j + p], train[:, i, j]
                else:
                    pats = np.stack([tp[m, u:u + p, v:v + p] for m in range(n)
                                     for u in range(h) for v in range(w)])
                    cent = pats[:, r, r]
                logit = -((xpatch[None] - a[b] * pats) ** 2).sum((1, 2, 3)) / (2 * s[b] ** 2)
                wgt = np.exp(logit - logit.max())
                out[b, i, j] = wgt @ cent / wgt.sum()
    return out


def test_ideal_score_is_gaussian_mixture_score_with_vanishing_variance():
    with enable_x64(True):
        train, x = _data(0, 9, (4, 3, 2), 5)
        t = jnp.array([0.15, 0.3, 0.5, 0.7, 0.95])
        for sde in (SDE, VESDE(sigma_min=0.5, sigma_max=20.0)):
            gm = GaussianMixture(jnp.full(9, 1 / 9), jnp.asarray(train.reshape(9, -1)),
                                 jnp.broadcast_to(1e-12 * jnp.eye(24), (9, 24, 24)))
            ideal = IdealScore(jnp.asarray(train), chunk_size=4)
            xs = jnp.asarray(x) * sde.sigma(t)[:, None, None, None]
            ref = gm.score(xs.reshape(5, -1), t, sde).reshape(xs.shape)
            got = ideal.score(xs, t, sde)
            np.testing.assert_allclose(got, ref, rtol=1e-7, atol=1e-7 * np.abs(ref).max())
            np.testing.assert_allclose(ideal.denoise(xs, t, sde),
                                       gm.denoise(xs.reshape(5, -1), t, sde).reshape(xs.shape),
                                       rtol=1e-7, atol=1e-8)
            np.testing.assert_allclose(ideal.log_prob(xs, t, sde),
                                       gm.log_prob(xs.reshape(5, -1), t, sde), rtol=1e-9)


def test_chunked_equals_unchunked():
    with enable_x64(True):
        train, x = _data(1, 11, (5, 4, 1), 3)
        train, x = jnp.asarray(train), jnp.asarray(x)
        t = jnp.array([0.2, 0.5, 0.9])
        for chunk in (1, 4):
            np.testing.assert_allclose(IdealScore(train, chunk_size=chunk).score(x, t, SDE),
                                       IdealScore(train, chunk_size=None).score(x, t, SDE),
                                       rtol=1e-11, atol=1e-11)
            np.testing.assert_allclose(LSMachine(train, 3, chunk_size=chunk).denoise(x, t, SDE),
                                       LSMachine(train, 3, chunk_size=None).denoise(x, t, SDE),
                                       rtol=1e-11, atol=1e-11)
        full = ELSMachine(train, 3, chunk_size=None, dedup=False).denoise(x, t, SDE)
        for chunk, dedup in ((7, False), (64, True)):
            got = ELSMachine(train, 3, chunk_size=chunk, dedup=dedup).denoise(x, t, SDE)
            np.testing.assert_allclose(got, full, rtol=1e-10, atol=1e-10)


def test_dedup_merges_identical_patches_with_their_multiplicity():
    # Flat backgrounds give many identical patches; merged ones must weigh as many.
    with enable_x64(True):
        train = np.full((3, 5, 5, 1), -1.0)
        train[:, 2, 2, 0] = [1.0, 0.5, 0.0]
        x = np.random.default_rng(2).normal(size=(2, 5, 5, 1))
        m = ELSMachine(jnp.asarray(train), 3, dedup=True)
        assert m.n_patches < 75
        t = jnp.array([0.4, 0.6])
        a, s = np.asarray(SDE.alpha(t)), np.asarray(SDE.sigma(t))
        np.testing.assert_allclose(m.denoise(jnp.asarray(x), t, SDE),
                                   _brute_local(x, train, a, s, 3, "els"), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind,boundary,p", [("ls", "zeros", 3), ("els", "zeros", 3),
                                             ("els", "circular", 3), ("els", "zeros", 5)])
def test_machines_match_brute_force(kind, boundary, p):
    with enable_x64(True):
        train, x = _data(3, 4, (4, 5, 2), 2)
        t = jnp.array([0.3, 0.7])
        a, s = np.asarray(SDE.alpha(t)), np.asarray(SDE.sigma(t))
        if kind == "ls":
            m = LSMachine(jnp.asarray(train), p, chunk_size=3)
        else:
            m = ELSMachine(jnp.asarray(train), p, boundary=boundary, chunk_size=16)
        ref = _brute_local(x, train, a, s, p, kind, boundary)
        np.testing.assert_allclose(m.denoise(jnp.asarray(x), t, SDE), ref, rtol=1e-10, atol=1e-12)


def test_ls_with_whole_image_patch_is_the_ideal_score():
    with enable_x64(True):
        train, x = _data(4, 6, (4, 5, 1), 3)
        train, x = jnp.asarray(train), jnp.asarray(x)
        t = jnp.array([0.1, 0.5, 0.9])
        ideal = IdealScore(train).score(x, t, SDE)
        for p in (9, 11):  # 2 max(H, W) - 1 = 9
            np.testing.assert_allclose(LSMachine(train, p).score(x, t, SDE), ideal,
                                       rtol=1e-9, atol=1e-9 * np.abs(ideal).max())
        # A smaller patch is a different machine (the identity above is not vacuous).
        assert np.abs(LSMachine(train, 5).score(x, t, SDE) - ideal).max() > 1e-3


def test_circular_els_is_shift_equivariant_and_zero_padding_breaks_it():
    train, x = _data(5, 5, (6, 7, 1), 3)
    train, x = jnp.asarray(train, jnp.float32), jnp.asarray(x, jnp.float32)
    t = 0.5
    circ = ELSMachine(train, 3, boundary="circular")
    zero = ELSMachine(train, 3, boundary="zeros")
    for shift in ((1, 0), (2, 3), (-1, 5)):
        xs = jnp.roll(x, shift, axis=(1, 2))
        np.testing.assert_allclose(circ.score(xs, t, SDE),
                                   jnp.roll(circ.score(x, t, SDE), shift, axis=(1, 2)),
                                   rtol=1e-5, atol=1e-5)
    xs = jnp.roll(x, (2, 3), axis=(1, 2))
    err = jnp.abs(zero.denoise(xs, t, SDE) - jnp.roll(zero.denoise(x, t, SDE), (2, 3), (1, 2)))
    assert float(err.max()) > 1e-2


def test_per_sample_max_does_not_underflow():
    # Sample 0 sits on a training point; sample 1 is far from all of them: its logits are
    # ~ -1e6 below sample 0's, so a batch-shared maximum underflows all of its weights.
    train = np.random.default_rng(6).normal(size=(5, 4, 4, 1))
    t = jnp.asarray(0.25)
    a = float(SDE.alpha(t))
    x = np.stack([a * train[2], a * train[2] + 40.0]).astype(np.float32)
    got = np.asarray(IdealScore(jnp.asarray(train, jnp.float32), chunk_size=2).denoise(
        jnp.asarray(x), t, SDE))
    assert np.all(np.isfinite(got))
    with enable_x64(True):
        ref = np.asarray(IdealScore(jnp.asarray(train), chunk_size=None).denoise(
            jnp.asarray(x, jnp.float64), t, SDE))
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # The shared-maximum computation really does fail on this batch.
    s = float(SDE.sigma(t))
    d = ((x.reshape(2, 1, -1) - a * train.reshape(1, 5, -1).astype(np.float32)) ** 2).sum(-1)
    logit = (-d / (2 * s * s)).astype(np.float32)
    wgt = np.exp(logit - logit.max())
    with np.errstate(invalid="ignore"):
        shared = wgt @ train.reshape(5, -1) / wgt.sum(-1, keepdims=True)
    assert not np.all(np.isfinite(shared[1]))


def test_class_conditional_ideal_score_sums_over_one_class():
    with enable_x64(True):
        train, x = _data(7, 10, (3, 3, 1), 4)
        labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
        y = jnp.array([2, 0, 1, 2])
        t = jnp.array([0.2, 0.4, 0.6, 0.8])
        cond = IdealScore(jnp.asarray(train), train_labels=jnp.asarray(labels), chunk_size=3)
        got = cond.score(jnp.asarray(x), t, SDE, y)
        for b in range(4):
            sub = IdealScore(jnp.asarray(train[labels == int(y[b])]))
            np.testing.assert_allclose(got[b], sub.score(jnp.asarray(x[b:b + 1]), t[b:b + 1], SDE)[0],
                                       rtol=1e-10, atol=1e-10)
        with pytest.raises(ValueError, match="train_labels"):
            IdealScore(jnp.asarray(train)).score(jnp.asarray(x), t, SDE, y)


def test_sampling_with_the_ideal_score_reproduces_training_images():
    rng = np.random.default_rng(8)
    train = jnp.asarray(rng.uniform(-1, 1, size=(12, 6, 6, 1)), jnp.float32)
    x_T = SDE.prior_sample(jax.random.PRNGKey(0), (16, 6, 6, 1))
    score = ideal_score_fn(train, SDE, chunk_size=5)
    out = jax.jit(lambda x: sample(DDIM(30), score, SDE, jax.random.PRNGKey(1), x,
                                   denoise=True).samples)(x_T)
    d = jnp.sqrt(jnp.sum((out[:, None] - train[None]) ** 2, axis=(2, 3, 4)))
    nn = jnp.min(d, axis=1)
    assert float(nn.max()) < 1e-3 * float(jnp.sqrt(jnp.sum(train[0] ** 2)))
    # ... and not always the same one.
    assert len(set(np.asarray(jnp.argmin(d, axis=1)).tolist())) > 3


def test_extract_patches_layout():
    img = np.arange(2 * 3 * 4 * 2, dtype=float).reshape(2, 3, 4, 2)
    pats = extract_patches(img, 3, "zeros").reshape(2, 3, 4, 3, 3, 2)
    np.testing.assert_array_equal(pats[1, 1, 2, 1, 1], img[1, 1, 2])
    np.testing.assert_array_equal(pats[1, 1, 2, 0, 2], img[1, 0, 3])
    np.testing.assert_array_equal(pats[0, 0, 0, 0, 0], 0.0)
    circ = extract_patches(img, 3, "circular").reshape(2, 3, 4, 3, 3, 2)
    np.testing.assert_array_equal(circ[0, 0, 0, 0, 0], img[0, 2, 3])


def test_calibration_recovers_a_known_schedule():
    train, x = _data(9, 6, (6, 6, 1), 6)
    train = jnp.asarray(train, jnp.float32)
    times = jnp.linspace(0.9, 0.2, 4)
    true = PatchSchedule(times, (5, 5, 3, 1))
    machines = {p: ELSMachine(train, p) for p in (1, 3, 5)}
    net = scheduled_score_fn(machines, true, SDE)
    traj = jnp.stack([jnp.asarray(x, jnp.float32) * SDE.sigma(t) for t in times])
    score = jax.jit(lambda m, x, t: m.score(x, t, SDE))
    net_j = jax.jit(net)
    sched, cos = calibrate_patch_sizes(net_j, lambda p: (lambda x, t: score(machines[p], x, t)),
                                       traj, times, (1, 3, 5), batch_size=4)
    assert sched.sizes == true.sizes
    np.testing.assert_allclose(cos[np.arange(4), [2, 2, 1, 0]], 1.0, atol=1e-5)
    assert sched.size_at(0.2) == 1 and sched.size_at(0.88) == 5
    # per-example t selects per example
    tb = jnp.array([0.9, 0.2])
    got = net_j(traj[0, :2], tb)
    np.testing.assert_allclose(got[0], machines[5].score(traj[0, :1], 0.9, SDE)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], machines[1].score(traj[0, 1:2], 0.2, SDE)[0], rtol=1e-5, atol=1e-6)
    # Every entry of the calibration table (not only the matched ones, which are 1 by
    # construction) is the median over samples of the cosine, recomputed here in numpy
    # (scores in the calibration's own batches of 4 and 2, so the compiled calls are reused).
    def scores(f, i):
        return np.concatenate([np.asarray(f(traj[i, lo:lo + 4], times[i]), np.float64).reshape(-1, 36)
                               for lo in (0, 4)])

    for i in range(4):
        s_net = scores(net_j, i)
        for j, p in enumerate((1, 3, 5)):
            s_p = scores(lambda x, t: score(machines[p], x, t), i)
            c = (s_p * s_net).sum(1) / np.sqrt((s_p**2).sum(1) * (s_net**2).sum(1))
            np.testing.assert_allclose(cos[i, j], np.median(c), rtol=1e-5, atol=1e-6)
    assert cos.min() < 0.99  # the other sizes are distinguishable (the argmax is not vacuous)


def test_cosine_similarity_against_numpy():
    """cosine_similarity(a, b)_i = <a_i, b_i> / (||a_i|| ||b_i||) over all but the batch
    axis: known angles (parallel, antiparallel, orthogonal, 60 degrees, any scale) and
    random batches against a float64 numpy computation."""
    a = jnp.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [2.0, 2.0]])
    b = jnp.array([[5.0, 0.0], [-0.1, 0.0], [0.0, 3.0], [0.5 * 7, 0.5 * np.sqrt(3) * 7], [-1.0, 1.0]])
    np.testing.assert_allclose(cosine_similarity(a, b), [1.0, -1.0, 0.0, 0.5, 0.0], atol=1e-6)
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(2, 6, 3, 4, 2))
    y[0] = 3.0 * x[0]  # scaled copies are at cosine 1 whatever the scale
    xf, yf = x.reshape(6, -1), y.reshape(6, -1)
    ref = (xf * yf).sum(1) / np.sqrt((xf**2).sum(1) * (yf**2).sum(1))
    np.testing.assert_allclose(cosine_similarity(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)),
                               ref, rtol=1e-5, atol=1e-6)


def test_every_exact_score_is_one_interface():
    """GaussianMixture, IdealScore, LSMachine and ELSMachine are AbstractExactScores whose
    score and denoiser obey Tweedie's formula D = (x + sigma^2 score) / alpha (written out
    here; LS and ELS share one implementation, checked on ELS); `score_fn(sde)` /
    `denoiser(sde)` bind the SDE and pass conditioning through (class labels y of the
    class-conditional ideal score)."""
    with enable_x64(True):
        train, x = _data(11, 5, (4, 4, 1), 3)
        train, x = jnp.asarray(train), jnp.asarray(x)
        t = jnp.array([0.2, 0.5, 0.8])
        a, s = SDE.alpha(t), SDE.sigma(t)
        gm = GaussianMixture.isotropic(jnp.full(5, 0.2), train.reshape(5, -1), 0.3)
        xf = x.reshape(3, -1)
        np.testing.assert_array_equal(gm.score_fn(SDE)(xf, t), gm.score(xf, t, SDE))
        y = jnp.array([1, 0, 1])
        cond = IdealScore(train, train_labels=jnp.array([0, 1, 0, 1, 1]))
        np.testing.assert_array_equal(cond.score_fn(SDE)(x, t, y), cond.score(x, t, SDE, y))
        cases = [(gm, xf, ()), (cond, x, (y,)), (ELSMachine(train, 3), x, ())]
        assert all(issubclass(c, AbstractExactScore) for c in (GaussianMixture, IdealScore, LSMachine, ELSMachine))
        for m, xx, c in cases:
            score, D = m.score(xx, t, SDE, *c), m.denoiser(SDE)(xx, t, *c)
            ab, sb = (v.reshape((3,) + (1,) * (xx.ndim - 1)) for v in (a, s))
            np.testing.assert_allclose(D, (xx + sb**2 * score) / ab, rtol=1e-9, atol=1e-9)


def test_bad_arguments_fail_clearly():
    train = jnp.zeros((3, 4, 4, 1))
    with pytest.raises(ValueError, match="patch_size"):
        ELSMachine(train, 4)
    with pytest.raises(ValueError, match="boundary"):
        ELSMachine(train, 3, boundary="reflect")
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        LSMachine(jnp.zeros((3, 4, 4)), 3)
    with pytest.raises(TypeError, match="floating"):
        IdealScore(jnp.zeros((3, 4), jnp.int32))
    with pytest.raises(ValueError, match="example shape"):
        ELSMachine(train, 3).score(jnp.zeros((2, 5, 4, 1)), 0.5, SDE)
    with pytest.raises(ValueError, match="sizes"):
        PatchSchedule(jnp.ones(3), (1, 3))

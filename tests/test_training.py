"""Training: pmap == single device, EMA/optimiser formulas, checkpoints (resume bitwise,
corrupted newest -> previous with a warning, atomic tmp dirs ignored), SIGTERM, NaN stop."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde import VPSDE, EpsPrediction, parallel
from scoresde.losses import StratifiedTime
from scoresde.models import MLP
from scoresde.training import (
    Checkpointer, NonFiniteLossError, Preempted, create_train_state, ema_decay_at, ema_update,
    make_optimizer, make_train_step, train_loop,
)

D = 4
MODEL = MLP(width=16, depth=1, emb_dim=8, dropout=0.1)
SDE = VPSDE()


def _batches(seed=0, n=64, bs=8):
    """Deterministic endless batches (stands in for make_iterator, also restartable)."""
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(n, D)).astype(np.float32)
    i = 0
    while True:
        yield {"image": data[(i * bs) % n:(i * bs) % n + bs]}
        i += 1


def _skip(it, k):
    for _ in range(k):
        next(it)
    return it


@pytest.fixture(scope="module")
def setup():
    tx = make_optimizer(1e-2, warmup_steps=2, grad_clip=1.0)
    state = create_train_state(MODEL, tx, jax.random.PRNGKey(0), jnp.zeros((2, D)))
    step = jax.jit(make_train_step(MODEL, SDE, EpsPrediction(), tx, ema_decay=0.99))
    return tx, state, step


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                               jax.tree_util.tree_leaves(b)))


def test_pmap_step_equals_single_device():
    assert jax.local_device_count() == 2
    tx = make_optimizer(1e-3, warmup_steps=2)
    state = create_train_state(MODEL, tx, jax.random.PRNGKey(1), jnp.zeros((2, D)))
    kw = dict(time_sampler=StratifiedTime())  # strata span the GLOBAL batch
    single = jax.jit(make_train_step(MODEL, SDE, EpsPrediction(), tx, **kw))
    multi = parallel.pmap_train_step(make_train_step(MODEL, SDE, EpsPrediction(), tx, axis_name="batch",
                                                     n_devices=2, **kw), donate_state=False)
    a, b = state, parallel.replicate(state, 2)
    it = _batches(bs=16)
    for _ in range(3):
        batch = next(it)
        a, ma = single(a, batch)
        b, mb = multi(b, parallel.shard(batch, 2))
        np.testing.assert_allclose(np.asarray(mb["loss"]), float(ma["loss"]), rtol=1e-5)
    b = parallel.unreplicate(b)
    assert _max_diff(a.params, b.params) < 1e-5
    assert _max_diff(a.ema_params, b.ema_params) < 1e-5
    assert _max_diff(a.params, state.params) > 1e-4  # the steps did move the parameters
    # A different split of the noise (device-local keys) would NOT match: the test can fail.
    assert int(b.step) == 3


def test_ema_warmup_and_update():
    np.testing.assert_allclose(float(ema_decay_at(0, 0.999)), 0.1)
    np.testing.assert_allclose(float(ema_decay_at(90, 0.999)), 91 / 100)
    np.testing.assert_allclose(float(ema_decay_at(10**6, 0.999)), 0.999)
    out = ema_update({"w": jnp.array(2.0)}, {"w": jnp.array(4.0)}, 0, 0.999)
    np.testing.assert_allclose(float(out["w"]), 0.1 * 2 + 0.9 * 4, rtol=1e-6)


def test_optimizer_warmup_first_step_size():
    # Adam's first update is -lr(0) * g / (|g| + eps) = -lr / warmup * sign(g) per coordinate.
    tx = make_optimizer(0.1, warmup_steps=4, grad_clip=None)
    p = {"w": jnp.array([1.0, -2.0])}
    upd, _ = tx.update({"w": jnp.array([3.0, -0.5])}, tx.init(p), p)
    np.testing.assert_allclose(np.asarray(upd["w"]), [-0.025, 0.025], rtol=1e-5)


def test_optimizer_takes_a_schedule():
    # Adam's first two updates are -lr(k) sign(g) (k = 0, 1) with the schedule's lr(k).
    sched = lambda k: 0.1 / (1.0 + k)  # noqa: E731
    tx = make_optimizer(sched, grad_clip=None)
    p, g = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([3.0, -0.5])}
    upd, s = tx.update(g, tx.init(p), p)
    np.testing.assert_allclose(np.asarray(upd["w"]), [-0.1, 0.1], rtol=1e-5)
    upd, _ = tx.update(g, s, p)
    np.testing.assert_allclose(np.asarray(upd["w"]), [-0.05, 0.05], rtol=1e-4)  # float32 bias corrections
    with pytest.raises(ValueError, match="warmup_steps=3 with a schedule"):
        make_optimizer(sched, warmup_steps=3)


def test_loss_history_and_checkpoint_meta(setup, tmp_path):
    """The writer keeps every logged scalar; a checkpoint's metadata reads back (orbax) without
    its arrays, for the newest step and any other."""
    from scoresde.training import MetricWriter, read_meta

    _, state0, step = setup
    writer = MetricWriter(None, stdout=False)
    ck = Checkpointer(str(tmp_path), async_save=False)
    assert ck.latest_meta() is None
    train_loop(state0, step, _batches(), start_step=0, num_steps=5, checkpointer=ck, save_every=2,
               meta_fn=lambda s: {"data_batches": s}, writer=writer, log_every=2, progress=False)
    assert [k for k, _ in writer.history["train/loss"]] == [2, 4, 5]
    assert all(np.isfinite(v) for _, v in writer.history["train/loss"])
    assert ck.latest_meta()["data_batches"] == 5 and ck.read_meta(2)["step"] == 2
    assert read_meta(str(tmp_path), 4)["data_batches"] == 4


def _run(state, step, ckdir, start, num_steps, save_every=2, hooks=()):
    ck = Checkpointer(ckdir, max_to_keep=3, async_save=False)
    if start is None:  # restart: newest good checkpoint + data position
        state, meta = ck.restore_latest(state)
        start = int(meta["data_batches"])
    out = train_loop(state, step, _skip(_batches(), start), start_step=start, num_steps=num_steps,
                     checkpointer=ck, save_every=save_every, meta_fn=lambda s: {"data_batches": s},
                     log_every=1000, hooks=hooks, progress=False)
    ck.close()
    return out


def test_resume_is_bitwise_equal_and_corrupt_newest_falls_back(setup, tmp_path):
    _, state0, step = setup
    full = _run(state0, step, str(tmp_path / "full"), 0, 8)
    ck = str(tmp_path / "resumed")
    _run(state0, step, ck, 0, 5)                 # "killed" after step 5: last checkpoint at 5 (end save)
    resumed = _run(state0, step, ck, None, 8)    # restart from the newest checkpoint
    assert int(resumed.step) == 8
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # Corrupt the newest checkpoint (8): truncate its array data -> warning, step 6 is used.
    c = Checkpointer(ck, max_to_keep=3, async_save=False)
    assert c.all_steps() == [5, 6, 8]
    for root, _, files in os.walk(os.path.join(ck, "8", "state")):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "r+b") as fh:
                fh.truncate(max(os.path.getsize(p) // 2, 1))
    with pytest.warns(RuntimeWarning, match="step 8"):
        st, meta = c.restore_latest(state0)
    assert meta["step"] == 6 and int(st.step) == 6
    assert c.all_steps() == [5, 6]  # the broken one was moved aside
    # A leftover orbax tmp dir (a save killed mid-write) is not a step.
    os.makedirs(os.path.join(ck, "9.orbax-checkpoint-tmp-123"))
    assert Checkpointer(ck, async_save=False).latest_step() == 6


def test_corrupted_values_detected_by_fingerprint(setup, tmp_path):
    _, state0, step = setup
    c = Checkpointer(str(tmp_path), async_save=False)
    c.save(1, state0, {})
    bad = state0.replace(params=jax.tree_util.tree_map(lambda x: x + 1.0, state0.params))
    c.save(2, bad, {})
    # Rewrite step 2's metadata with step 1's fingerprint: arrays no longer match it.
    import json

    m1, m2 = c.read_meta(1), c.read_meta(2)
    m2["fingerprint"] = m1["fingerprint"]
    with open(os.path.join(str(tmp_path), "2", "meta", "metadata"), "w") as f:  # corrupt it on disk
        json.dump(m2, f)
    with pytest.warns(RuntimeWarning, match="fingerprint"):
        st, meta = Checkpointer(str(tmp_path), async_save=False).restore_latest(state0)
    assert meta["step"] == 1


def test_sigterm_saves_and_exits(setup, tmp_path):
    _, state0, step = setup

    def kill_at_3(s, host_state):
        if s == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return {}

    with pytest.raises(Preempted) as e:
        _run(state0, step, str(tmp_path), 0, 100, save_every=50, hooks=((1, kill_at_3),))
    assert e.value.code == 143
    c = Checkpointer(str(tmp_path), async_save=False)
    assert c.latest_step() == e.value.step and e.value.step in (3, 4)


def test_nan_loss_stops_naming_step_and_keeps_last_good(setup, tmp_path):
    tx, state0, step = setup

    def batches():
        for i, b in enumerate(_batches()):
            yield {"image": b["image"] * (np.nan if i == 4 else 1.0)}  # the 5th step's batch

    ck = Checkpointer(str(tmp_path), async_save=False)
    with pytest.raises(NonFiniteLossError, match="at step 5") as e:
        train_loop(state0, step, batches(), start_step=0, num_steps=20, checkpointer=ck, save_every=2,
                   progress=False, log_every=1000)
    assert e.value.step == 5
    assert ck.all_steps() == [2, 4]
    st, _ = ck.restore_latest(state0)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(st.params))

"""Several processes (jax.distributed, gloo CPU collectives) against one process.

The subprocess scenarios use a 2x16 MLP on the 2-D ring (global batch 16, 200 steps):
- reference: 1 process x 4 devices, uninterrupted, then test NLL and samples;
- the same run as 2 processes x 2 devices (experiments.launch), interrupted twice:
  SIGINT to the launcher (every process saves, one line, exit 130, no traceback),
  restart, kill -9 of process 1 after a later checkpoint (the launcher stops process 0),
  restart to the end, then test NLL and samples split over the two processes.
  The final train state (params, optimiser, EMA; compared through the SHA-256
  fingerprint of every array saved with the checkpoint) equals the reference's bit for
  bit, as do the test NLLs and the samples. Bit-for-bit needs
  training.ordered_mean=True: `lax.pmean` sums in the collective's own order, which
  differs between 4 in-process devices and 2 x 2 over gloo (last-bit differences that
  grow over the steps; measured at 3e-5 absolute on a 1e3-scale sum).
- a process whose coordinator is unreachable stops within its --init_timeout with a
  one-line error.
The in-process tests check the data split (disjoint reads that together are the
single-process global batches) and the launcher's command lines.
"""

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from scoresde import parallel
from scoresde.data import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = '''
import ml_collections
from experiments.configs.default import base


def get_config():
    c = base()
    c.data.dataset = "ring"
    c.data.batch_size = 16
    c.model.name = "mlp"
    c.model.kwargs = ml_collections.ConfigDict({"width": 16, "depth": 2})
    c.training.num_steps = 200
    c.training.eval_every = 0
    c.training.save_every = 50
    c.training.log_every = 50
    c.training.ordered_mean = True
    c.training.stop_check_every = 5
    c.optim.lr = 1e-3
    c.optim.warmup = 10
    c.eval.checkpoint = "last"
    c.eval.trace = "exact"
    c.eval.rtol = 1e-2
    c.eval.atol = 1e-2
    c.eval.max_examples = 48
    c.eval.batch = 16
    c.eval.n_samples = 48
    c.sampling.batch = 16
    c.sampling.n_steps = 10
    return c
'''


def _launch(tmp, workdir, n, k, log, extra=()):
    cmd = [sys.executable, "-m", "experiments.launch", f"--num_processes={n}", f"--devices_per_process={k}",
           f"--pid_file={workdir}.pids", "--", f"--config={tmp}/mh_config.py", f"--workdir={workdir}", *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait_for(cond, proc, timeout, what):
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, f"run ended (status {proc.returncode}) before {what}"
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)


def _steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def _meta(workdir, step):
    from scoresde.training import read_meta

    return read_meta(os.path.join(workdir, "checkpoints"), step)


def _fingerprint(workdir, step):
    return _meta(workdir, step)["fingerprint"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The reference run and the interrupted 2 x 2 run (started together: they share
    nothing but the config file), with their outputs."""
    tmp = tmp_path_factory.mktemp("multihost")
    (tmp / "mh_config.py").write_text(CONFIG)
    ref_dir, mh_dir = str(tmp / "ref"), str(tmp / "mh")
    ref_log = open(tmp / "ref.log", "w+")
    ref = _launch(tmp, ref_dir, 1, 4, ref_log)
    logs = []

    def part(i):
        f = open(tmp / f"mh{i}.log", "w+")
        logs.append(f)
        return _launch(tmp, mh_dir, 2, 2, f, extra=() if i == 2 else ("--config.training.eval_at_end=False",))

    p = None
    try:
        # 1. Ctrl-C (SIGINT to the launcher, which passes it on) once a checkpoint exists.
        p = part(0)
        _wait_for(lambda: _steps(mh_dir), p, 600, "the first checkpoint")
        p.send_signal(signal.SIGINT)
        codes = [p.wait(120)]
        stopped_at = _steps(mh_dir)[-1]
        # 2. Restart; kill -9 process 1 once a newer checkpoint exists.
        p = part(1)
        _wait_for(lambda: _steps(mh_dir)[-1] > stopped_at and os.path.exists(mh_dir + ".pids"), p, 600,
                  "a checkpoint after the restart")
        pids = dict(line.split() for line in open(mh_dir + ".pids"))
        killed_after = _steps(mh_dir)[-1]
        os.kill(int(pids["1"]), signal.SIGKILL)
        codes.append(p.wait(120))
        # 3. Restart to the end (+ test NLL and samples over both processes).
        codes.append(part(2).wait(900))
        codes.append(ref.wait(900))
    except BaseException as e:  # a stuck or failed phase: show what every process printed
        tails = []
        for name, f in [("ref", ref_log)] + [(f"mh{i}", f) for i, f in enumerate(logs)]:
            f.flush()
            f.seek(0)
            tails.append(f"--- {name} ---\n" + f.read()[-3000:])
        for proc, d in ((p, mh_dir), (ref, ref_dir)):  # leave nothing running
            if proc is not None and proc.poll() is None:
                if os.path.exists(d + ".pids"):
                    for line in open(d + ".pids"):
                        try:
                            os.kill(int(line.split()[1]), signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                proc.kill()
        raise AssertionError(f"{type(e).__name__}: {e}\n" + "\n".join(tails)) from e
    out = {}
    for name, f in [("ref", ref_log)] + [(f"mh{i}", f) for i, f in enumerate(logs)]:
        f.seek(0)
        out[name] = f.read()
        f.close()
    return dict(ref=ref_dir, mh=mh_dir, codes=codes, out=out, stopped_at=stopped_at, killed_after=killed_after)


def test_two_processes_interrupted_equal_one_process(runs):
    codes, out = runs["codes"], runs["out"]
    assert codes[3] == 0, out["ref"][-2000:]
    # SIGINT: exit 130, one line (from process 0 only), no traceback; a checkpoint at that step.
    assert codes[0] == 130, out["mh0"][-2000:]
    lines = [s for s in out["mh0"].splitlines() if s.startswith("SIGINT received: saved a checkpoint at step")]
    assert len(lines) == 1 and lines[0].endswith(f"step {runs['stopped_at']}; exiting."), out["mh0"][-2000:]
    assert "Traceback" not in out["mh0"] and "KeyboardInterrupt" not in out["mh0"]
    assert runs["stopped_at"] % 5 == 0 and runs["stopped_at"] < 200  # stops together at an agreement step
    # kill -9 of process 1: the launcher stops process 0 and exits 128 + 9.
    assert codes[1] == 137, out["mh1"][-2000:]
    assert "launch: process 1 stopped (killed by SIGKILL)" in out["mh1"]
    assert f"Resuming from step {runs['stopped_at']}" in out["mh1"]
    # The restart resumes from the newest complete checkpoint and finishes.
    assert codes[2] == 0, out["mh2"][-2000:]
    resumed = int(out["mh2"].split("Resuming from step ")[1].split()[0])
    assert runs["killed_after"] <= resumed < 200
    # Same state as the uninterrupted single-process run, bit for bit (SHA-256 of every array).
    assert _steps(runs["mh"])[-1] == _steps(runs["ref"])[-1] == 200
    assert _fingerprint(runs["mh"], 200) == _fingerprint(runs["ref"], 200)
    for s in set(_steps(runs["mh"])) & set(_steps(runs["ref"])):
        assert _fingerprint(runs["mh"], s) == _fingerprint(runs["ref"], s), s
    # Every process took part in every save (each checked its replica's fingerprint).
    assert all(_meta(runs["mh"], s)["processes"] == 2 for s in _steps(runs["mh"]))
    assert all("processes" not in _meta(runs["ref"], s) for s in _steps(runs["ref"]))
    # Test NLL (per-batch adaptive ODE solves split over processes) and samples: equal.
    m_ref = json.load(open(os.path.join(runs["ref"], "metrics.json")))
    m_mh = json.load(open(os.path.join(runs["mh"], "metrics.json")))
    assert m_mh["test_nll"] == m_ref["test_nll"] and np.isfinite(m_ref["test_nll"])
    assert m_mh["likelihood"]["nfe_mean"] == m_ref["likelihood"]["nfe_mean"]
    s_ref = np.load(os.path.join(runs["ref"], "samples.npz"))["samples"]
    s_mh = np.load(os.path.join(runs["mh"], "samples.npz"))["samples"]
    assert s_ref.shape == (48, 2) and np.array_equal(s_mh, s_ref)
    # Only process 0 prints and writes TensorBoard files: one line per logged step, one
    # event file per (re)start.
    assert out["mh2"].count("[step 200] train/") == 1 and out["mh2"].count('"test_nll"') == 1
    assert len(os.listdir(os.path.join(runs["mh"], "tb"))) == 3


def test_unreachable_coordinator_fails_fast(tmp_path):
    """Process 1 with no coordinator listening, and process 0 whose peer never comes: both
    stop within a bounded time (--init_timeout=2 s plus start-up) with a one-line error."""
    from experiments.launch import free_port

    def start(pid, port):
        return subprocess.Popen([sys.executable, "-m", "experiments.main", "--config=experiments/configs/toy2d.py",
                                 f"--workdir={tmp_path}/{pid}", f"--coordinator_address=127.0.0.1:{port}",
                                 "--num_processes=2", f"--process_id={pid}", "--init_timeout=2"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, JAX_PLATFORMS="cpu"))

    t0 = time.monotonic()
    port1, port0 = free_port(), free_port()
    p1, p0 = start(1, port1), start(0, port0)
    err1, err0 = p1.communicate(timeout=120)[1], p0.communicate(timeout=120)[1]
    assert time.monotonic() - t0 < 90
    assert p1.returncode == 3 and f"could not reach the coordinator at 127.0.0.1:{port1} within 2 s" in err1, err1[-2000:]
    assert p0.returncode == 3 and "did not complete within 2 s" in err0 and "not every process joined" in err0, err0[-2000:]
    assert "Traceback" not in err1 + err0


def test_process_reads_are_disjoint_and_make_the_global_batch(monkeypatch):
    """Each of 3 hosts reads only its rows; together they are the single-host batches of
    3x the size, images (with dequantisation noise) bit for bit, across epochs."""
    reads = []
    get = pipeline._ArraySource.get
    monkeypatch.setattr(pipeline._ArraySource, "get", lambda self, idx: (reads.append(np.array(idx)), get(self, idx))[1])

    def batches(p, count, b):
        reads.clear()
        out = list(itertools.islice(pipeline.make_iterator("digits", "validation", b, seed=4, process_index=p,
                                                           process_count=count), 6))
        return out, list(reads)

    one, one_reads = batches(0, 1, 60)  # 150 examples: batches run across epochs
    parts = [batches(p, 3, 20) for p in range(3)]
    assert len(one_reads) == 6 and all(len(parts[p][1]) == 6 for p in range(3))  # one read per batch
    for k in range(6):
        idx = [parts[p][1][k] for p in range(3)]
        if k < 2:  # within epoch 0 (a batch across an epoch boundary may repeat an example)
            assert not (set(idx[0]) & set(idx[1]) or set(idx[0]) & set(idx[2]) or set(idx[1]) & set(idx[2]))
        np.testing.assert_array_equal(np.concatenate(idx), one_reads[k])
        np.testing.assert_array_equal(np.concatenate([parts[p][0][k]["image"] for p in range(3)]), one[k]["image"])


def test_process_slice_covers_once():
    for n in (0, 1, 5, 7, 12):
        for count in (1, 2, 3, 5):
            blocks = [parallel.process_slice(n, p, count) for p in range(count)]
            assert list(itertools.chain(*blocks)) == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_launcher_command_lines():
    from experiments import launch

    cmd = launch.process_command(["--config=c.py", "--workdir=w"], 2, 1, 1234)
    assert cmd[1:] == ["-m", "experiments.main", "--config=c.py", "--workdir=w",
                       "--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--process_id=1"]
    env = launch.process_env(3, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2 --foo"})
    assert env["XLA_FLAGS"] == "--foo --xla_force_host_platform_device_count=3" and env["JAX_PLATFORMS"] == "cpu"
    with pytest.raises(ValueError, match="--process_id"):
        launch.launch(["--process_id=0"], 2)
    with pytest.raises(ValueError, match="num_processes"):
        launch.launch([], 0)


def _toy_step(state, batch):
    return state + 1, {"loss": np.float32(0.5), "grad_norm": np.float32(1.0), "finite": np.bool_(True)}


def test_sigint_like_sigterm_and_stop_agreement(capsys):
    """In-process: Ctrl-C (SIGINT) stops the loop like SIGTERM (status 130, one line, no
    KeyboardInterrupt); a stop agreed on by another process (stop_agreement) is checked
    only every stop_check_every steps and stops every process at the same step."""
    from scoresde.training import Preempted, train_loop

    def sigint_at_3(step, host_state):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return {}

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs in the background of a shell
    with pytest.raises(Preempted) as e:
        train_loop(0, _toy_step, itertools.repeat({}), start_step=0, num_steps=50, hooks=((1, sigint_at_3),),
                   progress=False)
    assert e.value.code == 130 and e.value.step in (3, 4)
    assert capsys.readouterr().out.strip().endswith(
        f"SIGINT received at step {e.value.step} (no checkpointer: nothing saved); exiting.")
    assert signal.getsignal(signal.SIGINT) is before  # restored

    calls = []

    def agreement(signalled):  # "another process was signalled after step 12"
        calls.append(len(calls))
        return len(calls) * 5 > 12

    with pytest.raises(Preempted) as e:
        train_loop(0, _toy_step, itertools.repeat({}), start_step=0, num_steps=50, progress=False,
                   stop_agreement=agreement, stop_check_every=5)
    assert e.value.step == 15 and e.value.code == 143 and calls == [0, 1, 2]
    assert "SIGTERM (on another process) received at step 15" in capsys.readouterr().out
    with pytest.raises(ValueError, match="stop_check_every"):
        train_loop(0, _toy_step, [], start_step=0, num_steps=5, stop_check_every=0)

"""The training loop: steps, NaN guard, periodic checkpoints, SIGTERM, metrics, progress.

    state = train_loop(state, train_step, batches, num_steps=..., checkpointer=..., ...)

The loop is device-agnostic: `train_step` may be jitted (one device) or pmapped (then
`state` is replicated and `to_host` unreplicates it for saving and evaluation). It

- stops with `NonFiniteLossError` naming the first step whose loss or gradient norm is
  NaN/inf; that state is never saved, so the last good checkpoint stays the newest;
- saves every `save_every` steps and at the end (orbax: atomic, keep last N);
- on SIGTERM (pre-emption) or SIGINT (Ctrl-C) finishes the current step, saves, waits
  for the write, prints one line and raises `Preempted` (the entry point exits with
  status 128 + signal: 143 for SIGTERM, 130 for SIGINT, without a traceback), so a
  restart with the same command resumes there. With several processes the signal may
  reach them at different steps: `stop_agreement` (e.g. `scoresde.parallel.any_process`)
  is called every `stop_check_every` steps on every process, and all stop together at
  the first such step after any of them was signalled (checkpoint saves and pmapped
  steps are collectives: a process stopping alone would leave the others waiting);
- writes scalars to stdout and TensorBoard (tensorboardX event files) and shows a
  one-line progress bar with loss and steps/s.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable

import jax
import numpy as np


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) became NaN/inf; `step` is the offending step number."""

    def __init__(self, step: int, loss: float):
        self.step = step
        super().__init__(f"non-finite loss {loss} at step {step}; stopping. The state of this step was "
                         "not saved: the newest checkpoint is the last good one. Lower the learning "
                         "rate, raise warm-up or clip gradients harder.")


class Preempted(SystemExit):
    """SIGTERM or SIGINT (`signum`) was received at `step` (a checkpoint was written there if
    the loop had a checkpointer); the exit status is 128 + signum (143 for SIGTERM)."""

    def __init__(self, step: int, signum: int = signal.SIGTERM):
        self.step, self.signum = step, int(signum)
        super().__init__(128 + int(signum))


class MetricWriter:
    """Scalars to stdout and to TensorBoard event files in `logdir` (tensorboardX).

    Every scalar written is also kept in `history[tag]` as (step, value) pairs, so a
    script without TensorBoard (logdir=None, stdout=False) can read its loss curve.
    """

    def __init__(self, logdir: str | None, *, stdout: bool = True, enabled: bool = True):
        self.stdout = stdout and enabled
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._tb = None
        if logdir is not None and enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir)

    def scalars(self, step: int, values: dict[str, float], prefix: str = ""):
        values = {prefix + k: float(v) for k, v in values.items()}
        for k, v in values.items():
            self.history.setdefault(k, []).append((int(step), v))
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self.stdout:
            print(f"[step {step}] " + ", ".join(f"{k}={v:.5g}" for k, v in values.items()), flush=True)

    def image(self, step: int, tag: str, image_hwc: np.ndarray):
        if self._tb is not None:
            self._tb.add_image(tag, np.asarray(image_hwc), step, dataformats="HWC")
            self._tb.flush()

    def close(self):
        if self._tb is not None:
            self._tb.close()


class ProgressBar:
    """`step/total [####....] loss=... 12.3 steps/s` on one line of stderr (a tty), else silent."""

    def __init__(self, total: int, start: int = 0, width: int = 30, enabled: bool | None = None):
        self.total, self.start, self.width = total, start, width
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.perf_counter()
        self._last = 0.0

    def rate(self, step: int) -> float:
        return (step - self.start) / max(time.perf_counter() - self.t0, 1e-9)

    def update(self, step: int, loss: float | None = None, force: bool = False):
        now = time.perf_counter()
        if not self.enabled or (now - self._last < 0.2 and not force):
            return
        self._last = now
        frac = step / max(self.total, 1)
        bar = "#" * int(frac * self.width)
        msg = f"\r{step}/{self.total} [{bar:<{self.width}}] "
        if loss is not None:
            msg += f"loss={loss:.4g} "
        msg += f"{self.rate(step):.1f} steps/s"
        sys.stderr.write(msg)
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


class _StopFlag(threading.Event):
    """Set by SIGTERM or SIGINT; `signum` is the first signal received."""

    signum: int = signal.SIGTERM


@contextlib.contextmanager
def sigterm_flag():
    """Yield a threading.Event set by SIGTERM or SIGINT while the block runs (main thread only);
    its `signum` says which signal came first."""
    event = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum, frame):
        if not event.is_set():
            event.signum = signum
        event.set()

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield event
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def _check(step: int, metrics: dict):
    m = jax.device_get(metrics)
    loss = float(np.asarray(m["loss"]).reshape(-1)[0])
    if not bool(np.all(np.asarray(m["finite"]))) or not math.isfinite(loss):
        raise NonFiniteLossError(step, loss)
    return {k: float(np.asarray(v).reshape(-1)[0]) for k, v in m.items() if k != "finite"}


def train_loop(state: Any, train_step: Callable, batches: Iterable, *, start_step: int, num_steps: int,
               checkpointer=None, save_every: int = 1000, meta_fn: Callable[[int], dict] = lambda s: {},
               to_host: Callable[[Any], Any] = lambda s: s, writer: MetricWriter | None = None,
               log_every: int = 100, hooks: tuple[tuple[int, Callable], ...] = (),
               progress: bool | None = None, stop_agreement: Callable[[bool], bool] | None = None,
               stop_check_every: int = 1, announce: bool = True) -> Any:
    """Run steps start_step+1 .. num_steps; return the final state (see module docstring).

    batches: an iterator yielding batches ready for `train_step` (positioned at
    `start_step`); meta_fn(step): JSON metadata saved with a checkpoint; hooks:
    (every, fn) pairs, fn(step, host_state) -> dict of scalars logged under "eval/"
    (e.g. validation loss and best-checkpoint selection), run before the save of that step.
    stop_agreement(signalled) -> bool: multi-process runs pass a collective "any process
    signalled?", called at every step divisible by stop_check_every (and nowhere else);
    without it the loop stops at the first step after a signal. announce=False keeps
    the one-line stop message off stdout (processes other than 0).
    """
    if stop_check_every < 1:
        raise ValueError(f"stop_check_every must be >= 1, got {stop_check_every}.")
    if start_step >= num_steps:
        return state
    bar = ProgressBar(num_steps, start_step, enabled=progress)
    it = iter(batches)
    pending = None  # (step, metrics) not yet checked: checked after the next dispatch
    t_log, s_log = time.perf_counter(), start_step

    def save(step):
        checkpointer.save(step, to_host(state), meta_fn(step))

    with sigterm_flag() as terminated:
        for step in range(start_step + 1, num_steps + 1):
            batch = next(it)
            state, metrics = train_step(state, batch)
            if pending is not None:  # check the previous step while this one runs
                vals = _check(*pending)
                bar.update(pending[0], vals["loss"])
            pending = (step, metrics)
            if stop_agreement is None:
                stop = terminated.is_set()
            else:
                stop = step % stop_check_every == 0 and stop_agreement(terminated.is_set())
            boundary = (step % log_every == 0 or step == num_steps
                        or (checkpointer is not None and step % save_every == 0)
                        or any(step % every == 0 for every, _ in hooks) or stop)
            if not boundary:
                continue
            vals = _check(*pending)  # never save or evaluate a non-finite state
            pending = None
            if writer is not None and (step % log_every == 0 or step == num_steps):
                now = time.perf_counter()
                vals["steps_per_s"] = (step - s_log) / max(now - t_log, 1e-9)
                t_log, s_log = now, step
                writer.scalars(step, vals, prefix="train/")
            bar.update(step, vals["loss"], force=True)
            for every, fn in hooks:  # before the save, so meta_fn sees their results
                if step % every == 0 or step == num_steps:
                    out = fn(step, to_host(state))
                    if out and writer is not None:
                        writer.scalars(step, out, prefix="eval/")
            if checkpointer is not None and (step % save_every == 0 or step == num_steps or stop):
                save(step)
            if stop:
                bar.close()
                signum = terminated.signum if terminated.is_set() else signal.SIGTERM
                name = signal.Signals(signum).name
                if not terminated.is_set():
                    name += " (on another process)"
                if checkpointer is not None:
                    checkpointer.wait()
                    msg = f"{name} received: saved a checkpoint at step {step}; exiting."
                else:
                    msg = f"{name} received at step {step} (no checkpointer: nothing saved); exiting."
                if announce:
                    print(msg, flush=True)
                raise Preempted(step, signum)
        if pending is not None:
            _check(*pending)
    bar.close()
    if checkpointer is not None:
        checkpointer.wait()
    return state

"""train_and_evaluate(config, workdir) and the sample / eval modes (the Flax examples' shape).

    exp = build(config)                   # every config value checked, library objects built
    train_and_evaluate(config, workdir)   # --mode=train: train (resuming), then evaluate
    evaluate(config, workdir)             # --mode=eval: workdir/metrics.json
    sample(config, workdir)               # --mode=sample: workdir/samples.png

A config with a `consistency` section trains a consistency model with the same machinery
(`build`, `train_loop`, `Checkpointer`, `MetricWriter`, `evaluate`, `sample`): the network,
SDE and parameterisation of the config are those of a diffusion model, used as a
consistency function through `scoresde.consistency.consistency_fn_from_score`; the
student starts from the diffusion checkpoint in consistency.init_from (distillation from
it as teacher, or consistency tuning from data with ECT's schedule; empty init_from:
consistency training from scratch), the step is `make_consistency_train_step`, and
`evaluate` draws samples at each of consistency.eval_steps (1, 2, 4 network calls) through
`scoresde.sample` with a `ConsistencySampler` (no likelihood: a consistency model has
none). experiments/configs/digits_consistency.py is the example.

`build` is the only place that reads names out of a config (through `registry`); what
it returns, an `Experiment`, is a record of library objects. Everything else is a plain
function of it: the data (`train_batches`, `eval_arrays`), the likelihood
(`make_nll_fn`, `nll`), sampling (`make_sample_fn`, `draw_samples`) and checkpoint
loading (`load_for_eval`, through `scoresde.training.Checkpointer` only).

workdir layout:
    checkpoints/<step>   orbax, last `training.keep` steps (resume from the newest good one)
    best/<step>          the checkpoint with the best validation metric (selection never
                         looks at the test split)
    tb/                  TensorBoard event files (tensorboardX)
    samples.png          grid of samples (scatter plot for 2-D data), samples.npz
    metrics.json         test bits/dim, sample-quality numbers, which checkpoint was used

Data order is reproducible: batch j of the run is batch j of
make_iterator(seed=config.seed, ...); a checkpoint records how many batches were
consumed and a resumed run skips that many, so resume == uninterrupted run bitwise.

Several processes (`experiments/launch.py`, or one per host on a cluster) run these
same functions together: each reads its rows of every global batch, the pmapped step
spans the devices of all processes, every process takes part in checkpoint saves and
restores (orbax's multi-process protocol), the test likelihood and the samples are
split over processes by batch (`parallel.process_slice`) and gathered
(`parallel.allgather_rows`), so every number equals the single-process one, and only
process 0 prints, writes TensorBoard logs, samples and metrics.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import plots, registry
from scoresde import data as data_lib
from scoresde import metrics, parallel
from scoresde.likelihood import data_bits_per_dim, log_likelihood
from scoresde.consistency import (
    ConsistencyParameterization, ConsistencySampler, ECTPairs, PseudoHuber, SquaredL2, make_consistency_train_step,
    TruncatedLogSNRGrid, network_consistency_fn,
)
from scoresde.models import count_params
from scoresde.sampling import FittedGrid, LogSNRGrid
from scoresde.sampling import sample as run_sampler
from scoresde.training import (
    Checkpointer, MetricWriter, TrainState, create_train_state, make_eval_loss, make_train_step,
    network_score_fn, train_loop,
)


# ---------------------------------------------------------------------------- the experiment
@dataclasses.dataclass(frozen=True)
class Experiment:
    """What a config builds (`build`): the dataset's description, the library objects and
    the device layout. A record; the functions of this module do the work."""

    config: Any
    info: data_lib.DatasetInfo
    sde: Any
    model: Any
    parameterization: Any
    weighting: Any
    time_sampler: Any
    sampler: Any
    tx: optax.GradientTransformation
    input_shape: tuple
    conditional: bool
    process_index: int
    process_count: int
    n_devices: int  # local devices of this process
    host_batch: int  # examples per host and step (data.batch_size is the global batch)
    global_devices: int = 1  # devices of all processes: the pmapped axis of the train step
    consistency: Any = None  # a ConsistencySetup for consistency-model configs, else None

    @property
    def is_first(self) -> bool:
        """Process 0: the one that prints and writes logs, samples and metrics."""
        return self.process_index == 0

    @property
    def data_range(self) -> tuple[float, float]:
        return (-1.0, 1.0) if self.config.data.scale == "[-1,1]" else (0.0, 1.0)

    def score_fn(self, params) -> Callable:
        """score(x, t[, labels]) of the network with these parameters (evaluation mode)."""
        return network_score_fn(self.model, params, self.sde, self.parameterization)

    def sample_fn(self, params) -> Callable:
        """What `sample` gets with self.sampler: the score function, or for a consistency
        model the consistency function f(x, t[, labels])."""
        if self.consistency is None:
            return self.score_fn(params)
        return network_consistency_fn(self.model, params, self.sde, self.parameterization,
                                      self.consistency.parameterization)

    def levels(self, x) -> np.ndarray:
        """Model-scale images (N, ...) -> integer levels (N, *info.shape) of the dataset."""
        x = np.asarray(x)
        return data_lib.to_levels(x.reshape((len(x),) + tuple(self.info.shape)), self.info.num_levels,
                                  scale=self.config.data.scale)


def build(config) -> Experiment:
    """Check every config value (names, labels, batch divisibility) and build the objects.

    Runs before any training, so a wrong value fails at once with the option's path and
    what to use instead.
    """
    if config.data.dataset not in data_lib.DATASETS:
        raise ValueError(f"config option data.dataset={config.data.dataset!r} is not valid; valid "
                         f"choices: {', '.join(data_lib.dataset_names())}.")
    info = data_lib.dataset_info(config.data.dataset)
    conditional = bool(config.training.get("conditional", False))
    sde = registry.build_sde(config)
    model = registry.build_model(config, info.num_classes)
    parameterization = registry.build_parameterization(config)
    weighting = registry.build_weighting(config)
    time_sampler = registry.build_time_sampler(config)
    consistency = build_consistency(config) if "consistency" in config else None
    sampler = registry.build_sampler(config) if consistency is None else consistency.sampler(config.sampling.n_steps)
    input_shape = registry.model_input_shape(config, info.shape)
    if conditional and info.num_classes is None:
        raise ValueError(f"config option training.conditional=True needs labels, but "
                         f"data.dataset={config.data.dataset!r} has none.")
    process_index, process_count = parallel.process_info()
    n_devices = parallel.local_device_count()
    host_batch = host_batch_size(config.data.batch_size, process_count, n_devices)
    return Experiment(config=config, info=info, sde=sde, model=model, parameterization=parameterization,
                      weighting=weighting, time_sampler=time_sampler, sampler=sampler,
                      tx=registry.build_optimizer(config), input_shape=tuple(input_shape),
                      conditional=conditional, process_index=process_index, process_count=process_count,
                      n_devices=n_devices, host_batch=host_batch,
                      global_devices=parallel.global_device_count(), consistency=consistency)


Setup = build  # the name experiments/guided.py calls


# ---------------------------------------------------------------------------- consistency models
CONSISTENCY_MODES = ("distillation", "tuning", "training")
DISTANCES = {"pseudo_huber": PseudoHuber, "l2": SquaredL2}


@dataclasses.dataclass(frozen=True)
class ConsistencySetup:
    """What a config's `consistency` section builds (`build_consistency`): the consistency
    scalings, ECT's pairs of times, the distance, the teacher's ODE step and where the
    diffusion checkpoint is. A record; `train_and_evaluate` and `evaluate` use it."""

    mode: str  # one of CONSISTENCY_MODES
    parameterization: ConsistencyParameterization
    pairs: ECTPairs
    distance: Any
    solver: str
    substeps: int
    step_offset: int  # pairs' schedule starts at this step (stage_steps * consistency.first_stage)
    init_from: str  # workdir of the diffusion checkpoint ('' = fresh initialisation)
    init_checkpoint: str  # "best" or "last"
    eval_steps: tuple
    grid_u: float  # first interior time of the multistep grid, as a log-SNR fraction (0: uniform)
    stochastic: bool = True  # fresh noise between steps (Song et al. 2023 Alg. 1); False: the implied noise
    start_u: float = 0.0  # first evaluation time as a log-SNR fraction (0: T; > 0: a truncated start)

    def sampler(self, n_steps: int) -> ConsistencySampler:
        """`ConsistencySampler(n_steps, stochastic=self.stochastic)`: the first interior time at
        log-SNR fraction grid_u of the way from T to eps, the rest evenly spaced after it in
        log-SNR (grid_u = 0: evenly spaced from the start). start_u > 0: the first evaluation is
        at fraction start_u instead of T (`TruncatedLogSNRGrid`)."""
        u0, u = self.start_u, self.grid_u
        if n_steps < 2 or not u:
            if not u0:
                return ConsistencySampler(n_steps, grid=LogSNRGrid(), stochastic=self.stochastic)
            fr = [u0 + (1 - u0) * k / n_steps for k in range(n_steps + 1)]
        else:
            fr = [u0, *(u + (1 - u) * k / (n_steps - 1) for k in range(n_steps - 1)), 1.0]
        grid = TruncatedLogSNRGrid(tuple(float(v) for v in fr)) if u0 else FittedGrid(jnp.asarray(fr, jnp.float32))
        return ConsistencySampler(n_steps, grid=grid, stochastic=self.stochastic)


def build_consistency(config) -> ConsistencySetup:
    """config.consistency -> ConsistencySetup, every value checked (option path, what to use)."""
    cc = config.consistency
    if cc.mode not in CONSISTENCY_MODES:
        raise ValueError(f"config option consistency.mode={cc.mode!r} is not valid; valid choices: "
                         f"{', '.join(CONSISTENCY_MODES)}.")
    if cc.mode in ("distillation", "tuning") and not cc.init_from:
        raise ValueError(f"config option consistency.init_from is empty, but consistency.mode={cc.mode!r} "
                         "starts from a diffusion checkpoint; set it to the diffusion run's workdir (or use "
                         "consistency.mode='training' to train from scratch).")
    if cc.init_checkpoint not in ("best", "last"):
        raise ValueError(f"config option consistency.init_checkpoint={cc.init_checkpoint!r} is not valid; "
                         "valid choices: best, last.")
    if config.sampling.denoise:
        raise ValueError("config option sampling.denoise=True: a consistency model already returns x_eps "
                         "(no final Tweedie step); set sampling.denoise=False.")
    if config.training.eval_every:
        raise ValueError(f"config option training.eval_every={config.training.eval_every}: consistency runs "
                         "have no validation metric for checkpoint selection; set training.eval_every=0 "
                         "(evaluation uses the newest checkpoint).")
    steps = tuple(int(n) for n in cc.eval_steps)
    if not steps or min(steps) < 1:
        raise ValueError(f"config option consistency.eval_steps={tuple(cc.eval_steps)} must list step counts "
                         ">= 1, e.g. (1, 2, 4).")
    if not 0.0 <= float(cc.grid_u) < 1.0:
        raise ValueError(f"config option consistency.grid_u={cc.grid_u} must be in [0, 1) (a log-SNR "
                         "fraction; 0: evenly spaced).")
    start_u = float(cc.get("start_u", 0.0))
    if not 0.0 <= start_u < 1.0 or (cc.grid_u and start_u >= float(cc.grid_u)):
        raise ValueError(f"config option consistency.start_u={start_u} must be in [0, 1) and below "
                         f"consistency.grid_u={cc.grid_u} when that is set (log-SNR fractions; 0: start at T).")
    pc = cc.pairs
    pairs = ECTPairs(stage_steps=int(pc.stage_steps), q=float(pc.q), p_mean=float(pc.p_mean), p_std=float(pc.p_std),
                     k=float(pc.k), b=float(pc.b), weight=pc.weight)
    first_stage = int(cc.get("first_stage", 0))
    if first_stage < 0:
        raise ValueError(f"config option consistency.first_stage={first_stage} must be >= 0.")
    dist = registry._pick(DISTANCES, cc.distance, "consistency.distance")()
    return ConsistencySetup(mode=cc.mode, parameterization=ConsistencyParameterization(float(cc.sigma_data)),
                            pairs=pairs, distance=dist, solver=cc.solver, substeps=int(cc.substeps),
                            step_offset=first_stage * int(pc.stage_steps), init_from=cc.init_from,
                            init_checkpoint=cc.init_checkpoint, eval_steps=steps, grid_u=float(cc.grid_u),
                            stochastic=bool(cc.get("stochastic", True)), start_u=start_u)


def load_diffusion_params(exp: Experiment, workdir: str, which: str = "best"):
    """(EMA params, step, "best" | "last") of the diffusion checkpoint in `workdir` that a
    consistency run starts from (and distils). Read only: unlike `Checkpointer.restore_latest`
    nothing is moved aside if the checkpoint does not fit this config's network."""
    target = init_state(exp)
    subdirs = (("best", "best"), ("checkpoints", "last")) if which == "best" else (("checkpoints", "last"),)
    for sub, name in subdirs:
        d = os.path.join(workdir, sub)
        if not os.path.isdir(d):
            continue
        ck = Checkpointer(d, max_to_keep=None, async_save=False)
        try:
            step = ck.latest_step()
            if step is None:
                continue
            try:
                state, _ = ck.restore(step, target)
            except Exception as e:  # noqa: BLE001 - re-raised with what to do
                msg = str(e).splitlines()[0][:300] if str(e) else ""
                raise ValueError(f"config option consistency.init_from={workdir!r}: checkpoint {d}/{step} does not "
                                 f"restore into this config's network and optimiser ({type(e).__name__}: {msg}); "
                                 "model.* and the optimiser's structure (optim.weight_decay > 0 or not, "
                                 "optim.warmup > 0 or not) must be those of the run that wrote it.") from e
        finally:
            ck.close()
        return state.ema_params, step, name
    raise FileNotFoundError(f"config option consistency.init_from={workdir!r}: no checkpoint in {workdir}/best or "
                            f"{workdir}/checkpoints; train the diffusion model there first.")


def host_batch_size(batch_size: int, process_count: int, n_devices: int) -> int:
    """data.batch_size (global) / process_count, which must split evenly over the local devices."""
    if batch_size % process_count:
        raise ValueError(f"config option data.batch_size={batch_size} is not divisible by the number of "
                         f"processes ({process_count}); choose a multiple of {process_count}.")
    host = batch_size // process_count
    if host % n_devices:
        raise ValueError(f"config option data.batch_size={batch_size} gives {host} examples per host, "
                         f"not divisible by the {n_devices} local devices; choose a multiple of "
                         f"{n_devices * process_count}.")
    return host


def init_state(exp: Experiment) -> TrainState:
    """The fresh train state of the run (seeded by config.seed)."""
    x = jnp.zeros((exp.n_devices,) + exp.input_shape, jnp.float32)
    y = jnp.zeros((exp.n_devices,), jnp.int32) if exp.conditional else None
    return create_train_state(exp.model, exp.tx, jax.random.PRNGKey(exp.config.seed), x, y)


# ---------------------------------------------------------------------------- data
def to_model_batch(exp: Experiment, batch: dict) -> dict:
    """A pipeline batch -> the network's input shape (+ labels for a conditional model)."""
    out = {"image": batch["image"].reshape((batch["image"].shape[0],) + exp.input_shape)}
    if exp.conditional:
        out["label"] = batch["label"]
    return out


def train_batches(exp: Experiment, skip: int = 0):
    """This host's training batches, in the network's shape, from batch `skip` on.

    The data source opens now (a missing dataset fails before any step); batch j is
    batch j of the uninterrupted run, with the same dequantisation noise.
    """
    c = exp.config.data
    it = data_lib.make_iterator(c.dataset, c.train_split, exp.host_batch, seed=exp.config.seed,
                                dequantize=c.dequantize, flip=c.flip, process_index=exp.process_index,
                                process_count=exp.process_count, data_dir=c.get("data_dir"),
                                scale=c.scale, start_batch=skip)
    return (to_model_batch(exp, b) for b in it)


def eval_arrays(exp: Experiment, split: str):
    """(x-or-levels (N, *input_shape), labels): integer levels for image sets, floats for 2-D sets."""
    c = exp.config.data
    images, labels = data_lib.load_arrays(c.dataset, split, data_dir=c.get("data_dir"))
    n = exp.config.eval.get("max_examples")
    if n:
        images, labels = images[:n], labels[:n]
    return np.asarray(images).reshape((len(images),) + exp.input_shape), np.asarray(labels)


def dequantised(exp: Experiment, levels) -> np.ndarray:
    """Integer levels -> scaled float data (dequantised with a fixed seed); 2-D data as is."""
    if exp.info.num_levels is None:
        return np.asarray(levels, np.float32)
    return data_lib.scale_images(levels, exp.info.num_levels, scale=exp.config.data.scale, dequantize=True,
                                 rng=np.random.default_rng(0))


# ---------------------------------------------------------------------------- likelihood, samples
def make_nll_fn(exp: Experiment, tol: float | None = None) -> Callable:
    """jit(params, key, data) -> (per-example bits/dim (image sets) or NLL in nats
    (2-D sets), per-example function evaluations of the ODE solve). `tol` replaces
    eval.rtol and eval.atol (validation may use a looser solve than the test)."""
    ec = exp.config.eval
    rtol, atol = (ec.rtol, ec.atol) if tol is None else (tol, tol)
    kw = dict(trace=ec.trace, rtol=rtol, atol=atol, n_probes=ec.get("n_probes", 1))
    if exp.info.num_levels is not None:
        def f(params, key, levels):
            return data_bits_per_dim(exp.score_fn(params), exp.sde, key, levels,
                                     num_levels=exp.info.num_levels, data_range=exp.data_range, **kw)
    else:
        def f(params, key, x):
            logp, nfe = log_likelihood(exp.score_fn(params), exp.sde, key, x, **kw)
            return -logp, nfe
    return jax.jit(f)


def nll(fn: Callable, params, key, data, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-example (value, nfe) of a `make_nll_fn` function over `data`, in batches
    (the batch starting at example i uses fold_in(key, i)).

    With several processes each solves a contiguous block of the batches
    (`parallel.process_slice`) with no collective inside the (adaptive) solves, and the
    blocks are gathered once at the end, so every process returns the single-process
    values; all processes must call it.
    """
    starts = list(range(0, len(data), batch))
    vals, nfes = [], []
    for j in parallel.process_slice(len(starts)):
        i = starts[j]
        v, n = fn(params, jax.random.fold_in(key, i), jnp.asarray(data[i:i + batch]))
        vals.append(np.asarray(v))
        nfes.append(np.asarray(n))
    vals = np.concatenate(vals) if vals else np.zeros((0,), np.float32)
    nfes = np.concatenate(nfes) if nfes else np.zeros((0,), np.int32)
    return parallel.allgather_rows((vals, nfes))


def make_sample_fn(exp: Experiment, sampler=None) -> Callable:
    """jit(params, key, n) -> n samples of the config's sampler (or `sampler`) from x_T ~ prior."""
    sampler = exp.sampler if sampler is None else sampler

    def f(params, key, n):
        kx, ks = jax.random.split(key)
        x_T = exp.sde.prior_sample(kx, (n,) + exp.input_shape)
        return run_sampler(sampler, exp.sample_fn(params), exp.sde, ks, x_T,
                           denoise=exp.config.sampling.denoise).samples
    return jax.jit(f, static_argnums=2)


def draw_samples(exp: Experiment, params, n: int, key, sampler=None) -> np.ndarray:
    """n samples in batches of sampling.batch (batch starting at i uses fold_in(key, i)),
    with the config's sampler or `sampler` (the prior noise depends on key only).

    With several processes each draws a contiguous block of the batches and the blocks
    are gathered once (as in `nll`): every process returns the single-process samples.
    """
    fn = make_sample_fn(exp, sampler)
    out, bs = [], exp.config.sampling.batch
    starts = list(range(0, n, bs))
    for j in parallel.process_slice(len(starts)):
        i = starts[j]
        out.append(np.asarray(fn(params, jax.random.fold_in(key, i), min(bs, n - i))))
    out = np.concatenate(out) if out else np.zeros((0,) + exp.input_shape, np.float32)
    return parallel.allgather_rows(out)


# ---------------------------------------------------------------------------- train
def best_value(best: Checkpointer) -> float:
    """The validation value saved with the best checkpoint (inf if none or unreadable)."""
    try:
        meta = best.latest_meta()
    except Exception:  # noqa: BLE001 - a broken best checkpoint is simply not a best
        return math.inf
    return math.inf if meta is None else float(meta.get("val", math.inf))


def make_validation(exp: Experiment, best: Checkpointer, selection: dict) -> Callable:
    """The train-loop hook fn(step, host_state) -> scalars: the validation metric of the EMA
    parameters (eval.val_metric: "bpd" = ODE bits/dim, "loss" = DSM loss); saves `best`
    when it improves on selection["best"] (updated in place, read by the checkpoint meta)."""
    config = exp.config
    val_data, val_labels = eval_arrays(exp, config.data.val_split)
    nll_fn = make_nll_fn(exp, config.eval.get("val_tol"))
    eval_loss = jax.jit(make_eval_loss(exp.model, exp.sde, exp.parameterization, weighting=exp.weighting,
                                       time_sampler=exp.time_sampler, conditional=exp.conditional))
    val_key = jax.random.PRNGKey(config.seed + 12345)  # fixed: comparable across steps

    def validate(step, host_state):
        params = host_state.ema_params
        t0 = time.perf_counter()
        if config.eval.val_metric == "bpd":
            val = float(np.mean(nll(nll_fn, params, val_key, val_data, config.eval.batch)[0]))
        else:
            vb = jax.tree_util.tree_map(jnp.asarray, to_model_batch(
                exp, {"image": dequantised(exp, val_data), "label": val_labels}))  # labels used if conditional
            val = float(np.mean([np.mean(eval_loss(params, jax.random.fold_in(val_key, r), vb))
                                 for r in range(8)]))
        out = {f"val_{config.eval.val_metric}": val, "val_seconds": time.perf_counter() - t0}
        if val < selection["best"] and math.isfinite(val):
            selection["best"] = val
            best.save(step, host_state, {"val": val, "metric": config.eval.val_metric})
        out["best_val"] = selection["best"]
        return out

    return validate


def train_and_evaluate(config, workdir: str) -> dict:
    """Train (resuming from the newest good checkpoint in workdir), then evaluate.

    Every config value is validated (names, batch divisibility, dataset availability)
    before the first step. Returns the metrics dict of `evaluate` (or {} if
    config.training.eval_at_end is False).
    """
    exp = build(config)
    tc = config.training
    os.makedirs(workdir, exist_ok=True)
    first = exp.process_index == 0
    batches = train_batches(exp)  # opens the data now: a missing dataset fails here, before any step
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=tc.keep)
    best = Checkpointer(os.path.join(workdir, "best"), max_to_keep=1, async_save=False)
    state = init_state(exp)
    restored = ckpt.restore_latest(state)
    start = 0
    cs, diffusion = exp.consistency, None
    if cs is not None and cs.init_from and (restored is None or cs.mode == "distillation"):
        diffusion = load_diffusion_params(exp, cs.init_from, cs.init_checkpoint)
        if restored is None:  # the student starts as the diffusion model (fresh optimiser and EMA)
            p0 = diffusion[0]
            state = state.replace(params=p0, ema_params=jax.tree_util.tree_map(jnp.copy, p0), opt_state=exp.tx.init(p0))
            if first:
                print(f"Consistency {cs.mode}: initialised from {cs.init_from} ({diffusion[2]} checkpoint, "
                      f"step {diffusion[1]}).", flush=True)
    if restored is not None:
        state, meta = restored
        start = int(meta["step"])
        if meta.get("data_seed", config.seed) != config.seed:
            raise ValueError(f"workdir {workdir} was trained with seed {meta['data_seed']}, config has "
                             f"seed={config.seed}; use a fresh workdir or the original seed.")
        batches = train_batches(exp, skip=int(meta["data_batches"]))
        if first:
            print(f"Resuming from step {start} ({ckpt.directory}).", flush=True)
    writer = MetricWriter(os.path.join(workdir, "tb"), enabled=first)
    if start == 0 and first:
        print(f"{config.model.name}: {count_params({'params': state.params})} parameters; "
              f"{exp.n_devices} local device(s), {exp.process_count} process(es).", flush=True)

    n, n_all = exp.n_devices, exp.global_devices
    if cs is None:
        step_fn = make_train_step(exp.model, exp.sde, exp.parameterization, exp.tx, weighting=exp.weighting,
                                  time_sampler=exp.time_sampler, ema_decay=tc.ema_decay,
                                  conditional=exp.conditional, axis_name="batch" if n_all > 1 else None,
                                  n_devices=n_all, ordered_mean=bool(tc.get("ordered_mean", False)))
    else:  # the teacher's parameters (distillation) are constants of the compiled step
        step_fn = make_consistency_train_step(
            exp.model, exp.sde, exp.parameterization, exp.tx, consistency=cs.parameterization, pairs=cs.pairs,
            distance=cs.distance, teacher_params=diffusion[0] if cs.mode == "distillation" else None,
            solver=cs.solver, substeps=cs.substeps, step_offset=cs.step_offset, ema_decay=tc.ema_decay,
            conditional=exp.conditional, axis_name="batch" if n_all > 1 else None, n_devices=n_all,
            ordered_mean=bool(tc.get("ordered_mean", False)))
    if n_all > 1:
        train_step = parallel.pmap_train_step(step_fn)
        state, to_host = parallel.replicate(state, n), parallel.unreplicate
        batches = (parallel.shard(b, n) for b in batches)
    else:
        train_step, to_host = jax.jit(step_fn, donate_argnums=(0,)), (lambda st: st)

    selection = {"best": best_value(best)}
    hooks = ((tc.eval_every, make_validation(exp, best, selection)),) if tc.eval_every else ()

    def meta_fn(step):
        return {"data_batches": step, "data_seed": config.seed, "best_val": selection["best"]}

    t0 = time.perf_counter()
    multi = exp.process_count > 1
    train_loop(state, train_step, batches, start_step=start, num_steps=tc.num_steps, checkpointer=ckpt,
               save_every=tc.save_every, meta_fn=meta_fn, to_host=to_host, writer=writer,
               log_every=tc.log_every, hooks=hooks, progress=None if first else False,
               stop_agreement=parallel.any_process if multi else None,
               stop_check_every=int(tc.get("stop_check_every", 10)) if multi else 1, announce=first)
    if first:
        print(f"Training done in {time.perf_counter() - t0:.1f} s (steps {start}..{tc.num_steps}).", flush=True)
    ckpt.close()
    best.close()
    writer.close()
    if tc.get("eval_at_end", True):
        return evaluate(config, workdir)
    return {}


# ---------------------------------------------------------------------------- eval / sample
def load_for_eval(config, workdir: str, exp: Experiment | None = None):
    """(params, step, which): EMA (or raw, eval.use_ema) params of the best-on-validation
    checkpoint, or of the newest one if none was selected."""
    exp = exp or build(config)
    target = init_state(exp)
    which = config.eval.get("checkpoint", "best")
    restored = None
    if which == "best":
        restored = Checkpointer(os.path.join(workdir, "best"), max_to_keep=1, async_save=False).restore_latest(target)
    if restored is None:
        which = "last"
        restored = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False).restore_latest(target)
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/best or {workdir}/checkpoints; train first "
                                "(--mode=train).")
    state, meta = restored
    params = state.ema_params if config.eval.use_ema else state.params
    return params, int(meta["step"]), which


def sample(config, workdir: str) -> str:
    """--mode=sample: draw eval.n_samples samples; write samples.png and samples.npz."""
    exp = build(config)
    params, _, _ = load_for_eval(config, workdir, exp)
    x = draw_samples(exp, params, config.eval.n_samples, jax.random.PRNGKey(config.seed + 777))
    return write_samples(exp, workdir, x) if exp.is_first else os.path.join(workdir, "samples.png")


def write_samples(exp: Experiment, workdir: str, x: np.ndarray) -> str:
    """samples.png (a 100-image grid, or a scatter plot of 2-D data) and samples.npz."""
    path = os.path.join(workdir, "samples.png")
    if exp.info.num_levels is None:
        plots.scatter_png(x.reshape(len(x), -1)[:, :2], path)
        np.savez(os.path.join(workdir, "samples.npz"), samples=x)
    else:
        levels = exp.levels(x)
        plots.grid_png(levels[:min(len(levels), 100)], exp.info.num_levels, path)
        np.savez(os.path.join(workdir, "samples.npz"), samples=x, levels=levels)
    return path


def evaluate(config, workdir: str) -> dict:
    """--mode=eval: test bits/dim (ODE likelihood), sample grid, sample-quality metrics -> metrics.json."""
    exp = build(config)
    params, step, which = load_for_eval(config, workdir, exp)
    if exp.consistency is not None:
        return evaluate_consistency(exp, workdir, params, step, which)
    ec = config.eval
    out: dict[str, Any] = {"checkpoint": which, "checkpoint_step": step, "dataset": config.data.dataset,
                           "selection": f"{ec.val_metric} on split {config.data.val_split!r}"}
    t0 = time.perf_counter()
    test_data, _ = eval_arrays(exp, config.data.test_split)
    vals, nfe = nll(make_nll_fn(exp), params, jax.random.PRNGKey(config.seed + 999), test_data, ec.batch)
    out["test_bpd" if exp.info.num_levels is not None else "test_nll"] = float(np.mean(vals))
    out["likelihood"] = {"trace": ec.trace, "n_probes": ec.get("n_probes", 1), "rtol": ec.rtol, "atol": ec.atol,
                         "n_test": int(len(test_data)), "standard_error": float(np.std(vals) / np.sqrt(len(vals))),
                         "median": float(np.median(vals)), "max": float(np.max(vals)),
                         "nfe_mean": float(np.mean(nfe)), "nfe_max": int(np.max(nfe)),
                         "seconds": time.perf_counter() - t0}
    t0 = time.perf_counter()
    x = draw_samples(exp, params, ec.n_samples, jax.random.PRNGKey(config.seed + 777))
    out["sampling"] = {"method": config.sampling.method, "n_steps": config.sampling.n_steps,
                       "n_samples": int(len(x)), "seconds": time.perf_counter() - t0}
    if not exp.is_first:  # the numbers are the same on every process; process 0 writes them
        return out
    out["samples_png"] = write_samples(exp, workdir, x)
    if exp.info.num_levels is not None and ec.get("sample_quality", True):
        out["sample_quality"] = sample_quality(exp, x)
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump(out, f, indent=2, default=float)
    print(json.dumps(out, indent=2, default=float), flush=True)
    return out


def evaluate_consistency(exp: Experiment, workdir: str, params, step: int, which: str) -> dict:
    """--mode=eval of a consistency model -> metrics.json: eval.n_samples samples at each of
    consistency.eval_steps network calls, all from the same prior noise (key seed + 777, as
    `sample`), each with its sample-quality numbers; samples.png from sampling.n_steps."""
    config, cs = exp.config, exp.consistency
    out: dict[str, Any] = {"checkpoint": which, "checkpoint_step": step, "dataset": config.data.dataset,
                           "consistency": {"mode": cs.mode, "init_from": cs.init_from, "grid_u": cs.grid_u,
                                           "stochastic": cs.stochastic, "start_u": cs.start_u},
                           "steps": {}}
    key = jax.random.PRNGKey(config.seed + 777)
    main_x = None
    for n_steps in sorted(set(cs.eval_steps) | {int(config.sampling.n_steps)}):
        t0 = time.perf_counter()
        x = draw_samples(exp, params, config.eval.n_samples, key, cs.sampler(n_steps))
        row: dict[str, Any] = {"n_samples": int(len(x)), "seconds": time.perf_counter() - t0,
                               "finite": bool(np.all(np.isfinite(x)))}
        if exp.is_first and exp.info.num_levels is not None and config.eval.get("sample_quality", True):
            row["sample_quality"] = sample_quality(exp, x)
        out["steps"][str(n_steps)] = row
        if n_steps == int(config.sampling.n_steps):
            main_x = x
    out["sampling"] = {"method": "consistency", "n_steps": int(config.sampling.n_steps)}
    if not exp.is_first:
        return out
    out["samples_png"] = write_samples(exp, workdir, main_x)
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump(out, f, indent=2, default=float)
    print(json.dumps(out, indent=2, default=float), flush=True)
    return out


def sample_quality(exp: Experiment, x: np.ndarray) -> dict:
    """Classifier-based numbers of scoresde.metrics for digit samples (quantised to the
    data's levels first), next to the same numbers for real test digits; plus the
    acceptance ratios (confident fraction vs real, entropy vs log 10)."""
    if exp.config.data.dataset != "digits":
        return {"unavailable": "the toolkit's classifier covers the digits only"}
    q = metrics.digits_sample_quality(metrics.levels_to_input(exp.levels(x)),
                                      data_dir=exp.config.data.get("data_dir"))
    q["confident_ratio_vs_real"] = q["samples"]["confident"] / max(q["reference"]["confident"], 1e-12)
    q["entropy_over_log10"] = q["samples"]["class_entropy"] / q["max_entropy"]
    return q

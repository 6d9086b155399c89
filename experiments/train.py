"""train_and_evaluate(config, workdir) and the sample / eval modes (the Flax examples' shape).

    exp = build(config)                   # every config value checked, library objects built
    train_and_evaluate(config, workdir)   # --mode=train: train (resuming), then evaluate
    evaluate(config, workdir)             # --mode=eval: workdir/metrics.json
    sample(config, workdir)               # --mode=sample: workdir/samples.png

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
from scoresde.models import count_params
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
    sampler = registry.build_sampler(config)
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
                      global_devices=parallel.global_device_count())


Setup = build  # the name experiments/guided.py calls


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


def make_sample_fn(exp: Experiment) -> Callable:
    """jit(params, key, n) -> n samples of the config's sampler from x_T ~ prior."""
    def f(params, key, n):
        kx, ks = jax.random.split(key)
        x_T = exp.sde.prior_sample(kx, (n,) + exp.input_shape)
        return run_sampler(exp.sampler, exp.score_fn(params), exp.sde, ks, x_T,
                           denoise=exp.config.sampling.denoise).samples
    return jax.jit(f, static_argnums=2)


def draw_samples(exp: Experiment, params, n: int, key) -> np.ndarray:
    """n samples in batches of sampling.batch (batch starting at i uses fold_in(key, i)).

    With several processes each draws a contiguous block of the batches and the blocks
    are gathered once (as in `nll`): every process returns the single-process samples.
    """
    fn = make_sample_fn(exp)
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
    step_fn = make_train_step(exp.model, exp.sde, exp.parameterization, exp.tx, weighting=exp.weighting,
                              time_sampler=exp.time_sampler, ema_decay=tc.ema_decay,
                              conditional=exp.conditional, axis_name="batch" if n_all > 1 else None,
                              n_devices=n_all, ordered_mean=bool(tc.get("ordered_mean", False)))
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

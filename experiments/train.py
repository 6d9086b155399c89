"""train_and_evaluate(config, workdir) and the sample / eval modes (Flax-examples style).

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
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scoresde import data as data_lib
from scoresde import parallel
from scoresde.likelihood import data_bits_per_dim, log_likelihood
from scoresde.sampling import sample as run_sampler
from scoresde.training import (
    Checkpointer, MetricWriter, create_train_state, make_eval_loss, make_optimizer, make_train_step,
    network_score_fn, train_loop,
)

try:  # experiments/ run as a script directory or as a package
    from experiments import registry
except ImportError:  # pragma: no cover
    import registry  # type: ignore


# ---------------------------------------------------------------------------- setup
class Setup:
    """Everything built from a config, validated before any training starts."""

    def __init__(self, config):
        self.config = config
        self.info = data_lib.dataset_info(config.data.dataset) if config.data.dataset in data_lib.DATASETS else None
        if self.info is None:
            raise ValueError(f"config option data.dataset={config.data.dataset!r} is not valid; valid "
                             f"choices: {', '.join(data_lib.dataset_names())}.")
        self.sde = registry.build_sde(config)
        self.model = registry.build_model(config, self.info.num_classes)
        self.param = registry.build_parameterization(config)
        self.weighting = registry.build_weighting(config)
        self.time_sampler = registry.build_time_sampler(config)
        self.sampler = registry.build_sampler(config)
        self.input_shape = registry.model_input_shape(config, self.info.shape)
        if config.training.get("conditional", False) and self.info.num_classes is None:
            raise ValueError(f"config option training.conditional=True needs labels, but "
                             f"data.dataset={config.data.dataset!r} has none.")
        self.process_index, self.process_count = parallel.process_info()
        self.n_devices = parallel.local_device_count()
        bs = config.data.batch_size
        if bs % self.process_count:
            raise ValueError(f"config option data.batch_size={bs} is not divisible by the number of "
                             f"processes ({self.process_count}); choose a multiple of {self.process_count}.")
        self.host_batch = bs // self.process_count
        if self.host_batch % self.n_devices:
            raise ValueError(f"config option data.batch_size={bs} gives {self.host_batch} examples per host, "
                             f"not divisible by the {self.n_devices} local devices; choose a multiple of "
                             f"{self.n_devices * self.process_count}.")
        self.tx = make_optimizer(config.optim.lr, warmup_steps=config.optim.warmup,
                                 grad_clip=config.optim.grad_clip, weight_decay=config.optim.weight_decay,
                                 b1=config.optim.get("b1", 0.9), b2=config.optim.get("b2", 0.999),
                                 eps=config.optim.get("eps", 1e-8))
        self.conditional = bool(config.training.get("conditional", False))
        self.data_range = (-1.0, 1.0) if config.data.scale == "[-1,1]" else (0.0, 1.0)

    # data -----------------------------------------------------------------------
    def train_iterator(self, skip: int = 0):
        c = self.config.data
        it = data_lib.make_iterator(c.dataset, c.train_split, self.host_batch, seed=self.config.seed,
                                    dequantize=c.dequantize, flip=c.flip, process_index=self.process_index,
                                    process_count=self.process_count, data_dir=c.get("data_dir"),
                                    scale=c.scale, start_batch=skip)
        return it  # starts at the checkpointed position: the same batches, the same noise

    def to_model_batch(self, batch: dict) -> dict:
        out = {"image": batch["image"].reshape((batch["image"].shape[0],) + self.input_shape)}
        if self.conditional:
            out["label"] = batch["label"]
        return out

    def levels(self, x) -> np.ndarray:
        """Model-scale images (N, ...) -> integer levels (N, *info.shape) of the dataset."""
        x = np.asarray(x)
        return data_lib.to_levels(x.reshape((len(x),) + tuple(self.info.shape)), self.info.num_levels,
                                  scale=self.config.data.scale)

    def init_state(self):
        x = jnp.zeros((self.n_devices,) + self.input_shape, jnp.float32)
        y = jnp.zeros((self.n_devices,), jnp.int32) if self.conditional else None
        return create_train_state(self.model, self.tx, jax.random.PRNGKey(self.config.seed), x, y)

    def score_fn(self, params):
        return network_score_fn(self.model, params, self.sde, self.param)

    # evaluation pieces ------------------------------------------------------------
    def eval_arrays(self, split: str):
        """(x-or-levels (N, *input_shape), labels): integer levels for image sets, floats for 2-D sets."""
        c = self.config.data
        images, labels = data_lib.load_arrays(c.dataset, split, data_dir=c.get("data_dir"))
        n = self.config.eval.get("max_examples")
        if n:
            images, labels = images[:n], labels[:n]
        return np.asarray(images).reshape((len(images),) + self.input_shape), np.asarray(labels)

    def make_nll_fn(self, tol: float | None = None):
        """jit(params, key, data) -> (per-example bits/dim (image sets) or NLL in nats
        (2-D sets), per-example function evaluations of the ODE solve). `tol` replaces
        eval.rtol and eval.atol (validation may use a looser solve than the test)."""
        ec = self.config.eval
        rtol, atol = (ec.rtol, ec.atol) if tol is None else (tol, tol)
        kw = dict(trace=ec.trace, rtol=rtol, atol=atol, n_probes=ec.get("n_probes", 1))
        if self.info.num_levels is not None:
            def f(params, key, levels):
                return data_bits_per_dim(self.score_fn(params), self.sde, key, levels,
                                         num_levels=self.info.num_levels, data_range=self.data_range, **kw)
        else:
            def f(params, key, x):
                logp, nfe = log_likelihood(self.score_fn(params), self.sde, key, x, **kw)
                return -logp, nfe
        return jax.jit(f)

    def nll(self, fn, params, key, data, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-example (value, nfe) of `make_nll_fn` over `data`, in batches."""
        vals, nfes = [], []
        for i in range(0, len(data), batch):
            v, n = fn(params, jax.random.fold_in(key, i), jnp.asarray(data[i:i + batch]))
            vals.append(np.asarray(v))
            nfes.append(np.asarray(n))
        return np.concatenate(vals), np.concatenate(nfes)

    def make_sample_fn(self):
        def f(params, key, n):
            kx, ks = jax.random.split(key)
            x_T = self.sde.prior_sample(kx, (n,) + self.input_shape)
            return run_sampler(self.sampler, self.score_fn(params), self.sde, ks, x_T,
                               denoise=self.config.sampling.denoise).samples
        return jax.jit(f, static_argnums=2)


# ---------------------------------------------------------------------------- train
def _best_value(best: Checkpointer) -> float:
    step = best.latest_step()
    if step is None:
        return math.inf
    from scoresde.training import read_meta

    try:
        return float(read_meta(best.directory, step).get("val", math.inf))
    except Exception:  # noqa: BLE001 - a broken best checkpoint is simply not a best
        return math.inf


def train_and_evaluate(config, workdir: str) -> dict:
    """Train (resuming from the newest good checkpoint in workdir), then evaluate.

    Every config value is validated (names, batch divisibility, dataset availability)
    before the first step. Returns the metrics dict of `evaluate` (or {} if
    config.training.eval_at_end is False).
    """
    s = Setup(config)
    tc = config.training
    os.makedirs(workdir, exist_ok=True)
    first = s.process_index == 0
    it = s.train_iterator()  # opens the data now: a missing dataset fails here, before any step
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=tc.keep)
    best = Checkpointer(os.path.join(workdir, "best"), max_to_keep=1, async_save=False)
    state = s.init_state()
    restored = ckpt.restore_latest(state)
    start = 0
    if restored is not None:
        state, meta = restored
        start = int(meta["step"])
        if meta.get("data_seed", config.seed) != config.seed:
            raise ValueError(f"workdir {workdir} was trained with seed {meta['data_seed']}, config has "
                             f"seed={config.seed}; use a fresh workdir or the original seed.")
        it = s.train_iterator(skip=int(meta["data_batches"]))
        print(f"Resuming from step {start} ({ckpt.directory}).", flush=True)
    writer = MetricWriter(os.path.join(workdir, "tb"), enabled=first)
    from scoresde.models import count_params

    if start == 0 and first:
        print(f"{config.model.name}: {count_params({'params': state.params})} parameters; "
              f"{s.n_devices} local device(s), {s.process_count} process(es).", flush=True)

    step_fn = make_train_step(s.model, s.sde, s.param, s.tx, weighting=s.weighting, time_sampler=s.time_sampler,
                              ema_decay=tc.ema_decay, conditional=s.conditional,
                              axis_name="batch" if s.n_devices > 1 else None, n_devices=s.n_devices)
    if s.n_devices > 1:
        train_step = parallel.pmap_train_step(step_fn)
        state_dev = parallel.replicate(state, s.n_devices)
        to_host = parallel.unreplicate
        batches = (parallel.shard(s.to_model_batch(b), s.n_devices) for b in it)
    else:
        train_step = jax.jit(step_fn, donate_argnums=(0,))
        state_dev, to_host = state, (lambda st: st)
        batches = (s.to_model_batch(b) for b in it)

    best_val = [_best_value(best)]
    hooks = ()
    if tc.eval_every:
        val_data, val_labels = s.eval_arrays(config.data.val_split)
        nll_fn = s.make_nll_fn(config.eval.get("val_tol"))
        eval_loss = jax.jit(make_eval_loss(s.model, s.sde, s.param, weighting=s.weighting,
                                           time_sampler=s.time_sampler, conditional=s.conditional))
        val_key = jax.random.PRNGKey(config.seed + 12345)  # fixed: comparable across steps

        def validate(step, host_state):
            params = host_state.ema_params
            t0 = time.perf_counter()
            if config.eval.val_metric == "bpd":
                val = float(np.mean(s.nll(nll_fn, params, val_key, val_data, config.eval.batch)[0]))
            else:
                vb = jax.tree_util.tree_map(jnp.asarray, s.to_model_batch(
                    {"image": _scaled(s, val_data), "label": val_labels}))  # labels used if conditional
                val = float(np.mean([np.mean(eval_loss(params, jax.random.fold_in(val_key, r), vb))
                                     for r in range(8)]))
            out = {f"val_{config.eval.val_metric}": val, "val_seconds": time.perf_counter() - t0}
            if val < best_val[0] and math.isfinite(val):
                best_val[0] = val
                best.save(step, host_state, {"val": val, "metric": config.eval.val_metric})
            out["best_val"] = best_val[0]
            return out

        hooks = ((tc.eval_every, validate),)

    def meta_fn(step):
        return {"data_batches": step, "data_seed": config.seed, "best_val": best_val[0]}

    t0 = time.perf_counter()
    state_dev = train_loop(state_dev, train_step, batches, start_step=start, num_steps=tc.num_steps,
                           checkpointer=ckpt, save_every=tc.save_every, meta_fn=meta_fn, to_host=to_host,
                           writer=writer, log_every=tc.log_every, hooks=hooks)
    if first:
        print(f"Training done in {time.perf_counter() - t0:.1f} s (steps {start}..{tc.num_steps}).", flush=True)
    ckpt.close()
    best.close()
    writer.close()
    if tc.get("eval_at_end", True):
        return evaluate(config, workdir)
    return {}


def _scaled(s: Setup, levels):
    """Integer levels -> scaled float data (dequantised with a fixed seed); 2-D data as is."""
    if s.info.num_levels is None:
        return np.asarray(levels, np.float32)
    return data_lib.scale_images(levels, s.info.num_levels, scale=s.config.data.scale, dequantize=True,
                                 rng=np.random.default_rng(0))


# ---------------------------------------------------------------------------- eval / sample
def load_for_eval(config, workdir: str, s: Setup | None = None):
    """(params, step, which): EMA (or raw, eval.use_ema) params of the best-on-validation
    checkpoint, or of the newest one if none was selected."""
    s = s or Setup(config)
    target = s.init_state()
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


def draw_samples(config, s: Setup, params, n: int, key) -> np.ndarray:
    fn = s.make_sample_fn()
    out, bs = [], config.sampling.batch
    for i in range(0, n, bs):
        out.append(np.asarray(fn(params, jax.random.fold_in(key, i), min(bs, n - i))))
    return np.concatenate(out)


def sample(config, workdir: str) -> str:
    """--mode=sample: draw eval.n_samples samples; write samples.png and samples.npz."""
    s = Setup(config)
    params, step, which = load_for_eval(config, workdir, s)
    x = draw_samples(config, s, params, config.eval.n_samples, jax.random.PRNGKey(config.seed + 777))
    return _write_samples(s, workdir, x)


def _write_samples(s: Setup, workdir: str, x: np.ndarray):
    from experiments import plots

    path = os.path.join(workdir, "samples.png")
    if s.info.num_levels is None:
        plots.scatter_png(x.reshape(len(x), -1)[:, :2], path)
        np.savez(os.path.join(workdir, "samples.npz"), samples=x)
    else:
        levels = s.levels(x)
        plots.grid_png(levels[:min(len(levels), 100)], s.info.num_levels, path)
        np.savez(os.path.join(workdir, "samples.npz"), samples=x, levels=levels)
    return path


def evaluate(config, workdir: str) -> dict:
    """--mode=eval: test bits/dim (ODE likelihood), sample grid, sample-quality metrics -> metrics.json."""
    s = Setup(config)
    params, step, which = load_for_eval(config, workdir, s)
    ec = config.eval
    out: dict[str, Any] = {"checkpoint": which, "checkpoint_step": step, "dataset": config.data.dataset,
                           "selection": f"{ec.val_metric} on split {config.data.val_split!r}"}
    t0 = time.perf_counter()
    test_data, _ = s.eval_arrays(config.data.test_split)
    vals, nfe = s.nll(s.make_nll_fn(), params, jax.random.PRNGKey(config.seed + 999), test_data, ec.batch)
    out["test_bpd" if s.info.num_levels is not None else "test_nll"] = float(np.mean(vals))
    out["likelihood"] = {"trace": ec.trace, "n_probes": ec.get("n_probes", 1), "rtol": ec.rtol, "atol": ec.atol,
                         "n_test": int(len(test_data)), "standard_error": float(np.std(vals) / np.sqrt(len(vals))),
                         "median": float(np.median(vals)), "max": float(np.max(vals)),
                         "nfe_mean": float(np.mean(nfe)), "nfe_max": int(np.max(nfe)),
                         "seconds": time.perf_counter() - t0}
    t0 = time.perf_counter()
    x = draw_samples(config, s, params, ec.n_samples, jax.random.PRNGKey(config.seed + 777))
    out["sampling"] = {"method": config.sampling.method, "n_steps": config.sampling.n_steps,
                       "n_samples": int(len(x)), "seconds": time.perf_counter() - t0}
    out["samples_png"] = _write_samples(s, workdir, x)
    if s.info.num_levels is not None and ec.get("sample_quality", True):
        out["sample_quality"] = sample_quality(config, s, x)
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump(out, f, indent=2, default=float)
    print(json.dumps(out, indent=2, default=float), flush=True)
    return out


def sample_quality(config, s: Setup, x: np.ndarray) -> dict:
    """Classifier-based numbers of scoresde.metrics for digit samples (quantised to the
    data's levels first), next to the same numbers for real test digits; plus the
    acceptance ratios (confident fraction vs real, entropy vs log 10)."""
    from scoresde import metrics

    if config.data.dataset != "digits":
        return {"unavailable": "the toolkit's classifier covers the digits only"}
    levels = s.levels(x)
    q = metrics.digits_sample_quality(metrics.levels_to_input(levels), data_dir=config.data.get("data_dir"))
    q["confident_ratio_vs_real"] = q["samples"]["confident"] / max(q["reference"]["confident"], 1e-12)
    q["entropy_over_log10"] = q["samples"]["class_entropy"] / q["max_entropy"]
    return q

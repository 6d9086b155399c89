r"""Throughput on whatever devices JAX sees: training, sampling, likelihood (issue 16).

    python -m experiments.benchmarks.accelerator                  # digits U-Net and cifar10_ddpmpp
    python -m experiments.benchmarks.accelerator --only digits_unet --per_device_batch 64
    python -m experiments.benchmarks.accelerator --quick          # CPU smoke run (the test suite's)

For each config (experiments/configs/digits_unet.py, experiments/configs/cifar10_ddpmpp.py;
the network, SDE, loss and optimiser exactly as configured, random data of the right
shape, so no dataset is needed):

- training: the pmapped train step of experiments/train.py (`make_train_step` over all
  local devices, gradients averaged with lax.pmean), steps/s and images/s for a global
  batch of per_device_batch x devices;
- sampling: images/s of DPM-Solver++ (20 steps) and Euler-Maruyama (200 steps), the
  batch split over the devices with `scoresde.parallel.pmap_over_batch`;
- likelihood: points/s of `data_bits_per_dim` (Hutchinson trace, one probe, adaptive
  Tsit5, rtol = atol = 1e-5 as eval.*) and its mean NFE, split over the devices;
- memory: the devices' peak bytes in use (`Device.memory_stats()`, GPUs and TPUs) and
  the process's peak resident memory (CPU devices have no memory_stats).

Times exclude compilation (one untimed call first; reported separately) and are the
median of --repeats timed calls, each ending in block_until_ready. --quick runs the
digits_unet config with its network swapped for a 32x2 MLP (compiling the U-Net's train
step alone takes minutes on a busy 2-core machine), tiny batches, one repeat and a loose
likelihood tolerance, to check in the test suite that every path of the benchmark
runs; its numbers are not a measurement.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

CONFIGS = ("digits_unet", "cifar10_ddpmpp")


def _load_config(name: str):
    import importlib

    if name not in CONFIGS:
        raise ValueError(f"--only {name!r} is not a benchmark config; valid: {', '.join(CONFIGS)}.")
    return importlib.import_module(f"experiments.configs.{name}").get_config()


def _timed(fn, repeats: int) -> tuple[float, float]:
    """(compile-and-first-call seconds, median seconds of the next `repeats` calls)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def _note(row: dict, what: str):
    """One line per finished measurement, so that a run stopped part-way leaves its numbers."""
    print(f"  {row['config']}: " + what, flush=True)


def _peak_memory() -> str:
    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    peaks = [s.get("peak_bytes_in_use") for s in stats if s.get("peak_bytes_in_use") is not None]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    dev = f"{max(peaks) / 2**30:.2f} GiB/device" if peaks else "n/a (CPU)"
    return f"{dev}; host RSS {rss:.2f} GiB"


def bench_config(name: str, *, per_device_batch: int, sample_batch: int, nll_batch: int, repeats: int,
                 train_repeats: int, nll_tol: float = 1e-5, shrink: bool = False) -> dict:
    """One row: the config's training, sampling and likelihood throughput (module docstring).
    shrink=True: the --quick network (a 32x2 MLP in place of the config's)."""
    from experiments import train as T
    from scoresde import parallel, sampling
    from scoresde.likelihood import data_bits_per_dim
    from scoresde.models import count_params
    from scoresde.training import make_train_step

    config = _load_config(name)
    n = parallel.local_device_count()
    config.data.batch_size = per_device_batch * n
    if shrink:
        config.model.name = "mlp"
        config.model.kwargs = {"width": 32, "depth": 2}
    exp = T.build(config)
    state = T.init_state(exp)
    row = {"config": name + (" (quick: MLP 32x2)" if shrink else ""), "params": count_params({"params": state.params}), "devices": n,
           "device_kind": jax.local_devices()[0].device_kind, "per_device_batch": per_device_batch}

    # training: the pmapped step of experiments/train.py
    step = parallel.pmap_train_step(make_train_step(
        exp.model, exp.sde, exp.parameterization, exp.tx, weighting=exp.weighting,
        time_sampler=exp.time_sampler, ema_decay=config.training.ema_decay, conditional=exp.conditional,
        axis_name="batch", n_devices=n), donate_state=True)
    rng = np.random.default_rng(0)
    batch = parallel.shard({"image": rng.uniform(-1, 1, (per_device_batch * n,) + exp.input_shape)
                            .astype(np.float32)}, n)
    box = {"state": parallel.replicate(state, n)}

    def train_once():
        for _ in range(train_repeats):
            box["state"], m = step(box["state"], batch)
        return m["loss"]

    first, sec = _timed(train_once, repeats)
    row["train_compile_s"] = first
    row["train_steps_per_s"] = train_repeats / sec
    row["train_images_per_s"] = train_repeats * per_device_batch * n / sec
    _note(row, f"train {row['train_steps_per_s']:.3g} steps/s, {row['train_images_per_s']:.3g} images/s "
               f"(compile {first:.0f} s)")
    params = parallel.unreplicate(box["state"]).ema_params

    # sampling: DPM-Solver++ 20 steps and Euler-Maruyama 200 steps, batch over devices
    for label, sampler in (("dpmpp20", sampling.DPMSolverPP(n_steps=20)),
                           ("em200", sampling.EulerMaruyama(n_steps=200))):
        def draw(params, key, x_T, sampler=sampler):
            return sampling.sample(sampler, exp.score_fn(params), exp.sde, key, x_T, denoise=True).samples

        f = parallel.pmap_over_batch(draw, batched_argnums=(2,))
        x_T = np.asarray(exp.sde.prior_sample(jax.random.PRNGKey(1), (sample_batch * n,) + exp.input_shape))
        first, sec = _timed(lambda: f(params, jax.random.PRNGKey(2), x_T), repeats)
        row[f"{label}_compile_s"] = first
        row[f"{label}_images_per_s"] = sample_batch * n / sec
        _note(row, f"{label} {row[f'{label}_images_per_s']:.3g} images/s (compile {first:.0f} s)")

    # likelihood: bits/dim by the probability-flow ODE, batch over devices
    levels = rng.integers(0, exp.info.num_levels, (nll_batch * n,) + exp.input_shape).astype(np.int32)

    def nll(params, key, lv):
        return data_bits_per_dim(exp.score_fn(params), exp.sde, key, lv, num_levels=exp.info.num_levels,
                                 data_range=exp.data_range, trace="hutchinson", rtol=nll_tol, atol=nll_tol)

    g = parallel.pmap_over_batch(nll, batched_argnums=(2,))
    out = {}

    def nll_once():
        out["v"] = g(params, jax.random.PRNGKey(3), levels)
        return out["v"]

    first, sec = _timed(nll_once, repeats)
    row["nll_compile_s"] = first
    row["nll_points_per_s"] = nll_batch * n / sec
    row["nll_nfe_mean"] = float(np.mean(np.asarray(out["v"][1])))
    _note(row, f"likelihood {row['nll_points_per_s']:.3g} points/s, mean NFE {row['nll_nfe_mean']:.0f} "
               f"(compile {first:.0f} s)")
    row["memory"] = _peak_memory()
    return row


def table(rows: list[dict]) -> str:
    head = ("| config | params | devices | per-device batch | train steps/s | train images/s | "
            "DPM-Solver++ 20 images/s | EM 200 images/s | likelihood points/s (mean NFE) | "
            "compile s (train / DPM++ / EM / NLL) | memory |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['params'] / 1e6:.2f}M | {r['devices']} x {r['device_kind']} | "
            f"{r['per_device_batch']} | {r['train_steps_per_s']:.3g} | {r['train_images_per_s']:.3g} | "
            f"{r['dpmpp20_images_per_s']:.3g} | {r['em200_images_per_s']:.3g} | "
            f"{r['nll_points_per_s']:.3g} ({r['nll_nfe_mean']:.0f}) | "
            f"{r['train_compile_s']:.0f} / {r['dpmpp20_compile_s']:.0f} / {r['em200_compile_s']:.0f} / "
            f"{r['nll_compile_s']:.0f} | {r['memory']} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=CONFIGS, action="append", help="configs to run (default: both)")
    p.add_argument("--per_device_batch", type=int, default=None, help="training batch per device "
                   "(default: the config's global batch / devices, at least 1)")
    p.add_argument("--sample_batch", type=int, default=None, help="images per device per sampler call")
    p.add_argument("--nll_batch", type=int, default=None, help="points per device per likelihood call")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    p.add_argument("--train_repeats", type=int, default=10, help="train steps per timed call")
    p.add_argument("--quick", action="store_true", help="digits U-Net, tiny batches, one repeat (CPU smoke run)")
    args = p.parse_args(argv)
    n = jax.local_device_count()
    if args.quick:
        names = args.only or ["digits_unet"]
        kw = dict(per_device_batch=args.per_device_batch or 2, sample_batch=args.sample_batch or 2,
                  nll_batch=args.nll_batch or 2, repeats=1, train_repeats=2, nll_tol=1e-2, shrink=True)
    else:
        names = args.only or list(CONFIGS)
        kw = dict(per_device_batch=args.per_device_batch, sample_batch=args.sample_batch or 16,
                  nll_batch=args.nll_batch or 16, repeats=args.repeats, train_repeats=args.train_repeats)
    for k in ("per_device_batch", "sample_batch", "nll_batch", "repeats", "train_repeats"):
        if kw.get(k) is not None and kw[k] < 1:
            raise ValueError(f"--{k} must be >= 1, got {kw[k]}.")
    print(f"# {n} x {jax.local_devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"{platform.machine()}, {os.cpu_count()} CPU cores", flush=True)
    rows = []
    for name in names:
        cfg_kw = dict(kw)
        if cfg_kw["per_device_batch"] is None:
            cfg_kw["per_device_batch"] = max(1, _load_config(name).data.batch_size // n)
        rows.append(bench_config(name, **cfg_kw))
        print(table(rows[-1:]), flush=True)
    print()
    print(table(rows), flush=True)
    return rows


if __name__ == "__main__":
    main()

"""Bits/dim bounds of the main job's digits checkpoint under each dequantisation and K.

    python -m experiments.benchmarks.likelihood_digits [--workdir /tmp/digits] [--n 297]
        [--draws 4] [--probes 4] [--fit_steps 300] [--core 1]

Loads the best-on-validation checkpoint of the main job (experiments/configs/digits_unet.py,
`experiments.train.load_for_eval`) and evaluates the test digits with
`bits_per_dim_bound` for the uniform, truncated-normal (i-DODE default std and a wider one)
and learned (`DequantizerNet` fitted on the training split by `fit_dequantizer`, score
model fixed) dequantisers. Each dequantiser is one solve of K = `--draws` draws per test
digit; from it come the single-draw bound (2) (draw 0 alone, the bound the main job
reports, and the mean of the K single-draw bounds) and the importance-weighted bound (3)
over the K draws. Standard errors are over the test digits; "IW se" is the mean
per-example delta-method SE of (3) from its K draws, "probe se" the Hutchinson probes'
share (module docstring of scoresde.likelihood.dequantization: with K > 1 and the
Hutchinson trace the probes bias (3) low by up to about half their variance).

Solve: Hutchinson trace with `--probes` Rademacher probes, joint batch, Gauss-Legendre
quadrature (3 nodes) of the divergence on the dense output of Tsit5 at rtol = atol =
`--tol`. Selection of anything (the wider truncated-normal std, the dequantiser's training)
uses the training or validation split only; the test split is only evaluated.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import train
from scoresde.likelihood import TruncatedNormalDequantizer, UniformDequantizer, bits_per_dim_bound
from scoresde.models.dequantizer import DequantizerNet, fit_dequantizer

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "digits_unet.py")


def load_config(path):
    spec = importlib.util.spec_from_file_location("_digits_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def evaluate(score_fn, exp, levels, deq, draws, probes, tol, batch, key):
    """bits_per_dim_bound over `levels` in batches; returns the concatenated fields."""
    kw = dict(trace="hutchinson", n_probes=probes, batching="joint", quadrature=3, rtol=tol, atol=tol,
              jacobian_mode="reverse")
    fn = jax.jit(lambda k, lv: bits_per_dim_bound(score_fn, exp.sde, k, lv, num_levels=exp.info.num_levels,
                                                  data_range=exp.data_range, dequantizer=deq, n_draws=draws,
                                                  **kw))
    out = []
    for i in range(0, len(levels), batch):
        r = fn(jax.random.fold_in(key, i), jnp.asarray(levels[i:i + batch]))
        out.append(jax.tree_util.tree_map(np.asarray, r))
    return type(out[0])(*(np.concatenate(f) for f in zip(*out)))


def summarise(name, r, seconds, probes):
    n = len(r.bpd)
    se = lambda v: float(np.std(v, ddof=1) / math.sqrt(n))  # noqa: E731
    k = r.bpd_draws.shape[1]
    return dict(name=name, K=k, probes=probes, one=float(r.bpd_draws[:, 0].mean()), one_se=se(r.bpd_draws[:, 0]),
                avg=float(r.bpd_draws.mean()), avg_se=se(r.bpd_draws.mean(1)), iw=float(r.bpd.mean()),
                iw_se=se(r.bpd), iw_ex_se=float(np.nanmean(r.se)), probe_se=float(np.nanmean(r.probe_se)),
                nfe=float(r.nfe.mean()), seconds=seconds)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/digits")
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--n", type=int, default=None, help="test digits (default: all)")
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--probes", type=int, default=4)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--batch", type=int, default=100, help="test digits per solve")
    p.add_argument("--fit_steps", type=int, default=300)
    p.add_argument("--core", type=int, default=-1, help="pin to this core (-1: no pinning)")
    p.add_argument("--out", default=os.path.join(RESULTS, "likelihood_digits.md"))
    a = p.parse_args(argv)
    if a.core >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {a.core})
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    config = load_config(a.config)
    exp = train.build(config)
    params, step, which = train.load_for_eval(config, a.workdir, exp)
    score_fn = exp.score_fn(params)
    test, _ = train.eval_arrays(exp, config.data.test_split)
    test = test[:a.n] if a.n else test
    train_levels, _ = train.eval_arrays(exp, config.data.train_split)
    key = jax.random.PRNGKey(config.seed + 999)
    log = lambda s: print(s, flush=True)  # noqa: E731
    width = (exp.data_range[1] - exp.data_range[0]) / exp.info.num_levels

    t0 = time.perf_counter()
    net = DequantizerNet(num_levels=exp.info.num_levels)
    deq_params, hist = fit_dequantizer(net, score_fn, exp.sde, np.asarray(train_levels), key=jax.random.PRNGKey(5),
                                       data_range=exp.data_range, steps=a.fit_steps)
    t_fit = time.perf_counter() - t0
    log(f"fitted the dequantiser in {t_fit:.0f} s ({a.fit_steps} steps); entropy -E log q: "
        f"{float(np.asarray(hist)[0]):.3f} -> {float(np.asarray(hist)[-1]):.3f} nats")

    deqs = [("uniform", UniformDequantizer()),
            ("truncated normal, std sigma(eps)/alpha(eps) (i-DODE)", TruncatedNormalDequantizer()),
            (f"truncated normal, std w/4 = {width / 4:.4f}", TruncatedNormalDequantizer(std=width / 4)),
            (f"learned (DequantizerNet, {a.fit_steps} steps on train)", net.as_dequantizer(deq_params))]
    rows = []
    for name, deq in deqs:
        t0 = time.perf_counter()
        r = evaluate(score_fn, exp, test, deq, a.draws, a.probes, a.tol, a.batch, key)
        rows.append(summarise(name, r, time.perf_counter() - t0, a.probes))
        s = rows[-1]
        log(f"{name}: K=1 {s['one']:.4f} +- {s['one_se']:.4f}, mean of K {s['avg']:.4f}, IW K={s['K']} "
            f"{s['iw']:.4f} +- {s['iw_se']:.4f} (per-example IW se {s['iw_ex_se']:.4f}, probe se "
            f"{s['probe_se']:.4f}), NFE {s['nfe']:.0f}, {s['seconds']:.0f} s")
    total = time.perf_counter() - t_start
    best = min(rows, key=lambda s: s["iw"])
    md = "\n\n".join([
        "# Digits bits/dim under each dequantisation and bound (python -m experiments.benchmarks.likelihood_digits)",
        f"Checkpoint: {a.workdir} ({which}, step {step}; experiments/configs/digits_unet.py, the main job). "
        f"{len(test)} test digits, D = 64, L = {exp.info.num_levels} levels in {exp.data_range}. Solve: Hutchinson "
        f"trace, {a.probes} Rademacher probes, joint batch of {a.batch} digits x K draws, quadrature 3, Tsit5 "
        f"rtol = atol = {a.tol:g}. K = {a.draws} draws per digit per dequantiser. Load (`uptime`) "
        f"{' '.join(f'{v:.2f}' for v in load0)} at the start, {' '.join(f'{v:.2f}' for v in os.getloadavg())} "
        f"at the end; {os.cpu_count()} cores; total {total:.0f} s (dequantiser fit {t_fit:.0f} s).",
        "| dequantiser | bound (2), draw 0 (+- SE) | mean of K bounds (2) | IW bound (3), K draws (+- SE) | "
        "per-example IW se | probe se | NFE per point | s |\n|---|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(
            f"| {s['name']} | {s['one']:.4f} +- {s['one_se']:.4f} | {s['avg']:.4f} +- {s['avg_se']:.4f} | "
            f"{s['iw']:.4f} +- {s['iw_se']:.4f} | {s['iw_ex_se']:.4f} | {s['probe_se']:.4f} | {s['nfe']:.0f} | "
            f"{s['seconds']:.0f} |" for s in rows),
        f"Best bound: {best['name']}, IW K={best['K']}: {best['iw']:.4f} +- {best['iw_se']:.4f} bits/dim. On the "
        f"same digits the uniform single-draw bounds average {rows[0]['avg']:.4f}: the best IW bound is "
        f"{best['iw'] - rows[0]['avg']:+.4f} from it, its own single-draw bounds {best['avg'] - rows[0]['avg']:+.4f} "
        "(unbiased with Hutchinson probes; the IW bound is biased low by up to about half the probes' variance, "
        f"per-example probe se {best['probe_se']:.4f} bits/dim). The issue's reference, 1.906, is the uniform "
        "single-draw bound on all 297 test digits (one probe, per-example Tsit5 1e-5); its acceptance asks for "
        "a bound 0.05 below it.",
    ]) + "\n"
    print(md)
    with open(a.out, "w") as f:
        f.write(md)


if __name__ == "__main__":
    main()

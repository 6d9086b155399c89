"""Speed of one training step (loss + grad + Adam update) of the score networks on CPU.

    python -m experiments.benchmarks.models [--batch 128] [--repeats 20] [--only digits]

Prints a markdown table: configuration, parameters, ms per forward pass and ms per
train step (median over repeats, after compilation). The digits configs are the ones
recommended for the 8x8 digits on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scoresde.models import MLP, LocalResNet, UNet, count_params

CONFIGS = {
    "MLP(256x3) digits-flat": (lambda: MLP(width=256, depth=3), (64,)),
    "MLP(512x4) digits-flat": (lambda: MLP(width=512, depth=4, dropout=0.1), (64,)),
    "UNet ch16 (1,2) rb1 digits": (lambda: UNet(ch=16, ch_mult=(1, 2), num_res_blocks=1), (8, 8, 1)),
    "UNet ch32 (1,2) rb1 digits": (lambda: UNet(ch=32, ch_mult=(1, 2), num_res_blocks=1), (8, 8, 1)),
    "UNet ch32 (1,2) rb2 attn4 digits": (lambda: UNet(ch=32, ch_mult=(1, 2), num_res_blocks=2,
                                                      attn_resolutions=(4,)), (8, 8, 1)),
    "UNet ch64 (1,2) rb2 attn4 digits": (lambda: UNet(ch=64, ch_mult=(1, 2), num_res_blocks=2,
                                                      attn_resolutions=(4,)), (8, 8, 1)),
    "LocalResNet c32 L8 digits": (lambda: LocalResNet(channels=32, n_layers=8), (8, 8, 1)),
    "LocalResNet c64 L8 digits": (lambda: LocalResNet(channels=64, n_layers=8), (8, 8, 1)),
    "UNet ch32 (1,2,2) rb1 attn7 mnist": (lambda: UNet(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                                                       attn_resolutions=(7,)), (28, 28, 1)),
}


def bench(make, shape, batch, repeats):
    net = make()
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (batch, *shape))
    t = jax.random.uniform(key, (batch,), minval=1e-3, maxval=1.0)
    params = jax.jit(net.init)(key, x, t)["params"]
    opt = optax.adam(1e-4)
    opt_state = opt.init(params)

    def loss_fn(p, x, t, k):
        eps = jax.random.normal(k, x.shape)
        out = net.apply({"params": p}, x + eps, t, train=True, rngs={"dropout": k})
        return jnp.mean((out - eps) ** 2)

    @jax.jit
    def step(p, s, x, t, k):
        loss, g = jax.value_and_grad(loss_fn)(p, x, t, k)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    fwd = jax.jit(lambda p, x, t: net.apply({"params": p}, x, t))

    def timeit(f):
        jax.block_until_ready(f())
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            ts.append(time.perf_counter() - t0)
        return 1e3 * float(np.median(ts))

    ms_fwd = timeit(lambda: fwd(params, x, t))
    ms_step = timeit(lambda: step(params, opt_state, x, t, key))
    return count_params({"params": params}), ms_fwd, ms_step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--only", default="", help="substring filter on config names")
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"batch {args.batch}, {jax.devices()[0].platform}, {jax.device_count()} device(s), "
          f"{os.cpu_count()} cores, load average {load:.1f} at start\n")
    print("| config | params | forward ms | train step ms |")
    print("|---|---:|---:|---:|")
    for name, (make, shape) in CONFIGS.items():
        if args.only not in name:
            continue
        n, f, s = bench(make, shape, args.batch, args.repeats)
        print(f"| {name} | {n:,} | {f:.1f} | {s:.1f} |", flush=True)


if __name__ == "__main__":
    main()

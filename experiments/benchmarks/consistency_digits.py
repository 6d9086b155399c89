"""Digits consistency models (issue 17): a model distilled from the main job's checkpoint
and one tuned from it (ECT), at 1, 2 and 4 steps, next to the main job's DPM-Solver++ at NFE 10.

    python -m experiments.main --config=experiments/configs/digits_consistency.py:distillation \\
        --workdir=/tmp/digits_cd --config.consistency.init_from=/tmp/digits_ref
    python -m experiments.main --config=experiments/configs/digits_consistency.py:tuning \\
        --workdir=/tmp/digits_ct --config.consistency.init_from=/tmp/digits_ref
    python -m experiments.benchmarks.consistency_digits --teacher=/tmp/digits_ref \\
        --distilled=/tmp/digits_cd --tuned=/tmp/digits_ct

Every row: n samples from the SAME prior noise x_T (key 0, `samplers_digits.load_for_sampling`;
the consistency samplers' fresh re-noising uses key 1, as the ODE rows' key), quantised to the
17 digit levels and scored with the toolkit's digit classifier (scoresde.metrics): confident /
real (fraction classified with p >= 0.9 over the same for the real test digits; acceptance
>= 0.85 at 2 steps), FD (Frechet distance of classifier features to the real test digits),
FD (to DPM) (between the row's and the DPM-Solver++ NFE-10 samples' features). The untrained
rows are the diffusion checkpoint used as a consistency model (`consistency_fn_from_score`:
one-step DDIM from each time), the students' starting point. Multistep consistency rows
re-noise between steps either with fresh noise (Song et al. 2023, Algorithm 1) or with the
noise the previous state implies (`ConsistencySampler(stochastic=False)`) or with a mix of the
two (`ConsistencySampler(gamma=g)`: z = sqrt(1 - g^2) z_implied + g z_fresh; --gamma lists the
candidates, default 1,0: fresh and implied only), on a grid whose
first interior time is at log-SNR fraction u of the way from T to eps and whose first
evaluation is at T or, with --start-u candidates above 0, at that log-SNR fraction
(`ConsistencySetup.sampler`, consistency.start_u: x_T stands in for a draw there), with the EMA
or the raw parameters: these choices are
made per model and step count (u from --grid-u) by the confident fraction on --n-val OTHER
prior draws (key 1000; validation), as the case-A benchmark chooses its grid on other noise;
the row is then drawn from the benchmark's noise, so its numbers are not selected on.
Every validation candidate's confident fraction is printed. --models / --params restrict the
rows and the candidates (e.g. `--models=tuned --steps=2 --params=raw --n-val=2000` to choose a
tuned run's 2-step sampler on more validation draws).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import time

import equinox as eqx
import jax
import numpy as np

from experiments import train
from experiments.benchmarks.samplers_digits import load_for_sampling, quality_row, write_markdown
from experiments.configs import digits_consistency, digits_unet
from scoresde import metrics
from scoresde import sampling as S

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="/tmp/digits_ref", help="the main job's workdir")
    p.add_argument("--distilled", default="/tmp/digits_cd", help="workdir of the distillation run")
    p.add_argument("--tuned", default="/tmp/digits_ct", help="workdir of the tuning run")
    p.add_argument("--n", type=int, default=1000, help="samples per row")
    p.add_argument("--steps", default="1,2,4")
    p.add_argument("--grid-u", default="0.2,0.3,0.4,0.5", help="candidate first interior log-SNR fractions")
    p.add_argument("--n-val", type=int, default=500, help="prior draws (key 1000) for choosing u")
    p.add_argument("--gamma", default="1,0",
                   help="candidate fresh-noise shares of the re-noising (1: fresh, 0: implied, between: a mix)")
    p.add_argument("--start-u", default="0",
                   help="candidate log-SNR fractions of the first evaluation (0: at T; each below the u tried)")
    p.add_argument("--models", default="untrained,distilled,tuned",
                   help="which consistency models get rows (comma-separated subset of untrained,distilled,tuned)")
    p.add_argument("--params", default="EMA,raw", help="parameter sets to choose from (trained models)")
    p.add_argument("--out", default=os.path.join(RESULTS, "consistency_digits_table.md"))
    a = p.parse_args(argv)
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    bad = sorted(set(models) - {"untrained", "distilled", "tuned"})
    if bad or not models:
        raise ValueError(f"--models={a.models!r}: unknown or no model names {bad}; use a comma-separated subset "
                         "of untrained,distilled,tuned.")
    pnames = [v.strip() for v in a.params.split(",") if v.strip()]
    if not pnames or set(pnames) - {"EMA", "raw"}:
        raise ValueError(f"--params={a.params!r}: use EMA, raw or EMA,raw.")
    gammas = [float(v) for v in a.gamma.split(",") if v.strip()]
    if not gammas or any(not 0 <= g <= 1 for g in gammas):
        raise ValueError(f"--gamma={a.gamma!r}: give comma-separated fresh-noise shares in [0, 1] (1: fresh "
                         "noise, 0: the implied noise).")
    starts = [float(v) for v in a.start_u.split(",") if v.strip()]
    if not starts or any(not 0 <= v < 1 for v in starts):
        raise ValueError(f"--start-u={a.start_u!r}: give comma-separated log-SNR fractions in [0, 1) (0: the "
                         "first evaluation at T).")
    t_start = time.perf_counter()
    exp, step, which, clf, x_T, run = load_for_sampling(digits_unet.get_config(), a.teacher, a.n)

    def feats(x):
        return clf.features(metrics.levels_to_input(exp.levels(np.asarray(x))))

    def quality(x):
        q = metrics.digits_sample_quality(metrics.levels_to_input(exp.levels(np.asarray(x))), clf=clf)
        return q["samples"], q["reference"]

    x_val = exp.sde.prior_sample(jax.random.key(1000), (a.n_val,) + exp.input_shape)
    rows = []
    t0 = time.perf_counter()
    dpm = run(S.DPMSolverPP(10, 3, final="denoise"), jax.random.key(1), x_T, False)
    dpm_q, real = quality(dpm.samples)
    dpm_feats = feats(dpm.samples)
    rows.append(("main job (VP U-Net): DPM-Solver++ 3M, log-SNR, + Tweedie", int(dpm.nfe), dpm_q, 0.0,
                 time.perf_counter() - t0))
    print(rows[-1][0], dpm_q["confident"] / real["confident"], dpm_q["fd"], flush=True)
    for name, label, mode, workdir in (("untrained", "untrained (the diffusion checkpoint)", "tuning", None),
                                       ("distilled", "distilled", "distillation", a.distilled),
                                       ("tuned", "tuned (ECT)", "tuning", a.tuned)):
        if name not in models:
            continue
        cfg = digits_consistency.get_config(mode)
        cexp = train.build(cfg)
        if workdir is None:
            params, cstep = train.load_diffusion_params(cexp, a.teacher)[:2]
            candidates = {"EMA": params}
        else:
            # both parameter sets explicitly (the config's eval.use_ema picks only its default)
            candidates = {}
            for pname, use_ema in (("EMA", True), ("raw", False)):
                cfg_p = digits_consistency.get_config(mode)
                cfg_p.eval.use_ema = use_ema
                candidates[pname], cstep, _ = train.load_for_eval(cfg_p, workdir, cexp)
            candidates = {k: v for k, v in candidates.items() if k in pnames}
        crun = eqx.filter_jit(lambda smp, p_, k, x: S.sample(smp, cexp.sample_fn(p_), cexp.sde, k, x))
        for n in (int(v) for v in a.steps.split(",")):
            t0 = time.perf_counter()
            best = (None, cexp.consistency.grid_u, 1.0, next(iter(candidates)), 0.0)
            for pname, pp in candidates.items():
                for g in (gammas if n > 1 else (1.0,)):
                    for u in ((float(v) for v in a.grid_u.split(",")) if n > 1 else (best[1],)):
                        for s0 in (starts if n > 1 else (0.0,)):
                            if (n == 1 and len(candidates) == 1) or s0 >= u:
                                continue  # nothing to choose / not a grid
                            qv, _ = quality(crun(_sampler(cexp, n, u, g, s0), pp, jax.random.key(1001),
                                                 x_val).samples)
                            print(f"  validation: {label} {n} steps, {pname}, u = {u}, {_noise(g)}{_start(s0)}: "
                                  f"confident {qv['confident']:.4f}", flush=True)
                            if best[0] is None or qv["confident"] > best[0]:
                                best = (qv["confident"], u, g, pname, s0)
            _, u, g, pname, s0 = best
            res = crun(_sampler(cexp, n, u, g, s0), candidates[pname], jax.random.key(1), x_T)
            q, _ = quality(res.samples)
            how = f"{pname}" + (f", u = {u}, {_noise(g)}{_start(s0)}" if n > 1 else "")
            rows.append((f"consistency, {label}, step {cstep} ({how})", int(res.nfe), q,
                         metrics.frechet_distance_from_features(feats(res.samples), dpm_feats),
                         time.perf_counter() - t0))
            print(rows[-1][0], n, q["confident"] / real["confident"], q["fd"], flush=True)
    lines = ["| model / sampler | NFE | confident / real | FD (test) | FD (to DPM) | wall s |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, nfe, q, fd_dpm, wall in rows:
        lines.append(quality_row(name, nfe, q, real, (fd_dpm,), wall))
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    write_markdown(a.out, [
        "## Sample quality (`python -m experiments.benchmarks.consistency_digits`)",
        f"Teacher: {which} checkpoint of `{a.teacher}` (step {step}); {a.n} samples per row from the same prior "
        f"noise; real test digits: confident fraction {real['confident']:.3f}, FD to train {real['fd']:.2f}. "
        f"Benchmark wall time {(time.perf_counter() - t_start) / 60:.1f} min; `uptime` at the end: {load}.",
        "\n".join(lines)])


def _sampler(cexp, n: int, u: float, gamma: float, start_u: float = 0.0):
    """The config's n-step sampler with first interior log-SNR fraction u, fresh-noise share
    gamma (1 and 0: the plain fresh / implied settings, exactly as before gamma existed) and the
    first evaluation at log-SNR fraction start_u (0: at T)."""
    smp = dataclasses.replace(cexp.consistency, grid_u=u, stochastic=gamma > 0, start_u=start_u).sampler(n)
    return dataclasses.replace(smp, gamma=gamma) if 0 < gamma < 1 else smp


def _start(start_u: float) -> str:
    return f", first step at {start_u}" if start_u else ""


def _noise(gamma: float) -> str:
    return {1.0: "fresh noise", 0.0: "implied noise"}.get(gamma, f"gamma = {gamma} (implied + fresh)")


if __name__ == "__main__":
    main()

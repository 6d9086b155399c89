"""Trained-network section of the sampler benchmark (issue 14, item 7): the main job's
digits U-Net, each few-step solver at NFE 5, 10 and 20 against the main job's own sampler
(200-step Euler-Maruyama with the final Tweedie step).

    python -m experiments.benchmarks.samplers_digits --workdir=workdir/digits   # after the main job

For every sampler, n samples from the same prior noise (the EM reference uses its own
per-example keys), quantised to the 17 digit levels, scored with the toolkit's digit
classifier (scoresde.metrics):
  confident / real   fraction of samples classified with p >= 0.9, over the same for the
                     real test digits (acceptance: >= 0.9 at NFE 10);
  FD (test)          Frechet distance of classifier features to the real test digits;
  FD / EM            that distance over the EM samples' own (acceptance: <= 1.2 at NFE 10);
  FD (to EM)         Frechet distance between the sampler's and the EM samples' features.
Deterministic solvers end with final="denoise" here (a Tweedie step at the last grid
time, no extra evaluation), as the main job's EM run ends with its Tweedie step.
"""

from __future__ import annotations

import argparse
import os
import time

import equinox as eqx
import jax
import numpy as np

from experiments import train
from experiments.configs import digits_unet
from scoresde import metrics
from scoresde import sampling as S

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

SOLVERS = {
    "DDIM, log-SNR": lambda n: S.DDIM(n, grid=S.LogSNRGrid()),
    "DPM-Solver++ 3M, log-SNR": lambda n: S.DPMSolverPP(n, 3, final="denoise"),
    "UniPC bh2-3, log-SNR": lambda n: S.UniPC(n, grid=S.LogSNRGrid(), final="denoise"),
    "UniPC bh2-3, EDM rho 7": lambda n: S.UniPC(n, grid=S.EDMGrid(), final="denoise"),
    "DEIS tAB-3, log-SNR": lambda n: S.DEIS(n, 3, final="denoise"),
    "iPNDM, EDM rho 7": lambda n: S.IPNDM(n, final="denoise"),
    "fast(nfe)": lambda n: S.fast(n),
}


def load_for_sampling(cfg, workdir: str, n: int):
    """What a digits sampler comparison needs: the built experiment, its evaluation
    checkpoint (params, step, which), the digit classifier, n prior draws (key 0) and a
    jitted run(sampler, key, x_T, denoise) of `sample` with the checkpoint's score."""
    exp = train.build(cfg)
    params, step, which = train.load_for_eval(cfg, workdir, exp)
    score = exp.score_fn(params)
    clf = metrics.load_digit_classifier()
    x_T = exp.sde.prior_sample(jax.random.key(0), (n,) + exp.input_shape)
    run = eqx.filter_jit(lambda smp, k, x, denoise: S.sample(smp, score, exp.sde, k, x, denoise=denoise))
    return exp, step, which, clf, x_T, run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="workdir/digits", help="the main job's workdir (checkpoints)")
    p.add_argument("--n", type=int, default=1000, help="samples per sampler")
    p.add_argument("--nfe", default="5,10,20")
    p.add_argument("--out", default=os.path.join(RESULTS, "samplers_digits.md"))
    a = p.parse_args(argv)
    t_start = time.perf_counter()
    cfg = digits_unet.get_config()
    exp, step, which, clf, x_T, run = load_for_sampling(cfg, a.workdir, a.n)

    def quality(x):
        q = metrics.digits_sample_quality(metrics.levels_to_input(exp.levels(np.asarray(x))), clf=clf)
        return q["samples"], q["reference"]

    t0 = time.perf_counter()
    em = run(exp.sampler, jax.random.key(1), x_T, bool(cfg.sampling.denoise))
    em_q, real = quality(em.samples)
    em_feats = clf.features(metrics.levels_to_input(exp.levels(np.asarray(em.samples))))
    rows = [("main job's sampler: Euler-Maruyama, 200 steps + Tweedie", int(em.nfe), em_q, 0.0,
             time.perf_counter() - t0)]
    print(rows[-1][0], em_q["confident"] / real["confident"], em_q["fd"], flush=True)
    for nfe in (int(v) for v in a.nfe.split(",")):
        for name, make in SOLVERS.items():
            t0 = time.perf_counter()
            res = run(make(nfe), jax.random.key(1), x_T, False)
            q, _ = quality(res.samples)
            feats = clf.features(metrics.levels_to_input(exp.levels(np.asarray(res.samples))))
            rows.append((name, int(res.nfe), q, metrics.frechet_distance_from_features(feats, em_feats),
                         time.perf_counter() - t0))
            print(name, nfe, q["confident"] / real["confident"], q["fd"], flush=True)
    lines = ["| sampler | NFE | confident / real | FD (test) | FD / EM | FD (to EM) | wall s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, nfe, q, fd_em, wall in rows:
        lines.append(f"| {name} | {nfe} | {q['confident'] / real['confident']:.3f} | {q['fd']:.2f} | "
                     f"{q['fd'] / em_q['fd']:.2f} | {fd_em:.2f} | {wall:.1f} |")
    md = "\n\n".join([
        "# Few-step samplers on the digits U-Net (`python -m experiments.benchmarks.samplers_digits`)",
        f"Checkpoint: {which} of `{a.workdir}` (step {step}); {a.n} samples per row from the same prior noise; "
        f"real test digits: confident fraction {real['confident']:.3f}, FD to train {real['fd']:.2f}. "
        f"Total {(time.perf_counter() - t_start) / 60:.1f} min. Columns are defined in the script's docstring.",
        "\n".join(lines)]) + "\n"
    print(md)
    with open(a.out, "w") as f:
        f.write(md)


if __name__ == "__main__":
    main()

"""Trained-network section of the sampler benchmark (issue 14, item 7): the main job's
digits U-Net, each few-step solver at NFE 5, 10 and 20 against the main job's own sampler
(200-step Euler-Maruyama with the final Tweedie step).

    python -m experiments.benchmarks.samplers_digits --workdir=workdir/digits   # after the main job
    python -m experiments.benchmarks.samplers_digits --workdir=workdir/digits --study
        # the NFE-10 study (STUDY): the probability-flow ODE solved finely (its own confident
        # ratio), final-step options and grids at NFE 10, stochastic samplers at NFE 10
        # -> results/samplers_digits_nfe10.md
    python -m experiments.benchmarks.samplers_digits --workdir=workdir/digits --study --only=SDE-DPM
        # only the EM reference and the STUDY rows whose name contains "SDE-DPM", written as
        # a section of results/samplers_digits_nfe10.md (the rest of the file is kept);
        # --em_cache=FILE.npz keeps the EM-200 samples of this --n between runs

For every sampler, n samples from the same prior noise (the EM reference uses its own
per-example keys), quantised to the 17 digit levels, scored with the toolkit's digit
classifier (scoresde.metrics):
  confident / real   fraction of samples classified with p >= 0.9, over the same for the
                     real test digits (acceptance: >= 0.9 at NFE 10);
  FD (test)          Frechet distance of classifier features to the real test digits;
  FD / EM            that distance over the EM samples' own (acceptance: <= 1.2 at NFE 10);
  FD (to EM)         Frechet distance between the sampler's and the EM samples' features.
Deterministic solvers end with final="denoise" here (a Tweedie step at the last grid
time, no extra evaluation), as the main job's EM run ends with its Tweedie step; the
exceptions are fast(nfe) (its own ending) and the two 2M rows on the uniform-t grid, which
end with the ODE step to eps, the NFE-10 study's best ending for them.
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
    "DPM-Solver++ 3M, log-SNR": lambda n: S.DPMSolverPP(n, 3, grid=S.LogSNRGrid(), final="denoise"),
    "UniPC bh2-3, log-SNR": lambda n: S.UniPC(n, grid=S.LogSNRGrid(), final="denoise"),
    "UniPC bh2-3, EDM rho 7": lambda n: S.UniPC(n, grid=S.EDMGrid(), final="denoise"),
    "DEIS tAB-3, log-SNR": lambda n: S.DEIS(n, 3, grid=S.LogSNRGrid(), final="denoise"),
    "iPNDM, EDM rho 7": lambda n: S.IPNDM(n, grid=S.EDMGrid(), final="denoise"),
    "fast(nfe)": lambda n: S.fast(n),
    # the NFE-10 study's best family (samplers_digits_nfe10.md; chosen there on other draws of the
    # previous, likelihood-weighted checkpoint): second order on the uniform-t grid, ending with
    # the ODE step; deterministic (DPM-Solver++ 2M) and with the reverse SDE's noise (eta 1)
    "DPM-Solver++ 2M, uniform t": lambda n: S.DPMSolverPP(n, 2, grid=S.UniformTimeGrid()),
    "SDE-DPM-Solver++ 2M eta 1, uniform t": lambda n: S.SDEDPMSolverPP(n, 2, grid=S.UniformTimeGrid()),
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


# The NFE-10 study (--study): is the confident ratio of the NFE-10 solvers (0.875 at best) a
# limit of the probability-flow ODE itself on this checkpoint, and does a stochastic,
# denoise-final or other-grid NFE-10 configuration do better? name -> (sampler, denoise=)
# with `denoise=True` adding sample()'s Tweedie step (one evaluation, counted in NFE).
STUDY = {
    # the probability-flow ODE solved finely: UniPC at NFE 50 and 100 (their paired distance
    # shows both are at the ODE's own solution) and an adaptive Tsit5 solve
    "ODE: UniPC bh2-3, log-SNR, denoise final, NFE 50": (S.UniPC(50, grid=S.LogSNRGrid(), final="denoise"), False),
    "ODE: UniPC bh2-3, log-SNR, denoise final, NFE 100": (S.UniPC(100, grid=S.LogSNRGrid(), final="denoise"), False),
    "ODE: adaptive Tsit5 rtol = atol = 1e-4 + Tweedie": (S.ProbabilityFlowODE(rtol=1e-4, atol=1e-4), True),
    # deterministic NFE 10: grids and final-step options
    "UniPC bh2-3, log-SNR, denoise final": (S.UniPC(10, grid=S.LogSNRGrid(), final="denoise"), False),
    "UniPC bh2-3, log-SNR, ODE final (no Tweedie)": (S.UniPC(10, grid=S.LogSNRGrid()), False),
    "UniPC bh2-3, uniform t, denoise final": (S.UniPC(10, grid=S.UniformTimeGrid(), final="denoise"), False),
    "UniPC bh2-3, EDM rho 7, denoise final": (S.UniPC(10, grid=S.EDMGrid(), final="denoise"), False),
    "iPNDM, log-SNR, denoise final": (S.IPNDM(10, grid=S.LogSNRGrid(), final="denoise"), False),
    "DPM-Solver++ 3M, uniform t, lower-order final, denoise final": (
        S.DPMSolverPP(10, 3, grid=S.UniformTimeGrid(), lower_order_final="always", final="denoise"), False),
    "fast(10)": (S.fast(10), False),
    # stochastic NFE 10
    "Euler-Maruyama, 9 steps + Tweedie": (S.EulerMaruyama(9), True),
    "ancestral (DDPM), log-SNR, 9 steps + Tweedie": (
        S.PredictorCorrector(9, S.AncestralPredictor(), S.NoneCorrector()), True),
    "PredictorCorrector() default, 4 steps (2 NFE each) + Tweedie": (S.PredictorCorrector(4), True),
    "EDM Heun, 5 steps, deterministic": (S.EDMHeun(5), False),
    "EDM Heun, 5 steps, S_churn = 2 (gamma 0.4)": (S.EDMHeun(5, s_churn=2.0), False),
    # SDE-DPM-Solver++ (pM, noise scale eta) at NFE 10; its configuration was chosen on
    # other draws (prior key 100, sampler key 101, 500 samples), not on these
    "SDE-DPM-Solver++ 2M eta 1, log-SNR, denoise final": (S.SDEDPMSolverPP(10, 2, final="denoise"), False),
    "SDE-DPM-Solver++ 2M eta 1, log-SNR, ODE final": (S.SDEDPMSolverPP(10, 2), False),
    "SDE-DPM-Solver++ 3M eta 1, log-SNR, denoise final": (S.SDEDPMSolverPP(10, 3, final="denoise"), False),
    "SDE-DPM-Solver++ 2M eta 1, EDM rho 7, denoise final": (
        S.SDEDPMSolverPP(10, 2, grid=S.EDMGrid(), final="denoise"), False),
    "SDE-DPM-Solver++ 3M eta 1, EDM rho 7, denoise final": (
        S.SDEDPMSolverPP(10, 3, grid=S.EDMGrid(), final="denoise"), False),
    "SDE-DPM-Solver++ 2M eta 1, uniform t, denoise final": (
        S.SDEDPMSolverPP(10, 2, grid=S.UniformTimeGrid(), final="denoise"), False),
    "SDE-DPM-Solver++ 2M eta 1, uniform t, ODE final": (S.SDEDPMSolverPP(10, 2, grid=S.UniformTimeGrid()), False),
    "SDE-DPM-Solver++ 3M eta 1, uniform t, ODE final": (S.SDEDPMSolverPP(10, 3, grid=S.UniformTimeGrid()), False),
    "SDE-DPM-Solver++ 2M eta 0.5, uniform t, ODE final": (
        S.SDEDPMSolverPP(10, 2, eta=0.5, grid=S.UniformTimeGrid()), False),
    "SDE-DPM-Solver++ 2M eta 0 (= DPM-Solver++ 2M), uniform t, ODE final": (
        S.SDEDPMSolverPP(10, 2, eta=0.0, grid=S.UniformTimeGrid()), False),
    "SDE-DPM-Solver++ 2M eta 1, uniform t, noise only on steps from t <= 0.3, ODE final": (
        S.SDEDPMSolverPP(10, 2, grid=S.UniformTimeGrid(), t_noise=0.3), False),
    # the best of a second choice on 1500 other draws (keys 100 / 101)
    "SDE-DPM-Solver++ 2M eta 2, uniform t, noise only on steps from t <= 0.3, ODE final": (
        S.SDEDPMSolverPP(10, 2, eta=2.0, grid=S.UniformTimeGrid(), t_noise=0.3), False),
    # a truncated start: x_T stands in for the state at t_start (UniformTimeGrid(t_start)); t_start
    # chosen on other draws: confident ratio pooled over 1500 (keys 100 / 101) and 3000 (keys
    # 200 / 201) draws: t_start 1.0 (= T) 0.881, 0.7 0.891, 0.65 0.894, 0.6 0.901, 0.55 0.900
    "SDE-DPM-Solver++ 2M eta 1, uniform t from t_start = 0.6 (truncated start), ODE final": (
        S.SDEDPMSolverPP(10, 2, grid=S.UniformTimeGrid(t_start=0.6)), False),
}


def confident_ratio(q: dict, real: dict, n: int):
    """The samples' confident fraction over the real digits', and its binomial standard error
    over n samples."""
    p = q["confident"]
    return p / real["confident"], np.sqrt(p * (1 - p) / n) / real["confident"]


def quality_row(name, nfe, q: dict, real: dict, fds, wall: float, n: int | None = None) -> str:
    """One table row: name, NFE, confident fraction over the real digits' (with n: +- its
    standard error, confident_ratio), FD to the test digits, the further FD columns `fds`,
    wall seconds."""
    cols = "".join(f"{v:.2f} | " for v in fds)
    r, se = confident_ratio(q, real, n or 1)
    return f"| {name} | {nfe} | {r:.3f}{'' if n is None else f' +- {se:.3f}'} | {q['fd']:.2f} | {cols}{wall:.1f} |"


def write_markdown(path: str, sections: list[str]) -> str:
    """Join the sections with blank lines, print the markdown and write it to `path`."""
    md = "\n\n".join(sections) + "\n"
    print(md)
    with open(path, "w") as f:
        f.write(md)
    return md


def study(a, cfg, exp, step, which, clf, x_T, run, t_start):
    """The NFE-10 study: every STUDY row against the main job's EM-200 samples (cached in
    --em_cache) and real test digits, with the standard error of the confident ratio."""
    n = x_T.shape[0]

    def levels(x):
        return metrics.levels_to_input(exp.levels(np.asarray(x)))

    if a.em_cache and os.path.exists(a.em_cache):
        em_x = np.load(a.em_cache)["samples"]
        em_wall = float(np.load(a.em_cache)["wall"])
        if em_x.shape[0] != n:
            raise ValueError(f"--em_cache {a.em_cache} holds {em_x.shape[0]} EM samples but --n is {n}; pass the "
                             "cache made with this --n (or a new file name, which is then filled).")
    else:
        t0 = time.perf_counter()
        em_x = np.asarray(run(exp.sampler, jax.random.key(1), x_T, bool(cfg.sampling.denoise)).samples)
        em_wall = time.perf_counter() - t0
        if a.em_cache:
            np.savez(a.em_cache, samples=em_x, wall=em_wall)
    em = metrics.digits_sample_quality(levels(em_x), clf=clf)
    em_q, real = em["samples"], em["reference"]
    em_feats = clf.features(levels(em_x))

    r, se = confident_ratio(em_q, real, n)
    lines = ["| sampler | NFE | confident / real (+-SE) | FD (test) | FD / EM | FD (to EM) | RMS pixel diff to ODE "
             "NFE 100 | wall s |", "|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| main job's sampler: Euler-Maruyama, 200 steps + Tweedie | 201 | {r:.3f} +- {se:.3f} | "
             f"{em_q['fd']:.2f} | 1.00 | 0.00 | | {em_wall:.0f} |"]
    print(lines[-1], flush=True)
    ode_ref = "ODE: UniPC bh2-3, log-SNR, denoise final, NFE 100"
    rows = []
    todo = {k: v for k, v in STUDY.items() if any(part in k for part in a.only.split("|"))}
    if not todo:
        raise ValueError(f"--only={a.only!r} matches no STUDY row; the rows are: {list(STUDY)}.")
    for name, (smp, denoise) in todo.items():
        t0 = time.perf_counter()
        res = run(smp, jax.random.key(1), x_T, denoise)
        x = np.asarray(res.samples)
        q = metrics.digits_sample_quality(levels(x), clf=clf)["samples"]
        fd_em = metrics.frechet_distance_from_features(clf.features(levels(x)), em_feats)
        r, se = confident_ratio(q, real, n)
        rows.append((name, x, f"| {name} | {int(res.nfe)} | {r:.3f} +- {se:.3f} | {q['fd']:.2f} | "
                     f"{q['fd'] / em_q['fd']:.2f} | {fd_em:.2f} |", f" {time.perf_counter() - t0:.0f} |"))
        print(rows[-1][2] + rows[-1][3], flush=True)
    ref = dict((name, x) for name, x, _, _ in rows).get(ode_ref)
    for name, x, head, tail in rows:
        diff = "" if ref is None or name == ode_ref else f"{float(np.sqrt(np.mean((x - ref) ** 2))):.4f}"
        lines.append(f"{head} {diff} |{tail}")
    with open("/proc/loadavg") as f:
        load = " / ".join(f.read().split()[:3])
    header = (f"Checkpoint: {which} of `{a.workdir}` (step {step}); {n} samples per row from the same prior noise "
              f"(key 0; stochastic rows draw with key 1); real test digits: confident fraction "
              f"{real['confident']:.3f}. "
              f"SE of the ratio: sqrt(p (1 - p) / {n}) / real. RMS pixel diff: to the NFE-100 ODE samples from the "
              f"same noise, in the [-1, 1] scale before quantisation. Total "
              f"{(time.perf_counter() - t_start) / 60:.1f} min; load average at the end {load} (2 cores shared with "
              "other jobs).")
    if not a.only:
        return write_markdown(a.study_out, [
            "# Digits at NFE 10: the probability-flow ODE's limit (`python -m experiments.benchmarks.samplers_digits "
            "--study`)", header, "\n".join(lines)])
    # --only: a section of its own, appended to (or replacing the same section of) the existing file
    title = (f"## Rows run alone: `--study --only='{a.only}' --n {n}` (EM reference recomputed or from "
             f"--em_cache)")
    old = open(a.study_out).read() if os.path.exists(a.study_out) else ""
    kept = [sec for sec in old.split("\n\n## ") if sec.strip() and not ("## " + sec).startswith(title)]
    body = "\n\n## ".join(kept).rstrip("\n")
    return write_markdown(a.study_out, ([body] if body else []) + [title, header, "\n".join(lines)])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="workdir/digits", help="the main job's workdir (checkpoints)")
    p.add_argument("--n", type=int, default=1000, help="samples per sampler")
    p.add_argument("--nfe", default="5,10,20")
    p.add_argument("--out", default=os.path.join(RESULTS, "samplers_digits.md"))
    p.add_argument("--study", action="store_true", help="the NFE-10 study (STUDY) instead of the solver table")
    p.add_argument("--study_out", default=os.path.join(RESULTS, "samplers_digits_nfe10.md"))
    p.add_argument("--em_cache", default="", help="an .npz to keep the EM-200 samples in between runs")
    p.add_argument("--only", default="", help="with --study: run only the EM reference and the STUDY rows whose "
                   "name contains this string (or one of several separated by |), and write them as a section "
                   "of --study_out (replacing an earlier section of the same --only and --n) instead of "
                   "rewriting the whole table")
    a = p.parse_args(argv)
    t_start = time.perf_counter()
    cfg = digits_unet.get_config()
    exp, step, which, clf, x_T, run = load_for_sampling(cfg, a.workdir, a.n)
    if a.study:
        return study(a, cfg, exp, step, which, clf, x_T, run, t_start)

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
    lines = ["| sampler | NFE | confident / real (+-SE) | FD (test) | FD / EM | FD (to EM) | wall s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, nfe, q, fd_em, wall in rows:
        lines.append(quality_row(name, nfe, q, real, (q["fd"] / em_q["fd"], fd_em), wall, a.n))
    write_markdown(a.out, [
        "# Few-step samplers on the digits U-Net (`python -m experiments.benchmarks.samplers_digits`)",
        f"Checkpoint: {which} of `{a.workdir}` (step {step}); {a.n} samples per row from the same prior noise; "
        f"real test digits: confident fraction {real['confident']:.3f}, FD to train {real['fd']:.2f}. "
        f"Total {(time.perf_counter() - t_start) / 60:.1f} min. Columns are defined in the script's docstring.",
        "\n".join(lines)])


if __name__ == "__main__":
    main()

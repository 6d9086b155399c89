"""Few-step sampler benchmark on Gaussian mixtures with the exact score (issue 14).

    python -m experiments.benchmarks.samplers            # full run, 20000 samples, committed grids
    python -m experiments.benchmarks.samplers --refit --fit_only   # (re)fit the grids only
    python -m experiments.benchmarks.samplers --quick    # smoke run (2000 samples, NFE 5 and 10)

Setting (as the issue's measurements of k-diffusion, diffusers, score_sde, diffusionjax):
VP SDE (linear beta 0.1 -> 20, t in [1e-3, 1]), the exact mixture score, the same prior
noise for every sampler. Cases (experiments/benchmarks/cases.py):
  A  the 2-D ring (8 components, radius 4, std 0.5);
  B  16-D, 5 components, numpy default_rng(0): means N(0, 9 I), stds U[0.2, 1], Dirichlet(2);
  C  8-D, 6 components with full covariances (default_rng(7)): tuned on by nobody.
Metrics, on n samples from the same x_T, at t = eps with no final denoising step:
  paired RMSE  sqrt(mean_i ||x_i - x_i*||^2), x_i* the exact PF-ODE solution from the same
               x_T (Dopri8 in float64, rtol = atol = 1e-7);
  CE gap       mean_i -log p_eps(x_i) - H(p_eps) (H by Monte Carlo on 200k exact samples);
  exact gap    the CE gap of the x_i* themselves (what the noise draw alone gives);
  CE dist      |CE gap - exact gap|: the part of the law error the solver adds;
  far          the number of samples farther than 1 from their exact solution.
Fitted grids (scoresde.sampling.fit_grid, UniPC bh2-3 started from log-SNR, EDM and uniform
t, BFGS 100 iterations) are fitted once per case and NFE 5, 10, 20 with the rare-error
screening of fit_grid (FIT_KWARGS: 40000 screening noises, key 1000 + NFE; every noise a
fitted grid leaves farther than 1 from its reference plus 2048 others, importance-weighted;
3 rounds; the start chosen on 40000 further validation noises), by `--refit` (minutes each
on 2 cores), and committed as JSON under experiments/benchmarks/grids/, each in three
variants (FIT_VARIANTS; the same key and validation noises, so `--refit --fit_variants V`
leaves the others as they are, except that lateshift starts from the plain file): the plain
grid (its n + 1 times; restarts=3: the fit repeated on 3 sets of fitting noises, the
validation noises choosing among all); the decoupled one (fit_grid(decouple=True): also the time of each
step's evaluation, as a log-SNR shift; files *_decoupled.json, rows 'decoupled grid fitted on
...'); and lateshift (the plain grid's times held, and the evaluation shifts of its steps from
log-SNR 0 on fitted: fit_grid(decouple=True, shift_min_log_snr=0); files *_lateshift.json,
rows 'grid + shifts at log-SNR >= 0 fitted on ...'); the benchmark's noise
is key 0, 1, 2 for A, B, C. The default run loads them and evaluates them on the benchmark's
fresh noise, never on their own (a missing file is fitted and saved first). Each case also runs the grids fitted on the other
two cases ('grid fitted on B'): a configuration tuned on one mixture, measured on one it was
not tuned on. The column 'fit RMSE' is sqrt of the fit's importance-weighted estimate of the
mean squared error over its 40000 screening noises (against the float32 Tsit5 reference of
fit_grid): what the grid reaches in-sample. hard_distance = 1.0 is the metric's 'far'
threshold; on case B, measured on 200000 noises apart from the fitting and the benchmark's
(keys 4242, 4343), it did better than 0.3 at NFE 10 (RMSE 0.35-0.37 against 0.44-0.49, same
fitting key) and as well at NFE 20 (0.09-0.13).
The population check re-measures the best configuration of each of the issue's cells on
`--pop_draws` other draws of the same size (see its section in the results).
For unmet cells the script splits the squared error into the samples within 1 of their
exact solution and the 'far' ones, and measures the float32 floor: an adaptive float32
solve (Tsit5, rtol = atol = 1e-5) against the float64 reference.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks.cases import CASES
from scoresde import sampling as S
from scoresde.sde import VPSDE

SDE = VPSDE(beta_min=0.1, beta_max=20.0, eps=1e-3, T=1.0)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
GRIDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grids")
EVAL_KEY = {"A": 0, "B": 1, "C": 2}  # the benchmark's prior noise; fitting uses key 1000 + NFE

# The issue's table: best existing sampler (paired RMSE) and best existing CE distance.
REFERENCE = {
    ("A", 5): ("diffusers DPM-Solver++ 3M", 0.229, 0.089), ("A", 10): ("k-diffusion LMS", 0.113, 0.006),
    ("A", 20): ("k-diffusion LMS", 0.019, 0.021), ("B", 5): ("diffusers UniPC bh2", 2.18, 3.58),
    ("B", 10): ("diffusers DPM-Solver++ 3M", 0.874, 0.99), ("B", 20): ("diffusers UniPC bh2", 0.299, 0.058),
}

LOG_SNR = S.LogSNRGrid()
# name -> factory(NFE) -> sampler; every one spends NFE score evaluations. Grids are always
# passed explicitly (a sampler's default grid may change: DEIS's became uniform t).
CONFIGS = {
    "DDIM, log-SNR": lambda n: S.DDIM(n, grid=S.LogSNRGrid()),
    "DPM-Solver++ 3M, log-SNR": lambda n: S.DPMSolverPP(n, 3, grid=S.LogSNRGrid()),
    "DPM-Solver++ 3M, uniform t, lower-order final": lambda n: S.DPMSolverPP(
        n, 3, grid=S.UniformTimeGrid(), lower_order_final="always"),
    "DPM-Solver++ 3M + UniC, log-SNR": lambda n: S.UniPC(n, S.DPMSolverPPUpdate(3), grid=LOG_SNR),
    "UniPC bh2-3, log-SNR": lambda n: S.UniPC(n, grid=LOG_SNR),
    "UniPC bh2-3, log-SNR, no lower-order final": lambda n: S.UniPC(n, grid=LOG_SNR, lower_order_final="never"),
    "UniPC bh2-3, log-SNR, denoise final": lambda n: S.UniPC(n, grid=LOG_SNR, final="denoise"),
    "UniPC bh2-3, EDM rho 7": lambda n: S.UniPC(n, grid=S.EDMGrid()),
    "UniPC bh2-3, uniform t": lambda n: S.UniPC(n, grid=S.UniformTimeGrid()),
    "DEIS tAB-3, log-SNR": lambda n: S.DEIS(n, 3, grid=S.LogSNRGrid()),
    "DEIS tAB-3, uniform t": lambda n: S.DEIS(n, 3, grid=S.UniformTimeGrid()),
    "iPNDM, EDM rho 7": lambda n: S.IPNDM(n, grid=S.EDMGrid()),
    "iPNDM, log-SNR": lambda n: S.IPNDM(n, grid=S.LogSNRGrid()),
}
FIT_CONFIG = "UniPC bh2-3, log-SNR"  # the fit starts from this and three other grids
FIT_NAME = "UniPC bh2-3"
# fit_grid's rare-error screening (see the module docstring); n_fit: easy noises per round
FIT_KWARGS = dict(n_screen=40_000, n_fit=2048, hard_distance=1.0, rounds=3, maxiter=100, n_validate=40_000)


def _block(x):
    return jax.tree_util.tree_map(lambda a: a.block_until_ready(), x)


def reference_solution(case, x_T):
    """The exact PF-ODE map of x_T: Dopri8 in float64 at rtol = atol = 1e-7."""
    with jax.enable_x64():
        gm = CASES[case](jnp.float64)
        sampler = S.ProbabilityFlowODE(solver=diffrax.Dopri8(), rtol=1e-7, atol=1e-7, max_steps=16384)
        fn = jax.jit(lambda x: S.sample(sampler, gm.score_fn(SDE), SDE, jax.random.key(0), x))
        res = _block(fn(jnp.asarray(np.asarray(x_T), jnp.float64)))
        return np.asarray(res.samples), int(res.nfe)


class Metrics:
    """CE gap, paired RMSE and outliers against one exact law (entropy by MC, once)."""

    def __init__(self, gm, ref, key, entropy=None):
        """entropy: (H, its SE) of another Metrics of the same law, instead of a new Monte Carlo."""
        self.gm, self.ref = gm, jnp.asarray(ref, jnp.float32)
        if entropy is None:
            big = gm.sample(key, 200_000, SDE.eps, SDE)
            nll = -gm.log_prob(big, SDE.eps, SDE)
            entropy = float(nll.mean()), float(nll.std() / math.sqrt(big.shape[0]))
        self.entropy, self.entropy_se = entropy
        self.exact_gap = self._gap(self.ref)[0]

    def _gap(self, x):
        nll = -self.gm.log_prob(x, SDE.eps, SDE)
        return float(nll.mean()) - self.entropy, float(nll.std()) / math.sqrt(x.shape[0])

    def __call__(self, x):
        x = jnp.asarray(x)
        if not bool(jnp.all(jnp.isfinite(x))):
            return dict(finite=False, rmse=np.nan, ce=np.nan, ce_se=np.nan, ce_dist=np.nan, far=-1,
                        rmse_near=np.nan, rmse_far=np.nan)
        dist = jnp.sqrt(jnp.sum((x - self.ref) ** 2, axis=-1))
        far = dist > 1.0
        ce, ce_se = self._gap(x)
        # rmse^2 = rmse_near^2 + rmse_far^2: the share of the squared error of the samples within
        # 1 of their exact solution and of the 'far' ones (mostly a wrong mode).
        return dict(finite=True, rmse=float(jnp.sqrt(jnp.mean(dist**2))), ce=ce, ce_se=ce_se,
                    ce_dist=abs(ce - self.exact_gap), far=int(jnp.sum(far)),
                    rmse_near=float(jnp.sqrt(jnp.mean(jnp.where(far, 0.0, dist**2)))),
                    rmse_far=float(jnp.sqrt(jnp.mean(jnp.where(far, dist**2, 0.0)))))


def fmt(v, spec=".3g"):
    return "NaN" if v is None or not np.isfinite(v) else format(v, spec)


# --fit_variants: name -> (file suffix, row label, fit_grid keywords beyond FIT_KWARGS). 'plain'
# repeats its fit on 3 sets of fitting noises (restarts=3; the validation noises choose among
# the 3 x 3 fitted grids, restart 0 being the single fit), the decoupled fit, 2-3 times
# costlier, runs once. 'lateshift' starts from the plain grid of the same case and NFE (fitted
# first where missing), holds its times and fits the evaluation shifts of the steps from
# log-SNR 0 on (noise below the signal), where B's modes are already decided (between log-SNR
# -1.8 and -1.2 on uniform t at NFE 20, see the results' notes).
FIT_VARIANTS = {
    "plain": ("", "grid", dict(restarts=3)),
    "decoupled": ("_decoupled", "decoupled grid", dict(decouple=True)),
    "lateshift": ("_lateshift", "grid + shifts at log-SNR >= 0", dict(decouple=True, shift_min_log_snr=0.0)),
}


def variant_order(variant):
    """The variant's place in FIT_VARIANTS (rows and lists follow it)."""
    return list(FIT_VARIANTS).index(variant)


def grid_path(case, nfe, variant="plain"):
    return os.path.join(GRIDS, f"samplers_{case}_nfe{nfe}{FIT_VARIANTS[variant][0]}.json")


def grid_label(variant):
    return FIT_VARIANTS[variant][1]


def fitted_label(fit_case, variant, case):
    """The row name of a fitted grid of `fit_case` run on `case`."""
    return f"{FIT_NAME}, {grid_label(variant)} fitted on {fit_case}" + (" (own)" if fit_case == case else "")


def fit_case_grid(case, nfe, log, variant="plain"):
    """Fit the UniPC bh2-3 grid of `case` at `nfe` (screened, FIT_KWARGS, key 1000 + nfe) in one of
    FIT_VARIANTS and save it."""
    gm = CASES[case]()
    kwargs = dict(FIT_KWARGS, **FIT_VARIANTS[variant][2])
    if variant == "lateshift":
        kwargs["init"] = S.FittedGrid(load_grid(case, nfe, log, "plain").fractions)
    t1 = time.perf_counter()
    grid = S.fit_grid(CONFIGS[FIT_CONFIG](nfe), gm.score_fn(SDE), SDE, jax.random.key(1000 + nfe), (gm.dim,),
                      **kwargs)
    info = dict(grid.info, case=case, fit_seconds=round(time.perf_counter() - t1, 1),
                config=FIT_CONFIG + " (grid replaced)", sde="VPSDE(0.1, 20, eps=1e-3)")
    grid = S.FittedGrid(grid.fractions, json.dumps(info), eval_shifts=grid.eval_shifts)
    os.makedirs(GRIDS, exist_ok=True)
    path = grid_path(case, nfe, variant)
    grid.save(path)
    log(f"[{case}] fitted the NFE {nfe} {grid_label(variant)} in {info['fit_seconds']:.0f} s from {info['start']}: "
        f"fit loss {info['mse_fit']:.4g} (starts {', '.join(f'{k} {v:.4g}' for k, v in info['mse_inits'].items())})"
        f" -> {path}")
    return grid


def load_grid(case, nfe, log, variant="plain"):
    path = grid_path(case, nfe, variant)
    if not os.path.exists(path):
        log(f"[{case}] no fitted grid at {path}: fitting it now (run --refit --fit_only to do this apart)")
        return fit_case_grid(case, nfe, log, variant)
    grid = S.FittedGrid.load(path)
    if grid.info.get("fit_key") == np.asarray(jax.random.key_data(jax.random.key(EVAL_KEY[case]))).tolist():
        raise ValueError(f"{path} was fitted on the benchmark's own noise (key {EVAL_KEY[case]}); refit it with "
                         "--refit (fitted grids are evaluated on fresh noise only).")
    return grid


def float32_floor(case, x_T, metrics, log):
    """An adaptive float32 PF-ODE solve (Tsit5, rtol = atol = 1e-5) against the float64 reference:
    what float32 arithmetic alone leaves (ridge points between modes flip)."""
    gm = CASES[case]()
    sampler = S.ProbabilityFlowODE(rtol=1e-5, atol=1e-5)
    t1 = time.perf_counter()
    res = _block(jax.jit(lambda x: S.sample(sampler, gm.score_fn(SDE), SDE, jax.random.key(0), x))(x_T))
    m = metrics(res.samples)
    log(f"[{case}] float32 floor: adaptive Tsit5 rtol 1e-5 NFE {int(res.nfe)}  rmse {fmt(m['rmse'])} "
        f"(near {fmt(m['rmse_near'])}, far {fmt(m['rmse_far'])})  dist {fmt(m['ce_dist'])}  far {m['far']}  "
        f"{time.perf_counter() - t1:.1f}s")
    return dict(case=case, sampler="float32 PF-ODE, Tsit5 rtol = atol = 1e-5 (adaptive)", budget=None,
                nfe=int(res.nfe), fit_rmse=None, **m)


def run_case(case, n, nfes, configs, fit_nfes, grids, log, floor=False):
    """All configurations on `case`; `grids[(fit_case, nfe, variant)]` are the fitted grids to run."""
    gm = CASES[case]()
    score = gm.score_fn(SDE)
    x_T = SDE.prior_sample(jax.random.key(EVAL_KEY[case]), (n, gm.dim))
    t0 = time.perf_counter()
    ref, ref_nfe = reference_solution(case, x_T)
    metrics = Metrics(gm, ref, jax.random.key(7))
    log(f"[{case}] reference PF-ODE (Dopri8, rtol 1e-7, float64): NFE {ref_nfe}, {time.perf_counter() - t0:.1f} s; "
        f"H(p_eps) = {metrics.entropy:.4f} +- {metrics.entropy_se:.4f}; exact gap {metrics.exact_gap:+.4f}")
    # Called eagerly, every multistep solver (all CONFIGS, DDIM included) runs as a Python loop
    # over one compiled step shared by all solvers, grids and step counts of this case (the
    # weights are inputs, formed in float64 numpy): one compilation per case instead of one per
    # configuration and NFE, which dominated the run time on 2 cores.
    def run(smp, x):
        return S.sample(smp, score, SDE, jax.random.key(0), x)

    rows = []

    def evaluate(name, sampler, nfe_budget, fit_rmse=None):
        t1 = time.perf_counter()
        res = _block(run(sampler, x_T))
        m = metrics(res.samples)
        rows.append(dict(case=case, sampler=name, budget=nfe_budget, nfe=int(res.nfe), fit_rmse=fit_rmse, smp=sampler,
                         **m))
        log(f"[{case}] {name:<48} NFE {int(res.nfe):3d}  rmse {fmt(m['rmse'])}  CE {fmt(m['ce'], '+.3f')}  "
            f"dist {fmt(m['ce_dist'])}  far {m['far']}  {time.perf_counter() - t1:.1f}s")

    for nfe in nfes:
        for name, make in configs.items():
            evaluate(name, make(nfe), nfe)
        if nfe in fit_nfes:
            base = CONFIGS[FIT_CONFIG](nfe)
            for fit_case, var in sorted({(c, v) for c, k, v in grids if k == nfe},
                                        key=lambda c: (c[0] != case, c[0], variant_order(c[1]))):
                grid = grids[(fit_case, nfe, var)]
                evaluate(fitted_label(fit_case, var, case), eqx.tree_at(lambda s: s.grid, base, grid), nfe,
                         math.sqrt(grid.info["mse_fit"]) if fit_case == case else None)
    if floor:
        rows.append(float32_floor(case, x_T, metrics, log))
    return rows, metrics, time.perf_counter() - t0


def stochastic_section(n, log):
    """The predictor-corrector default against Song et al.'s rule on case A, by steps."""
    gm = CASES["A"]()
    score = gm.score_fn(SDE)
    x_T = SDE.prior_sample(jax.random.key(0), (n, gm.dim))
    metrics = Metrics(gm, np.zeros((n, gm.dim)), jax.random.key(7))
    exact = gm.sample(jax.random.key(8), n, SDE.eps, SDE)
    ex_gap, ex_se = metrics._gap(exact)
    run = eqx.filter_jit(lambda smp, x: S.sample(smp, score, SDE, jax.random.key(3), x))
    lines = ["| sampler | steps | NFE | CE gap (+-SE) |", "|---|---:|---:|---:|",
             f"| exact samples of p_eps | | | {ex_gap:+.4f} +- {ex_se:.4f} |"]
    samplers = {
        "PredictorCorrector() (default: ancestral + Langevin 'transition', log-SNR grid)":
            lambda k: S.PredictorCorrector(k),
        "Song et al.: reverse diffusion + Langevin step_rule='song' (snr 0.16), uniform t":
            lambda k: S.PredictorCorrector(k, S.ReverseDiffusionPredictor(), S.LangevinCorrector(0.16, step_rule="song"),
                                           S.UniformTimeGrid()),
        "Euler-Maruyama, uniform t": lambda k: S.EulerMaruyama(k),
    }
    for name, make in samplers.items():
        for k in (20, 50, 200):
            res = _block(run(make(k), x_T))
            x = res.samples
            ok = bool(jnp.all(jnp.isfinite(x)))
            g, se = metrics._gap(x) if ok else (np.nan, np.nan)
            lines.append(f"| {name} | {k} | {int(res.nfe)} | {fmt(g, '+.4f')} +- {fmt(se, '.4f')} |")
            log(f"[A, stochastic] {name[:40]:<40} steps {k:3d}  CE gap {fmt(g, '+.4f')} +- {fmt(se, '.4f')}")
    return "\n".join(lines)


POP_BASELINE = "UniPC bh2-3, uniform t"  # also re-measured by the population check, for scale


def population(case, rows, metrics, n, n_draws, log):
    """The issue's cells of `case` measured again on `n_draws` independent draws of n prior noises
    (keys 10000 + 100 * EVAL_KEY[case] + i): the best configuration of each cell (by paired RMSE on the
    benchmark's noise) and POP_BASELINE, each draw measured by a Metrics sharing `metrics`' entropy.
    Returns {(nfe, sampler): pooled statistics}."""
    gm = CASES[case]()
    score = gm.score_fn(SDE)
    cells = sorted({nfe for (c, nfe) in REFERENCE if c == case})
    todo = {}
    for nfe in cells:
        best = _best(rows, case, nfe)
        if best is not None:
            todo[(nfe, best["sampler"])] = best["smp"]
        base = [r for r in rows if r["case"] == case and r["budget"] == nfe and r["sampler"] == POP_BASELINE]
        if base:
            todo[(nfe, POP_BASELINE)] = base[0]["smp"]
    if not todo or n_draws < 1:
        return {}
    t0 = time.perf_counter()
    acc = {k: dict(mse=[], far=[], gap=[]) for k in todo}
    for i in range(n_draws):
        x_T = SDE.prior_sample(jax.random.key(10_000 + 100 * EVAL_KEY[case] + i), (n, gm.dim))
        m = Metrics(gm, reference_solution(case, x_T)[0], None, entropy=(metrics.entropy, metrics.entropy_se))
        for k, smp in todo.items():
            r = m(_block(S.sample(smp, score, SDE, jax.random.key(0), x_T)).samples)
            acc[k]["mse"].append(r["rmse"] ** 2)
            acc[k]["far"].append(r["far"])
            acc[k]["gap"].append(r["ce"] - m.exact_gap)  # signed, so the pooled CE dist averages before |.|
    out = {}
    for (nfe, name), a in acc.items():
        mse = np.asarray(a["mse"])
        rmse = math.sqrt(mse.mean())
        se = (mse.std(ddof=1) / math.sqrt(mse.size) / (2 * rmse)) if mse.size > 1 else float("nan")
        out[(nfe, name)] = dict(rmse=rmse, rmse_se=se, batch_rmse=np.sqrt(mse), far=float(np.mean(a["far"])),
                                ce_dist=abs(float(np.mean(a["gap"]))))
    log(f"[{case}] population check: {n_draws} x {n} other noises, {len(todo)} configurations, "
        f"{time.perf_counter() - t0:.0f} s")
    return out


def population_table(pop, n, n_draws):
    lines = [f"| case | NFE | configuration | pooled RMSE (+-SE) over {n_draws} x {n} | RMSE of each draw "
             f"(min / median / max) | draws <= target | far per {n} (mean) | pooled CE dist | target RMSE / CE dist |",
             "|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for (case, nfe), (_, r_rmse, r_ce) in REFERENCE.items():
        for (nfe2, name), st in sorted(pop.get(case, {}).items(), key=lambda kv: (kv[0][0], kv[0][1] == POP_BASELINE)):
            if nfe2 != nfe:
                continue
            b = st["batch_rmse"]
            lines.append(f"| {case} | {nfe} | {name} | {st['rmse']:.3g} +- {st['rmse_se']:.2g} | {b.min():.3g} / "
                         f"{np.median(b):.3g} / {b.max():.3g} | {int(np.sum(b <= 0.5 * r_rmse))} of {b.size} | "
                         f"{st['far']:.1f} | {st['ce_dist']:.3g} | {0.5 * r_rmse:.3g} / {r_ce} |")
    return "\n".join(lines)


def table(rows):
    lines = ["| case | sampler | NFE | paired RMSE | RMSE near / far | CE gap (+-SE) | exact gap | CE dist | "
             "far (> 1) | fit RMSE |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ce = "NaN" if not r["finite"] else f"{r['ce']:+.3f} +- {r['ce_se']:.3f}"
        lines.append(f"| {r['case']} | {r['sampler']} | {r['nfe']} | {fmt(r['rmse'])} | {fmt(r['rmse_near'])} / "
                     f"{fmt(r['rmse_far'])} | {ce} | {fmt(r['exact_gap'], '+.3f')} | {fmt(r['ce_dist'])} | {r['far']} | "
                     f"{'' if r['fit_rmse'] is None else fmt(r['fit_rmse'])} |")
    return "\n".join(lines)


def _best(rows, case, nfe):
    cand = [r for r in rows if r["case"] == case and r["budget"] == nfe and r["finite"]]
    return min(cand, key=lambda r: r["rmse"]) if cand else None


def _over(r, target):
    """Which part of the squared error (near / far samples) alone exceeds the target."""
    near, far = r["rmse_near"] > target, r["rmse_far"] > target
    return {(False, True): "the far samples alone exceed", (True, False): "the near samples alone exceed",
            (True, True): "the near and the far samples each exceed"}.get((near, far), "neither part alone exceeds")


def comparison(rows, pop=None):
    """The issue's table, one line per cell, met or not (on the benchmark's draw, and pooled over the
    population check's draws where it ran); for an unmet RMSE cell, where the error is."""
    pop = pop or {}
    lines = ["| case | NFE | best existing (paired RMSE / CE dist) | target RMSE (0.5x) | best scoresde by paired "
             "RMSE | its RMSE / CE dist | RMSE met | CE dist met | pooled over other draws: RMSE / CE dist | "
             "met (pooled) |", "|---|---:|---|---:|---|---|---|---|---|---|"]
    why = []
    for (case, nfe), (name, r_rmse, r_ce) in REFERENCE.items():
        best = _best(rows, case, nfe)
        if best is None:
            lines.append(f"| {case} | {nfe} | {name}: {r_rmse} / {r_ce} | {0.5 * r_rmse:.3g} | (not run) | | | | | |")
            continue
        # For A, independent exact sets of 20000 scatter by 0.0075 in CE, so values below 0.02 are noise.
        ce_target = max(r_ce, 0.02) if case == "A" else r_ce
        ce_ok = best["ce_dist"] <= ce_target
        rmse_ok = best["rmse"] <= 0.5 * r_rmse
        st = pop.get(case, {}).get((nfe, best["sampler"]))
        pooled = ("(not run) | " if st is None else
                  f"{st['rmse']:.3g} +- {st['rmse_se']:.2g} / {st['ce_dist']:.3g} | "
                  f"{'yes' if st['rmse'] <= 0.5 * r_rmse and st['ce_dist'] <= ce_target else 'NO'} |")
        lines.append(f"| {case} | {nfe} | {name}: {r_rmse} / {r_ce} | {0.5 * r_rmse:.3g} | {best['sampler']} | "
                     f"{best['rmse']:.3g} / {best['ce_dist']:.3g} | {'yes' if rmse_ok else 'NO'} | "
                     f"{'yes' if ce_ok else 'NO'} | {pooled}")
        if not (rmse_ok and ce_ok):
            fits = [r for r in rows if r["case"] == case and r["budget"] == nfe and r["fit_rmse"] is not None]
            fit = (f"the UniPC grid fitted on {case} reaches {fits[0]['fit_rmse']:.3g} on its own "
                   f"{FIT_KWARGS['n_screen']} screening noises "
                   f"and {fits[0]['rmse']:.3g} on the fresh ones" if fits else "no grid was fitted")
            lowest_far = min((r for r in rows if r["case"] == case and r["budget"] == nfe and r["finite"]),
                             key=lambda r: r["far"])
            why.append(f"- {case}, NFE {nfe}: best {best['sampler']}, RMSE {best['rmse']:.3g} = sqrt(near^2 + far^2), "
                       f"near {best['rmse_near']:.3g} (samples within 1 of their exact solution), far "
                       f"{best['rmse_far']:.3g} ({best['far']} samples farther than 1): "
                       f"{_over(best, 0.5 * r_rmse)}"
                       f" the target {0.5 * r_rmse:.3g}. Fewest far samples of any configuration: {lowest_far['far']} "
                       f"({lowest_far['sampler']}, RMSE {lowest_far['rmse']:.3g}). {fit[0].upper() + fit[1:]}.")
    return "\n".join(lines), why


def variant_choice(grids, rows):
    """Per case and NFE with both fitted variants: the one whose chosen start has the lower mean
    squared error on fit_grid's validation noises (the same noises for both: same key), and the one
    with the lower paired RMSE on the benchmark's draw, to show whether the choice needs the latter."""
    out = []
    for c, k in sorted({(c, k) for c, k, _ in grids}):
        vs = [v for v in FIT_VARIANTS if (c, k, v) in grids]
        if len(vs) < 2:
            continue
        val = {v: grids[(c, k, v)].info.get("mse_validate", {}).get(grids[(c, k, v)].info["start"]) for v in vs}
        own = {v: next((r["rmse"] for r in rows if r["case"] == c and r["budget"] == k
                        and r["sampler"] == fitted_label(c, v, c)), None) for v in vs}
        if None in val.values() or None in own.values():
            continue
        by_val, by_rmse = min(val, key=val.get), min(own, key=own.get)
        out.append(f"- {c}, NFE {k}: on the validation noises the {by_val} grid wins (mean squared error "
                   f"{' / '.join(f'{val[v]:.4g}' for v in vs)} {' / '.join(vs)}); on the benchmark's draw the "
                   f"{by_rmse} grid (RMSE {' / '.join(f'{own[v]:.3g}' for v in vs)})"
                   + ("" if by_val == by_rmse else " -- the two choices differ"))
    return out


def held_out(rows, nfes):
    """The configuration chosen on A and B (lowest geometric-mean paired RMSE over A and B, fitted grids
    excluded: they are per case) and how it ranks on C, which nobody tuned on."""
    lines = ["| NFE | chosen on A, B (geo-mean RMSE) | its C RMSE / CE dist | its rank on C | best on C | "
             "best C RMSE / CE dist |", "|---:|---|---|---:|---|---|"]
    for nfe in nfes:
        by = {}
        for r in rows:
            if r["budget"] == nfe and r["fit_rmse"] is None and "fitted" not in r["sampler"]:
                by.setdefault(r["sampler"], {})[r["case"]] = r
        ab = {k: v for k, v in by.items() if "A" in v and "B" in v and "C" in v
              and v["A"]["finite"] and v["B"]["finite"]}
        if not ab:
            continue
        chosen = min(ab, key=lambda k: math.log(ab[k]["A"]["rmse"]) + math.log(ab[k]["B"]["rmse"]))
        c_rows = sorted((r for r in rows if r["case"] == "C" and r["budget"] == nfe and r["finite"]),
                        key=lambda r: r["rmse"])
        rank = 1 + [r["sampler"] for r in c_rows].index(chosen) if ab[chosen]["C"]["finite"] else None
        c = ab[chosen]["C"]
        lines.append(f"| {nfe} | {chosen} ({math.sqrt(ab[chosen]['A']['rmse'] * ab[chosen]['B']['rmse']):.3g}) | "
                     f"{fmt(c['rmse'])} / {fmt(c['ce_dist'])} | {rank} of {len(c_rows)} | {c_rows[0]['sampler']} | "
                     f"{c_rows[0]['rmse']:.3g} / {c_rows[0]['ce_dist']:.3g} |")
    return "\n".join(lines)


def _load():
    with open("/proc/loadavg") as f:
        return " / ".join(f.read().split()[:3])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000, help="samples per run (default 20000)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2000 samples, NFE 5 and 10, no fitted grid")
    p.add_argument("--cases", default="A,B,C")
    p.add_argument("--nfe", default="5,10,20,50,100")
    p.add_argument("--fit_nfe", default="5,10,20", help="NFEs at which fitted grids run ('' for none)")
    p.add_argument("--refit", action="store_true", help="fit the grids again (minutes each) and overwrite the files")
    p.add_argument("--fit_variants", default="plain,decoupled,lateshift",
                   help="fitted grids to run (and with --refit, to fit): plain (the times), decoupled (also the "
                        "evaluation times), lateshift (the plain grid's times, and evaluation times from log-SNR 0 "
                        "on)")
    p.add_argument("--fit_only", action="store_true", help="stop after loading or fitting the grids")
    p.add_argument("--floor_cases", default="B", help="cases whose float32 floor is measured ('' for none)")
    p.add_argument("--no_stochastic", action="store_true", help="skip the predictor-corrector section")
    p.add_argument("--pop_draws", type=int, default=10,
                   help="independent draws of n noises for the population check of the issue's cells (0: none)")
    p.add_argument("--configs", default="", help="'|'-separated subset of the configurations (their names hold "
                   "commas; default all)")
    p.add_argument("--out", default=os.path.join(RESULTS, "samplers.md"))
    a = p.parse_args(argv)
    n = 2000 if a.quick and a.n == 20000 else a.n
    nfes = (5, 10) if a.quick else tuple(int(v) for v in a.nfe.split(","))
    fit_nfes = () if a.quick or not a.fit_nfe else tuple(int(v) for v in a.fit_nfe.split(","))
    cases = a.cases.split(",")
    for c in cases:
        if c not in CASES:
            raise ValueError(f"--cases: unknown case {c!r}; valid: {', '.join(CASES)}.")
    if a.configs:
        bad = [k for k in a.configs.split("|") if k not in CONFIGS]
        if bad:
            raise ValueError(f"--configs: unknown {bad}; valid: {list(CONFIGS)}.")
    configs = CONFIGS if not a.configs else {k: CONFIGS[k] for k in a.configs.split("|")}
    t_start = time.perf_counter()
    load_start = _load()

    def log(s):
        print(s, flush=True)

    variants = [v for v in a.fit_variants.split(",") if v]
    if set(variants) - set(FIT_VARIANTS):
        raise ValueError(f"--fit_variants: unknown {sorted(set(variants) - set(FIT_VARIANTS))}; valid: "
                         f"{', '.join(FIT_VARIANTS)}.")
    grids = {}
    for c in cases:
        for k in fit_nfes:
            for v in (v for v in FIT_VARIANTS if v in variants):  # plain before lateshift, which starts from it
                grids[(c, k, v)] = fit_case_grid(c, k, log, v) if a.refit else load_grid(c, k, log, v)
    fit_s = time.perf_counter() - t_start
    if a.fit_only:
        log(f"grids ready in {fit_s:.0f} s (load average at start {load_start}, now {_load()})")
        return
    rows, notes, parts, pop = [], [], [f"grids {'fitted' if a.refit else 'loaded'} {fit_s:.0f} s"], {}
    pop_draws = 0 if a.quick else a.pop_draws
    for case in cases:
        r, m, secs = run_case(case, n, nfes, configs, fit_nfes, grids, log, floor=case in a.floor_cases.split(","))
        for row in r:
            row["exact_gap"] = m.exact_gap
        rows += r
        parts.append(f"case {case} {secs:.0f} s")
        t1 = time.perf_counter()
        pop[case] = population(case, r, m, n, pop_draws, log)
        if pop[case]:
            parts.append(f"population check {case} {time.perf_counter() - t1:.0f} s")
        notes.append(f"- case {case}: H(p_eps) = {m.entropy:.4f} +- {m.entropy_se:.4f} nats; CE gap of the exact "
                     f"solutions from the same noise {m.exact_gap:+.4f}.")
    t1 = time.perf_counter()
    stoch = None if a.no_stochastic else stochastic_section(n, log)
    if stoch is not None:
        parts.append(f"stochastic section {time.perf_counter() - t1:.0f} s")
    total = time.perf_counter() - t_start
    comp, why = comparison(rows, pop)

    def _vals(d):
        return ", ".join(f"{s} {v:.4g}" for s, v in d.items())

    fitted = [f"- {c}, NFE {k}, {grid_label(v)}: fitted in {g.info.get('fit_seconds', '?')} s from "
              f"{g.info['start']}, loss "
              f"{g.info['mse_fit']:.4g} (the starting grids on the final fitting set: {_vals(g.info['mse_inits'])})"
              + (f"; hard noises after each round {g.info['n_hard']}" if "n_hard" in g.info else "")
              + (f"; each start's fitted grid on the validation noises: {_vals(g.info['mse_validate'])}"
                 if "mse_validate" in g.info else "")
              + (f"; evaluation shifts (log-SNR) {np.round(np.asarray(g.eval_shifts, np.float64), 3).tolist()}"
                 if g.eval_shifts is not None else "")
              for (c, k, v), g in sorted(grids.items(), key=lambda i: (i[0][:2], variant_order(i[0][2])))]
    choice = variant_choice(grids, rows)
    if choice:
        fitted += ["", "Which variant: the choice on fit_grid's validation noises against the one on the "
                   "benchmark's draw.", ""] + choice
    md = "\n\n".join(x for x in [
        f"# Sampler benchmark (`python -m experiments.benchmarks.samplers{' --quick' if a.quick else ''}"
        f"{' --refit' if a.refit else ''}`)",
        f"{n} samples per run, VP SDE (beta 0.1 -> 20, eps = 1e-3), exact mixture scores, "
        f"{jax.device_count()} x {jax.devices()[0].platform} ({os.cpu_count()} cores), total {total / 60:.1f} min "
        f"({'; '.join(parts)}); load average (1 / 5 / 15 min) at start {load_start}, at end {_load()}. Columns "
        "are defined in the script's docstring; every sampler is compared at t = eps without a final denoising "
        "step (the 'denoise final' rows end with one instead of their last step, as a user of that option gets).",
        "\n".join(notes),
        "## Against the best existing samplers (the issue's table; same cases, metric and noise protocol)",
        comp,
        ("Unmet cells, where the error is:\n\n" + "\n".join(why)) if why else "",
        ("## Population check: the cells' configurations on other draws of the same size\n\n"
         f"{pop_draws} independent draws of {n} prior noises (keys 10000 + 100 * the case's key + i), each "
         "against its own float64 reference: the best configuration of each cell (by paired RMSE on the "
         f"benchmark's draw above) and '{POP_BASELINE}' for scale. Where a few wrong-mode samples carry most "
         "of the squared error (case B), one draw's RMSE is a noisy estimate; the pooled RMSE (sqrt of the "
         "mean squared error over all draws; SE from the spread of the draws' mean squared errors) estimates "
         "the value that every single-draw number of the issue's table estimates.\n\n"
         + population_table(pop, n, pop_draws)) if any(pop.values()) else "",
        "## Held-out case C: the configuration chosen on A and B, measured on C" if "C" in cases else "",
        held_out(rows, nfes) if "C" in cases else "",
        "## All configurations", table(rows),
        ("## Fitted grids (experiments/benchmarks/grids/; loss: the importance-weighted mean squared error "
         f"over the {FIT_KWARGS['n_screen']} screening noises)\n\n" + "\n".join(fitted))
        if fitted else "",
        "## Stochastic samplers on case A: the predictor-corrector default converges" if stoch else "", stoch or "",
    ] if x) + "\n"
    print(md)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(md)
    print(f"wrote {a.out} in {total:.0f} s")


if __name__ == "__main__":
    main()

"""Inverse-problem methods against exact conditional laws (issue 5, acceptance 1).

Data with exact scores (scoresde.analytic.GaussianMixture, D = 8 as 2x4x1 images):
  gauss-iso   N(mu, 0.5 I)
  gauss-corr  N(mu, S), S a random dense covariance (correlations up to ~0.9)
  mixture     3 well separated components with dense covariances
Observations (noise-free) of one draw x* of the data: inpainting (4 of 8 pixels
observed) and 2x super-resolution (2x2 average pooling -> 2 values). The exact
posterior p(x | y) (scoresde.guidance.exact_posterior) is Gaussian / a re-weighted
mixture. Methods (VP SDE, exact score):
  replacement  Song et al. 2021, reverse-diffusion predictor, n steps, final denoise
  pigdm        Pi-GDM score (data_var = tr(Cov)/D), DPM-Solver++(2M) with n steps
  tweedie-cov  exact Tweedie-covariance guidance (moment projection), DPM-Solver++ n steps
NFE = score evaluations per sample (Pi-GDM / tweedie-cov add 1 / M+1 vector-Jacobian
products per evaluation). Errors, from N samples of each method:
  mean z      max over unobserved coordinates of |mean - exact mean| / SE (SE = exact
              posterior std / sqrt(N)); within 3 means no detectable bias
  cov ratio   ||Cov_hat - Cov||_F / its Monte-Carlo noise level sqrt(sum (C_ii C_jj + C_ij^2) / N)
              (about 1 for an exact sampler)
  |Ax-y|      max residual of the observation in the outputs
  weights z   mixture only: max_k |mean_x p(k | x) - w'_k| / SE, where p(k | x) are the prior
              responsibilities (E[p(k | x) | y] = p(k | y) = w'_k exactly, as y is a function of x)

Run: python experiments/benchmarks/inverse_problems.py [--quick] [--n 4000]
Writes experiments/benchmarks/results/inverse_problems.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from scoresde import VPSDE, GaussianMixture  # noqa: E402
from scoresde.guidance import (AveragePool, Inpainting, ReplacementSampler, exact_posterior,  # noqa: E402
                               pigdm_score, sample_replacement, tweedie_cov_score)
from scoresde.sampling import DPMSolverPP, sample  # noqa: E402

SDE = VPSDE()
XS = (2, 4, 1)
D = 8
MASK = jnp.array([[1, 0, 1, 0], [0, 1, 1, 0]], jnp.float32)[..., None]


def datasets():
    rng = np.random.default_rng(0)
    mu = np.linspace(-1, 1, D)
    L = rng.normal(size=(D, D)) * 0.4
    S = L @ L.T + 0.1 * np.eye(D)
    covs = []
    for _ in range(3):
        L = rng.normal(size=(D, D)) * 0.25
        covs.append(L @ L.T + 0.05 * np.eye(D))
    means = np.stack([np.full(D, -1.5), np.tile([1.5, -1.5], D // 2), np.full(D, 1.5)])
    f = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return {
        "gauss-iso": GaussianMixture.isotropic(jnp.ones(1), f(mu[None]), 0.5),
        "gauss-corr": GaussianMixture(jnp.ones(1), f(mu[None]), f(S[None])),
        "mixture": GaussianMixture(f([0.3, 0.3, 0.4]), f(means), f(np.stack(covs))),
    }


def make_runner(method: str, n: int):
    """A jitted fn(gm, op, xT, y, key) -> samples for one method and step count."""

    @eqx.filter_jit
    def run(gm, op, xT, y, key):
        sf = gm.score_fn(SDE)
        if method == "replacement":
            return sample_replacement(ReplacementSampler(n), sf, SDE, op, y, key, xT).samples
        if method == "pigdm":
            v = jnp.trace(gm.covariance()) / D
            score = pigdm_score(sf, SDE, op, y, data_var=v)
        else:
            score = tweedie_cov_score(sf, SDE, op, y)
        return sample(DPMSolverPP(n_steps=n), score, SDE, key, xT, denoise=True).samples

    return run


def errors(samples, post, prior, op, y):
    s = np.asarray(samples, np.float64).reshape(samples.shape[0], -1)
    N = s.shape[0]
    m, C = np.asarray(post.mean(), np.float64), np.asarray(post.covariance(), np.float64)
    d = np.maximum(np.diag(C), 0.0)
    free = d > 1e-6
    z_mean = np.max(np.abs(s.mean(0) - m)[free] / np.sqrt(d[free] / N))
    noise = np.sqrt(np.sum(np.outer(d, d) + C**2) / N)
    cov_ratio = np.linalg.norm(np.cov(s.T) - C) / noise
    resid = float(jnp.max(jnp.abs(op.apply(jnp.asarray(samples)) - y)))
    wz = None
    if prior.n_components > 1:
        r = np.asarray(prior.posterior_weights(jnp.asarray(s, jnp.float32)), np.float64)
        se = r.std(0) / np.sqrt(N) + 1e-12
        wz = float(np.max(np.abs(r.mean(0) - np.asarray(post.weights)) / se))
    return z_mean, cov_ratio, resid, wz


NOTES = """
## What the numbers say (and which biases are inherent)

* gauss-iso: all three methods are exact in law here. Pi-GDM with data_var = 0.5 uses the
  true Cov[x_0 | x_t] = r_t^2 I; the replacement method is exact because the observed part
  (range of A^T) and the unknown part (null space of A) are independent under N(mu, v I).
  Once the discretisation has converged (replacement >= ~100 NFE, DPM-Solver++ >= ~20-40
  NFE) mean z is at the Monte-Carlo level and cov ratio ~ 1. (All rows share x_T and keys,
  so the same Monte-Carlo error repeats along a column.)
* gauss-corr: tweedie-cov (exact Tweedie covariance, Boys et al. 2023) is exact for Gaussian
  data of any covariance, and its converged rows are within Monte-Carlo error (mean z < 3,
  cov ratio ~ 1). Pi-GDM keeps a bias that does not shrink with NFE: it replaces
  Cov[x_0 | x_t] = (S^-1 + alpha_t^2 / sigma_t^2 I)^-1 by r_t^2 I, so p_t(y | x_t) has the
  wrong covariance and the guidance pulls the unknown pixels by the wrong amount.
  Replacement is biased too (largest error): y_t = alpha_t y + sigma_t z is drawn afresh at
  every step, independent of the sampled history, so the unknown part only feels
  p_t(x_unknown | x_obs,t = y_t) step by step and never the joint constraint; the bias is a
  property of the method, not of the step count.
* mixture: no method is exact, and none reaches Monte-Carlo error (mean z >= ~20 at the
  largest NFE). tweedie-cov approximates p(x_0 | x_t) - a mixture whenever the component is
  still undecided at time t - by one Gaussian with the right first two moments (moment
  projection), so p_t(y | x_t) is mis-specified at intermediate t and the component weights
  and within-component means come out biased; it is the best method for inpainting (weights
  z ~ 2, cov ratio ~ 5) but not for 2x super-resolution, where its single Gaussian spans
  components that the two pooled values separate (weights z ~ 12); there Pi-GDM's broader
  isotropic r_t^2 happens to do better on the weights (z ~ 1.4) and covariance (ratio ~ 3.5)
  while its mean stays biased (z ~ 27). Removing the bias needs an asymptotically exact
  correction (sequential Monte Carlo, e.g. the twisted diffusion sampler of Wu et al. 2023,
  or MCMC on p(x | y)); none is implemented here. Replacement is worst throughout.
* max abs(Ax - y): replacement puts y into the output exactly (0 for inpainting, float32
  round-off for pooling); the score-guided methods match y only approximately (Pi-GDM on the
  mixture is off by up to ~1e-2), since the observation enters through the guidance term.
"""


DIGITS_MARK = "## Half-masked test digits"


def digits_inpainting(seed: int = 0) -> str:
    """Inpainting of half-masked test digits (top 4 rows observed) with an *analytic* prior:
    a 20-component full-covariance Gaussian mixture fitted (scikit-learn EM) to the train
    digits, whose exact score drives the samplers and whose exact posterior p(x | y) is a
    re-weighted mixture (the ceiling any method can reach with this prior). Labels of the
    completions come from a logistic-regression classifier on the train digits (an
    independent judge; the trained U-Nets are judged by the toolkit's digit classifier in
    experiments/guided.py -> results/guided_digits.md)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.mixture import GaussianMixture as SkGM

    from scoresde.data import load_arrays
    from scoresde.guidance import mixture_condition
    from scoresde.guidance.exact import operator_matrix, operator_rows

    t0 = time.time()
    (xtr, ltr), (xte, lte) = load_arrays("digits", "train"), load_arrays("digits", "test")
    scale = lambda x: (np.asarray(x, np.float32) / 16 * 2 - 1).reshape(len(x), -1)  # noqa: E731
    Xtr, Xte = scale(xtr), scale(xte)
    clf = LogisticRegression(max_iter=2000, C=0.5).fit(Xtr, ltr)
    sk = SkGM(n_components=20, covariance_type="full", reg_covar=1e-2, random_state=seed).fit(Xtr)
    gm = GaussianMixture(jnp.asarray(sk.weights_ / sk.weights_.sum(), jnp.float32),
                         jnp.asarray(sk.means_, jnp.float32), jnp.asarray(sk.covariances_, jnp.float32))
    xs, N = (8, 8, 1), len(Xte)
    mask = jnp.zeros(xs).at[:4].set(1.0)
    op = Inpainting(mask)
    y = op.apply(jnp.asarray(Xte).reshape((N,) + xs))
    xT = SDE.prior_sample(jax.random.key(seed), (N,) + xs)
    sf = gm.score_fn(SDE)
    v = float(np.trace(np.cov(Xtr.T)) / Xtr.shape[1])
    A, keep = jnp.asarray(operator_matrix(op, xs)), operator_rows(op, xs)
    rows = []

    def add(name, nfe, out):
        out = np.asarray(out).reshape(N, -1)
        acc = np.mean(clf.predict(out) == lte)
        obs = np.asarray(mask).reshape(-1) > 0
        exact = bool(np.array_equal(out[:, obs], np.asarray(y).reshape(N, -1)[:, obs]))
        err = np.max(np.abs(out[:, obs] - np.asarray(y).reshape(N, -1)[:, obs]))
        rows.append(f"| {name} | {nfe} | {100 * acc:.1f}% | {'yes' if exact else f'no ({err:.1e})'} |")

    add("original test digits (classifier accuracy)", "-", Xte)
    add("zero-filled input", "-", y)
    post = jax.jit(jax.vmap(lambda k, y1: mixture_condition(gm, A, y1.reshape(-1)[keep]).sample(k, 1)[0]))
    add("exact posterior p(x given y) of the fitted prior (ceiling)", "-",
        post(jax.random.split(jax.random.key(seed + 5), N), y))
    rep = eqx.filter_jit(lambda k, x, y: sample_replacement(ReplacementSampler(200), sf, SDE, op, y, k, x))
    add("replacement (reverse diffusion, 200 steps)", 201, rep(jax.random.key(seed + 1), xT, y).samples)
    from scoresde.sampling import LangevinCorrector
    repc = eqx.filter_jit(lambda k, x, y: sample_replacement(ReplacementSampler(
        100, corrector=LangevinCorrector(snr=0.16)), sf, SDE, op, y, k, x))
    add("replacement + Langevin corrector (100 steps)", 201, repc(jax.random.key(seed + 1), xT, y).samples)
    pig = eqx.filter_jit(lambda k, x, y: sample(DPMSolverPP(n_steps=40), pigdm_score(
        sf, SDE, op, y, data_var=v), SDE, k, x, denoise=True).samples)
    add("Pi-GDM + DPM-Solver++ (40 steps)", 41, pig(jax.random.key(seed + 1), xT, y))
    twc = eqx.filter_jit(lambda k, x, y: sample(DPMSolverPP(n_steps=20), tweedie_cov_score(
        sf, SDE, op, y), SDE, k, x, denoise=True).samples)
    add("tweedie-cov + DPM-Solver++ (20 steps)", 21, twc(jax.random.key(seed + 1), xT, y))
    hdr = [DIGITS_MARK, "", f"{N} test digits (8x8, scaled to [-1, 1]), top 4 rows observed, one completion "
           "each. Prior: a 20-component full-covariance Gaussian mixture fitted by EM (scikit-learn) "
           "to the train digits; its exact score drives every method and its exact posterior is "
           "the ceiling for this prior. Labels from a logistic-regression classifier on the train "
           f"digits (trained U-Nets, judged by the toolkit's classifier: results/guided_digits.md). "
           f"{time.time() - t0:.0f} s.", "",
           "| method | NFE | classifier recovers the true label | observed pixels == input |",
           "|---|---|---|---|"]
    note = ["", "The exact posterior of this prior recovers the label on 88.9% of the digits (>= 85%); "
            "the samplers lose 11-30 points to their approximations of p(y | x_t) - the same "
            "biases as in the mixture rows above (a digit prior is a mixture whose component is "
            "undecided at intermediate t). Replacement is worse than zero-filling: it never feeds "
            "the joint constraint back into the unknown rows. Pi-GDM / tweedie-cov match the "
            "observed pixels only to the printed tolerance; replace them by y after sampling "
            "(op.replace(x, y)) when exact equality is needed."]
    return "\n".join(hdr + rows + note) + "\n"


CFG_MARK = "## Classifier-free guidance on digits"


def _frechet(a, b):
    """Frechet distance between Gaussians fitted to the rows of a and b (pixel space)."""
    from scipy.linalg import sqrtm

    ma, mb = a.mean(0), b.mean(0)
    ca, cb = np.cov(a.T), np.cov(b.T)
    cs = sqrtm(ca @ cb).real
    return float(np.sum((ma - mb) ** 2) + np.trace(ca + cb - 2 * cs))


def digits_cfg(seed: int = 0, per_class: int = 100) -> str:
    """Class-conditional digits by classifier-free guidance with an *analytic* class-conditional
    prior: per class a 3-component full-covariance Gaussian mixture fitted by EM to the train
    digits of that class; the null label (10) is the label-marginal mixture. The guided score
    (1 + w) s(x | c) - w s(x) (cfg_score via classifier_free_guidance) drives DPM-Solver++."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.mixture import GaussianMixture as SkGM

    from scoresde.data import load_arrays
    from scoresde.guidance import classifier_free_guidance

    t0 = time.time()
    (xtr, ltr), (xte, lte) = load_arrays("digits", "train"), load_arrays("digits", "test")
    scale = lambda x: (np.asarray(x, np.float32) / 16 * 2 - 1).reshape(len(x), -1)  # noqa: E731
    Xtr, Xte = scale(xtr), scale(xte)
    ltr = np.asarray(ltr)
    clf = LogisticRegression(max_iter=2000, C=0.5).fit(Xtr, ltr)
    comps, ws, ms, cs = [], [], [], []
    for c in range(10):
        sk = SkGM(n_components=3, covariance_type="full", reg_covar=1e-2, random_state=seed).fit(Xtr[ltr == c])
        w = sk.weights_ / sk.weights_.sum()
        comps.append(GaussianMixture(jnp.asarray(w, jnp.float32), jnp.asarray(sk.means_, jnp.float32),
                                     jnp.asarray(sk.covariances_, jnp.float32)))
        ws.append(w * np.mean(ltr == c))
        ms.append(sk.means_)
        cs.append(sk.covariances_)
    ws = np.concatenate(ws)
    marg = GaussianMixture(jnp.asarray(ws / ws.sum(), jnp.float32), jnp.asarray(np.concatenate(ms), jnp.float32),
                           jnp.asarray(np.concatenate(cs), jnp.float32))

    def net(x, t, lab):  # exact class-conditional score; label 10 = null (marginal)
        scores = [g.score(x, t, SDE) for g in comps] + [marg.score(x, t, SDE)]
        return jnp.select([(lab == i).reshape((-1,) + (1,) * (x.ndim - 1)) for i in range(11)], scores)

    B = 10 * per_class
    labels = jnp.repeat(jnp.arange(10), per_class)
    xT = SDE.prior_sample(jax.random.key(seed), (B, 8, 8, 1))
    rows = []
    for w in (0.0, 1.0, 2.0, 4.0):
        run = eqx.filter_jit(lambda k, x, lab, w: sample(DPMSolverPP(n_steps=30), classifier_free_guidance(
            net, lab, w, num_classes=10), SDE, k, x, denoise=True).samples)
        out = np.asarray(run(jax.random.key(seed + 1), xT, labels, jnp.asarray(w))).reshape(B, -1)
        agree = np.mean(clf.predict(out) == np.asarray(labels))
        rows.append(f"| {w:g} | {100 * agree:.1f}% | {_frechet(out, Xte):.2f} |")
    hdr = [CFG_MARK, "", f"{per_class} samples per class, DPM-Solver++ (30 steps, NFE 62 with the two "
           "scores of CFG), exact class-conditional scores of a per-class 3-component Gaussian "
           "mixture fitted to the train digits (no class-conditional network was trained for this "
           "table); agreement by a logistic-regression classifier on the train digits "
           f"(98.3% test accuracy); Frechet distance in pixel space to the {len(Xte)} test digits "
           f"(test vs train: {_frechet(Xtr, Xte):.2f}). {time.time() - t0:.0f} s.", "",
           "| w | classifier agrees with the requested class | Frechet distance (pixels) |",
           "|---|---|---|"]
    return "\n".join(hdr + rows) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=4000, help="samples per method and setting")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--section", choices=["all", "gaussian", "digits", "cfg"], default="all",
                   help="digits: only (re)write the half-masked digits section of --out")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "inverse_problems.md"))
    a = p.parse_args(argv)
    steps = {"replacement": [10, 30, 100, 300], "pigdm": [5, 10, 20, 40], "tweedie-cov": [5, 10, 20, 40]}
    if a.quick:
        steps = {k: v[1::2] for k, v in steps.items()}
    if a.section == "digits":
        old = open(a.out).read() if os.path.exists(a.out) else ""
        old = old.split(DIGITS_MARK)[0].split(CFG_MARK)[0].rstrip("\n") + "\n\n"
        text = digits_inpainting()
        print(text)
        with open(a.out, "w") as fh:
            fh.write(old + text)
        return
    if a.section == "cfg":
        old = open(a.out).read() if os.path.exists(a.out) else ""
        old = old.split(CFG_MARK)[0].rstrip("\n") + "\n\n"
        text = digits_cfg()
        print(text)
        with open(a.out, "w") as fh:
            fh.write(old + text)
        return
    runners = {(m, n): make_runner(m, n) for m, ns in steps.items() for n in ns}
    t_start = time.time()
    lines = ["| data | problem | method | NFE | mean z | cov ratio | weights z | max abs(Ax-y) |",
             "|---|---|---|---|---|---|---|---|"]
    for dname, gm in datasets().items():
        x_true = gm.sample(jax.random.key(1), 1).reshape((1,) + XS)
        xT = SDE.prior_sample(jax.random.key(2), (a.n,) + XS)
        for pname, op in [("inpaint", Inpainting(MASK)), ("sr2x", AveragePool(2))]:
            y1 = op.apply(x_true)
            y = jnp.broadcast_to(y1, (a.n,) + y1.shape[1:])
            post = exact_posterior(gm, op, y1[0], XS)
            for (m, n), run in runners.items():
                out = run(gm, op, xT, y, jax.random.key(3))
                zm, cr, res, wz = errors(out, post, gm, op, y)
                wzs = "-" if wz is None else f"{wz:.1f}"
                lines.append(f"| {dname} | {pname} | {m} | {n + 1} | {zm:.1f} | {cr:.2f} | {wzs} | {res:.1e} |")
                print(lines[-1], flush=True)
    took = time.time() - t_start
    hdr = [f"# Inverse problems vs exact conditional laws (N = {a.n} samples per row, D = 8, "
           f"VP SDE, exact scores; {took:.0f} s on {jax.devices()[0].platform})", "",
           "mean z: max over unobserved coordinates of |error| / SE (~N(0,1) per coordinate, so "
           "< 3 = no detectable bias); cov ratio: Frobenius error / Monte-Carlo noise level "
           "(~1 when exact); weights z: mixture component weights |error| / SE.", ""]
    text = "\n".join(hdr + lines) + "\n" + NOTES
    if a.section == "all":
        text += "\n" + digits_inpainting() + "\n" + digits_cfg()
    print(text)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()

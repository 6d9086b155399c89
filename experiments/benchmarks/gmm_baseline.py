"""Baseline for the digits main job: scikit-learn GaussianMixture test bits/dim.

Same data as the score model: the embedded digits, train split (1350) for fitting,
validation split (150) for choosing (n_components, reg_covar), test split (297) for
the reported number; uniform dequantisation x = 2 (k + u) / 17 - 1 (17 levels, [-1,1])
with fixed seeds, bits/dim = -(log p(x) + D log(2/17)) / (D ln 2) (see
scoresde.data.pipeline / scoresde.likelihood.bits_per_dim). Full covariances, 1 to 20
components, reg_covar on a grid. Prints a markdown table (best reg_covar per K).

    python -m experiments.benchmarks.gmm_baseline
"""

import math

import numpy as np
from sklearn.mixture import GaussianMixture

from scoresde.data import load_arrays, scale_images

L, D = 17, 64


def dequantised(split, seed):
    k, _ = load_arrays("digits", split)
    x = scale_images(k, L, scale="[-1,1]", dequantize=True, rng=np.random.default_rng(seed))
    return x.reshape(len(x), D).astype(np.float64)


def bpd(gmm, x):
    return float(-(gmm.score_samples(x).mean() + D * math.log(2.0 / L)) / (D * math.log(2.0)))


def main():
    tr, va, te = dequantised("train", 0), dequantised("validation", 1), dequantised("test", 2)
    regs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    rows, best = [], None
    for k in range(1, 21):
        cand = []
        for r in regs:
            g = GaussianMixture(k, covariance_type="full", reg_covar=r, random_state=0, n_init=1,
                                max_iter=500).fit(tr)
            cand.append((bpd(g, va), r, g))
        v, r, g = min(cand, key=lambda c: c[0])
        t = bpd(g, te)
        rows.append((k, r, bpd(g, tr), v, t))
        if best is None or v < best[3]:
            best = rows[-1]
    print("| components | reg_covar (best on val) | train bpd | validation bpd | test bpd |")
    print("|---|---|---|---|---|")
    for k, r, a, v, t in rows:
        print(f"| {k} | {r:g} | {a:.3f} | {v:.3f} | {t:.3f} |")
    k, r, a, v, t = best
    print(f"\nSelected on validation: K={k}, reg_covar={r:g}: test bits/dim = {t:.3f}")
    print(f"Best test bits/dim over the table (oracle, for reference): {min(x[4] for x in rows):.3f}")


if __name__ == "__main__":
    main()

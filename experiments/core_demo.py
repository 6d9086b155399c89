"""The numerical core on a 2-D Gaussian mixture, printed as tables.

    python -m experiments.core_demo

For the ring of 8 Gaussians (std 0.5, radius 4; `scoresde.data.ring_mixture`, the
benchmarks' case A) and every SDE: the schedule at a few
times, the DSM loss of the exact score against perturbed scores, and the variance of
the likelihood-weighted loss with uniform versus importance-sampled times.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from scoresde import (CosineVPSDE, LikelihoodImportanceTime, LikelihoodWeighting, SubVPSDE, UniformTime,
                      VESDE, VPSDE, convert, dsm_loss)
from scoresde.data import ring_mixture


def main():
    t0 = time.time()
    gm = ring_mixture()
    sdes = {"VP (linear)": VPSDE(), "VP (cosine)": CosineVPSDE(), "sub-VP": SubVPSDE(), "VE": VESDE()}
    key = jax.random.PRNGKey(0)
    x0 = gm.sample(jax.random.PRNGKey(1), 50000)

    print("## Schedules: alpha(t), sigma(t), log-SNR(t)\n")
    print("| SDE | t | alpha | sigma | log-SNR | g^2 |\n|---|---|---|---|---|---|")
    for name, sde in sdes.items():
        for t in (sde.eps, 0.5, sde.T):
            print(f"| {name} | {t:g} | {float(sde.alpha(t)):.5g} | {float(sde.sigma(t)):.5g} | "
                  f"{float(sde.log_snr(t)):.4f} | {float(sde.g2(t)):.5g} |")

    print("\n## DSM loss (sigma^2 weighting, uniform t) of the exact score and perturbed ones\n")
    print("| SDE | exact | 0.9 x score | score + 0.1 | score + 0.1 x | round-trip err |\n|---|---|---|---|---|---|")
    for name, sde in sdes.items():
        s = gm.score_fn(sde)
        perturbed = {"exact": s, "scaled": lambda x, t: 0.9 * s(x, t),
                     "shift": lambda x, t: s(x, t) + 0.1, "linear": lambda x, t: s(x, t) + 0.1 * x}
        losses = [float(dsm_loss(f, sde, key, x0)[0]) for f in perturbed.values()]
        t = jnp.linspace(sde.eps, sde.T, 1000)
        eps = jax.random.normal(key, (1000, 2))
        x = sde.alpha(t)[:, None] * x0[:1000] + sde.sigma(t)[:, None] * eps
        v = convert(convert(convert(convert(eps, frm="eps", to="score", x=x, t=t, sde=sde),
                                    frm="score", to="x0", x=x, t=t, sde=sde),
                            frm="x0", to="v", x=x, t=t, sde=sde), frm="v", to="eps", x=x, t=t, sde=sde)
        err = float(jnp.max(jnp.abs(v - eps)))
        print(f"| {name} | " + " | ".join(f"{l:.4f}" for l in losses) + f" | {err:.2e} |")

    print("\n## Likelihood weighting g^2: uniform vs importance-sampled t (exact score, per-example)\n")
    print("| SDE | uniform mean | uniform var | IS mean | IS var | var ratio |\n|---|---|---|---|---|---|")
    for name, sde in sdes.items():
        s = gm.score_fn(sde)
        pu = np.asarray(dsm_loss(s, sde, key, x0, weighting=LikelihoodWeighting(), time_sampler=UniformTime())[1])
        pi = np.asarray(dsm_loss(s, sde, key, x0, weighting=LikelihoodWeighting(),
                                 time_sampler=LikelihoodImportanceTime(stratified=False))[1])
        print(f"| {name} | {pu.mean():.3f} +- {pu.std() / np.sqrt(len(pu)):.3f} | {pu.var():.4g} | "
              f"{pi.mean():.3f} +- {pi.std() / np.sqrt(len(pi)):.3f} | {pi.var():.4g} | {pu.var() / pi.var():.1f} |")
    print(f"\n(done in {time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()

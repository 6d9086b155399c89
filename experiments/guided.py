r"""Controllable generation with trained models: classifier-free guidance and inverse problems.

Two modes of experiments/main.py (PNG grids and JSON land in --workdir):

    # class-conditional U-Net (label dropout 0.1), then guided samples at w = 0, 1, 2, 4
    python -m experiments.main --config=experiments/configs/digits_unet_cond.py --workdir=workdir/digits_cond
    python -m experiments.main --config=experiments/configs/digits_unet_cond.py --workdir=workdir/digits_cond --mode=guided
    # inpainting (top half observed) and 2x super-resolution of test images with the main-job U-Net
    python -m experiments.main --config=experiments/configs/digits_unet.py --workdir=workdir/digits --mode=inverse

--mode=guided: guided score (1 + w) s(x | c) - w s(x | null) with the config's sampler,
labels and w passed as conditioning (sample(..., cond=(labels, w))),
guidance.per_class samples per class for each w in guidance.weights; guided_w<w>.png
(10 x 10 grid, one row per class) and guided.json. On the digits the toolkit's
classifier (scoresde.metrics) scores agreement with the requested class, the confident
fraction and the Frechet distance on its features against the test digits.

--mode=inverse: the test images with the top half observed (inpainting) and 2x2
average-pooled (2x super-resolution), completed by the replacement method (with and
without a Langevin corrector), by Pi-GDM (with DPM-Solver++) and, for inpainting, by
twisted SMC (scoresde.guidance.TwistedSMC, asymptotically exact as the particles grow),
each observation passed per example as sample(..., cond=y); every output is projected
onto the observation at the end (op.replace), so observed pixels equal the input exactly
for inpainting. inpaint.png / sr2x.png (rows: truth,
observation, one row per method) and inverse.json; on the digits, how often the
classifier recovers the true label of each completed image.

Run as a script, this writes both tables to experiments/benchmarks/results/guided_digits.md
(--section guided / inverse recomputes one part and reads the other from its workdir's JSON;
--section report only rewrites the table):

    python -m experiments.guided --cond_workdir=workdir/digits_cond --uncond_workdir=workdir/digits

guidance.methods picks the inverse-problem methods (twisted SMC, 32 particles, is the slow one).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import plots, train
from scoresde import data as data_lib
from scoresde.guidance import (AveragePool, Inpainting, ReplacementSampler, TwistedSMC, check_labels,
                               classifier_free_guidance, pigdm_score)
from scoresde.sampling import DPMSolverPP, LangevinCorrector, sample

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmarks", "results")


# ---------------------------------------------------------------------------- helpers
def _image_score(score, s: train.Setup):
    """The network's score on image-shaped x (B, H, W, C) (the MLP sees flat vectors)."""
    if tuple(s.input_shape) == tuple(s.info.shape):
        return score

    def f(x, t, *cond):
        return score(x.reshape((x.shape[0],) + tuple(s.input_shape)), t, *cond).reshape(x.shape)

    return f


def _centres(s: train.Setup, levels) -> jnp.ndarray:
    """Integer levels -> the data-scale centres of their dequantisation bins."""
    return jnp.asarray(data_lib.bin_centres(levels, s.info.num_levels, scale=s.config.data.scale))


def _judge(s: train.Setup):
    """The toolkit's digit classifier, or None for other datasets (no judge available)."""
    if s.config.data.dataset != "digits":
        return None
    from scoresde import metrics

    return metrics.load_digit_classifier(data_dir=s.config.data.get("data_dir"))


def _chunks(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def _image_setup(config, mode: str) -> train.Setup:
    s = train.Setup(config)
    if s.info.num_levels is None:
        raise ValueError(f"--mode={mode} works on image datasets; data.dataset={config.data.dataset!r} "
                         "is a 2-D set.")
    return s


# ---------------------------------------------------------------------------- guided
def guided(config, workdir: str) -> dict:
    """--mode=guided: classifier-free guided samples at each guidance.weights -> PNGs + guided.json."""
    s = _image_setup(config, "guided")
    if not s.conditional or not config.model.kwargs.get("class_dropout", 0.0) > 0:
        raise ValueError("--mode=guided needs a class-conditional model trained with label dropout "
                         "(config.training.conditional=True and model.kwargs.class_dropout > 0, e.g. "
                         "experiments/configs/digits_unet_cond.py).")
    g = config.guidance
    params, step, which = train.load_for_eval(config, workdir, s)
    score_y = _image_score(s.score_fn(params), s)
    k = s.info.num_classes
    labels = np.repeat(np.arange(k), g.per_class)
    check_labels(labels, k)
    shape = tuple(s.info.shape)
    key = jax.random.PRNGKey(config.seed + 31)
    x_T = s.sde.prior_sample(jax.random.fold_in(key, 0), (len(labels),) + shape)
    guided_score = classifier_free_guidance(score_y, num_classes=k)  # cond = (labels, w)

    @jax.jit
    def run(key, x, lab, w):
        return sample(s.sampler, guided_score, s.sde, key, x, cond=(lab, jnp.broadcast_to(w, lab.shape)),
                      denoise=config.sampling.denoise).samples

    clf = _judge(s)
    out = {"checkpoint": which, "checkpoint_step": step, "sampler": config.sampling.method,
           "n_steps": config.sampling.n_steps, "per_class": g.per_class, "recommended_w": g.recommended_w,
           "rows": []}
    for w in g.weights:
        t0 = time.perf_counter()
        keys = jax.random.split(jax.random.fold_in(key, 1), len(labels))  # same noise for every w
        x = np.concatenate([np.asarray(run(keys[sl], x_T[sl], jnp.asarray(labels[sl]), jnp.float32(w)))
                            for sl in _chunks(len(labels), config.sampling.batch)])  # np.asarray blocks
        lv = s.levels(x)
        show = np.concatenate([lv[c * g.per_class:c * g.per_class + min(10, g.per_class)] for c in range(k)])
        png = plots.grid_png(show, s.info.num_levels, os.path.join(workdir, f"guided_w{w:g}.png"),
                             ncol=min(10, g.per_class))
        row = {"w": float(w), "png": png, "seconds": time.perf_counter() - t0}
        if clf is not None:
            from scoresde import metrics

            xin = metrics.levels_to_input(lv)
            q = metrics.digits_sample_quality(xin, clf=clf, data_dir=config.data.get("data_dir"))
            out["reference"] = {"fd_test_vs_train": q["reference"]["fd"],
                                "classifier_test_accuracy": q["classifier_test_accuracy"]}
            row.update(agreement=float(np.mean(clf.predict_proba(xin).argmax(-1) == labels)),
                       confident=q["samples"]["confident"], fd=q["samples"]["fd"])
        out["rows"].append(row)
        print(json.dumps(row, default=float), flush=True)
    with open(os.path.join(workdir, "guided.json"), "w") as f:
        json.dump(out, f, indent=2, default=float)
    return out


# ---------------------------------------------------------------------------- inverse problems
def _methods(steps: int, problem: str, g) -> list:
    """(name, NFE per example, build(score, sde, op, data_var) -> f(key, x_T (B, ...), y (B, ...)) -> samples).

    Every method goes through `sample(..., cond=y)` with one observation per test image.
    Pi-GDM's guidance is damped by alpha_t^2: with a trained network the twist gradient
    J^T A^T (...) / r_t^2 divides the network's error by alpha_T ~ 0.007 and the undamped
    sampler diverges (NaN) on these digits; alpha_t^2 ~ 1 for t < 0.1, where it matters for
    the details. Twisted SMC uses the same damped Pi-GDM score as its proposal only; its
    weights keep the target exact. SMC runs on inpainting only (K times the cost of Pi-GDM).
    guidance.methods picks and orders the methods."""
    def replacement(corrector=None, n=steps):
        def build(sf, sde, op, v):
            sm = ReplacementSampler(op, n) if corrector is None else ReplacementSampler(op, n, corrector=corrector)
            prior = lambda x, t, y: sf(x, t)  # noqa: E731 - replacement: the unconditional score
            return lambda k, x, y: sample(sm, prior, sde, k, x, cond=y, denoise=True).samples

        return build

    def damped_pigdm(sf, sde, op, v, **kw):
        return pigdm_score(sf, sde, op, data_var=v, scale=lambda t: sde.alpha(t) ** 2, **kw)

    def pigdm(sampler):
        return lambda sf, sde, op, v: (lambda k, x, y: sample(sampler, damped_pigdm(sf, sde, op, v), sde, k, x,
                                                              cond=y, denoise=True).samples)

    def smc(K, n, sigma_y):
        return lambda sf, sde, op, v: (lambda k, x, y: sample(TwistedSMC(n, K), damped_pigdm(
            sf, sde, op, v, sigma_y=sigma_y), sde, k, x, cond=y, denoise=True).samples)

    K, n, sy = g.smc_particles, g.smc_steps, g.smc_sigma_y
    table = {
        "replacement": (f"replacement (reverse diffusion, {steps} steps)", steps + 1, replacement),
        "replacement_langevin": (f"replacement + Langevin corrector ({steps // 2} steps)", 2 * (steps // 2) + 1,
                                 lambda: replacement(LangevinCorrector(), steps // 2)),
        "pigdm20": ("Pi-GDM (alpha^2-damped) + DPM-Solver++ (20 steps)", 21,
                    lambda: pigdm(DPMSolverPP(n_steps=20))),
        "pigdm50": ("Pi-GDM (alpha^2-damped) + DPM-Solver++ (50 steps)", 51,
                    lambda: pigdm(DPMSolverPP(n_steps=50))),
        "smc": (f"twisted SMC (TDS), {K} particles, EM {n} steps, sigma_y {sy:g}", K * (n + 1) + 1,
                lambda: smc(K, n, sy)),
    }
    unknown = [m for m in g.methods if m not in table]
    if unknown:
        raise ValueError(f"config option guidance.methods has unknown entries {unknown}; valid choices: "
                         f"{', '.join(table)}.")
    return [(table[m][0], table[m][1], table[m][2]()) for m in g.methods
            if not (m == "smc" and (problem != "inpaint" or not K))]


def inverse(config, workdir: str) -> dict:
    """--mode=inverse: inpainting (top half observed) and 2x super-resolution of the test
    images with every method of _methods -> inpaint.png, sr2x.png, inverse.json."""
    s = _image_setup(config, "inverse")
    g = config.guidance
    params, step, which = train.load_for_eval(config, workdir, s)
    sf = _image_score(s.score_fn(params), s)
    H, W, C = s.info.shape
    test_lv, test_y = data_lib.load_arrays(config.data.dataset, config.data.test_split,
                                           data_dir=config.data.get("data_dir"))
    n = min(len(test_lv), g.get("n_examples") or len(test_lv))
    test_lv, test_y = np.asarray(test_lv)[:n].reshape(n, H, W, C), np.asarray(test_y)[:n]
    truth = _centres(s, test_lv)
    tr_lv, _ = data_lib.load_arrays(config.data.dataset, config.data.train_split, data_dir=config.data.get("data_dir"))
    tr = np.asarray(_centres(s, np.asarray(tr_lv).reshape(-1, H, W, C)))
    data_var = float(np.mean(np.var(tr.reshape(len(tr), -1), axis=0)))  # Pi-GDM's isotropic prior variance
    clf = _judge(s)
    key = jax.random.PRNGKey(config.seed + 57)
    x_T = s.sde.prior_sample(jax.random.fold_in(key, 0), (n, H, W, C))
    lo = s.data_range[0]
    problems = {
        "inpaint": Inpainting(jnp.zeros((H, W, 1)).at[:H // 2].set(1.0)),
        "sr2x": AveragePool(2),
    }
    out = {"checkpoint": which, "checkpoint_step": step, "n_examples": n, "data_var": data_var, "problems": {}}
    for name, op in problems.items():
        y = op.apply(truth)
        if isinstance(op, Inpainting):  # what the user sees: unknown pixels at the background value
            shown = jnp.where(op.mask > 0, truth, lo)
        else:
            shown = jnp.repeat(jnp.repeat(y, 2, axis=1), 2, axis=2)
        rows_png = [test_lv[:10], s.levels(shown)[:10]]
        res = []
        baselines = [("true test images", "-", truth), ("observation alone (unknown filled as in the PNG)", "-", shown)]
        for label, nfe, x in baselines:
            res.append(_score_inverse(s, clf, op, y, test_lv, test_y, label, nfe, x, 0.0))
        for label, nfe, build in _methods(g.get("steps") or config.sampling.n_steps, name, g):
            t0 = time.perf_counter()
            f = jax.jit(build(sf, s.sde, op, data_var))
            x = jax.block_until_ready(op.replace(f(jax.random.fold_in(key, 1), x_T, y), y))  # final projection
            res.append(_score_inverse(s, clf, op, y, test_lv, test_y, label, nfe, x, time.perf_counter() - t0))
            rows_png.append(s.levels(x)[:10])
            print(json.dumps(res[-1], default=float), flush=True)
        png = plots.grid_png(np.concatenate(rows_png), s.info.num_levels, os.path.join(workdir, f"{name}.png"),
                             ncol=10)
        out["problems"][name] = {"png": png, "rows": res}
    with open(os.path.join(workdir, "inverse.json"), "w") as f:
        json.dump(out, f, indent=2, default=float)
    return out


def _score_inverse(s, clf, op, y, test_lv, test_y, label, nfe, x, seconds) -> dict:
    lv = s.levels(x)
    row = {"method": label, "nfe": nfe, "seconds": seconds,
           "max_abs_Ax_minus_y": float(jnp.max(jnp.abs(op.apply(jnp.asarray(x, jnp.float32)) - y)))}
    if isinstance(op, Inpainting):
        obs = np.broadcast_to(np.asarray(op.mask) > 0, lv.shape[1:])
        row["observed_levels_equal_input"] = bool(np.array_equal(lv[:, obs], test_lv[:, obs]))
    if clf is not None:
        from scoresde import metrics

        row["label_recovery"] = clf.accuracy(metrics.levels_to_input(lv), test_y)
    return row


# ---------------------------------------------------------------------------- results table
def _md(cond: dict | None, inv: dict | None, args) -> str:
    md = ["# Guided generation on digits with trained U-Nets (experiments/guided.py)", "",
          f"Command: `python -m experiments.guided --cond_workdir={args.cond_workdir} "
          f"--uncond_workdir={args.uncond_workdir}`; {jax.device_count()} x {jax.devices()[0].platform}. "
          "Judge: the toolkit's digit classifier (scoresde.metrics); samples are quantised to the 17 "
          "levels before they are judged.", ""]
    if cond is not None:
        ref = cond["reference"]
        md += ["## Classifier-free guidance", "",
               f"Class-conditional U-Net (configs/digits_unet_cond.py, label dropout 0.1; "
               f"{cond['checkpoint']} checkpoint, step {cond['checkpoint_step']}); {cond['per_class']} samples "
               f"per class, {cond['sampler']} {cond['n_steps']} steps (2 network calls per step) + Tweedie "
               f"denoising, the same prior noise for every w. Frechet distance on classifier features vs the "
               f"test digits (test vs train+validation: {ref['fd_test_vs_train']:.2f}); classifier accuracy "
               f"on real test digits {100 * ref['classifier_test_accuracy']:.1f}%.", "",
               "| w | classifier agrees with the requested class | confident (p >= 0.9) | Frechet distance | s |",
               "|---|---|---|---|---|"]
        md += [f"| {r['w']:g} | {100 * r['agreement']:.1f}% | {100 * r['confident']:.1f}% | {r['fd']:.2f} | "
               f"{r['seconds']:.0f} |" for r in cond["rows"]]
        rec = cond.get("recommended_w", 1.0)
        md += ["", f"Recommended w = {rec:g}: every guided sample is of the requested class while the "
               "Frechet distance stays at the unconditional model's level (results/digits_default.md: "
               "9.32); w = 0 (the plain conditional score) has the lowest Frechet distance but misses "
               "the class more often, larger w trade diversity (Frechet distance) for nothing.", ""]
    if inv is not None:
        md += ["## Inverse problems on the test digits", "",
               f"{inv['n_examples']} test digits, one completion each; prior: the unconditional main-job U-Net "
               f"({inv['checkpoint']} checkpoint, step {inv['checkpoint_step']}). Every output is projected "
               f"onto the observation at the end (op.replace). Pi-GDM uses data_var = {inv['data_var']:.3f} "
               "(mean pixel variance of the train digits) and a guidance scale alpha_t^2 (undamped, it diverges "
               "with the trained network: see _methods); twisted SMC is asymptotically exact in its particle "
               "count (scoresde.guidance.smc). NFE = network calls per image (SMC: over all its particles, plus one "
               "to denoise the returned image; "
               "Pi-GDM's and SMC's calls each include a vector-Jacobian product). s = wall seconds "
               "including compilation.", ""]
        for name, title in (("inpaint", "Inpainting: top 4 rows observed"), ("sr2x", "2x super-resolution (2x2 average pooling)")):
            p = inv["problems"][name]
            md += [f"### {title}", "", "| method | NFE | classifier recovers the true label | "
                   "observed pixels == input | max abs(Ax - y) | s |", "|---|---|---|---|---|---|"]
            for r in p["rows"]:
                eq = {True: "yes", False: "NO", None: "-"}[r.get("observed_levels_equal_input")]
                md.append(f"| {r['method']} | {r['nfe']} | {100 * r['label_recovery']:.1f}% | {eq} | "
                          f"{r['max_abs_Ax_minus_y']:.1e} | {r['seconds']:.0f} |")
            md.append("")
        md += ["What the inverse-problem numbers say: replacement and Pi-GDM approximate p(x_0 | x_t) "
               "and commit to a digit early from the observed half; nothing corrects that choice later, "
               "so they complete many digits as a plausible but different class (the same bias as in "
               "the mixture rows of results/inverse_problems.md, where the exact posterior is known). "
               "Twisted SMC weights and resamples its particles by the twist, which turns into the exact "
               "likelihood at t -> eps, so it corrects that choice; it costs K particles' worth of "
               "network calls (with a VJP each). For 2x super-resolution the low-resolution image alone, "
               "nearest-neighbour up-sampled, is already classified better than the completions: the "
               "samplers add plausible detail that is not always the true digit's.", ""]
    return "\n".join(md) + "\n"


def _read_json(workdir, name):
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def main(argv=None):
    from experiments.configs import digits_unet, digits_unet_cond

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cond_workdir", default="workdir/digits_cond")
    p.add_argument("--uncond_workdir", default="workdir/digits")
    p.add_argument("--section", choices=["all", "guided", "inverse", "report"], default="all",
                   help="what to (re)compute; the other part is read from its workdir's JSON if "
                        "present ('report': recompute nothing, rewrite the table)")
    p.add_argument("--out", default=os.path.join(RESULTS, "guided_digits.md"))
    a = p.parse_args(argv)
    t0 = time.time()
    cond = (guided(digits_unet_cond.get_config(), a.cond_workdir) if a.section in ("all", "guided")
            else _read_json(a.cond_workdir, "guided.json"))
    inv = (inverse(digits_unet.get_config(), a.uncond_workdir) if a.section in ("all", "inverse")
           else _read_json(a.uncond_workdir, "inverse.json"))
    text = _md(cond, inv, a) + f"\nThis call: {time.time() - t0:.0f} s (section {a.section}).\n"
    print(text)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()

"""The digits U-Net trained on the flow-matching path, against the VP main job (issue 17, item 3).

    python -m experiments.main --config=experiments/configs/digits_flow_matching.py --workdir=workdir/digits_fm
    python -m experiments.benchmarks.flow_matching_digits --workdir=workdir/digits_fm

Reads the run's metrics.json (test bits/dim through the ODE, the main job's own sampler's
quality), then draws n samples at NFE 10 and 20 with the few-step solvers of
samplers_digits.py from the same prior noise and scores them as that script does
(confident fraction over the real test digits', Frechet distance of classifier features to
the test digits). The VP numbers it is compared with are those committed in
results/digits_default.md and results/samplers_digits.md (the same U-Net, budget and metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from experiments.benchmarks.samplers_digits import load_for_sampling, write_markdown
from experiments.configs import digits_flow_matching
from scoresde import metrics
from scoresde import sampling as S

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SOLVERS = {
    "UniPC bh2-3, log-SNR": lambda n: S.UniPC(n, grid=S.LogSNRGrid(), final="denoise"),
    "UniPC bh2-3, EDM rho 7": lambda n: S.UniPC(n, grid=S.EDMGrid(), final="denoise"),
    "DPM-Solver++ 3M, log-SNR": lambda n: S.DPMSolverPP(n, 3, final="denoise"),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="workdir/digits_fm")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--train-minutes", type=float, default=None, help="wall time of the training run, for the table")
    p.add_argument("--out", default=os.path.join(RESULTS, "flow_matching_digits.md"))
    a = p.parse_args(argv)
    t_start = time.perf_counter()
    cfg = digits_flow_matching.get_config()
    exp, step, which, clf, x_T, run = load_for_sampling(cfg, a.workdir, a.n)
    mpath = os.path.join(a.workdir, "metrics.json")
    job = json.load(open(mpath)) if os.path.exists(mpath) else {}
    rows = []
    real = None
    for nfe in (10, 20):
        for name, make in SOLVERS.items():
            t0 = time.perf_counter()
            res = run(make(nfe), jax.random.key(1), x_T, False)
            q = metrics.digits_sample_quality(metrics.levels_to_input(exp.levels(np.asarray(res.samples))), clf=clf)
            real = q["reference"]
            rows.append((name, int(res.nfe), q["samples"], time.perf_counter() - t0))
            print(name, nfe, q["samples"]["confident"] / real["confident"], q["samples"]["fd"], flush=True)
    lines = ["| sampler | NFE | confident / real | FD (test) | wall s |", "|---|---:|---:|---:|---:|"]
    for name, nfe, q, wall in rows:
        lines.append(f"| {name} | {nfe} | {q['confident'] / real['confident']:.3f} | {q['fd']:.2f} | {wall:.1f} |")
    write_markdown(a.out, [
        "# The digits U-Net on the flow-matching path (`python -m experiments.benchmarks.flow_matching_digits`)",
        f"Checkpoint: {which} of `{a.workdir}` (step {step}), config experiments/configs/digits_flow_matching.py "
        f"(the main job's U-Net, budget and training setup; only the SDE differs). {a.n} samples per row from the "
        f"same prior noise; real test digits: confident fraction {real['confident']:.3f}. Evaluation "
        f"{(time.perf_counter() - t_start) / 60:.1f} min"
        + (f"; training run {a.train_minutes:.1f} min" if a.train_minutes else "") + ".",
        "The run's metrics.json: " + json.dumps(job, sort_keys=True, default=str)[:2000],
        "\n".join(lines)])


if __name__ == "__main__":
    main()

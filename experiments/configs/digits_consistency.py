"""Consistency models from the main job's digits U-Net (digits_unet.py: VP SDE, eps-U-Net).

    python -m experiments.main --config=experiments/configs/digits_consistency.py:distillation \\
        --workdir=/tmp/digits_cd --config.consistency.init_from=/tmp/digits_ref
    python -m experiments.main --config=experiments/configs/digits_consistency.py:tuning \\
        --workdir=/tmp/digits_ct --config.consistency.init_from=/tmp/digits_ref
    python -m experiments.main --config=experiments/configs/digits_consistency.py:tuning --workdir=... --mode=sample \\
        --config.sampling.n_steps=1

The network, SDE and parameterisation are the main job's; the consistency function wraps the
diffusion network (`scoresde.consistency.consistency_fn_from_score`), so the student starts as
the diffusion checkpoint in consistency.init_from (its best-on-validation EMA parameters):

  distillation  x_r = the teacher's probability-flow ODE step from (x_t, t) to r (DPM-Solver++(2S),
                `substeps` substeps; the teacher is that same checkpoint, frozen);
  tuning        x_r = alpha_r x_0 + sigma_r z with the x_t's z (ECT, Geng et al. 2024: consistency
                training started from the diffusion model);
  training      the same from a fresh initialisation (init_from = '').

Pairs: ECT's continuous schedule (`ECTPairs`: log sh_t ~ N(p_mean, p_std^2), the gap sh_t - sh_r
halving every stage_steps); distance: pseudo-Huber (iCT). No validation selection
(eval_every = 0): evaluation uses the newest checkpoint. --mode=eval writes metrics.json with
sample quality at 1, 2 and 4 steps from the same prior noise. Measured numbers and timings:
experiments/benchmarks/results/consistency_digits.md.
"""

import ml_collections

from experiments.configs.digits_unet import get_config as _unet


def get_config(mode: str = "tuning") -> ml_collections.ConfigDict:
    c = _unet()
    distil = mode == "distillation"
    consistency(c, mode)
    # sized for <= 15 min on 2 cores (measured times: results/consistency_digits.md); both runs go
    # through 4-5 ECT stages; tuning uses batch 256, the better 2-step sampler there (same file)
    c.training.num_steps = 1000 if distil else 2000
    c.data.batch_size = 128 if distil else 256
    c.training.save_every = 200
    c.training.log_every = 50
    c.training.ema_decay = 0.995  # a ~200-step average: the schedule moves every stage
    c.optim.lr = 2e-4  # ECT tunes with Adam 1e-4 over far more steps; warm-up kept for the checkpoint's state
    c.optim.warmup = 100
    c.eval.n_samples = 1000
    c.sampling.n_steps = 2
    cc = c.consistency
    cc.init_from = "workdir/digits"  # the main job's workdir (python3 dev.py run)
    cc.substeps = 4  # stage 0 of distillation: the teacher solves from t to eps in 4 DPM-Solver++(2S) steps
    cc.pairs.stage_steps = 250 if distil else 400
    # log sh_t ~ N(0.5, 2^2): more pairs at the high and middle noise levels that 1- and 2-step
    # sampling evaluates than ECT's N(-1.1, 2^2) gives in a few thousand steps
    cc.pairs.p_mean = 0.5
    # The 2-step sampler chosen on validation draws (benchmarks/consistency_digits.py, its results
    # file): the raw parameters (a 0.995 EMA lags the last stage); re-noising with the implied
    # noise after tuning, with fresh noise after distillation. Distillation: first step at T,
    # second at u = 0.4 of the log-SNR range (500 draws). Tuning: first step at start_u = 0.3
    # (x_T stands in for x at sh = 8.6: the tuned model is poor at T, sh ~ 150), second at
    # u = 0.5 (5000 draws; on eight other tuned checkpoints the same choice gave confident
    # fractions 0.82-0.84 where the earlier grid, T then 0.4, gave 0.71-0.85).
    c.eval.use_ema = False
    cc.grid_u = 0.4 if distil else 0.5
    cc.start_u = 0.0 if distil else 0.3
    cc.stochastic = distil
    return c


def consistency(c: ml_collections.ConfigDict, mode: str, init_from: str = "") -> ml_collections.ConfigDict:
    """Turn the diffusion config `c` (in place) into a consistency config of `mode` that starts
    from the diffusion checkpoint in `init_from`: adds the `consistency` section and sets what a
    consistency run needs (no validation selection, no Tweedie step, the newest checkpoint)."""
    c.training.eval_every = 0
    c.eval.checkpoint = "last"
    c.sampling.denoise = False
    c.consistency = cc = ml_collections.ConfigDict()
    cc.mode = mode                  # "distillation", "tuning" or "training"
    cc.init_from = init_from        # the diffusion run's workdir ('' = fresh initialisation)
    cc.init_checkpoint = "best"     # "best" (on validation; the newest if none) or "last"
    cc.sigma_data = 0.5
    cc.solver = "dpm2"              # the teacher's ODE step (distillation): DPM-Solver++(2S)
    cc.substeps = 2
    cc.distance = "pseudo_huber"    # or "l2"
    cc.first_stage = 0              # the pairs' schedule starts at this ECT stage
    cc.eval_steps = (1, 2, 4)
    cc.grid_u = 0.5                 # first interior time at half the log-SNR range (sh ~ 0.8; iCT: 0.82)
    cc.start_u = 0.0                # first evaluation at T (> 0: at that log-SNR fraction, x_T standing in)
    cc.stochastic = True            # re-noise with fresh noise (Song et al. 2023 Alg. 1); False: implied noise
    cc.pairs = p = ml_collections.ConfigDict()
    p.stage_steps = 400
    p.q = 2.0
    p.p_mean = -1.1
    p.p_std = 2.0
    p.k = 8.0
    p.b = 1.0
    # ECT's w = 1 / (sh_t - sh_r) (~1 / sh_t on long intervals): it cancels d f / d eps_theta ~ sh_t of
    # an eps-network (consistency_fn_from_score), which otherwise makes the high-noise pairs dominate
    # the clipped gradients (the case-A MLP, an EDM-form network, preferred uniform weights)
    p.weight = "inverse_dt"
    return c

"""Shared defaults; each experiment config starts from `base()` and overrides."""

import ml_collections


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = d = ml_collections.ConfigDict()
    d.dataset = "digits"
    d.batch_size = 128          # global batch (all hosts, all devices)
    d.scale = "[-1,1]"
    d.dequantize = True
    d.flip = False
    d.data_dir = None
    d.train_split = "train"     # fitting
    d.val_split = "validation"  # checkpoint selection (held out from the training split)
    d.test_split = "test"       # final numbers only

    c.model = m = ml_collections.ConfigDict()
    m.name = "mlp"
    m.parameterization = "eps"
    m.kwargs = ml_collections.ConfigDict({"width": 256, "depth": 3})

    c.sde = ml_collections.ConfigDict({"name": "vp", "kwargs": ml_collections.ConfigDict()})

    c.training = t = ml_collections.ConfigDict()
    t.num_steps = 10_000
    t.weighting = "simple"
    t.time_sampler = "uniform"
    t.conditional = False
    t.ema_decay = 0.999
    t.log_every = 100
    t.save_every = 1000
    t.keep = 3
    t.eval_every = 1000         # validation metric for checkpoint selection (0: off)
    t.eval_at_end = True

    c.optim = o = ml_collections.ConfigDict()
    o.lr = 2e-4
    o.warmup = 500
    o.grad_clip = 1.0
    o.weight_decay = 0.0

    c.eval = e = ml_collections.ConfigDict()
    e.val_metric = "bpd"        # "bpd" (ODE likelihood) or "loss" (DSM loss)
    e.trace = "hutchinson"
    e.n_probes = 1
    e.rtol = 1e-5               # test likelihood: ODE solver tolerances
    e.atol = 1e-5
    e.val_tol = None            # validation solves: rtol = atol = val_tol (None: as the test)
    e.batch = 500
    e.max_examples = 0          # 0: the whole split
    e.use_ema = True
    e.checkpoint = "best"       # "best" (on validation) or "last"
    e.n_samples = 1000
    e.sample_quality = True

    c.sampling = sm = ml_collections.ConfigDict()
    sm.method = "euler_maruyama"
    sm.n_steps = 500
    sm.denoise = True
    sm.batch = 1000

    # --mode=guided (class-conditional models) and --mode=inverse (experiments/guided.py)
    c.guidance = gd = ml_collections.ConfigDict()
    gd.weights = (0.0, 1.0, 2.0, 4.0)   # classifier-free guidance weights w
    gd.recommended_w = 1.0              # what we recommend (results/guided_digits.md)
    gd.per_class = 100                  # guided samples per class and w
    gd.n_examples = 0                   # inverse problems: first n test images (0: all)
    gd.steps = 0                        # inverse problems: EM / replacement steps (0: sampling.n_steps)
    gd.methods = ("replacement", "replacement_langevin", "pigdm20", "pigdm50", "smc")  # inverse problems
    gd.smc_particles = 32               # inpainting by twisted SMC: particles per image (0: skip)
    gd.smc_steps = 50                   #   its Euler-Maruyama steps
    gd.smc_sigma_y = 0.05               #   observation noise of its twist (17-level bins: width 0.118)
    return c

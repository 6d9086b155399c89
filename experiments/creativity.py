r"""The creativity experiment of Kamb & Ganguli 2025 on digits (or mnist, fashion_mnist, cifar10).

"An analytic theory of creativity in convolutional diffusion models" (ICML 2025):
the ELS machine (locality + equivariance, calibrated patch size P(t)) predicts, image
by image, what a trained convolutional diffusion model generates from the same noise.

Steps:
1. train a LocalResNet (--resnet_layers 3x3 convolutions, default 8; no normalisation;
   circular padding by default, --boundary=zeros for the paper's boundary-broken
   setting) and a small UNet (zero padding) on the digits training split,
   eps-prediction, cosine VP SDE ending where the authors' schedule ends
   (alpha(T) = 0.0125), plain DSM (sigma^2 weighting), a minimal optax loop (Adam + EMA);
2. sample n_samples seeds with a deterministic 20-step DDIM (Song et al. 2021; the
   last step returns the denoised x_0), the same sampler for every score function;
3. calibrate P(t) for the LS and ELS machines against each network along the
   network's own trajectory (scoresde.analytic.calibration);
4. run the ideal, LS and ELS machines from the same x_T with the same sampler;
5. report per image the Pearson correlation (the authors' evaluation script) and
   R^2 = 1 - SS_res / SS_tot (what the paper's text names) between machine output and
   network output, per machine the median, the fraction of images where it beats
   the ideal score, and the nearest-training-image distance of every output.

Why circular by default: the digits are 8x8 and the ResNet's receptive field is 17x17,
so with zero padding every output pixel sees the border, i.e. its absolute position,
and the network is not translation equivariant anywhere (on 28x28 MNIST, the paper's
setting, the central pixels, where the strokes are, see little or no padding). Circular
padding keeps the network
exactly equivariant, which is the assumption the ELS machine is built on.

Run (under 30 minutes on 2 CPU cores):
  python -m experiments.creativity --workdir=/tmp/creativity \
      --results_md=experiments/benchmarks/results/creativity.md
Other image sets, when prepared locally with `tfds build NAME --file_format=array_record`
(the machines' cost grows with N H W, so subsample on a CPU):
  python -m experiments.creativity --dataset=mnist --max_train=2000 --workdir=/tmp/cre_mnist
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from absl import app, flags

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scoresde.analytic.calibration import PatchSchedule, calibrate_patch_sizes
from scoresde.analytic.ideal import IdealScore
from scoresde.analytic.local import ELSMachine, LSMachine
from scoresde.losses import dsm_loss
from scoresde.parameterization import EpsPrediction, score_fn_from_network
from scoresde.sde import CosineVPSDE

FLAGS = flags.FLAGS
IMAGE_SETS = ("digits", "mnist", "fashion_mnist", "cifar10")
# log-SNR at t = 1 of the cosine schedule in Kamb & Ganguli's released code,
# alpha(t) = cos(t / 1.008 * pi / 2): alpha(1) = 0.012466, and
# log(alpha^2 / (1 - alpha^2)) = log cot^2(pi / 2.016) = -2 log tan(pi / 2.016).
AUTHORS_LOG_SNR_T = -2.0 * math.log(math.tan(math.pi / 2 / 1.008))
flags.DEFINE_string("workdir", "/tmp/creativity", "Where PNG panels and per-image arrays go.")
flags.DEFINE_string("results_md", "", "If set, write the markdown table here.")
flags.DEFINE_enum("dataset", "digits", list(IMAGE_SETS),
                  "Training set (the TFDS sets must have been prepared by the user).")
flags.DEFINE_integer("max_train", 0, "If > 0, train networks and machines on a seeded random "
                     "subset of this many images (the ELS machine's cost grows with N H W).")
flags.DEFINE_string("data_dir", "", "TFDS data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).")
flags.DEFINE_list("nets", ["resnet", "unet"], "Networks to train: resnet, unet.")
flags.DEFINE_integer("n_samples", 100, "Seeds sampled per network.")
flags.DEFINE_integer("n_steps", 20, "Score evaluations of the deterministic sampler.")
flags.DEFINE_integer("train_steps", 2500, "Training steps of the LocalResNet.")
flags.DEFINE_integer("unet_train_steps", 1000, "Training steps of the UNet.")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_float("lr", 2e-3, "Adam learning rate (after warm-up).")
flags.DEFINE_float("ema", 0.999, "EMA decay of the sampled parameters.")
flags.DEFINE_enum("boundary", "circular", ["zeros", "circular"],
                  "Padding of the LocalResNet and boundary of its ELS machine (the UNet always "
                  "pads with zeros and is compared with the zero-padding ELS machine).")
flags.DEFINE_integer("resnet_channels", 32, "LocalResNet width.")
flags.DEFINE_integer("resnet_layers", 8, "LocalResNet 3x3 convolutions (receptive field 2 n + 1).")
flags.DEFINE_integer("unet_channels", 32, "UNet base width.")
flags.DEFINE_list("patch_sizes", ["1", "3", "5", "7", "9", "11", "13", "15"],
                  "Candidate odd patch sizes for the calibration.")
flags.DEFINE_integer("calib_samples", 10, "Samples (of the n_samples) used for calibration.")
flags.DEFINE_float("log_snr_min", AUTHORS_LOG_SNR_T,
                   "log-SNR at T of the cosine VP SDE (CosineVPSDE.log_snr_min). The default is "
                   "the authors' schedule, alpha(T) = cos(pi / (2 * 1.008)) = 0.0125; the "
                   "library default -12 (alpha(T) = 0.0025) makes the first DDIM step from T "
                   "amplify the network's eps error by sigma/alpha ~ 400 (see the results notes).")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_integer("panel_images", 16, "Images shown in each PNG panel.")
flags.DEFINE_list("handover_steps", [],
                  "Diagnostic: for each k, sample with the network for the first k steps and the "
                  "calibrated ELS machine for the rest, and report the median correlation with the "
                  "network's output (where along the trajectory network and machine part ways).")


# --- data ----------------------------------------------------------------------------
def load_train(name: str = "digits", max_train: int = 0, seed: int = 0, data_dir: str | None = None):
    """The training split of an image set, scaled to [-1, 1] without dequantisation (the
    machines' training set phi_n must be the exact set the networks saw), as float32
    NumPy (N, H, W, C) and int labels. max_train > 0 keeps a seeded uniform subset of
    that many images (networks and machines both use the subset)."""
    from scoresde.data import dataset_info, load_arrays, scale_images
    if name not in IMAGE_SETS:
        raise ValueError(f"dataset must be one of {', '.join(IMAGE_SETS)}, got {name!r}.")
    if max_train < 0:
        raise ValueError(f"max_train must be >= 0 (0 keeps every image), got {max_train}.")
    info = dataset_info(name)
    k, y = load_arrays(name, "train", data_dir=data_dir)
    if 0 < max_train < k.shape[0]:
        idx = np.sort(np.random.default_rng(seed).choice(k.shape[0], max_train, replace=False))
        k, y = k[idx], y[idx]
    x = np.asarray(scale_images(k, info.num_levels, dequantize=False), np.float32)
    return x.reshape((-1,) + tuple(info.shape)), np.asarray(y)


def make_sde():
    """The cosine VP SDE of the experiment, ending at log-SNR --log_snr_min."""
    return CosineVPSDE(log_snr_min=FLAGS.log_snr_min)


# --- networks ------------------------------------------------------------------------
def net_boundary(name: str) -> str:
    """Padding of the network `name`, hence the boundary of the ELS machine it is compared with."""
    return FLAGS.boundary if name == "resnet" else "zeros"


def make_net(name: str):
    """Name -> Flax module (the explicit mapping of this experiment)."""
    import scoresde.models as models
    if name == "resnet":
        return models.LocalResNet(channels=FLAGS.resnet_channels, n_layers=FLAGS.resnet_layers,
                                  padding=FLAGS.boundary)
    if name == "unet":
        return models.UNet(ch=FLAGS.unet_channels, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=())
    raise ValueError(f"unknown network {name!r}; valid: resnet, unet.")


def train(net, sde, x_train, key, steps):
    """Minimal optax loop: DSM with sigma^2 weighting (eps MSE), Adam, EMA."""
    params = net.init(key, x_train[:2], jnp.full((2,), 0.5))
    sched = optax.warmup_cosine_decay_schedule(0.0, FLAGS.lr, min(200, steps // 10), steps, FLAGS.lr / 10)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(sched))
    opt_state = opt.init(params)
    param = EpsPrediction()

    def loss_fn(p, k, x0):
        score = score_fn_from_network(lambda x, t: net.apply(p, x, t), sde, param)
        return dsm_loss(score, sde, k, x0)[0]

    @jax.jit
    def step(p, ema, s, k, x0, i):
        loss, g = jax.value_and_grad(loss_fn)(p, k, x0)
        upd, s = opt.update(g, s, p)
        p = optax.apply_updates(p, upd)
        # EMA with warm-up, so the random initialisation does not linger in short runs.
        d = jnp.minimum(FLAGS.ema, (1.0 + i) / (10.0 + i))
        ema = jax.tree_util.tree_map(lambda e, q: d * e + (1 - d) * q, ema, p)
        return p, ema, s, loss

    ema = params
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    n = x_train.shape[0]
    losses = []
    for i in range(steps):
        idx = rng.integers(0, n, FLAGS.batch_size)
        key, sk = jax.random.split(key)
        params, ema, opt_state, loss = step(params, ema, opt_state, sk, x_train[idx], i)
        losses.append(float(loss)) if i % 100 == 0 or i == steps - 1 else None
    return ema, losses


# --- sampler -------------------------------------------------------------------------
def ddim_times(sde, n_steps):
    """Evaluation times t_0 = T > ... > t_{n-1} = eps (uniform in t)."""
    return np.linspace(float(sde.T), float(sde.eps), n_steps).astype(np.float32)


def ddim(score_at_step, sde, x_T, times):
    """Deterministic DDIM (Song, Meng & Ermon 2021) with score_at_step(i, x, t).

        x0_i = (x_i + sigma_i^2 s(x_i, t_i)) / alpha_i,  eps_i = (x_i - alpha_i x0_i) / sigma_i
        x_{i+1} = alpha_{i+1} x0_i + sigma_{i+1} eps_i;   output x0_{n-1}.

    Returns (output, trajectory (n, B, ...)) with trajectory[i] = x_i, the state at
    which the score was evaluated at step i.
    """
    x = x_T
    traj = []
    for i, t in enumerate(times):
        traj.append(x)
        a, s = sde.alpha(t), sde.sigma(t)
        x0 = (x + s * s * score_at_step(i, x, t)) / a
        if i + 1 < len(times):
            eps = (x - a * x0) / s
            x = sde.alpha(times[i + 1]) * x0 + sde.sigma(times[i + 1]) * eps
    return x0, jnp.stack(traj)


# --- metrics -------------------------------------------------------------------------
def pearson(a, b):
    a = a.reshape(a.shape[0], -1) - a.reshape(a.shape[0], -1).mean(1, keepdims=True)
    b = b.reshape(b.shape[0], -1) - b.reshape(b.shape[0], -1).mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-30)


def r_squared(pred, target):
    """R^2 = 1 - SS_res / SS_tot per image, the network output as target."""
    p = pred.reshape(pred.shape[0], -1)
    y = target.reshape(target.shape[0], -1)
    ss_res = ((y - p) ** 2).sum(1)
    ss_tot = ((y - y.mean(1, keepdims=True)) ** 2).sum(1)
    return 1.0 - ss_res / ss_tot


def nearest_train(out, train):
    """(RMS distance per pixel to the nearest training image, its index)."""
    o = out.reshape(out.shape[0], -1)
    tr = train.reshape(train.shape[0], -1)
    d2 = (o * o).sum(1)[:, None] - 2 * o @ tr.T + (tr * tr).sum(1)[None]
    idx = d2.argmin(1)
    return np.sqrt(np.maximum(d2[np.arange(len(idx)), idx], 0) / o.shape[1]), idx


def save_panel(path, rows, labels, n):
    """Rows of images (each (B, H, W, 1 or 3) in [-1, 1]) -> one PNG, upscaled x4."""
    from PIL import Image, ImageDraw
    h, w, c = rows[0].shape[1:4]
    sc, pad, left = 4, 2, 60
    mode = "RGB" if c == 3 else "L"
    img = Image.new(mode, (left + n * (w * sc + pad), len(rows) * (h * sc + pad)),
                    (255,) * 3 if c == 3 else 255)
    draw = ImageDraw.Draw(img)
    for r, (row, lab) in enumerate(zip(rows, labels)):
        y0 = r * (h * sc + pad)
        draw.text((2, y0 + h * sc // 2 - 5), lab, fill=(0,) * 3 if c == 3 else 0)
        for j in range(min(n, row.shape[0])):
            a = np.clip((np.asarray(row[j] if c == 3 else row[j, :, :, 0]) + 1) / 2, 0, 1)
            tile = Image.fromarray((a * 255).astype(np.uint8)).resize((w * sc, h * sc), Image.NEAREST)
            img.paste(tile, (left + j * (w * sc + pad), y0))
    img.save(path)


# --- main ----------------------------------------------------------------------------
def main(argv):
    del argv
    t_start = time.time()
    os.makedirs(FLAGS.workdir, exist_ok=True)
    sde = make_sde()
    x_np, _ = load_train(FLAGS.dataset, FLAGS.max_train, FLAGS.seed, FLAGS.data_dir or None)
    x_train = jnp.asarray(x_np)
    sizes = sorted(int(p) for p in FLAGS.patch_sizes)
    key = jax.random.PRNGKey(FLAGS.seed)
    key, kx = jax.random.split(key)
    x_T = sde.prior_sample(kx, (FLAGS.n_samples,) + x_np.shape[1:])
    times = ddim_times(sde, FLAGS.n_steps)
    log = {"dataset": FLAGS.dataset, "n_train": int(x_np.shape[0]), "shape": list(x_np.shape[1:]),
           "nets": {}}

    # Machines, with their arrays as jit arguments (not closed-over constants).
    machine_score = jax.jit(lambda m, x, t: m.score(x, t, sde))
    ideal = IdealScore(x_train, chunk_size=512)
    t0 = time.time()
    els_by_boundary = {b: {p: ELSMachine(x_np, p, boundary=b, chunk_size=4096) for p in sizes}
                       for b in sorted({net_boundary(n) for n in FLAGS.nets})}
    ls = {p: LSMachine(x_train, p, chunk_size=512) for p in sizes}
    print(f"machines built in {time.time() - t0:.1f}s; distinct ELS patches: " + "; ".join(
        f"{b}: " + ", ".join(f"P={p}: {m.n_patches}" for p, m in e.items())
        for b, e in els_by_boundary.items()), flush=True)

    t0 = time.time()
    ideal_out, _ = ddim(lambda i, x, t: machine_score(ideal, x, t), sde, x_T, times)
    ideal_out = np.asarray(ideal_out)
    t_ideal = time.time() - t0
    nn_ideal, _ = nearest_train(ideal_out, x_np)
    print(f"ideal sampling {t_ideal:.1f}s, median NN distance {np.median(nn_ideal):.2e}", flush=True)

    rows_md = []
    for name in FLAGS.nets:
        key, kinit = jax.random.split(key)
        net = make_net(name)
        els = els_by_boundary[net_boundary(name)]
        t0 = time.time()
        steps = FLAGS.unet_train_steps if name == "unet" else FLAGS.train_steps
        params, losses = train(net, sde, x_train, kinit, steps)
        t_train = time.time() - t0
        n_params = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(params))
        print(f"[{name}] {n_params} params, trained {steps} steps in {t_train:.0f}s, "
              f"loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)
        net_score = jax.jit(score_fn_from_network(lambda x, t: net.apply(params, x, t), sde,
                                                  EpsPrediction()))
        t0 = time.time()
        net_out, traj = ddim(lambda i, x, t: net_score(x, t), sde, x_T, times)
        net_out = np.asarray(net_out)
        t_net = time.time() - t0

        # Calibrate P(t) on the network's own trajectory (first calib_samples seeds).
        t0 = time.time()
        nc = FLAGS.calib_samples
        sched = {}
        cos_tab = {}
        for mname, machines in (("ELS", els), ("LS", ls)):
            sched[mname], cos_tab[mname] = calibrate_patch_sizes(
                net_score, lambda p, ms=machines: (lambda x, t: machine_score(ms[p], x, t)),
                traj[:, :nc], times, sizes)
            print(f"[{name}] {mname} P(t) = {sched[mname].sizes}", flush=True)
        t_cal = time.time() - t0

        t0 = time.time()
        outs = {"ideal": ideal_out}
        for mname, machines in (("ELS", els), ("LS", ls)):
            sz = sched[mname].sizes
            outs[mname], _ = ddim(lambda i, x, t: machine_score(machines[sz[i]], x, t), sde, x_T, times)
            outs[mname] = np.asarray(outs[mname])
        handover = {}
        sz = sched["ELS"].sizes
        for k in (int(v) for v in FLAGS.handover_steps):
            out_k, _ = ddim(lambda i, x, t: net_score(x, t) if i < k else machine_score(els[sz[i]], x, t),
                            sde, x_T, times)
            handover[k] = float(np.median(pearson(np.asarray(out_k), net_out)))
            print(f"[{name}] network for {k} steps, then ELS: corr median {handover[k]:.3f}", flush=True)
        t_mach = time.time() - t0

        nn_net, nn_idx = nearest_train(net_out, x_np)
        corr = {m: pearson(o, net_out) for m, o in outs.items()}
        r2 = {m: r_squared(o, net_out) for m, o in outs.items()}
        nn_d = {m: nearest_train(o, x_np)[0] for m, o in outs.items()}
        entry = {"params": n_params, "boundary": net_boundary(name), "train_s": t_train,
                 "net_sample_s": t_net, "calib_s": t_cal, "machines_s": t_mach, "handover": handover,
                 "losses": losses, "train_steps": steps,
                 "schedules": {m: list(s.sizes) for m, s in sched.items()},
                 "cos_median": {m: c.tolist() for m, c in cos_tab.items()},
                 "nn_net_median": float(np.median(nn_net))}
        for m in ("ELS", "LS", "ideal"):
            entry[m] = {
                "corr_median": float(np.median(corr[m])), "r2_median": float(np.median(r2[m])),
                "beats_ideal_corr": float(np.mean(corr[m] > corr["ideal"])),
                "beats_ideal_r2": float(np.mean(r2[m] > r2["ideal"])),
                "nn_median": float(np.median(nn_d[m])),
            }
            print(f"[{name}] {m}: corr median {entry[m]['corr_median']:.3f}, R2 median "
                  f"{entry[m]['r2_median']:.3f}, beats ideal {entry[m]['beats_ideal_corr']:.2f}, "
                  f"NN dist median {entry[m]['nn_median']:.3f}", flush=True)
            rows_md.append((name, m, entry[m]))
        log["nets"][name] = entry
        np.savez(os.path.join(FLAGS.workdir, f"{name}_outputs.npz"), x_T=np.asarray(x_T),
                 network=net_out, nn_network=nn_net, **{f"{m}": o for m, o in outs.items()},
                 **{f"corr_{m}": c for m, c in corr.items()}, **{f"r2_{m}": r for m, r in r2.items()},
                 **{f"nn_{m}": d for m, d in nn_d.items()})
        k = FLAGS.panel_images
        save_panel(os.path.join(FLAGS.workdir, f"{name}_panel.png"),
                   [net_out, outs["ELS"], outs["LS"], outs["ideal"], x_np[nn_idx]],
                   [name, "ELS", "LS", "ideal", "NN train"], k)

    total = time.time() - t_start
    log["total_s"] = total
    with open(os.path.join(FLAGS.workdir, "creativity.json"), "w") as f:
        json.dump(log, f, indent=1)
    print(f"total {total:.0f}s", flush=True)
    if FLAGS.results_md:
        write_markdown(FLAGS.results_md, log, rows_md, t_ideal, nn_ideal)


def write_markdown(path, log, rows, t_ideal, nn_ideal):
    cmd = "python -m experiments.creativity " + " ".join(a for a in sys.argv[1:])
    sde = make_sde()
    alpha_T = float(sde.alpha(sde.T))
    lines = [
        f"# Creativity experiment (Kamb & Ganguli 2025) on {FLAGS.dataset}",
        "",
        f"Command: `{cmd}`",
        "",
        f"{FLAGS.dataset} training split ({log['n_train']} images"
        + (f", a seeded subset, --max_train={FLAGS.max_train}" if FLAGS.max_train else "")
        + f", {'x'.join(str(d) for d in log['shape'])}, [-1, 1], no dequantisation), "
        f"CosineVPSDE, eps-prediction, {FLAGS.n_samples} seeds, deterministic DDIM with "
        f"{FLAGS.n_steps} score evaluations (same sampler and same x_T for network and machines). "
        "Correlation = Pearson per image (authors' script); R^2 = 1 - SS_res/SS_tot with the "
        "network output as target; 'beats ideal' = fraction of images whose correlation (R^2) "
        "exceeds the ideal score's; NN = RMS per-pixel distance to the nearest training image "
        f"(0 = memorised). ResNet padding and its ELS boundary: {FLAGS.boundary}; the UNet pads "
        f"with zeros and is compared with the zero-padding ELS machine. Cosine VP SDE with "
        f"log-SNR(T) = {FLAGS.log_snr_min:.3f} (alpha(T) = {alpha_T:.4f}). "
        f"P(t) calibrated per "
        f"network on {FLAGS.calib_samples} of the seeds, candidates {FLAGS.patch_sizes}.",
        "",
        "| network | machine | median corr | median R^2 | beats ideal (corr) | beats ideal (R^2) | median NN dist |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m, e in rows:
        lines.append(f"| {name} ({log['nets'][name]['boundary']}) | {m} | {e['corr_median']:.3f} | {e['r2_median']:.3f} | "
                     f"{e['beats_ideal_corr']:.2f} | {e['beats_ideal_r2']:.2f} | {e['nn_median']:.3f} |")
    lines += ["", "| network | params | train steps | train time (s) | median NN dist of network samples | ELS P(t) (t = T ... eps) | LS P(t) |",
              "|---|---|---|---|---|---|---|"]
    for name, e in log["nets"].items():
        lines.append(f"| {name} | {e['params']} | {e['train_steps']} | {e['train_s']:.0f} | "
                     f"{e['nn_net_median']:.3f} | {e['schedules']['ELS']} | {e['schedules']['LS']} |")
    for name, e in log["nets"].items():
        if e["handover"]:
            lines += ["", f"Hand-over diagnostic ({name}): network for the first k steps, then the "
                      "calibrated ELS machine; median correlation with the network's output: "
                      + ", ".join(f"k = {k}: {c:.3f}" for k, c in e["handover"].items()) + "."]
    lines += ["", f"Ideal-score samples: median NN distance {np.median(nn_ideal):.2e} "
              f"(max {np.max(nn_ideal):.2e}): the ideal score only reproduces training images.",
              f"Total wall time (2 CPU cores, incl. training): {log['total_s'] / 60:.1f} min.",
              ""]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    app.run(main)

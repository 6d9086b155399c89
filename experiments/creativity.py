r"""The creativity experiment of Kamb & Ganguli 2025 on digits (or mnist, fashion_mnist, cifar10).

"An analytic theory of creativity in convolutional diffusion models" (ICML 2025):
the ELS machine (locality + equivariance, calibrated patch size P(t)) predicts, image
by image, what a trained convolutional diffusion model generates from the same noise.

Steps:
1. train a LocalResNet (--resnet_layers 3x3 convolutions, default 8; no normalisation;
   circular padding by default, --boundary=zeros for the paper's boundary-broken
   setting) and a small UNet (zero padding) on the digits training split,
   eps-prediction, cosine VP SDE ending where the authors' schedule ends
   (alpha(T) = 0.0125), plain DSM (sigma^2 weighting), with `scoresde.training`
   (clipped Adam with warm-up and cosine decay, EMA of the parameters);
2. sample n_samples seeds with `scoresde.sampling.DDIM` (Song et al. 2021), n_steps
   score evaluations: n_steps - 1 deterministic steps on the uniform time grid and
   Tweedie's denoiser at t = eps, the same sampler for every score function;
3. calibrate P(t) for the LS and ELS machines against each network along the
   network's own trajectory (scoresde.analytic.calibrate_patch_sizes);
4. run the ideal, LS and ELS machines from the same x_T with the same sampler;
5. report per image the Pearson correlation (the authors' evaluation script) and
   R^2 = 1 - SS_res / SS_tot (what the paper's text names) between machine output and
   network output, per machine the median, the fraction of images where it beats
   the ideal score, and the nearest-training-image distance of every output.

Why circular by default: the digits are 8x8 and the ResNet's receptive field is 17x17,
so with zero padding every output pixel sees the border, i.e. its absolute position,
and the network is not translation equivariant anywhere (on 28x28 MNIST, the paper's
setting, the central pixels, where the strokes are, see little or no padding). Circular
padding keeps the network exactly equivariant, which is the assumption the ELS machine
is built on.

Run (the digits default takes under 30 minutes on 2 CPU cores):
  python -m experiments.creativity --workdir=/tmp/creativity \
      --results_md=experiments/benchmarks/results/creativity.md
Other image sets, when prepared locally with `tfds build NAME --file_format=array_record`
(the machines' cost grows with N H W, so subsample on a CPU):
  python -m experiments.creativity --dataset=mnist --max_train=2000 --workdir=/tmp/cre_mnist

In Python: `run(Settings(...))` (the flags are the fields of `Settings`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import sys
import time
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import plots
from scoresde import models
from scoresde.analytic import ELSMachine, IdealScore, LSMachine, PatchSchedule, calibrate_patch_sizes
from scoresde.analytic import scheduled_score_fn
from scoresde.data import dataset_info, load_arrays, scale_images, to_levels
from scoresde.metrics import nearest_neighbours
from scoresde.parameterization import EpsPrediction
from scoresde.sampling import DDIM, sample
from scoresde.sde import AbstractSDE, CosineVPSDE
from scoresde.training import MetricWriter, create_train_state, make_optimizer, make_train_step, network_score_fn
from scoresde.training import train_loop

IMAGE_SETS = ("digits", "mnist", "fashion_mnist", "cifar10")
NETS = ("resnet", "unet")
# log-SNR at t = 1 of the cosine schedule in Kamb & Ganguli's released code,
# alpha(t) = cos(t / 1.008 * pi / 2): alpha(1) = 0.012466, and
# log(alpha^2 / (1 - alpha^2)) = log cot^2(pi / 2.016) = -2 log tan(pi / 2.016).
AUTHORS_LOG_SNR_T = -2.0 * math.log(math.tan(math.pi / 2 / 1.008))


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the experiment reads; the command-line flags have the same names (HELP)."""

    workdir: str = "/tmp/creativity"
    results_md: str = ""
    dataset: str = "digits"
    max_train: int = 0
    data_dir: str = ""
    nets: tuple[str, ...] = NETS
    n_samples: int = 100
    n_steps: int = 20
    train_steps: int = 2500
    unet_train_steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3
    ema: float = 0.999
    boundary: str = "circular"
    resnet_channels: int = 32
    resnet_layers: int = 8
    unet_channels: int = 32
    patch_sizes: tuple[int, ...] = (1, 3, 5, 7, 9, 11, 13, 15)
    calib_samples: int = 10
    log_snr_min: float = AUTHORS_LOG_SNR_T
    seed: int = 0
    panel_images: int = 16
    handover_steps: tuple[int, ...] = ()

    def __post_init__(self):
        if self.dataset not in IMAGE_SETS:
            raise ValueError(f"dataset must be one of {', '.join(IMAGE_SETS)}, got {self.dataset!r}.")
        if self.boundary not in ("zeros", "circular"):
            raise ValueError(f"boundary must be 'zeros' or 'circular', got {self.boundary!r}.")
        bad = [n for n in self.nets if n not in NETS]
        if bad:
            raise ValueError(f"nets has unknown entries {bad}; valid: {', '.join(NETS)}.")
        if self.n_steps < 2:
            raise ValueError(f"n_steps must be >= 2 (DDIM steps plus the final denoiser), got {self.n_steps}.")
        if any(k < 0 or k > self.n_steps for k in self.handover_steps):
            raise ValueError(f"handover_steps must lie in 0..n_steps={self.n_steps}, got {self.handover_steps}.")


HELP = {
    "workdir": "Where PNG panels and per-image arrays go.",
    "results_md": "If set, write the markdown table here.",
    "dataset": "Training set (the TFDS sets must have been prepared by the user).",
    "max_train": "If > 0, train networks and machines on a seeded random subset of this many images "
                 "(the ELS machine's cost grows with N H W).",
    "data_dir": "TFDS data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).",
    "nets": "Networks to train: resnet, unet.",
    "n_samples": "Seeds sampled per network.",
    "n_steps": "Score evaluations of the deterministic sampler.",
    "train_steps": "Training steps of the LocalResNet.",
    "unet_train_steps": "Training steps of the UNet.",
    "batch_size": "Training batch size.",
    "lr": "Adam learning rate (after warm-up).",
    "ema": "EMA decay of the sampled parameters.",
    "boundary": "Padding of the LocalResNet and boundary of its ELS machine (the UNet always pads with "
                "zeros and is compared with the zero-padding ELS machine).",
    "resnet_channels": "LocalResNet width.",
    "resnet_layers": "LocalResNet 3x3 convolutions (receptive field 2 n + 1).",
    "unet_channels": "UNet base width.",
    "patch_sizes": "Candidate odd patch sizes for the calibration.",
    "calib_samples": "Samples (of the n_samples) used for calibration.",
    "log_snr_min": "log-SNR at T of the cosine VP SDE (CosineVPSDE.log_snr_min). The default is the "
                   "authors' schedule, alpha(T) = cos(pi / (2 * 1.008)) = 0.0125; the library default -12 "
                   "(alpha(T) = 0.0025) makes the first DDIM step from T amplify the network's eps error "
                   "by sigma/alpha ~ 400 (see the results notes).",
    "seed": "Seed.",
    "panel_images": "Images shown in each PNG panel.",
    "handover_steps": "Diagnostic: for each k, sample with the network for the first k steps and the "
                      "calibrated ELS machine for the rest, and report the median correlation with the "
                      "network's output (where along the trajectory network and machine part ways).",
}


# --- data, SDE, networks -------------------------------------------------------------
def load_train(name: str = "digits", max_train: int = 0, seed: int = 0, data_dir: str | None = None):
    """The training split of an image set, scaled to [-1, 1] without dequantisation (the
    machines' training set phi_n must be the exact set the networks saw), as float32
    NumPy (N, H, W, C) and int labels. max_train > 0 keeps a seeded uniform subset of
    that many images (networks and machines both use the subset)."""
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


def make_sde(log_snr_min: float = AUTHORS_LOG_SNR_T) -> CosineVPSDE:
    """The cosine VP SDE of the experiment, ending at log-SNR `log_snr_min`."""
    return CosineVPSDE(log_snr_min=log_snr_min)


def net_boundary(name: str, boundary: str) -> str:
    """Padding of the network `name` (the ResNet's is `boundary`, the UNet's zeros), hence the
    boundary of the ELS machine it is compared with."""
    return boundary if name == "resnet" else "zeros"


def make_net(name: str, s: Settings):
    """Name -> Flax module (the explicit mapping of this experiment)."""
    if name == "resnet":
        return models.LocalResNet(channels=s.resnet_channels, n_layers=s.resnet_layers, padding=s.boundary)
    if name == "unet":
        return models.UNet(ch=s.unet_channels, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=())
    raise ValueError(f"unknown network {name!r}; valid: {', '.join(NETS)}.")


def train_network(net, sde: AbstractSDE, x_train: np.ndarray, key, *, steps: int, batch_size: int, lr: float,
                  ema_decay: float, log_every: int = 100):
    """DSM with sigma^2 weighting (the eps MSE) and uniform times through scoresde.training:
    global-norm clipping at 1, Adam with a linear warm-up over min(200, steps / 10) steps
    and a cosine decay to lr / 10, EMA of the parameters with warm-up
    (scoresde.training.ema_decay_at); minibatches drawn uniformly with replacement.

    Returns (EMA parameters, [(step, loss)] every log_every steps and at the end).
    """
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(200, steps // 10), steps, lr / 10)
    tx = make_optimizer(schedule, grad_clip=1.0)
    k_state, k_data = jax.random.split(key)
    state = create_train_state(net, tx, k_state, jnp.asarray(x_train[:2]))
    step = jax.jit(make_train_step(net, sde, EpsPrediction(), tx, ema_decay=ema_decay), donate_argnums=(0,))
    rng = np.random.default_rng(int(jax.random.randint(k_data, (), 0, 2**31 - 1)))
    batches = ({"image": x_train[rng.integers(0, len(x_train), batch_size)]} for _ in itertools.count())
    writer = MetricWriter(None, stdout=False)
    state = train_loop(state, step, batches, start_step=0, num_steps=steps, writer=writer,
                       log_every=log_every, progress=False)
    return state.ema_params, writer.history["train/loss"]


# --- score functions as pytrees (arrays are jit arguments, not folded-in constants) ---
def _step_time(t):
    """The one time of a fixed-step sampler's batch (every example is at the same t)."""
    return jnp.reshape(t, (-1,))[0]


class NetworkScore(eqx.Module):
    """score(x, t) of an eps-prediction network (scoresde.training.network_score_fn)."""

    net: Any = eqx.field(static=True)
    params: Any
    sde: AbstractSDE

    def __call__(self, x, t):
        return network_score_fn(self.net, self.params, self.sde, EpsPrediction())(x, t)


class MachineScore(eqx.Module):
    """score(x, t) of an exact-score machine (IdealScore, LSMachine, ELSMachine)."""

    machine: Any
    sde: AbstractSDE

    def __call__(self, x, t):
        return self.machine.score(x, t, self.sde)


class ScheduledScore(eqx.Module):
    """The machine of patch size P(t) at each step (scoresde.analytic.scheduled_score_fn).

    The size is looked up once per step from the batch's one time, so `lax.switch` runs
    a single machine (a per-example t would make it evaluate every machine)."""

    machines: dict
    schedule: PatchSchedule
    sde: AbstractSDE

    def __call__(self, x, t):
        return scheduled_score_fn(self.machines, self.schedule, self.sde)(x, _step_time(t))


class Handover(eqx.Module):
    """`first` at the sampler's first k score evaluations (times[:k]), `then` afterwards.

    k is an array, so one compiled sampler serves every k."""

    first: Callable
    then: Callable
    times: jax.Array
    k: jax.Array

    def __call__(self, x, t):
        i = jnp.argmin(jnp.abs(self.times - _step_time(t)))
        return jax.lax.cond(i < self.k, lambda u: self.first(u, t), lambda u: self.then(u, t), x)


def ddim_sampler(n_evals: int) -> DDIM:
    """DDIM with n_evals score evaluations: n_evals - 1 steps on the uniform grid from T
    to eps, then Tweedie's denoiser at eps (`sample(..., denoise=True)`)."""
    return DDIM(n_steps=n_evals - 1)


def ddim_times(sde: AbstractSDE, n_evals: int) -> np.ndarray:
    """The n_evals times at which `ddim` evaluates the score: T = t_0 > ... > t_{n-1} = eps."""
    sampler = ddim_sampler(n_evals)
    return np.asarray(sampler.grid(sde, sampler.n_steps))


@eqx.filter_jit
def ddim(score: Callable, sde: AbstractSDE, x_T, n_evals: int):
    """(E[x_0 | x_eps] after DDIM from x_T, trajectory (n_evals, B, ...)): trajectory[i] is
    the state at which the score is evaluated at ddim_times(sde, n_evals)[i]."""
    out = sample(ddim_sampler(n_evals), score, sde, jax.random.PRNGKey(0), x_T, denoise=True, trajectory=True)
    return out.samples, out.trajectory


@eqx.filter_jit
def evaluate_score(score: Callable, x, t):
    return score(x, t)


# --- metrics ---------------------------------------------------------------------------
def pearson(a, b):
    """Per-image Pearson correlation of the flattened images (the authors' evaluation)."""
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
    """(RMS distance per pixel to the nearest training image, its index):
    scoresde.metrics.nearest_neighbours divided by sqrt(pixels)."""
    d, idx = nearest_neighbours(out, train)
    return d / math.sqrt(math.prod(train.shape[1:])), idx


def save_panel(path: str, rows, labels, n: int, num_levels: int) -> str:
    """Rows of [-1, 1] images (each (B, H, W, C)), the first n of each, one labelled row apiece."""
    n = min([n] + [len(r) for r in rows])
    levels = to_levels(np.concatenate([np.asarray(r[:n]) for r in rows]), num_levels, dequantized=False)
    return plots.grid_png(levels, num_levels, path, ncol=n, row_labels=labels)


# --- the experiment --------------------------------------------------------------------
def run(s: Settings) -> dict:
    """The whole experiment (module docstring); writes workdir/creativity.json, the per-network
    outputs (<net>_outputs.npz) and panels (<net>_panel.png); returns the log."""
    t_start = time.time()
    os.makedirs(s.workdir, exist_ok=True)
    sde = make_sde(s.log_snr_min)
    info = dataset_info(s.dataset)
    x_np, _ = load_train(s.dataset, s.max_train, s.seed, s.data_dir or None)
    x_train = jnp.asarray(x_np)
    sizes = sorted(int(p) for p in s.patch_sizes)
    key = jax.random.PRNGKey(s.seed)
    key, kx = jax.random.split(key)
    x_T = sde.prior_sample(kx, (s.n_samples,) + x_np.shape[1:])
    times = ddim_times(sde, s.n_steps)
    log = {"dataset": s.dataset, "n_train": int(x_np.shape[0]), "shape": list(x_np.shape[1:]), "nets": {}}

    ideal = IdealScore(x_train, chunk_size=512)
    t0 = time.time()
    els_by_boundary = {b: {p: ELSMachine(x_np, p, boundary=b, chunk_size=4096) for p in sizes}
                       for b in sorted({net_boundary(n, s.boundary) for n in s.nets})}
    ls = {p: LSMachine(x_train, p, chunk_size=512) for p in sizes}
    print(f"machines built in {time.time() - t0:.1f}s; distinct ELS patches: " + "; ".join(
        f"{b}: " + ", ".join(f"P={p}: {m.n_patches}" for p, m in e.items())
        for b, e in els_by_boundary.items()), flush=True)

    t0 = time.time()
    ideal_out = np.asarray(ddim(MachineScore(ideal, sde), sde, x_T, s.n_steps)[0])
    t_ideal = time.time() - t0
    nn_ideal, _ = nearest_train(ideal_out, x_np)
    log["ideal_s"] = t_ideal
    log["nn_ideal_median"] = float(np.median(nn_ideal))
    log["nn_ideal_max"] = float(np.max(nn_ideal))
    print(f"ideal sampling {t_ideal:.1f}s, median NN distance {np.median(nn_ideal):.2e}", flush=True)

    for name in s.nets:
        key, kinit = jax.random.split(key)
        net = make_net(name, s)
        els = els_by_boundary[net_boundary(name, s.boundary)]
        t0 = time.time()
        steps = s.unet_train_steps if name == "unet" else s.train_steps
        params, losses = train_network(net, sde, x_np, kinit, steps=steps, batch_size=s.batch_size, lr=s.lr,
                                       ema_decay=s.ema)
        t_train = time.time() - t0
        n_params = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(params))
        print(f"[{name}] {n_params} params, trained {steps} steps in {t_train:.0f}s, "
              f"loss {losses[0][1]:.3f} -> {losses[-1][1]:.3f}", flush=True)
        net_score = NetworkScore(net, params, sde)
        t0 = time.time()
        net_out, traj = ddim(net_score, sde, x_T, s.n_steps)
        net_out = np.asarray(net_out)
        t_net = time.time() - t0

        # Calibrate P(t) on the network's own trajectory (first calib_samples seeds).
        t0 = time.time()
        sched, cos_tab = {}, {}
        for mname, machines in (("ELS", els), ("LS", ls)):
            sched[mname], cos_tab[mname] = calibrate_patch_sizes(
                lambda x, t: evaluate_score(net_score, x, t),
                lambda p, ms=machines: (lambda x, t: evaluate_score(MachineScore(ms[p], sde), x, t)),
                traj[:, :s.calib_samples], times, sizes)
            print(f"[{name}] {mname} P(t) = {sched[mname].sizes}", flush=True)
        t_cal = time.time() - t0

        t0 = time.time()
        outs = {"ideal": ideal_out}
        scheduled = {}
        for mname, machines in (("ELS", els), ("LS", ls)):
            used = {p: machines[p] for p in sched[mname].unique_sizes}
            scheduled[mname] = ScheduledScore(used, sched[mname], sde)
            outs[mname] = np.asarray(ddim(scheduled[mname], sde, x_T, s.n_steps)[0])
        handover = {}
        for k in s.handover_steps:
            out_k = ddim(Handover(net_score, scheduled["ELS"], jnp.asarray(times), jnp.asarray(k)), sde, x_T,
                         s.n_steps)[0]
            handover[k] = float(np.median(pearson(np.asarray(out_k), net_out)))
            print(f"[{name}] network for {k} steps, then ELS: corr median {handover[k]:.3f}", flush=True)
        t_mach = time.time() - t0

        nn_net, nn_idx = nearest_train(net_out, x_np)
        corr = {m: pearson(o, net_out) for m, o in outs.items()}
        r2 = {m: r_squared(o, net_out) for m, o in outs.items()}
        nn_d = {m: nearest_train(o, x_np)[0] for m, o in outs.items()}
        entry = {"params": n_params, "boundary": net_boundary(name, s.boundary), "train_s": t_train,
                 "net_sample_s": t_net, "calib_s": t_cal, "machines_s": t_mach, "handover": handover,
                 "losses": [v for _, v in losses], "train_steps": steps,
                 "schedules": {m: list(sc.sizes) for m, sc in sched.items()},
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
        log["nets"][name] = entry
        np.savez(os.path.join(s.workdir, f"{name}_outputs.npz"), x_T=np.asarray(x_T),
                 network=net_out, nn_network=nn_net, **{f"{m}": o for m, o in outs.items()},
                 **{f"corr_{m}": c for m, c in corr.items()}, **{f"r2_{m}": r for m, r in r2.items()},
                 **{f"nn_{m}": d for m, d in nn_d.items()})
        save_panel(os.path.join(s.workdir, f"{name}_panel.png"),
                   [net_out, outs["ELS"], outs["LS"], outs["ideal"], x_np[nn_idx]],
                   [name, "ELS", "LS", "ideal", "NN train"], s.panel_images, info.num_levels)

    log["total_s"] = time.time() - t_start
    with open(os.path.join(s.workdir, "creativity.json"), "w") as f:
        json.dump(log, f, indent=1)
    print(f"total {log['total_s']:.0f}s", flush=True)
    return log


def write_markdown(path: str, log: dict, s: Settings, command: str):
    """The results tables of a `run` log (its settings `s`, the command that made it)."""
    sde = make_sde(s.log_snr_min)
    alpha_T = float(sde.alpha(sde.T))
    lines = [
        f"# Creativity experiment (Kamb & Ganguli 2025) on {s.dataset}",
        "",
        f"Command: `{command}`",
        "",
        f"{s.dataset} training split ({log['n_train']} images"
        + (f", a seeded subset, --max_train={s.max_train}" if s.max_train else "")
        + f", {'x'.join(str(d) for d in log['shape'])}, [-1, 1], no dequantisation), "
        f"CosineVPSDE, eps-prediction, {s.n_samples} seeds, deterministic DDIM with "
        f"{s.n_steps} score evaluations (same sampler and same x_T for network and machines). "
        "Correlation = Pearson per image (authors' script); R^2 = 1 - SS_res/SS_tot with the "
        "network output as target; 'beats ideal' = fraction of images whose correlation (R^2) "
        "exceeds the ideal score's; NN = RMS per-pixel distance to the nearest training image "
        f"(0 = memorised). ResNet padding and its ELS boundary: {s.boundary}; the UNet pads "
        f"with zeros and is compared with the zero-padding ELS machine. Cosine VP SDE with "
        f"log-SNR(T) = {s.log_snr_min:.3f} (alpha(T) = {alpha_T:.4f}). "
        f"P(t) calibrated per network on {s.calib_samples} of the seeds, candidates "
        f"{', '.join(str(p) for p in sorted(s.patch_sizes))}.",
        "",
        "| network | machine | median corr | median R^2 | beats ideal (corr) | beats ideal (R^2) | median NN dist |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in log["nets"].items():
        for m in ("ELS", "LS", "ideal"):
            r = e[m]
            lines.append(f"| {name} ({e['boundary']}) | {m} | {r['corr_median']:.3f} | {r['r2_median']:.3f} | "
                         f"{r['beats_ideal_corr']:.2f} | {r['beats_ideal_r2']:.2f} | {r['nn_median']:.3f} |")
    lines += ["", "| network | params | train steps | train time (s) | median NN dist of network samples | "
              "ELS P(t) (t = T ... eps) | LS P(t) |", "|---|---|---|---|---|---|---|"]
    for name, e in log["nets"].items():
        lines.append(f"| {name} | {e['params']} | {e['train_steps']} | {e['train_s']:.0f} | "
                     f"{e['nn_net_median']:.3f} | {e['schedules']['ELS']} | {e['schedules']['LS']} |")
    for name, e in log["nets"].items():
        if e["handover"]:
            lines += ["", f"Hand-over diagnostic ({name}): network for the first k steps, then the "
                      "calibrated ELS machine; median correlation with the network's output: "
                      + ", ".join(f"k = {k}: {c:.3f}" for k, c in e["handover"].items()) + "."]
    lines += ["", f"Ideal-score samples: median NN distance {log['nn_ideal_median']:.2e} "
              f"(max {log['nn_ideal_max']:.2e}): the ideal score only reproduces training images.",
              f"Total wall time (2 CPU cores, incl. training): {log['total_s'] / 60:.1f} min.",
              ""]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))


# --- command line ----------------------------------------------------------------------
def define_flags(flag_values=None):
    """The command-line flags, one per `Settings` field (defined only when run as a script,
    so importing this module defines no global flags)."""
    from absl import flags

    fv = flag_values or flags.FLAGS
    d = Settings()
    for f in dataclasses.fields(Settings):
        value, kw = getattr(d, f.name), dict(flag_values=fv)
        if f.name == "dataset":
            flags.DEFINE_enum(f.name, value, list(IMAGE_SETS), HELP[f.name], **kw)
        elif f.name == "boundary":
            flags.DEFINE_enum(f.name, value, ["zeros", "circular"], HELP[f.name], **kw)
        elif isinstance(value, tuple):
            flags.DEFINE_list(f.name, [str(v) for v in value], HELP[f.name], **kw)
        elif isinstance(value, float):
            flags.DEFINE_float(f.name, value, HELP[f.name], **kw)
        elif isinstance(value, int):
            flags.DEFINE_integer(f.name, value, HELP[f.name], **kw)
        else:
            flags.DEFINE_string(f.name, value, HELP[f.name], **kw)
    return fv


def settings_from_flags(fv) -> Settings:
    """Parsed flags -> Settings (list flags of integers become int tuples)."""
    d = Settings()
    kw = {}
    for f in dataclasses.fields(Settings):
        v = fv[f.name].value
        if isinstance(getattr(d, f.name), tuple):
            v = tuple(v) if f.name == "nets" else tuple(int(u) for u in v)
        kw[f.name] = v
    return Settings(**kw)


def main(argv):
    del argv
    from absl import flags

    s = settings_from_flags(flags.FLAGS)
    log = run(s)
    if s.results_md:
        write_markdown(s.results_md, log, s, "python -m experiments.creativity " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)

"""Multistep exponential integrators of the probability-flow ODE, one loop for all.

Every linear SDE here has x_t = alpha_t x_0 + sigma_t z; with lambda = log(alpha / sigma)
(half the log-SNR), the data prediction D = E[x_0 | x_t] (Tweedie) and the noise
prediction eps = -sigma score, its probability-flow ODE has the two exact forms

    x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda D dlambda   (data)
    x_t = (alpha_t / alpha_s) x_s + alpha_t int_{sh_s}^{sh_t} eps dsh,  sh = sigma/alpha = e^-lambda
                                                                                         (noise)

(Lu et al. 2022, "DPM-Solver++", eq. 9; Zhang & Chen 2023, "Fast Sampling of Diffusion
Models with Exponential Integrator", eq. 11; the second is EDM's dx_hat/dsh = eps in
x_hat = x / alpha). The solvers of this module replace D (or eps) in the integral by a
polynomial through the last p model outputs m_i, m_{i-1}, ..., m_{i-p+1}, so that each
step is linear in the state and the outputs:

    x_{i+1} = a_i x_i + sum_k c_{i,k} m_{i-k},

with weights a_i, c_{i,k} that depend on the time grid only. That is the shared core:
each solver writes its update in its paper's form on scalars (`_dpmpp_update`,
`_unip_update`, `_unic_update`, `_deis_update`, `_ipndm_update`), `_weights` turns it into
the weights of every step at once (a linear map evaluated on unit vectors), and
`_multistep_loop` runs one loop over the grid with a buffer of the last K outputs:

    for i = 0 .. n-1:
        m_i     = D(x_i, t_i) or eps(x_i, t_i)                  (the step's one evaluation)
        x_i     = a'_i x_{i-1} + sum_k c'_{i,k} m_{i-k}         (corrector, i >= 1, optional)
        x_{i+1} = a_i x_i + sum_k c_{i,k} m_{i-k}               (predictor)

The corrector (UniC) re-solves step i-1 with the fresh output m_i included in the
polynomial; m_i stays the one evaluated at the predicted x_i, so it costs no evaluation
(Zhao et al. 2023, Alg. 2). The weights are formed once per run, in numpy float64 when
the SDE and grid are concrete (the compiled program then holds only the loop) and in
jax.numpy when they are traced (an SDE passed through jit, a grid fitted by gradient:
the history before t_0 is extrapolated so every formed order stays finite). The loop is
a lax.scan under jit or grad; called eagerly it is a Python loop over one compiled step
that every solver and step count shares. A grid may decouple the evaluation times from
the steps (`FittedGrid` from `fit_grid(decouple=True)`): m_i is then evaluated at a time
t'_i of its own (x_i unchanged) and the weights stay those of the grid t_i. Samplers:

* `DPMSolverPP`: DPM-Solver++ multistep (Lu et al. 2022), orders 1-3, data prediction.
* `UniPC`: UniP-p predictor (or the DPM-Solver++ update) + UniC corrector (Zhao et al. 2023,
  "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models"),
  B(h) = h (bh1) or e^h - 1 (bh2), orders 1-3, data prediction.
* `DEIS`: tAB-DEIS (Zhang & Chen 2023), orders 1-3, Lagrange extrapolation of eps in t.
* `IPNDM`: improved PNDM (Zhang & Chen 2023, as in Zhou et al. 2024's codebase):
  Adams-Bashforth on eps in (x_hat, sh), orders up to 4.

Warm-up and final steps (every solver): step i uses order min(p, i + 1) (only i + 1
outputs exist), and `lower_order_final` lowers the last steps to min(p, n - i):
"below_10" does it only for n < 10 steps (the reference DPM-Solver's rule), "always"
(the reference UniPC's rule; True) or "never" (False; DEIS's and iPNDM's references).
`final` chooses how a run ends: "ode" takes n steps to t = eps (n evaluations, none at
eps), "denoise" takes n - 1 steps to eps on an n-point grid and returns D(x_eps, eps)
from the n-th evaluation (a data estimate without the residual noise sigma(eps), at no
extra cost; one step is Tweedie's D(x_T, T)).

Defaults, and why (paired RMSE to the exact probability-flow solution at t = eps, exact
mixture scores, VP beta 0.1 -> 20, 20000 samples; A: the 2-D ring, B: the 16-D mixture,
C: the 8-D full-covariance one of experiments/benchmarks/cases.py):
* lower_order_final=None: each method's reference rule. A long last step at order 2-3
  on the uniform-t grid multiplies the error of the data-prediction solvers (DPM-Solver++
  3M at NFE 10, "never" / "always": A 2.25 / 0.16, B 1.77 / 0.92), while the noise-
  prediction ones do best without it (iPNDM-3 at NFE 20 on A: 0.0050 / 0.048).
* final="ode": the quantity the probability-flow ODE defines (and the benchmark measures);
  "denoise" spends the last evaluation on D instead of on a step.
* grids: uniform t for UniPC (the reference's) and DEIS (on A, B and C it beats log-SNR
  and EDM at most budgets: DEIS-3 NFE 10 A 0.066 / 0.092 / 0.121, C 0.20 / 0.36 / 0.32);
  EDM rho = 7 for iPNDM (Zhou et al.'s); log-SNR for DPM-Solver++ (unchanged).
"""

import abc
import math
from typing import Callable, NamedTuple, Optional, Union

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from scoresde._types import Array
from scoresde._util import batch_time, bcast, call_score, check_steps
from scoresde.parameterization import x0_from_score
from scoresde.sampling.base import AbstractSampler, tweedie_denoise
from scoresde.sampling.grids import AbstractTimeGrid, EDMGrid, LogSNRGrid, UniformTimeGrid

LOWER_ORDER_FINAL = ("below_10", "always", "never")
FINALS = ("ode", "denoise")
VARIANTS = ("bh1", "bh2")
_QUAD_NODES = 16  # Gauss-Legendre nodes per step for the DEIS coefficients


# --- phi functions, stable for small steps ----------------------------------------------
def _g(k: int, z, xp):
    """g_k(z) = sum_{j >= 0} z^j / (j + k)!, k >= 1, so g_1 = (e^z - 1) / z and
    g_{k+1} = (g_k - 1/k!) / z: the phi functions of exponential integrators
    (Hochbruck & Ostermann 2010). The recurrence cancels for small |z|, so |z| < 1 uses
    the Taylor series (18 terms: below double round-off there)."""
    small = xp.abs(z) < 1.0
    series = xp.polyval(xp.asarray([1.0 / math.factorial(j + k) for j in range(17, -1, -1)], z.dtype),
                        xp.where(small, z, 0.0))
    zr = xp.where(small, 1.0, z)
    rec = xp.expm1(zr) / zr
    for j in range(1, k):
        rec = (rec - 1.0 / math.factorial(j)) / zr
    return xp.where(small, series, rec)


def _solve_small(R, b, xp):
    """R^-1 b for a 1x1, 2x2 or 3x3 system by Cramer's rule, entries R[j][k] and b[j]
    arrays over the steps (a batched jnp.linalg.solve costs seconds of compilation)."""
    p = len(b)
    if p == 1:
        return [b[0] / R[0][0]]
    if p == 2:
        det = R[0][0] * R[1][1] - R[0][1] * R[1][0]
        return [(b[0] * R[1][1] - R[0][1] * b[1]) / det, (R[0][0] * b[1] - b[0] * R[1][0]) / det]

    def det3(M):
        return (M[0][0] * (M[1][1] * M[2][2] - M[1][2] * M[2][1]) - M[0][1] * (M[1][0] * M[2][2] - M[1][2] * M[2][0])
                + M[0][2] * (M[1][0] * M[2][1] - M[1][1] * M[2][0]))

    def col(k):
        return [[b[j] if c == k else R[j][c] for c in range(3)] for j in range(3)]

    det = det3(R)
    return [det3(col(k)) / det for k in range(3)]


# --- the grid as the steps see it, and the weights of every step ---------------------------
class _Steps(NamedTuple):
    """Every step of a grid at once, step i (t_i -> t_{i+1}) in column i of each field:
    lam, t (K + 1, n) with row 0 at t_{i+1} and row 1 + k at t_{i-k}, where history before
    t_0 is extrapolated linearly (in lambda and in t) so that slots an order does not use
    stay finite and distinct (finite gradients through a fitted grid); alpha, sigma (2, n)
    at t_{i+1}, t_i; quad_t, quad_dsh (Q, n) Gauss-Legendre nodes in t on each step and
    their weights for the measure dsh (used by DEIS); xp the array namespace."""

    lam: Array
    t: Array
    alpha: Array
    sigma: Array
    quad_t: Array
    quad_dsh: Array
    xp: object


@eqx.filter_jit
def _grid_times(grid, sde, n: int, dtype):
    return grid.with_eval_times(sde, n, dtype)


@eqx.filter_jit
def _on_grid(sde, ts: Array):
    """lambda = log(alpha/sigma), alpha and sigma on the grid ts, and DEIS's quadrature
    nodes: t(lambda_q) and the dsh weights of Q-point Gauss-Legendre in lambda on each step
    (formed for every solver, so that all share this program)."""
    lam = 0.5 * sde.log_snr(ts)
    xi, w = np.polynomial.legendre.leggauss(_QUAD_NODES)
    h = (lam[1:] - lam[:-1])[None]
    lq = lam[None, :-1] + 0.5 * h * (1.0 + jnp.asarray(xi, ts.dtype)[:, None])
    return lam, ts, sde.alpha(ts), sde.sigma(ts), sde.t_from_log_snr(2.0 * lq), \
        -0.5 * h * jnp.asarray(w, ts.dtype)[:, None] * jnp.exp(-lq)  # dsh = -e^-lambda dlambda


def _schedule(grid, sde, n: int, dtype):
    """((lambda, ts, alpha, sigma, quad_t, quad_dsh) on the grid of n steps, t_eval): the
    schedule, concrete when the SDE and grid are, and the grid's evaluation times (None: the
    step's start t_i; `AbstractTimeGrid.with_eval_times`). A concrete grid is padded to a
    power-of-two length for `_on_grid`, so that every step count compiles only the grid."""
    ts, t_eval = _grid_times(grid, sde, n, dtype)
    if _traced(ts, sde):
        return _on_grid(sde, ts), t_eval
    size = max(8, 1 << n.bit_length())  # >= n + 1
    out = _on_grid(sde, jnp.asarray(np.pad(np.asarray(ts), (0, size - n - 1), mode="edge")))
    return tuple(a[..., :n + 1] if a.ndim == 1 else a[..., :n] for a in map(np.asarray, out)), t_eval


def _steps(xp, schedule, n_hist: int) -> _Steps:
    lam, ts, al, sg, quad_t, quad_dsh = schedule
    back = xp.arange(n_hist - 1, 0, -1)
    lam_ext = xp.concatenate([lam[0] - back * (lam[1] - lam[0]), lam])
    t_ext = xp.concatenate([ts[0] - back * (ts[1] - ts[0]), ts])
    i = np.arange(ts.shape[0] - 1)[None]
    rows = np.concatenate([[n_hist], n_hist - 1 - np.arange(n_hist)])[:, None]  # t_j at j + K - 1
    return _Steps(lam_ext[i + rows], t_ext[i + rows], xp.stack([al[1:], al[:-1]]),
                  xp.stack([sg[1:], sg[:-1]]), quad_t, quad_dsh, xp)


def _step_orders(order: int, n: int, lower_order_final) -> np.ndarray:
    """Order of step i = 0..n-1: min(order, i + 1) (warm-up: step i has i + 1 outputs), and
    min(order, n - i) at the end where `lower_order_final` applies (see module docstring)."""
    i = np.arange(n)
    o = np.minimum(order, i + 1)
    rule = {True: "always", False: "never"}.get(lower_order_final, lower_order_final)
    if rule == "always" or (rule == "below_10" and n < 10):
        o = np.minimum(o, n - i)
    return o


def _weights(update: Callable, steps: _Steps, orders: np.ndarray, n_hist: int):
    """(n, K + 1) weights [a, c_0, ..., c_{K-1}] of a linear update(steps, p, x, ms), step i
    at order orders[i]: update(x, ms) = a x + sum_k c_k ms[k], read off its value on the
    unit vectors x = e_0, ms[k] = e_{k+1}. Orders above a step's own are formed on the
    extrapolated history and discarded."""
    xp, n = steps.xp, orders.shape[0]
    eye = xp.eye(n_hist + 1, dtype=steps.lam.dtype)[:, :, None]
    W = xp.stack([xp.broadcast_to(update(steps, p, eye[0], list(eye[1:])), (n_hist + 1, n))
                  for p in range(1, int(orders.max()) + 1)])
    return W[orders - 1, :, np.arange(n)]


_MAX_HIST = 4  # UniP-3 + UniC, DPM-Solver++ 3M + UniC and iPNDM-4 keep 4 outputs


def _step(score_fn, sde, cond, data_prediction, carry, inp):
    """One iteration of the shared loop (module docstring). carry = (x_i, x_{i-1}, hist),
    hist the last `_MAX_HIST` outputs, newest first; inp = (t_i, pred_i, corr_i). The one
    evaluation at t_i is stored as D (data_prediction) or eps; the corrector sets
    x_i <- corr_i . (x_i, x_{i-1}, hist) (corr_i = [1, 0, ...] where there is none), then
    x_{i+1} = pred_i . (x_i, hist). Returns (carry', x_i after correction)."""
    x, x_prev, hist = carry
    t, pw, cw = inp
    tb = batch_time(t, x)
    score = call_score(score_fn, x, tb, cond)
    m = jnp.where(data_prediction, x0_from_score(sde, x, tb, score), -bcast(sde.sigma(tb), x) * score)
    hist = jnp.concatenate([m[None], hist[:-1]], 0)
    x = cw[0] * x + cw[1] * x_prev + jnp.tensordot(cw[2:], hist, axes=1)
    return (pw[0] * x + jnp.tensordot(pw[1:], hist, axes=1), x, hist), x


_compiled_step = eqx.filter_jit(_step)


def _multistep_loop(score_fn, sde, x_T, t_eval, cond, pred, corr, data_prediction: bool,
                    save_trajectory: bool):
    """Run `_step` over the n steps whose model evaluations are at t_eval (n,) (the steps'
    start times t_0..t_{n-1}, or a decoupled grid's evaluation times): one lax.scan when
    anything is traced (inside jit or grad), else a Python loop over one compiled step,
    which every solver and step count with this score function, SDE and batch shape shares
    (the weights are inputs). Returns (x_n, trajectory (n + 1, ...) or None)."""
    carry = (x_T, x_T, jnp.zeros((_MAX_HIST,) + x_T.shape, x_T.dtype))
    flag = jnp.asarray(data_prediction)
    if _traced(x_T, t_eval, pred, corr, cond):
        (x, _, _), ys = jax.lax.scan(lambda c, inp: _step(score_fn, sde, cond, flag, c, inp), carry,
                                     (t_eval, pred, corr))
    else:
        ys = []
        for i in range(t_eval.shape[0]):
            carry, y = _compiled_step(score_fn, sde, cond, flag, carry, (t_eval[i], pred[i], corr[i]))
            ys.append(y)
        x = carry[0]
        ys = jnp.asarray(np.stack(ys)) if save_trajectory else None
    return x, (_append(ys, x) if save_trajectory else None)


def _traced(*trees) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(trees))


def _append(traj, x):
    """traj with x as one more state; in numpy when nothing is traced (an eager
    concatenation would be compiled anew for every step count)."""
    if _traced(traj, x):
        return jnp.concatenate([traj, x[None]], 0)
    return jnp.asarray(np.concatenate([np.asarray(traj), np.asarray(x)[None]], 0))


# --- the update formulas, one step of order p, linear in (x, ms) -------------------------
def _dpmpp_eta_update(eta):
    """DPM-Solver++ multistep (Lu et al. 2022, Alg. 2; order 3 as the reference
    `multistep_dpm_solver_third_update`) at eta = 0, and the deterministic part of the
    SDE-DPM-Solver++ step of noise scale eta (a scalar or one value per step;
    `scoresde.sampling.sde_multistep`) otherwise. h = lambda_{i+1} - lambda_i,
    H = (1 + eta) h, r0 = h_{i-1}/h, r1 = h_{i-2}/h, phi_1 = e^-H - 1, phi_2 = phi_1/H + 1,
    phi_3 = phi_2/H - 1/2:

      x1 = (sigma_{i+1}/sigma_i) e^{-eta h} x_i - alpha_{i+1} phi_1 m_i               (p = 1)
      x2 = x1 - alpha_{i+1} phi_1 D1_0 / 2,  D1_0 = (m_i - m_{i-1}) / r0            (p = 2)
      x3 = x1 + alpha_{i+1} (phi_2 D1 - phi_3 D2),  D1_1 = (m_{i-1} - m_{i-2}) / r1,
           D1 = D1_0 + r0 (D1_0 - D1_1) / (r0 + r1),  D2 = (D1_0 - D1_1) / (r0 + r1)  (p = 3)

    At eta = 0 the factors e^{-0 h} = 1 and H = h are exact, so DPM-Solver++'s weights are
    the same to the last bit as without them.
    """

    def update(step: _Steps, p: int, x, ms):
        lam, xp = step.lam, step.xp
        h = lam[0] - lam[1]
        H = (1.0 + eta) * h
        a = step.alpha[0]
        phi1 = xp.expm1(-H)
        x1 = (step.sigma[0] / step.sigma[1]) * xp.exp(-eta * h) * x - a * phi1 * ms[0]
        if p == 1:
            return x1
        r0 = (lam[1] - lam[2]) / h
        D1_0 = (ms[0] - ms[1]) / r0
        if p == 2:
            return x1 - 0.5 * a * phi1 * D1_0
        r1 = (lam[2] - lam[3]) / h
        D1_1 = (ms[1] - ms[2]) / r1
        D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)
        D2 = (D1_0 - D1_1) / (r0 + r1)
        phi2 = H * _g(2, -H, xp)   # = phi_1/H + 1
        phi3 = -H * _g(3, -H, xp)  # = phi_2/H - 1/2
        return x1 + a * phi2 * D1 - a * phi3 * D2

    return update


_dpmpp_update = _dpmpp_eta_update(0.0)


def _unipc_terms(step: _Steps, p: int, variant: str):
    """What UniP-p and UniC-p share on step i (Zhao et al. 2023, Alg. 1-2 with x0
    prediction): z = -h, r_k = (lambda_{i-k} - lambda_i) / h (k = 1..p-1) and r_p = 1,
    B(h) = z (bh1) or e^z - 1 (bh2), the p x p matrix R_{jk} = r_k^(j-1) and
    b_j = j! z phi_{j+1}(z) / B(h), z phi_{j+1}(z) = z g_{j+1}(z) (`_g`)."""
    lam, xp = step.lam, step.xp
    h = lam[0] - lam[1]
    z = -h
    B = z if variant == "bh1" else xp.expm1(z)
    rks = [(lam[1 + k] - lam[1]) / h for k in range(1, p)] + [xp.ones_like(h)]
    R = [[r**j for r in rks] for j in range(p)]
    b = [math.factorial(j) * z * _g(j + 1, z, xp) / B for j in range(1, p + 1)]
    return h, B, rks, R, b


def _unip_base(step: _Steps, h, x, m0):
    """The DDIM part shared by UniP and UniC: (sigma_{i+1}/sigma_i) x - alpha_{i+1} (e^-h - 1) m_i."""
    return (step.sigma[0] / step.sigma[1]) * x - step.alpha[0] * step.xp.expm1(-h) * m0


def _unip_update(variant: str):
    def update(step: _Steps, p: int, x, ms):
        """UniP-p: x_{i+1} = base - alpha_{i+1} B(h) sum_k rho_k D1_k, D1_k = (m_{i-k} - m_i)/r_k,
        rho solving R[:p-1, :p-1] rho = b[:p-1] (rho = 1/2 at p = 2, as the reference)."""
        h, B, rks, R, b = _unipc_terms(step, p, variant)
        x_pred = _unip_base(step, h, x, ms[0])
        if p == 1:
            return x_pred
        rho = [0.5] if p == 2 else _solve_small([row[:-1] for row in R[:-1]], b[:-1], step.xp)
        res = sum(rho[k - 1] * (ms[k] - ms[0]) / rks[k - 1] for k in range(1, p))
        return x_pred - step.alpha[0] * B * res

    return update


def _unic_update(variant: str):
    def update(step: _Steps, p: int, x, ms):
        """UniC-p on step i: ms = (m_{i+1}, m_i, m_{i-1}, ...), m_{i+1} evaluated at the
        predicted x_{i+1}. x_c = base - alpha_{i+1} B(h) (sum_{k<p} rho_k D1_k
        + rho_p (m_{i+1} - m_i)), rho solving R rho = b (rho = 1/2 at p = 1, as the reference)."""
        h, B, rks, R, b = _unipc_terms(step, p, variant)
        m_new, old = ms[0], ms[1:]
        rho = [0.5] if p == 1 else _solve_small(R, b, step.xp)
        res = sum(rho[k - 1] * (old[k] - old[0]) / rks[k - 1] for k in range(1, p))
        return _unip_base(step, h, x, old[0]) - step.alpha[0] * B * (res + rho[-1] * (m_new - old[0]))

    return update


def _deis_update(step: _Steps, p: int, x, ms):
    """tAB-DEIS (Zhang & Chen 2023, eq. 14): eps(tau) ~ sum_k L_k(tau) eps_{i-k}, L_k the
    Lagrange basis in t on the nodes t_i, ..., t_{i-p+1}, so

      x_{i+1} = (alpha_{i+1}/alpha_i) x_i + alpha_{i+1} sum_k C_k eps_{i-k},
      C_k = int_{sh_i}^{sh_{i+1}} L_k(t(sh)) dsh
          = -int_{lambda_i}^{lambda_{i+1}} L_k(t(lambda)) e^-lambda dlambda,

    integrated by 16-point Gauss-Legendre in lambda on each step (`_on_grid`; exact for
    order 1). t(lambda) is analytic in the strip |Im lambda| < pi/2 for every SDE here, so
    the rule converges geometrically: against 64 points, relative error of the weights
    below 1e-9 for steps h < 5 and below 1e-7 for the h ~ 9 of 2-step grids (VP, cosine
    VP, sub-VP, VE; log-SNR, uniform-t and EDM grids)."""
    nodes = step.t[1:1 + p]
    C = []
    for k in range(p):
        L = step.xp.ones_like(step.quad_t)
        for j in range(p):
            if j != k:
                L = L * (step.quad_t - nodes[j]) / (nodes[k] - nodes[j])
        C.append((L * step.quad_dsh).sum(0))
    return (step.alpha[0] / step.alpha[1]) * x + step.alpha[0] * sum(C[k] * ms[k] for k in range(p))


_AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def _ipndm_update(step: _Steps, p: int, x, ms):
    """iPNDM: Adams-Bashforth with fixed coefficients on d = (x_hat - D) / sh = eps in EDM's
    scaled variables, x_hat_{i+1} = x_hat_i + (sh_{i+1} - sh_i) sum_k b_k d_{i-k} with
    b = 1; (3, -1)/2; (23, -16, 5)/12; (55, -59, 37, -9)/24; in x = alpha x_hat:
    x_{i+1} = (alpha_{i+1}/alpha_i) x_i + alpha_{i+1} (sh_{i+1} - sh_i) sum_k b_k eps_{i-k}."""
    dsh = step.xp.exp(-step.lam[0]) - step.xp.exp(-step.lam[1])
    return (step.alpha[0] / step.alpha[1]) * x + step.alpha[0] * dsh * sum(
        b * ms[k] for k, b in enumerate(_AB[p]))


# --- samplers ------------------------------------------------------------------------------
class _Plan(NamedTuple):
    data_prediction: bool  # the stored output: D (True) or eps (False)
    update: Callable       # update(steps, p, x, ms), the predictor
    max_order: int
    corrector: Optional[Callable]  # update(steps, p, x_prev, ms_new) or None
    reference_rule: str    # the method's reference `lower_order_final`
    order_name: str        # for errors: which argument holds the order ...
    valid_orders: tuple    # ... and its valid values


def _loop_weights(plan: _Plan, schedule, orders: np.ndarray, dtype):
    """ts, pred (n, 1 + H) and corr (n, 2 + H) for `_multistep_loop`. In numpy (float64) when
    the grid is concrete (eager calls, or jit with the SDE and grid as constants: the
    compiled program then holds only the loop), in jax.numpy when it is traced (an SDE
    passed through jit, a grid being fitted by gradient)."""
    concrete = not _traced(schedule)
    xp = np if concrete else jnp
    if concrete:
        schedule = [np.asarray(a, np.float64) for a in schedule]
    n, n_hist = orders.shape[0], plan.max_order + (plan.corrector is not None)
    steps = _steps(xp, schedule, n_hist)
    pad = ((0, 0), (0, _MAX_HIST - n_hist))
    pred = xp.pad(_weights(plan.update, steps, orders, n_hist), pad)
    corr = xp.concatenate([xp.ones((n, 1)), xp.zeros((n, 1 + _MAX_HIST))], 1)  # x_i <- x_i
    if plan.corrector is not None and n > 1:  # UniC of step i - 1 at iteration i
        w = xp.pad(_weights(plan.corrector, steps, orders, n_hist)[:-1], pad)
        corr = xp.concatenate([corr[:1], xp.concatenate([xp.zeros((n - 1, 1)), w], 1)])
    if concrete:
        return schedule[1].astype(dtype), pred.astype(dtype), corr.astype(dtype)
    return schedule[1], jnp.asarray(pred, dtype), jnp.asarray(corr, dtype)


def _check_choice(value, name: str, valid: tuple):
    if value not in valid:
        raise ValueError(f"{name} must be one of {valid}, got {value!r}.")


def _check_steps_and_endings(smp):
    """The checks of the fields every multistep sampler has: n_steps, lower_order_final, final."""
    check_steps(smp.n_steps)
    if not (smp.lower_order_final is None or isinstance(smp.lower_order_final, bool)):
        _check_choice(smp.lower_order_final, "lower_order_final (or None, True, False)", LOWER_ORDER_FINAL)
    _check_choice(smp.final, "final", FINALS)


def _grid_steps(smp) -> int:
    """The steps a sampler with the fields n_steps and final takes on its grid: n_steps, or
    n_steps - 1 with final="denoise" (the last evaluation denoises)."""
    return smp.n_steps - 1 if smp.final == "denoise" else smp.n_steps


def _start(smp, score_fn, sde, x_T, cond, save_trajectory):
    """(None, the schedule of the sampler's steps on its grid, the grid's evaluation times
    or None (`_schedule`), their number n_solve) with n_solve = n_steps, or n_steps - 1 for
    final="denoise"; for n_solve = 0 (one evaluation, at T) (the sampler's result with
    Tweedie's estimate D(x_T, T), None, None, 0)."""
    n, n_solve = smp.n_steps, _grid_steps(smp)
    if n_solve == 0:
        x = tweedie_denoise(score_fn, sde, x_T, sde.T, cond)
        return (x, jnp.asarray(n), (_append(x_T[None], x) if save_trajectory else None)), None, None, 0
    args = (smp.grid, sde, n_solve, jnp.dtype(x_T.dtype))
    if _traced(x_T, cond):  # inside jit: concrete all the same when the SDE and grid are
        with jax.ensure_compile_time_eval():
            return None, *_schedule(*args), n_solve
    return None, *_schedule(*args), n_solve  # compiled programs (ensure_compile_time_eval would run them op by op)


class AbstractMultistepSampler(AbstractSampler):
    """A multistep solver of the probability-flow ODE on a fixed grid, one score evaluation
    per step (module docstring). Fields every solver has:

      n_steps: the number of score evaluations (>= 1); NFE = n_steps with either ending.
      grid: the time grid (per solver default).
      lower_order_final (keyword): "below_10", "always" (or True), "never" (or False), or
        None (default) for the rule of the method's reference implementation: "below_10"
        for DPM-Solver++, "always" for UniPC, "never" for DEIS and iPNDM.
      final (keyword): "ode" (default; n steps to t = eps) or "denoise" (n - 1 steps to
        eps, then D(x_eps, eps) from the n-th evaluation).

    Subclasses say which update they use (`_plan`)."""

    n_steps: int = eqx.field(static=True)
    lower_order_final: Union[None, bool, str] = eqx.field(static=True, default=None, kw_only=True)
    final: str = eqx.field(static=True, default="ode", kw_only=True)
    grid: eqx.AbstractVar[AbstractTimeGrid]
    evals_per_step = 1

    @property
    def n_grid_steps(self) -> int:
        """The steps taken on the grid (what the grid is called with, and what `fit_grid` fits)."""
        return _grid_steps(self)

    def __check_init__(self):
        _check_steps_and_endings(self)
        plan = self._plan()
        _check_choice(plan.max_order, plan.order_name, plan.valid_orders)

    @abc.abstractmethod
    def _plan(self) -> _Plan:
        """The stored output, the predictor update, its order, the corrector, the reference
        final-order rule, and the name and valid values of the order argument."""

    def run(self, score_fn, sde, keys, x_T, cond, save_trajectory):
        del keys  # deterministic
        plan = self._plan()
        done, schedule, t_eval, n_ode = _start(self, score_fn, sde, x_T, cond, save_trajectory)
        if done is not None:
            return done
        rule = plan.reference_rule if self.lower_order_final is None else self.lower_order_final
        orders = _step_orders(plan.max_order, n_ode, rule)
        ts, pred, corr = _loop_weights(plan, schedule, orders, x_T.dtype)
        if t_eval is None:
            t_eval = ts[:-1]
        else:  # a decoupled grid's evaluation times, in numpy as ts when concrete
            t_eval = t_eval.astype(x_T.dtype) if _traced(t_eval) else np.asarray(t_eval, x_T.dtype)
        x, traj = _multistep_loop(score_fn, sde, x_T, t_eval, cond, pred, corr, plan.data_prediction,
                                  save_trajectory)
        if self.final == "denoise":
            x = tweedie_denoise(score_fn, sde, x, ts[-1], cond)
            traj = _append(traj, x) if save_trajectory else None
        return x, jnp.asarray(self.n_steps), traj


class DPMSolverPP(AbstractMultistepSampler):
    """DPM-Solver++ multistep, data prediction (Lu et al. 2022, "DPM-Solver++: Fast Solver
    for Guided Sampling of Diffusion Probabilistic Models", Alg. 2; order 3 as the
    reference implementation), update `_dpmpp_update`, in lambda = log(alpha / sigma).
    Order 1 is DDIM. Defaults as the reference: grid uniform in log-SNR, lower orders at
    the end only below 10 steps ("below_10"; 1, 2 or 5 steps at order 3 use orders (1),
    (1, 1), (1, 2, 3, 2, 1)). NFE = n_steps.

    Order 3 is the reference's 3M update, and like it converges at order 2: with
    D(lambda_i + u) = m_i + u D' + u^2 D''/2, the step's exact integral has the term
    -alpha_{i+1} h^2 phi_3 D'' while D2 above is h^2 D''/2, half of what third order needs
    (measured slope 2.0 on Gaussian data, tests/test_multistep.py). The exact quadratic
    extrapolation (D2 at full weight) is UniPC's predictor UniP(3), order 3."""

    order: int = eqx.field(static=True, default=2)
    grid: AbstractTimeGrid = LogSNRGrid()

    def _plan(self):
        return _Plan(True, _dpmpp_update, self.order, None, "below_10", "order (DPM-Solver++)", (1, 2, 3))


class UniP(eqx.Module):
    """The UniP-p predictor of UniPC (Zhao et al. 2023, Alg. 1, x0 prediction), order 1-3,
    B(h) = h ("bh1") or e^h - 1 ("bh2"); order 1 is DDIM and bh2 at order 2 is DPM-Solver++
    2M. For p >= 3 (p >= 2 in UniC) rho solves a linear system in which B(h) cancels, so the
    variants differ only through the orders 2 (UniP) and 1 (UniC) of warm-up and final steps."""

    order: int = eqx.field(static=True, default=3)
    variant: str = eqx.field(static=True, default="bh2")

    def __check_init__(self):
        _check_choice(self.order, "UniP order", (1, 2, 3))
        _check_choice(self.variant, "variant", VARIANTS)

    @property
    def convergence_order(self):
        return self.order

    def update(self):
        return _unip_update(self.variant)


class DPMSolverPPUpdate(eqx.Module):
    """The DPM-Solver++ multistep update (orders 1-3) as the predictor of `UniPC`; its
    order 3 (the reference's 3M) converges at order 2 (see `DPMSolverPP`)."""

    order: int = eqx.field(static=True, default=3)

    def __check_init__(self):
        _check_choice(self.order, "order (DPM-Solver++)", (1, 2, 3))

    @property
    def convergence_order(self):
        return min(self.order, 2)

    def update(self):
        return _dpmpp_update


class UniC(eqx.Module):
    """The UniC corrector (Zhao et al. 2023, Alg. 2, x0 prediction) with B(h) = h ("bh1")
    or e^h - 1 ("bh2"): after step i of order p, it re-solves the step with the fresh
    output m_{i+1} in the polynomial (order p + 1), no extra evaluation; not applied after
    the last step (there is no output there), as the reference."""

    variant: str = eqx.field(static=True, default="bh2")

    def __check_init__(self):
        _check_choice(self.variant, "variant", VARIANTS)


class UniPC(AbstractMultistepSampler):
    """UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast
    Sampling of Diffusion Models"): `predictor` (UniP(order, variant) or
    DPMSolverPPUpdate(order)) followed by `corrector` (UniC(variant), or None for the
    predictor alone), data prediction in lambda = log(alpha / sigma). Its order of
    convergence (`order`) is the predictor's p, or p + 1 with the corrector (UniC turns the
    step's polynomial through p outputs into one through p + 1). One evaluation per step:
    NFE = n_steps. (The warm-up steps at lower order take place at high noise, where D
    hardly changes; in principle their local errors bound the global order.)

        UniPC(10)                                          # UniP-3 + UniC, bh2
        UniPC(10, UniP(2, "bh1"), corrector=None)          # UniP-2 alone
        UniPC(10, DPMSolverPPUpdate(2))                    # DPM-Solver++ 2M + UniC

    Defaults as the reference: UniP-3 + UniC with B(h) = e^h - 1, uniform-t grid, lower
    orders at the end ("always").
    """

    predictor: Union[UniP, DPMSolverPPUpdate] = UniP()
    corrector: Optional[UniC] = UniC()
    grid: AbstractTimeGrid = UniformTimeGrid()

    def __check_init__(self):
        if not isinstance(self.predictor, (UniP, DPMSolverPPUpdate)):
            raise TypeError(f"predictor must be UniP(...) or DPMSolverPPUpdate(...), got "
                            f"{type(self.predictor).__name__}.")
        if self.corrector is not None and not isinstance(self.corrector, UniC):
            raise TypeError(f"corrector must be UniC(...) or None, got {type(self.corrector).__name__}.")

    @property
    def order(self):
        return self.predictor.convergence_order + (self.corrector is not None)

    def _plan(self):
        corr = None if self.corrector is None else _unic_update(self.corrector.variant)
        return _Plan(True, self.predictor.update(), self.predictor.order, corr, "always", "predictor order",
                     (1, 2, 3))


class DEIS(AbstractMultistepSampler):
    """tAB-DEIS (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential
    Integrator", Sec. 4): exponential integrator in x = alpha x_hat with the noise
    prediction extrapolated by a Lagrange polynomial in t through the last `order`
    outputs (1-3), coefficients by Gauss-Legendre quadrature (`_deis_update`). Order 1 is
    DDIM. Default grid uniform in t (module docstring). NFE = n_steps."""

    order: int = eqx.field(static=True, default=3)
    grid: AbstractTimeGrid = UniformTimeGrid()

    def _plan(self):
        return _Plan(False, _deis_update, self.order, None, "never", "order (tAB-DEIS)", (1, 2, 3))


class IPNDM(AbstractMultistepSampler):
    """iPNDM, the improved pseudo numerical method (Zhang & Chen 2023, "Fast Sampling of
    Diffusion Models with Exponential Integrator", App.; the version of Zhou et al. 2024,
    "Fast ODE-based Sampling for Diffusion Models in Around 5 Steps"): Adams-Bashforth with
    the fixed coefficients of equal steps on EDM's dx_hat/dsh = eps (`_ipndm_update`),
    orders min(max_order, i + 1) at warm-up. The fixed coefficients are those of equal
    steps: on a grid uniform in sh (`EDMGrid(rho=1)`) the steps are Adams-Bashforth of
    order `max_order`; on any other grid the unequal steps leave a local error
    O(dsh^3) (the coefficients' mismatch with the variable-step ones), so the method
    converges at order 2 (`order`; 1 for max_order = 1), as measured in the tests. Its
    strength is the error constant at small NFE, not the order. NFE = n_steps."""

    max_order: int = eqx.field(static=True, default=4)
    grid: AbstractTimeGrid = EDMGrid()

    @property
    def order(self):
        return min(self.max_order, 2)

    def _plan(self):
        return _Plan(False, _ipndm_update, self.max_order, None, "never", "max_order (iPNDM)", (1, 2, 3, 4))


__all__ = ["AbstractMultistepSampler", "DPMSolverPP", "DPMSolverPPUpdate", "UniP", "UniC", "UniPC",
           "DEIS", "IPNDM"]

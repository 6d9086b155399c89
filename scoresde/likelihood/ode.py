"""Exact log-likelihood through the probability-flow ODE.

The probability-flow ODE of a forward SDE dx = f(t) x dt + g(t) dW (Song et al. 2021,
"Score-Based Generative Modeling through Stochastic Differential Equations", ICLR,
Sec. 4.3 and App. D.2),

    dx/dt = v(x, t) = f(t) x - g(t)^2 / 2 * score(x, t),

transports p_t into p_s exactly when `score` is the true score. Along a solution x_t
the log-density obeys the instantaneous change of variables (Chen et al. 2018,
"Neural Ordinary Differential Equations", Thm. 1): d/dt log p_t(x_t) = -div v(x_t, t).
Integrating FORWARD in time from the data point x = x_eps at t = eps to t = T gives

    log p_eps(x) = log p_T(x_T) + int_eps^T div v(x_t, t) dt.                      (1)

The direction matters: the solve starts at the data point and ends in the latent
x_T, where the terminal density is evaluated. Treating x as x_T and integrating
backwards (a known pitfall) evaluates a different quantity and gives nonsense bits/dim.

We solve the augmented ODE d/dt (x, delta) = (v, div v), delta(eps) = 0, and return
log p_T(x_T) + delta(T). The divergence is either exact (the trace of the Jacobian:
D forward-mode Jacobian-vector products per evaluation, one per basis vector, all
sharing one linearisation of v) or the Hutchinson-Skilling estimate (Hutchinson
1989; Skilling 1989; Grathwohl et al. 2019, "FFJORD"):

    div v(x) = E_e[e^T (dv/dx) e],   E[e e^T] = I,

with K probes e (Rademacher or Gaussian) drawn once per example from that example's
own key and held fixed over the whole solve, so the estimate of the integral (1) is
unbiased. Each probe's integral is carried as its own state component, so the
spread of the K integrals along the one trajectory measures the probes' share of the
variance for free (`log_likelihood_terms`).

Time variable. With `time_variable="log_snr"` the same ODE is solved in
s = -lambda(t) / 2 = log(sigma_t / alpha_t) instead of t: since
d lambda / dt = -g^2 / sigma^2 for every linear SDE,

    dx/ds = v(x, t(s)) * 2 sigma^2 / g^2,   d delta/ds = div v * 2 sigma^2 / g^2,

and s runs over [s(eps), s(T)] (about [-4.6, 5.0] for the VP SDE with eps = 1e-3). In
s the solution is a smooth function of the noise level (the exponential-integrator
variable of DPM-Solver, Lu et al. 2022, and the log-SNR time of i-DODE, Zheng et al.
2023), which a high-order solver integrates in far fewer steps than the stiff-looking
start near t = eps (experiments/benchmarks/results/likelihood.md).

Three ways to solve, with one vector field:
* `batching="per_example"` (default): each example is its own adaptive solve (vmapped
  over the batch) with its own error control, so its result and NFE do not depend on
  the rest of the batch and a batch split over devices gives the same numbers. The
  vmapped while-loop runs every example until the slowest one is done, so the batch
  costs the LARGEST per-example NFE, and each step pays for the per-example bookkeeping.
* `batching="joint"`: one adaptive solve of the whole batch (one step-size
  controller), the error norm being the largest per-example RMS error, so every
  example still meets rtol/atol; the steps are shared, so the batch costs about the
  slowest example's NFE with none of the per-example overhead, but each example's
  numbers depend (within the tolerance) on the rest of its batch.
* `n_steps=N`: a fixed-step solve, N steps of `solver` on a grid uniform in the time
  variable: no error control, a cost known in advance and identical on every device
  and process (no rank waits for another's adaptive solve), and each example's numbers
  independent of the batch. Its accuracy is measured, not controlled: see the benchmark.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from scoresde._checks import check_batched, check_float_data, concrete_or_none
from scoresde._keys import per_example_keys
from scoresde._types import Array, PyTree
from scoresde._util import add_batch_axis, batch_time, call_score, check_cond, check_steps, rk_evaluations, scan_grid
from scoresde.sde import AbstractSDE

_TRACES = ("hutchinson", "exact")
_PROBES = ("rademacher", "gaussian")
_BATCHING = ("per_example", "joint")
_TIME_VARIABLES = ("t", "log_snr")


def _draw_probes(key: Array, shape: tuple[int, ...], n_probes: int, probe: str, dtype) -> Array:
    if probe == "rademacher":
        return jax.random.rademacher(key, (n_probes,) + shape, dtype=dtype)
    return jax.random.normal(key, (n_probes,) + shape, dtype)


def _time_change(sde: AbstractSDE, time_variable: str):
    """(s0, s1, t(s), dt/ds as a function of t) for the solve's time variable s."""
    if time_variable == "t":
        return sde.eps, sde.T, (lambda s: s), (lambda t: jnp.ones_like(t))
    eps, T = jnp.asarray(sde.eps, jnp.float32), jnp.asarray(sde.T, jnp.float32)
    s0, s1 = -0.5 * sde.log_snr(eps), -0.5 * sde.log_snr(T)
    # d lambda / dt = -g^2 / sigma^2 (sde module docstring), s = -lambda / 2.
    return (s0, s1, lambda s: jnp.clip(sde.t_from_log_snr(-2.0 * s), eps, T),
            lambda t: 2.0 * sde.sigma(t) ** 2 / sde.g2(t))


def exact_divergence(fn: Callable[[Array], Array], x: Array, *, chunk: int | None = None) -> tuple[Array, Array]:
    """(fn(x), div fn(x) per example) for a batch-first map fn whose examples do not mix.

        div_b = sum_i d fn(x)_{b,i} / d x_{b,i} = sum_i (J_b e_i)_i,

    computed in forward mode: one linearisation of fn, then one Jacobian-vector product
    per basis vector e_i (D of them, vmapped; the tangent e_i is given to every example
    at once, so each JVP runs on the whole batch). Only the diagonal entry of each
    product is kept. `chunk` bounds memory: the D products are evaluated `chunk` at a
    time (jax.lax.map with batch_size; None: all at once), e.g. for large D.
    """
    shape = x.shape[1:]
    dim = math.prod(shape)
    v, jvp = jax.linearize(fn, x)
    if v.shape != x.shape:
        raise ValueError(f"score_fn(x, t) returned shape {v.shape} but x has {x.shape}; a score function must "
                         "return an array shaped like its input.")

    def diag(i):
        e = jax.nn.one_hot(i, dim, dtype=x.dtype).reshape(shape)
        return jvp(jnp.broadcast_to(e, x.shape)).reshape(x.shape[0], dim)[:, i]

    idx = jnp.arange(dim)
    cols = jax.vmap(diag)(idx) if chunk is None or chunk >= dim else jax.lax.map(diag, idx, batch_size=chunk)
    return v, jnp.sum(cols, axis=0)


def hutchinson_divergence(fn: Callable[[Array], Array], x: Array, probes: Array) -> tuple[Array, Array]:
    """(fn(x), e_k^T (dfn/dx) e_k per probe) for probes (K, B, ...): shape (B, K).

    Each term is an unbiased estimate of the divergence (E[e e^T] = I); their mean over
    k is the K-probe estimate. One forward-mode JVP per probe, after one linearisation.
    """
    v, jvp = jax.linearize(fn, x)
    if v.shape != x.shape:
        raise ValueError(f"score_fn(x, t) returned shape {v.shape} but x has {x.shape}; a score function must "
                         "return an array shaped like its input.")
    jv = jax.vmap(jvp)(probes)
    k, b = probes.shape[:2]
    return v, jnp.sum((jv * probes).reshape(k, b, -1), axis=-1).T


def _max_example_rms(scaled_error) -> Array:
    """Joint solves: the largest per-example RMS of the scaled error over (x_b, delta_b),
    so the shared step meets every example's tolerance (diffrax's default rms_norm over
    the whole batch would let one example's error hide among the others)."""
    ex, ed = scaled_error
    b = ed.shape[0]
    sq = jnp.sum(ex.reshape(b, -1) ** 2, axis=-1) + jnp.sum(ed**2, axis=-1)
    return jnp.sqrt(jnp.max(sq) / (ex[0].size + ed[0].size))


@eqx.filter_jit
def _solve(score_fn, sde, keys, x, cond, trace, n_probes, probe, rtol, atol, solver, max_steps, batching,
           time_variable, n_steps, trace_chunk):
    """(x_T (B, ...), per-probe integrals (B, K) (K = 1 for the exact trace), nfe (B,)).

    filter_jit treats the score function, the SDE's float fields and the settings as
    static, so repeated eager calls with the same score function reuse the compilation.
    """
    shape = x.shape[1:]
    s0, s1, t_of_s, dt_ds = _time_change(sde, time_variable)

    def vector_field(s, y, args):
        probes, c = args
        xb, _ = y
        t = t_of_s(s)
        scale = dt_ds(t)

        def drift(z):
            return sde.ode_drift(lambda zz, tt: call_score(score_fn, zz, tt, c), z, batch_time(t, z))

        if trace == "exact":
            v, div = exact_divergence(drift, xb, chunk=trace_chunk)
            div = div[:, None]
        else:
            v, div = hutchinson_divergence(drift, xb, probes)
        return scale * v, (scale * div).astype(xb.dtype)

    term = diffrax.ODETerm(vector_field)

    def draw(k):
        return None if trace == "exact" else _draw_probes(k, shape, n_probes, probe, x.dtype)

    def init(xb):
        k = 1 if trace == "exact" else n_probes
        return xb, jnp.zeros((xb.shape[0], k), xb.dtype)

    if n_steps is not None:
        # Fixed grid, uniform in s: every example takes the same steps (the solver's own
        # step function inside one lax.scan; FSAL stages carried in the solver state).
        probes = None if trace == "exact" else jnp.swapaxes(jax.vmap(draw)(keys), 0, 1)
        args = (probes, cond)
        ss = jnp.linspace(s0, s1, n_steps + 1, dtype=x.dtype)
        y0 = init(x)
        state = solver.init(term, ss[0], ss[1], y0, args)

        def step(i, carry, sa, sb):
            y, st = carry
            y, _, _, st, _ = solver.step(term, sa, sb, y, args, st, made_jump=False)
            return y, st

        ((x_T, delta), _), _ = scan_grid(step, (y0, state), ss, False)
        return x_T, delta, jnp.full(x.shape[:1], rk_evaluations(solver, n_steps), jnp.int32)

    if batching == "joint":
        probes = None if trace == "exact" else jnp.swapaxes(jax.vmap(draw)(keys), 0, 1)
        controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=_max_example_rms)
        sol = diffrax.diffeqsolve(term, solver, s0, s1, None, init(x), args=(probes, cond),
                                  stepsize_controller=controller, max_steps=max_steps,
                                  saveat=diffrax.SaveAt(t1=True))
        nfe = rk_evaluations(solver, sol.stats["num_steps"])
        return sol.ys[0][-1], sol.ys[1][-1], jnp.full(x.shape[:1], nfe, jnp.int32)

    controller = diffrax.PIDController(rtol=rtol, atol=atol)

    def solve_one(xe, k, c):
        # One example as a batch of one (its conditioning sliced to a batch of one).
        probes = None if trace == "exact" else draw(k)[:, None]
        sol = diffrax.diffeqsolve(term, solver, s0, s1, None, init(xe[None]), args=(probes, add_batch_axis(c)),
                                  stepsize_controller=controller, max_steps=max_steps,
                                  saveat=diffrax.SaveAt(t1=True))
        return sol.ys[0][-1, 0], sol.ys[1][-1, 0], rk_evaluations(solver, sol.stats["num_steps"])

    return jax.vmap(solve_one)(x, keys, cond)


def _check_settings(trace, probe, n_probes, rtol, atol, batching, time_variable, n_steps, solver, trace_chunk):
    for name, value, allowed in (("trace", trace, _TRACES), ("probe", probe, _PROBES),
                                 ("batching", batching, _BATCHING), ("time_variable", time_variable, _TIME_VARIABLES)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
    if not isinstance(n_probes, (int, np.integer)) or isinstance(n_probes, bool) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes!r}.")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        tc = concrete_or_none(tol)
        if tc is not None and not (tc > 0):
            raise ValueError(f"{name} must be positive, got {tol!r}.")
    if n_steps is not None:
        check_steps(n_steps, "n_steps")
    if trace_chunk is not None:
        check_steps(trace_chunk, "trace_chunk")
    rk_evaluations(solver, 0, name="solver")  # fail early on a solver whose cost cannot be counted
    if n_steps is None and not isinstance(solver, diffrax.AbstractAdaptiveSolver):
        raise ValueError(f"solver {type(solver).__name__} has no error estimate: an adaptive solve needs an "
                         "embedded Runge-Kutta pair (Tsit5, Dopri5, Dopri8, Bosh3); give n_steps for a "
                         "fixed-step solve.")


def log_likelihood_terms(
    score_fn: Callable,
    sde: AbstractSDE,
    key: Array,
    x: Array,
    *,
    cond: PyTree = None,
    trace: Literal["hutchinson", "exact"] = "hutchinson",
    n_probes: int = 1,
    probe: Literal["rademacher", "gaussian"] = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    terminal_logp: Callable | None = None,
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    max_steps: int = 4096,
    batching: Literal["per_example", "joint"] = "per_example",
    time_variable: Literal["t", "log_snr"] = "t",
    n_steps: int | None = None,
    trace_chunk: int | None = None,
) -> tuple[Array, Array, Array]:
    """The pieces of (1): (log p_T(x_T) (B,), per-probe integrals (B, K), nfe (B,)).

    The integral of the K-probe estimate is the mean over the last axis (K = 1 for the
    exact trace); the K integrals share one trajectory, so their variance over k / K is
    the Hutchinson probes' share of the variance of log p. Arguments as in
    `log_likelihood`.
    """
    _check_settings(trace, probe, n_probes, rtol, atol, batching, time_variable, n_steps, solver, trace_chunk)
    x = jnp.asarray(x)
    check_float_data(x, "x")
    check_batched(x, "x")
    batch = x.shape[0]
    keys = per_example_keys(key, batch)
    terminal_logp = sde.prior_logp if terminal_logp is None else terminal_logp
    check_cond(cond, batch)
    x_T, deltas, nfe = _solve(score_fn, sde, keys, x, cond, trace, n_probes, probe, rtol, atol, solver, max_steps,
                              batching, time_variable, n_steps, trace_chunk)
    prior = terminal_logp(x_T)
    if prior.shape != (batch,):
        raise ValueError(f"terminal_logp(x_T) must return shape ({batch},), got {prior.shape}.")
    return prior, deltas, nfe


def log_likelihood(
    score_fn: Callable,
    sde: AbstractSDE,
    key: Array,
    x: Array,
    *,
    cond: PyTree = None,
    trace: Literal["hutchinson", "exact"] = "hutchinson",
    n_probes: int = 1,
    probe: Literal["rademacher", "gaussian"] = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    terminal_logp: Callable | None = None,
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    max_steps: int = 4096,
    batching: Literal["per_example", "joint"] = "per_example",
    time_variable: Literal["t", "log_snr"] = "t",
    n_steps: int | None = None,
    trace_chunk: int | None = None,
) -> tuple[Array, Array]:
    """Per-example log p_eps(x) by the probability-flow ODE, integrated from eps to T.

        log p_eps(x) = log p_T(x_T) + int_eps^T div v(x_t, t) dt,
        v(x, t) = f(t) x - g(t)^2 / 2 * score(x, t)         (Song et al. 2021, eq. 39)

    Args:
      score_fn: score(x, t) -> array like x (batch-first; t of shape (batch,)), or
        score(x, t, cond) with `cond`. Examples must not interact (the exact trace and
        the per-example probes rely on it).
      sde: the forward SDE; the solve runs over [sde.eps, sde.T].
      key: one PRNG key (split per example) or one key per example. Only the
        Hutchinson probes are random; with trace="exact" the key is unused.
      x: data points (B, ...), float. They are the starting points at t = eps.
      cond: conditioning of a conditional model, a pytree whose leaves have a leading
        axis of B (passed as score(x, t, cond); a per-example solve gets its slice).
      trace: "exact" (trace of the Jacobian, D forward-mode Jacobian-vector products per
        evaluation) or "hutchinson" (K = n_probes probes).
      n_probes: K, the number of Hutchinson probes per example (their estimates are
        averaged; the standard error falls as 1/sqrt(K)).
      probe: "rademacher" (entries +-1; lower variance) or "gaussian".
      rtol, atol: tolerances of diffrax.PIDController, applied to (x, the probes'
        integrals) jointly (adaptive solves only).
      terminal_logp: log p_T as a function of x_T (B, ...) -> (B,). Default:
        sde.prior_logp, the N(0, prior_std^2 I) prior. Passing the exact noised
        density at T (known when the data law is, e.g. `GaussianMixture.log_prob` at T)
        removes the prior mismatch at T, which otherwise dominates the error of an
        accurate solve (benchmark: 1.6e-3 nats/dim on case B, solver error ~1e-5).
      solver: an explicit Runge-Kutta diffrax solver (default Tsit5; Dopri8 for tight
        tolerances). Adaptive solves need an embedded error estimate.
      max_steps: step limit per adaptive solve (the solve raises when it is hit).
      batching: "per_example" (each example its own adaptive solve: results independent
        of the batch) or "joint" (one adaptive solve of the batch, steps shared, every
        example within tolerance; faster). See the module docstring.
      time_variable: "t" or "log_snr" (s = -lambda/2 = log(sigma/alpha); smoother, fewer
        steps for the same error).
      n_steps: None (adaptive) or N: a fixed-step solve of N steps of `solver` on a grid
        uniform in the time variable; rtol, atol and batching are then unused.
      trace_chunk: exact trace only: evaluate the D Jacobian-vector products this many
        at a time (bounds memory for large D); None: all at once.

    Returns:
      (logp, nfe): logp (B,) in nats, and nfe (B,) int, the number of evaluations of
      the ODE vector field (= forward score calls) each example's solve used (a joint
      solve reports its shared count for every example). Each evaluation also costs D
      (exact) or K (Hutchinson) Jacobian-vector products.
    """
    prior, deltas, nfe = log_likelihood_terms(
        score_fn, sde, key, x, cond=cond, trace=trace, n_probes=n_probes, probe=probe, rtol=rtol, atol=atol,
        terminal_logp=terminal_logp, solver=solver, max_steps=max_steps, batching=batching,
        time_variable=time_variable, n_steps=n_steps, trace_chunk=trace_chunk)
    return prior + jnp.mean(deltas, axis=-1), nfe


__all__ = ["log_likelihood", "log_likelihood_terms", "exact_divergence", "hutchinson_divergence"]

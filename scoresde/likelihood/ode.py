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

Divergence. Either exact, the trace of the Jacobian (`exact_divergence`: per example,
one linearisation of v and D forward-mode Jacobian-vector products with the basis
vectors, vmapped), or the Hutchinson-Skilling estimate (Hutchinson 1989; Skilling
1989; Grathwohl et al. 2019, "FFJORD"; `hutchinson_divergence`):

    div v(x) = E_e[e^T (dv/dx) e],   E[e e^T] = I,

with K probes e (Rademacher or Gaussian) drawn once per example from that example's
own key and held fixed over the whole solve, so the estimate of the integral (1) is
unbiased. Each probe's integral is carried on its own, so the spread of the K integrals
along the one trajectory measures the probes' share of the variance for free
(`log_likelihood_terms`).

How the integral is computed (`quadrature`):
* None (default, score_sde's way): the augmented ODE d/dt (x, delta) = (v, div v) is
  solved as one system, so every Runge-Kutta stage computes the divergence (D or K
  JVPs), and the error control covers delta.
* m >= 1: the trajectory x_t is solved alone (each stage one score call, no JVP) and
  the integral is a Gauss-Legendre rule with m nodes on every accepted step, at points
  of the solver's own dense output (Tsit5: 4th-order interpolant). A step of Tsit5
  costs 6 score calls but only m divergences; m = 3 (6th-order rule) matches the
  accuracy of the augmented solve at a third of the divergence evaluations
  (experiments/benchmarks/results/likelihood.md). The error control covers x only; the
  quadrature's error is measured, not controlled: at rtol = atol = 1e-5 (Tsit5, m = 3)
  every point of the tests and benchmarks stayed within 1e-3 nats/dim; looser
  tolerances are accurate on large joint batches (whose shared steps are finer than one
  example needs) but not on small ones (1e-4 gave 10x the error on batches of 8 as on
  batches of 1000). The exact divergence costs 13x (16-D) to 25x (32-D) a score call on
  the benchmark mixtures, so the divergence count sets the cost; the x-solver's own steps
  are where the integrand needs its nodes: composite or global Gauss rules on grids
  uniform in t, sqrt(t) or log-SNR, or panels spanning several steps, need as many or
  more divergences for the same error (the benchmark's "quadrature floor").

Time variable. With `time_variable="log_snr"` the ODE is solved in
s = -lambda(t) / 2 = log(sigma_t / alpha_t) instead of t: since d lambda / dt =
-g^2 / sigma^2 for every linear SDE, dx/ds = v * 2 sigma^2 / g^2 and
d delta/ds = div v * 2 sigma^2 / g^2 over [s(eps), s(T)] (the exponential-integrator
variable of DPM-Solver, Lu et al. 2022; the log-SNR time of i-DODE, Zheng et al. 2023).
It spreads the steps evenly over noise levels, which suits data with structure at
every scale; on the benchmark mixtures t needs fewer steps (measured in the benchmark).

Batching:
* `batching="per_example"` (default): each example is its own adaptive solve (vmapped
  over the batch) with its own error control, so its result and NFE do not depend on
  the rest of the batch and a batch split over devices gives the same numbers. The
  vmapped while-loop runs every example until the slowest one is done, so the batch
  costs the LARGEST per-example NFE, plus per-example bookkeeping.
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

import inspect
import math
from typing import Callable, Literal, NamedTuple

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
_MODES = ("forward", "reverse")


def _draw_probes(key: Array, shape: tuple[int, ...], n_probes: int, probe: str, dtype) -> Array:
    if probe == "rademacher":
        return jax.random.rademacher(key, (n_probes,) + shape, dtype=dtype)
    return jax.random.normal(key, (n_probes,) + shape, dtype)


def _check_like(v: Array, x: Array) -> None:
    if v.shape != x.shape:
        raise ValueError(f"score_fn(x, t) returned shape {v.shape} but x has {x.shape}; a score function must "
                         "return an array shaped like its input.")


def exact_divergence(fn: Callable, x: Array, cond: PyTree = None, *, mode: Literal["forward", "reverse"] = "forward",
                     chunk: int | None = None) -> tuple[Array, Array]:
    """(fn(x), div fn(x) per example (B,)) for a batch-first map whose examples do not mix.

        div_b = tr(d fn(x)_b / d x_b) = sum_i (J_b e_i)_i = sum_i (e_i^T J_b)_i.

    mode="forward": per example, one linearisation of fn at x_b (a batch of one, with
    its slice of `cond`) and the D Jacobian-vector products J_b e_i (vmapped over the
    basis and over the examples; laid out per example, which XLA runs well whatever D).
    mode="reverse": one VJP linearisation of fn on the whole batch and D
    vector-Jacobian products e_i^T J with the basis vector e_i given to every example at
    once (score_sde's construction for one probe, over all basis vectors). Both cost
    about D evaluations of fn; which is faster depends on the function and the backend
    (on one CPU core the benchmark mixtures run 1.2x-1.8x faster in reverse mode, a
    network usually runs faster in forward mode): measure. `chunk` bounds memory: the
    basis is taken `chunk` vectors at a time (jax.lax.map with batch_size; None: all D
    at once).

    fn is called fn(x) when cond is None, else fn(x, cond); cond's leaves have a
    leading batch axis.
    """
    shape = x.shape[1:]
    dim = math.prod(shape)
    basis = jnp.eye(dim, dtype=x.dtype).reshape((dim,) + shape)

    def over_basis(f, vectors):
        return jax.vmap(f)(vectors) if chunk is None or chunk >= dim else jax.lax.map(f, vectors, batch_size=chunk)

    if mode == "reverse":
        v, vjp = jax.vjp(lambda z: fn(z) if cond is None else fn(z, cond), x)
        _check_like(v, x)
        cols = over_basis(lambda e: vjp(jnp.broadcast_to(e, x.shape))[0].reshape(x.shape[0], dim), basis)
        return v, jnp.einsum("ibi->b", cols)

    def one(xe, c):
        cb = add_batch_axis(c)
        v, jvp = jax.linearize(lambda z: (fn(z[None]) if c is None else fn(z[None], cb))[0], xe)
        _check_like(v, xe)
        return v, jnp.trace(over_basis(jvp, basis).reshape(dim, dim))

    return jax.vmap(one)(x, cond)


def hutchinson_divergence(fn: Callable, x: Array, probes: Array, cond: PyTree = None, *,
                          mode: Literal["forward", "reverse"] = "forward") -> tuple[Array, Array]:
    """(fn(x), e_k^T (dfn/dx) e_k for each probe) for probes (K, B, ...): shape (B, K).

    Each term is an unbiased estimate of the divergence (E[e e^T] = I); their mean over
    k is the K-probe estimate. One linearisation of fn on the batch, then one product
    per probe: J e_k (mode="forward") or e_k^T J (mode="reverse", score_sde's way).
    fn is called fn(x) or fn(x, cond).
    """
    lin = jax.linearize if mode == "forward" else jax.vjp
    v, prod = lin(lambda z: fn(z) if cond is None else fn(z, cond), x)
    _check_like(v, x)
    jv = jax.vmap(prod)(probes) if mode == "forward" else jax.vmap(lambda e: prod(e)[0])(probes)
    k, b = probes.shape[:2]
    return v, jnp.sum((jv * probes).reshape(k, b, -1), axis=-1).T


def max_example_rms(scaled_error) -> Array:
    """The largest per-example RMS of a scaled error whose leaves are batch-first: in a
    joint solve the shared step then meets every example's tolerance (diffrax's default
    rms_norm over the whole batch would let one example's error hide among the others).
    With a batch of one it is diffrax's rms_norm."""
    leaves = jax.tree_util.tree_leaves(scaled_error)
    b = leaves[0].shape[0]
    sq = sum(jnp.sum(jnp.reshape(e, (b, -1)) ** 2, axis=-1) for e in leaves)
    return jnp.sqrt(jnp.max(sq) / sum(e[0].size for e in leaves))


class _Field(eqx.Module):
    """The probability-flow ODE in the time variable s: velocity dx/ds and, with the
    divergence, d delta/ds per probe (B, K); t(s) and [s0, s1]."""

    score_fn: Callable
    sde: AbstractSDE
    time_variable: str = eqx.field(static=True)
    trace: str = eqx.field(static=True)
    trace_chunk: int | None = eqx.field(static=True)
    jacobian_mode: str = eqx.field(static=True)

    def span(self):
        if self.time_variable == "t":
            return self.sde.eps, self.sde.T
        eps, T = jnp.asarray(self.sde.eps, jnp.float32), jnp.asarray(self.sde.T, jnp.float32)
        return -0.5 * self.sde.log_snr(eps), -0.5 * self.sde.log_snr(T)

    def time(self, s):
        """(t(s), dt/ds); d lambda / dt = -g^2 / sigma^2 (sde module docstring), s = -lambda / 2."""
        if self.time_variable == "t":
            return s, 1.0
        t = jnp.clip(self.sde.t_from_log_snr(-2.0 * s), self.sde.eps, self.sde.T)
        return t, 2.0 * self.sde.sigma(t) ** 2 / self.sde.g2(t)

    def _drift(self, t):
        return lambda z, c=None: self.sde.ode_drift(lambda zz, tt: call_score(self.score_fn, zz, tt, c), z,
                                                    batch_time(t, z))

    def velocity(self, s, x, cond):
        t, scale = self.time(s)
        return scale * self._drift(t)(x, cond)

    def velocity_and_divergence(self, s, x, probes, cond):
        t, scale = self.time(s)
        if self.trace == "exact":
            v, div = exact_divergence(self._drift(t), x, cond, mode=self.jacobian_mode, chunk=self.trace_chunk)
            div = div[:, None]
        else:
            v, div = hutchinson_divergence(self._drift(t), x, probes, cond, mode=self.jacobian_mode)
        return scale * v, (scale * div).astype(x.dtype)


def _gauss_legendre(m: int):
    nodes, weights = np.polynomial.legendre.leggauss(m)
    return tuple(float(a) for a in nodes), tuple(float(w) for w in weights)


def _step_integral(field, solver, sa, sb, dense_info, probes, cond, m):
    """Gauss-Legendre integral of the divergence over [sa, sb] with m nodes placed on
    the step's dense output x(s): (B, K)."""
    interp = solver.interpolation_cls(t0=sa, t1=sb, **dense_info)
    h = sb - sa
    total = 0.0
    for node, weight in zip(*_gauss_legendre(m)):
        s = sa + 0.5 * h * (1.0 + node)
        total = total + weight * field.velocity_and_divergence(s, interp.evaluate(s), probes, cond)[1]
    return 0.5 * h * total


def _quadrature_adaptive(field, solver, x, probes, cond, m, rtol, atol, max_steps):
    """Adaptive solve of x alone (diffrax solver steps, PIDController with the largest
    per-example RMS norm), Gauss-Legendre quadrature of the divergence on every accepted
    step. Returns (x_T, integrals (B, K), score calls without divergence, divergence evals)."""
    term = diffrax.ODETerm(lambda s, y, c: field.velocity(s, y, c))
    controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=max_example_rms)
    s0, s1 = field.span()
    s0, s1 = jnp.asarray(s0, x.dtype), jnp.asarray(s1, x.dtype)
    error_order = solver.error_order(term)
    sn, cstate = controller.init(term, s0, s1, x, None, cond, solver.func, error_order)
    sstate = solver.init(term, s0, sn, x, cond)
    k = 1 if probes is None else probes.shape[0]

    def body(carry):
        sa, sb, y, ss, cs, acc, steps, kept = carry
        sb = jnp.minimum(sb, s1)
        y1, y_err, info, ss1, _ = solver.step(term, sa, sb, y, cond, ss, made_jump=False)
        keep, na, nb, _, cs, _ = controller.adapt_step_size(sa, sb, y, y1, cond, y_err, error_order, cs)
        acc = jax.lax.cond(keep, lambda: acc + _step_integral(field, solver, sa, sb, info, probes, cond, m),
                           lambda: acc)
        pick = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), new, old)  # noqa: E731
        return na, nb, pick(y1, y), pick(ss1, ss), cs, acc, steps + 1, kept + keep.astype(jnp.int32)

    def cond_fn(carry):
        return (carry[0] < s1) & (carry[6] < max_steps)

    init = (s0, jnp.asarray(sn, x.dtype), x, sstate, cstate, jnp.zeros((x.shape[0], k), x.dtype),
            jnp.int32(0), jnp.int32(0))
    sa, _, x_T, _, _, acc, steps, kept = jax.lax.while_loop(cond_fn, body, init)
    x_T = eqx.error_if(x_T, sa < s1, f"the likelihood solve hit max_steps={max_steps} before reaching T; "
                                     "raise max_steps or loosen rtol/atol.")
    # 2 evaluations choose the first step (diffrax's initial-step heuristic).
    return x_T, acc, 2 + rk_evaluations(solver, steps), m * kept


def _augmented_rhs(field):
    def rhs(s, y, args):
        probes, c = args
        return field.velocity_and_divergence(s, y[0], probes, c)
    return diffrax.ODETerm(rhs)


@eqx.filter_jit
def _solve(score_fn, sde, keys, x, cond, trace, n_probes, probe, rtol, atol, solver, max_steps, batching,
           time_variable, n_steps, trace_chunk, quadrature, jacobian_mode):
    """(x_T (B, ...), per-probe integrals (B, K) (K = 1 for the exact trace), score calls
    without divergence (B,), evaluations with divergence (B,)).

    filter_jit treats the score function, the SDE's float fields and the settings as
    static, so repeated eager calls with the same score function reuse the compilation.
    """
    field = _Field(score_fn, sde, time_variable, trace, trace_chunk, jacobian_mode)
    shape = x.shape[1:]
    k = 1 if trace == "exact" else n_probes
    zeros = jnp.zeros(x.shape[:1], jnp.int32)
    s0, s1 = field.span()

    def draw(key):  # (K, ...) probes of one example
        return None if trace == "exact" else _draw_probes(key, shape, n_probes, probe, x.dtype)

    batch_probes = None if trace == "exact" else jnp.swapaxes(jax.vmap(draw)(keys), 0, 1)  # (K, B, ...)

    if n_steps is not None:
        # Fixed grid, uniform in s: every example takes the same steps (the solver's own
        # step function inside one lax.scan; FSAL stages carried in the solver state).
        ss = jnp.linspace(s0, s1, n_steps + 1, dtype=x.dtype)
        if quadrature is None:
            term, args = _augmented_rhs(field), (batch_probes, cond)
            y0 = (x, jnp.zeros(x.shape[:1] + (k,), x.dtype))
        else:
            term, args = diffrax.ODETerm(lambda s, y, c: field.velocity(s, y, c)), cond
            y0 = (x, jnp.zeros(x.shape[:1] + (k,), x.dtype))

        def step(i, carry, sa, sb):
            (y, acc), st = carry
            if quadrature is None:
                (y, acc), _, _, st, _ = solver.step(term, sa, sb, (y, acc), args, st, made_jump=False)
            else:
                y1, _, info, st, _ = solver.step(term, sa, sb, y, args, st, made_jump=False)
                acc = acc + _step_integral(field, solver, sa, sb, info, batch_probes, cond, quadrature)
                y = y1
            return (y, acc), st

        state = solver.init(term, ss[0], ss[1], y0 if quadrature is None else x, args)
        ((x_T, acc), _), _ = scan_grid(step, (y0, state), ss, False)
        calls = rk_evaluations(solver, n_steps)
        if quadrature is None:
            return x_T, acc, zeros, zeros + calls
        return x_T, acc, zeros + calls, zeros + quadrature * n_steps

    if quadrature is not None:
        if batching == "joint":
            x_T, acc, calls, divs = _quadrature_adaptive(field, solver, x, batch_probes, cond, quadrature, rtol,
                                                         atol, max_steps)
            return x_T, acc, zeros + calls, zeros + divs

        def one_quad(xe, pe, c):
            xT, a, calls, divs = _quadrature_adaptive(field, solver, xe[None], None if pe is None else pe[:, None],
                                                      add_batch_axis(c), quadrature, rtol, atol, max_steps)
            return xT[0], a[0], calls, divs

        pe = None if batch_probes is None else jnp.swapaxes(batch_probes, 0, 1)
        return jax.vmap(one_quad)(x, pe, cond)

    term = _augmented_rhs(field)

    def init(xb):
        return xb, jnp.zeros((xb.shape[0], k), xb.dtype)

    if batching == "joint":
        controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=max_example_rms)
        sol = diffrax.diffeqsolve(term, solver, s0, s1, None, init(x), args=(batch_probes, cond),
                                  stepsize_controller=controller, max_steps=max_steps,
                                  saveat=diffrax.SaveAt(t1=True))
        nfe = rk_evaluations(solver, sol.stats["num_steps"])
        return sol.ys[0][-1], sol.ys[1][-1], zeros, zeros + nfe

    controller = diffrax.PIDController(rtol=rtol, atol=atol)

    def solve_one(xe, key, c):
        # One example as a batch of one (its conditioning sliced to a batch of one).
        probes = None if trace == "exact" else draw(key)[:, None]
        sol = diffrax.diffeqsolve(term, solver, s0, s1, None, init(xe[None]), args=(probes, add_batch_axis(c)),
                                  stepsize_controller=controller, max_steps=max_steps,
                                  saveat=diffrax.SaveAt(t1=True))
        return sol.ys[0][-1, 0], sol.ys[1][-1, 0], jnp.int32(0), rk_evaluations(solver, sol.stats["num_steps"])

    return jax.vmap(solve_one)(x, keys, cond)


def _check_settings(trace, probe, n_probes, rtol, atol, batching, time_variable, n_steps, solver, trace_chunk,
                    quadrature, jacobian_mode):
    for name, value, allowed in (("trace", trace, _TRACES), ("probe", probe, _PROBES),
                                 ("jacobian_mode", jacobian_mode, _MODES),
                                 ("batching", batching, _BATCHING), ("time_variable", time_variable, _TIME_VARIABLES)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
    if not isinstance(n_probes, (int, np.integer)) or isinstance(n_probes, bool) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes!r}.")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        tc = concrete_or_none(tol)
        if tc is not None and not (tc > 0):
            raise ValueError(f"{name} must be positive, got {tol!r}.")
    for name, value in (("n_steps", n_steps), ("trace_chunk", trace_chunk), ("quadrature", quadrature)):
        if value is not None:
            check_steps(value, name)
    rk_evaluations(solver, 0, name="solver")  # fail early on a solver whose cost cannot be counted
    if n_steps is None and not isinstance(solver, diffrax.AbstractAdaptiveSolver):
        raise ValueError(f"solver {type(solver).__name__} has no error estimate: an adaptive solve needs an "
                         "embedded Runge-Kutta pair (Tsit5, Dopri5, Dopri8, Bosh3); give n_steps for a "
                         "fixed-step solve.")


class LikelihoodTerms(NamedTuple):
    """The pieces of log p_eps(x) = log p_T(x_T) + mean_k integrals[:, k].

    x_T: the end of each trajectory, the latent code of x, (B, ...).
    terminal: log p_T(x_T), (B,).
    integrals: int div v dt per Hutchinson probe, (B, K) (K = 1 for the exact trace);
      the probes share one trajectory, so var_k(integrals) / K is the probes' share of
      the variance of the estimate.
    nfe: score calls per example, (B,): both those without a divergence (trajectory
      stages of a `quadrature` solve) and those with one (`n_divergence`).
    n_divergence: evaluations that also took the divergence (each D or K JVPs), (B,).
    """

    x_T: Array
    terminal: Array
    integrals: Array
    nfe: Array
    n_divergence: Array

    @property
    def logp(self) -> Array:
        return self.terminal + jnp.mean(self.integrals, axis=-1)


def _terms(score_fn, sde, key, x, cond, trace, n_probes, probe, rtol, atol, terminal_logp, solver, max_steps, batching,
           time_variable, n_steps, trace_chunk, quadrature, jacobian_mode) -> LikelihoodTerms:
    _check_settings(trace, probe, n_probes, rtol, atol, batching, time_variable, n_steps, solver, trace_chunk,
                    quadrature, jacobian_mode)
    x = jnp.asarray(x)
    check_float_data(x, "x")
    check_batched(x, "x")
    batch = x.shape[0]
    keys = per_example_keys(key, batch)
    terminal_logp = sde.prior_logp if terminal_logp is None else terminal_logp
    check_cond(cond, batch)
    x_T, integrals, calls, divs = _solve(score_fn, sde, keys, x, cond, trace, n_probes, probe, rtol, atol, solver,
                                         max_steps, batching, time_variable, n_steps, trace_chunk, quadrature,
                                         jacobian_mode)
    terminal = terminal_logp(x_T)
    if terminal.shape != (batch,):
        raise ValueError(f"terminal_logp(x_T) must return shape ({batch},), got {terminal.shape}.")
    return LikelihoodTerms(x_T, terminal, integrals, calls + divs, divs)


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
    quadrature: int | None = None,
    jacobian_mode: Literal["forward", "reverse"] = "forward",
) -> tuple[Array, Array]:
    """Per-example log p_eps(x) by the probability-flow ODE, integrated from eps to T.

        log p_eps(x) = log p_T(x_T) + int_eps^T div v(x_t, t) dt,
        v(x, t) = f(t) x - g(t)^2 / 2 * score(x, t)         (Song et al. 2021, eq. 39)

    The defaults are the classic per-example augmented solve. The fastest accurate
    setting measured (experiments/benchmarks/results/likelihood.md) is
    batching="joint", quadrature=3 with Tsit5 at rtol = atol = 1e-4 to 1e-5.

    Args:
      score_fn: score(x, t) -> array like x (batch-first; t of shape (batch,)), or
        score(x, t, cond) with `cond`. Examples must not interact (the exact trace and
        the per-example probes rely on it).
      sde: the forward SDE; the solve runs over [sde.eps, sde.T].
      key: one PRNG key (split per example) or one key per example. Only the
        Hutchinson probes are random; with trace="exact" the key is unused.
      x: data points (B, ...), float. They are the starting points at t = eps.
      cond: conditioning of a conditional model, a pytree whose leaves have a leading
        axis of B (passed as score(x, t, cond); a per-example solve, and the exact
        trace, give each example its slice).
      trace: "exact" (trace of the Jacobian, D forward-mode Jacobian-vector products per
        evaluation) or "hutchinson" (K = n_probes probes).
      n_probes: K, the number of Hutchinson probes per example (their estimates are
        averaged; the standard error falls as 1/sqrt(K)).
      probe: "rademacher" (entries +-1; lower variance) or "gaussian".
      rtol, atol: tolerances of diffrax.PIDController (adaptive solves), applied to
        (x, the probes' integrals) jointly, or to x alone with `quadrature`.
      terminal_logp: log p_T as a function of x_T (B, ...) -> (B,). Default:
        sde.prior_logp, the N(0, prior_std^2 I) prior. Passing the exact noised
        density at T (known when the data law is, e.g. `GaussianMixture.log_prob` at T)
        removes the prior mismatch at T, which otherwise dominates the error of an
        accurate solve (benchmark: 1.6e-3 nats/dim on case B, solver error ~1e-5).
      solver: an explicit Runge-Kutta diffrax solver (default Tsit5; Dopri5, Dopri8,
        Bosh3). Adaptive solves need an embedded error estimate.
      max_steps: step limit per adaptive solve (the solve raises when it is hit).
      batching: "per_example" (each example its own adaptive solve: results independent
        of the batch) or "joint" (one adaptive solve of the batch, steps shared, every
        example within tolerance; faster). See the module docstring.
      time_variable: "t" or "log_snr" (s = -lambda/2 = log(sigma/alpha)).
      n_steps: None (adaptive) or N: a fixed-step solve of N steps of `solver` on a grid
        uniform in the time variable; rtol, atol and batching are then unused.
      trace_chunk: exact trace only: evaluate the D Jacobian-vector products this many
        at a time (bounds memory for large D); None: all at once.
      quadrature: None (augmented solve) or m: solve x alone and integrate the
        divergence by m-point Gauss-Legendre on each step's dense output.
      jacobian_mode: "forward" (Jacobian-vector products) or "reverse" (vector-Jacobian
        products) for the divergence; see `exact_divergence`.

    Returns:
      (logp, nfe): logp (B,) in nats, and nfe (B,) int, the number of score calls each
      example's solve used (a joint solve reports its shared count for every example).
      Calls that also take the divergence cost D (exact) or K (Hutchinson) JVPs more;
      `log_likelihood_terms` separates the two counts.
    """
    terms = _terms(score_fn, sde, key, x, cond, trace, n_probes, probe, rtol, atol, terminal_logp, solver, max_steps,
                   batching, time_variable, n_steps, trace_chunk, quadrature, jacobian_mode)
    return terms.logp, terms.nfe


_OPTIONS = {name: p.default for name, p in inspect.signature(log_likelihood).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def log_likelihood_terms(score_fn: Callable, sde: AbstractSDE, key: Array, x: Array, **options) -> LikelihoodTerms:
    """`log_likelihood` in pieces: a `LikelihoodTerms` (latent x_T, terminal density,
    per-probe integrals, evaluation counts). `options`: the keyword arguments of
    `log_likelihood`, with its defaults."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"log_likelihood_terms got unknown options {unknown}; the options are those of "
                        f"log_likelihood: {sorted(_OPTIONS)}.")
    return _terms(score_fn, sde, key, x, **{**_OPTIONS, **options})


__all__ = ["max_example_rms", "log_likelihood", "log_likelihood_terms", "LikelihoodTerms", "exact_divergence", "hutchinson_divergence"]

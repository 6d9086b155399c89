"""Bits per dimension of integer data: dequantisation and the bounds it gives.

Integer data k in {0, ..., L-1}^D (L = num_levels: 256 for 8-bit images, 17 for the
sklearn digits) are modelled through a continuous density p on the scaled data space
[a, b]^D = data_range, in which level k owns the cell

    cell(k) = a + w [k, k + 1),   w = (b - a) / L,

so the model's probability of k is P(k) = int_cell(k) p(x) dx. Here p is the
probability-flow ODE density at t = eps (`log_likelihood`). A dequantiser is a density
q(x | k) on cell(k); writing x = a + w (k + u) with u in [0, 1)^D and q(u | k) its
density in u (so q(x | k) = q(u | k) / w^D), Jensen's inequality gives, for every q,

    log P(k) >= E_q[log p(x) - log q(x | k)]
              = E_q[log p(x) - log q(u | k)] + D log w,                              (2)

and the importance-weighted bound with K draws u_1..u_K ~ q (Burda et al. 2016,
"Importance Weighted Autoencoders"),

    log P(k) >= E[log (1/K) sum_j p(x_j) / q(x_j | k)] =: L_K,                      (3)

is tighter for every K (L_1 <= L_K <= L_{K+1} <= log P(k)) and tends to log P(k) as
K -> infinity whenever q covers the cell. Reported in bits per dimension, the bounds
are upper bounds on the discrete code length -log2 P(k) / D.

The dequantisers (each states its q):
* `UniformDequantizer`: q(u | k) = 1 (Uria et al. 2013; Theis et al. 2016), the bound of
  score_sde and of most published diffusion numbers.
* `TruncatedNormalDequantizer`: x = c_k + s z, z ~ N(0, I) truncated to the cell (i-DODE,
  Zheng et al. 2023, "Improved Techniques for Maximum Likelihood Estimation for
  Diffusion ODEs", ICML, Sec. 4), c_k the cell centre, s by default sigma(eps)/alpha(eps),
  the noise level the model saw at eps. No training.
* `LearnedDequantizer`: any q(u | k) given as a function (keys, levels) -> (u, log q(u|k)),
  e.g. the Flax `scoresde.models.dequantizer.DequantizerNet` trained by
  `fit_dequantizer` (variational dequantisation, Ho et al. 2019, "Flow++"; Song et al.
  2021, "Maximum Likelihood Training of Score-Based Diffusion Models").

Hutchinson probes and the importance-weighted bound. With trace="hutchinson", log p(x_j)
is an unbiased but noisy estimate. L_1 stays unbiased; log-mean-exp over K > 1 draws is
convex in the noise, so the noise biases L_K up, and the bound in bits comes out
optimistic (too low) by up to about half the probes' variance of the log-weights (in
nats, divided by D ln 2). `BitsPerDimBound.probe_se` reports the probes' share of each
example's error: use the exact trace, or enough probes that probe_se is small against
the gaps being compared.
"""

from __future__ import annotations

import abc
import math
from typing import Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from scoresde._checks import check_batched, concrete_or_none
from scoresde._keys import per_example_keys
from scoresde._types import Array, PyTree
from scoresde._util import check_steps
from scoresde.likelihood.ode import log_likelihood_terms
from scoresde.sde import AbstractSDE


def _check_levels_range(num_levels, data_range):
    if not isinstance(num_levels, (int, np.integer)) or num_levels < 2:
        raise ValueError(f"num_levels must be an integer >= 2 (e.g. 256 for 8-bit images, 17 for "
                         f"sklearn digits), got {num_levels!r}.")
    try:
        a, b = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be a pair (a, b) of floats, got {data_range!r}.") from None
    if not b > a:
        raise ValueError(f"data_range must be (a, b) with b > a, got {data_range!r}.")
    return a, b


def _check_levels(levels, num_levels):
    levels = jnp.asarray(levels)
    lc = concrete_or_none(levels)
    if lc is not None and (lc.min() < 0 or lc.max() > num_levels - 1):
        raise ValueError(f"levels must lie in {{0, ..., {num_levels - 1}}} (num_levels={num_levels}), "
                         f"got values in [{lc.min()}, {lc.max()}].")
    return levels


def dequantize(key: Array, levels: Array, *, num_levels: int, data_range=(-1.0, 1.0)) -> Array:
    """Uniform dequantisation and affine scaling of integer data k in {0, ..., L-1}.

        x = a + (b - a) * (k + u) / L,   u ~ U[0, 1)^D,   L = num_levels,

    so x lies in [a, b) and each level owns a cell of width (b - a) / L (Uria et al.
    2013; Theis et al. 2016, "A note on the evaluation of generative models").
    """
    a, b = _check_levels_range(num_levels, data_range)
    levels = _check_levels(levels, num_levels)
    u = jax.random.uniform(key, levels.shape, jnp.float32)
    return a + (b - a) * (levels.astype(jnp.float32) + u) / num_levels


def bits_per_dim(logp: Array, dim: int, *, num_levels: int, data_range=(-1.0, 1.0)) -> Array:
    """Bits per dimension of integer data from the log-density of its dequantised, scaled version.

    Data k in {0, ..., L-1}^D (L = num_levels: 256 for 8-bit images, 17 for the sklearn
    digits) are dequantised and scaled to [a, b] = data_range as x = a + (b - a)(k + u)/L
    (see `dequantize`). If p_x is the model density of x, the density of y = (k + u)/L
    in [0, 1)^D is p_x(x) (b - a)^D (Jacobian of the scaling), and each level owns a
    cell of volume L^-D in y, so by Jensen's inequality

        log P(k) = log int_cell p_y(y) dy >= E_u[log p_x(x)] + D log((b - a) / L),

    and the reported upper bound on the discrete code length is

        bpd = -(log p_x(x) + D log((b - a) / L)) / (D ln 2)
            = -log p_x(x) / (D ln 2) + log2(L / (b - a)).

    The original score_sde code (Song et al. 2021, likelihood.py) writes this as
    bpd = -log p_x / (D ln 2) + offset with offset = 7 - inverse_scaler(-1): for 8-bit
    data (L = 256) scaled to [-1, 1], log2(256 / 2) = 7, i.e. the term
    D log((b - a)/L) = -D log 128 in nats; for data in [0, 1] the inverse scaler maps
    -1 to -1 and the offset becomes 8 = log2(256 / 1). That shortcut hard-codes L = 256
    and the two scalings; for other level counts (e.g. 17-level digits in [-1, 1]:
    log2(17 / 2) = 3.09 bits, not 7) use this function.

    Args:
      logp: log p_x(x) in nats, per example (any shape).
      dim: D, the number of values per example.
      num_levels: L.
      data_range: (a, b), the interval the data were scaled to.
    """
    a, b = _check_levels_range(num_levels, data_range)
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive integer (values per example), got {dim!r}.")
    logp = jnp.asarray(logp)
    return -(logp + dim * math.log((b - a) / num_levels)) / (dim * math.log(2.0))


# --- dequantisers -----------------------------------------------------------------------------

class AbstractDequantizer(eqx.Module):
    """A density q(u | k) on the unit cell [0, 1)^D of each integer example k.

    Final classes implement `sample`: per-example keys (B,) and integer levels (B, ...)
    -> (u (B, ...) in [0, 1), log q(u | k) (B,) in nats, a density in u). Example b
    draws from keys[b] only, so a batch split over devices gives the same numbers.
    """

    @abc.abstractmethod
    def sample(self, keys: Array, levels: Array, *, num_levels: int, sde: AbstractSDE,
               data_range: tuple[float, float]) -> tuple[Array, Array]:
        """(u, log q(u | k)) for each example."""


class UniformDequantizer(AbstractDequantizer):
    """q(u | k) = 1 on [0, 1)^D: u ~ U[0, 1)^D, log q = 0 (the bound of `bits_per_dim`)."""

    def sample(self, keys, levels, *, num_levels, sde, data_range):
        u = jax.vmap(lambda k: jax.random.uniform(k, levels.shape[1:], jnp.float32))(keys)
        return u, jnp.zeros(levels.shape[:1], jnp.float32)


class TruncatedNormalDequantizer(AbstractDequantizer):
    """Truncated-normal dequantisation (i-DODE; Zheng et al. 2023, Sec. 4).

        x = c_k + s z,   z ~ N(0, I) truncated to [-tau, tau]^D,   tau = w / (2 s),

    with c_k the centre of cell(k), w the cell width and s = `std` in data units
    (default sigma(eps) / alpha(eps): the noise of the forward SDE at eps, measured in
    the data's scale, so q matches the shape the model's p_eps has around a cell centre
    when it was trained on the undequantised levels). In u = 1/2 + s z / w,

        log q(u | k) = sum_d [log N(z_d; 0, 1) - log Z - log(s / w)],   Z = erf(tau / sqrt 2).

    i-DODE places the cells at alpha(eps) times these (the data scaled like the signal at
    eps); here every dequantiser shares the cells of (2), so their bounds are bounds on
    the same P(k) (the difference is D log alpha(eps), 5e-5 nats per value for the VP SDE
    at eps = 1e-3).
    """

    std: float | None = None

    def sample(self, keys, levels, *, num_levels, sde, data_range):
        a, b = data_range
        width = (b - a) / num_levels
        if self.std is None:
            eps = jnp.asarray(sde.eps, jnp.float32)
            s = sde.sigma(eps) / sde.alpha(eps)
        else:
            s = jnp.asarray(self.std, jnp.float32)
        s_u = s / width
        tau = 0.5 / s_u
        z = jax.vmap(lambda k: jax.random.truncated_normal(k, -tau, tau, levels.shape[1:], jnp.float32))(keys)
        u = jnp.clip(0.5 + s_u * z, 0.0, 1.0 - 1e-7)
        dim = math.prod(levels.shape[1:])
        log_z = jnp.log(jax.scipy.special.erf(tau / math.sqrt(2.0)))
        logq = (-0.5 * jnp.sum(z.reshape(z.shape[0], -1) ** 2, axis=-1)
                - dim * (0.5 * math.log(2 * math.pi) + log_z + jnp.log(s_u)))
        return u, logq


class LearnedDequantizer(AbstractDequantizer):
    """Any q(u | k) given as a function: `fn(keys (B,), levels (B, ...)) -> (u, log q(u | k))`.

    The bound (2) holds for every q; a q trained to maximise it (variational
    dequantisation, Ho et al. 2019; Song et al. 2021) makes it tighter. See
    `scoresde.models.dequantizer` for a small Flax q and its training.
    """

    fn: Callable

    def sample(self, keys, levels, *, num_levels, sde, data_range):
        u, logq = self.fn(keys, levels)
        if u.shape != levels.shape or logq.shape != levels.shape[:1]:
            raise ValueError(f"LearnedDequantizer.fn must return u shaped like levels {levels.shape} and log q "
                             f"of shape {levels.shape[:1]}, got {u.shape} and {logq.shape}.")
        return u, logq


# --- bounds -----------------------------------------------------------------------------------

class BitsPerDimBound(NamedTuple):
    """Per-example bounds on the discrete code length, in bits per dimension.

    bpd: (B,) the importance-weighted bound (3) over the K draws (K = 1: the bound (2)).
    bpd_draws: (B, K) the single-draw bounds, -(log p(x_j) - log q(x_j | k)) / (D ln 2);
      their mean is the plain K-draw average of (2), never below `bpd`.
    se: (B,) standard error of `bpd` as an estimate of its expectation, from the spread of
      the K draws (delta method: sqrt(Var_j(w_j) / K) / mean_j(w_j) for the weights
      w_j = p(x_j) / q(x_j | k)); NaN for K = 1. It includes the probes' noise.
    probe_se: (B,) the Hutchinson probes' share of that error, from the spread of the
      per-probe integrals along each trajectory (0 for the exact trace; NaN with one probe).
    nfe: (B, K) score calls of each solve.
    """

    bpd: Array
    bpd_draws: Array
    se: Array
    probe_se: Array
    nfe: Array

    def mean(self) -> tuple[float, float]:
        """(mean of bpd over the examples, its standard error over the examples)."""
        v = np.asarray(self.bpd, np.float64)
        return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def bits_per_dim_bound(
    score_fn: Callable,
    sde: AbstractSDE,
    key: Array,
    levels: Array,
    *,
    num_levels: int,
    data_range=(-1.0, 1.0),
    dequantizer: AbstractDequantizer = UniformDequantizer(),
    n_draws: int = 1,
    cond: PyTree = None,
    **likelihood_kwargs,
) -> BitsPerDimBound:
    """The bounds (2) and (3) on -log2 P(k) / D for integer data k, per example.

    For each example, K = n_draws dequantisations u_j ~ q(u | k) (from `dequantizer`),
    x_j = a + w (k + u_j), log p_eps(x_j) by the probability-flow ODE
    (`log_likelihood_terms`; keyword arguments pass through, e.g. trace, n_probes,
    batching="joint", quadrature=3), log-weights l_j = log p(x_j) - log q(u_j | k) +
    D log w, and

        bpd = -(logsumexp_j l_j - log K) / (D ln 2)                                  (3)

    (K = 1: the single-draw bound (2)). The K draws of the B examples are solved as one
    batch of K B points. Randomness: example b draws its u's and its probes from its
    own key (one key, split per example, or one key per example), so a batch split over
    devices gives the same numbers (per-example and fixed-step solves).

    Args:
      score_fn, sde: the model, as in `log_likelihood`.
      key: one PRNG key or one per example.
      levels: integer data (B, ...) in {0, ..., L-1}.
      num_levels: L; data_range: (a, b) the scaled data interval.
      dequantizer: an `AbstractDequantizer` (uniform, truncated normal, learned).
      n_draws: K >= 1.
      cond: per-example conditioning (leading axis B), repeated for the K draws.
    Returns:
      a `BitsPerDimBound` (per-example bound, per-draw bounds, standard errors, NFE).
    """
    a, b = _check_levels_range(num_levels, data_range)
    check_steps(n_draws, "n_draws")
    if not isinstance(dequantizer, AbstractDequantizer):
        raise TypeError(f"dequantizer must be an AbstractDequantizer (UniformDequantizer(), "
                        f"TruncatedNormalDequantizer(), LearnedDequantizer(fn)), got {type(dequantizer).__name__}.")
    levels = _check_levels(levels, num_levels)
    check_batched(levels, "levels")
    batch, shape = levels.shape[0], levels.shape[1:]
    dim = math.prod(shape)
    keys = per_example_keys(key, batch)
    # draw j of example b: key fold_in(keys[b], j) (draw 0: keys[b] itself, as data_bits_per_dim),
    # split into dequantisation / probes.
    draw_keys = jax.vmap(lambda k: jnp.stack([k] + [jax.random.fold_in(k, j) for j in range(1, n_draws)]))(keys)
    kd, kl = jax.vmap(jax.vmap(lambda k: jax.random.split(k, 2)))(draw_keys).transpose(2, 0, 1)  # (2, B, K)
    rep = lambda t: jnp.repeat(t, n_draws, axis=0)  # noqa: E731  (B, ...) -> (B K, ...), draws of b together
    lv = rep(levels)
    u, logq = dequantizer.sample(kd.reshape(-1), lv, num_levels=num_levels, sde=sde, data_range=(a, b))
    x = a + (b - a) * (lv.astype(jnp.float32) + u) / num_levels  # as `dequantize`
    cond_k = None if cond is None else jax.tree_util.tree_map(lambda c: rep(jnp.asarray(c)), cond)
    terms = log_likelihood_terms(score_fn, sde, kl.reshape(-1), x, cond=cond_k, **likelihood_kwargs)
    logw = (terms.logp - logq).reshape(batch, n_draws)  # log p(x) - log q(x | k) - D log w, nats
    to_bits = -1.0 / (dim * math.log(2.0))

    def bits(v):  # (2) / (3) in bits per dimension
        return bits_per_dim(v, dim, num_levels=num_levels, data_range=(a, b))

    iw = jax.nn.logsumexp(logw, axis=1) - math.log(n_draws)
    w = jnp.exp(logw - jnp.max(logw, axis=1, keepdims=True))
    wn = w / jnp.sum(w, axis=1, keepdims=True)
    if n_draws > 1:
        se = jnp.sqrt(jnp.var(w, axis=1, ddof=1) / n_draws) / jnp.mean(w, axis=1)
    else:
        se = jnp.full((batch,), jnp.nan)
    k_probes = terms.integrals.shape[-1]
    if k_probes > 1:
        probe_var = (jnp.var(terms.integrals, axis=-1, ddof=1) / k_probes).reshape(batch, n_draws)
    elif likelihood_kwargs.get("trace", "hutchinson") == "exact":
        probe_var = jnp.zeros((batch, n_draws))
    else:
        probe_var = jnp.full((batch, n_draws), jnp.nan)
    probe_se = jnp.sqrt(jnp.sum(wn**2 * probe_var, axis=1))  # delta method through the normalised weights
    return BitsPerDimBound(bits(iw), bits(logw), se * abs(to_bits), probe_se * abs(to_bits),
                           terms.nfe.reshape(batch, n_draws))


def data_bits_per_dim(score_fn: Callable, sde: AbstractSDE, key: Array, levels: Array, *, num_levels: int,
                      data_range=(-1.0, 1.0), **likelihood_kwargs) -> tuple[Array, Array]:
    """Bits/dim of integer data: uniform dequantisation, scaling, ODE log-likelihood.

    x = a + (b - a)(k + u)/L (`dequantize`, one u per example from that example's key),
    then bpd = -(log p_eps(x) + D log((b - a)/L)) / (D ln 2) (`bits_per_dim`) with
    log p_eps from `log_likelihood` (its keyword arguments pass through). Returns
    (bpd (B,), nfe (B,)): one draw of the bound (2) per example, i.e.
    `bits_per_dim_bound` with the uniform dequantiser and n_draws = 1; its mean over the
    data estimates the expected bound.
    """
    cond = likelihood_kwargs.pop("cond", None)
    r = bits_per_dim_bound(score_fn, sde, key, levels, num_levels=num_levels, data_range=data_range, cond=cond,
                           **likelihood_kwargs)
    return r.bpd, r.nfe[:, 0]


__all__ = ["bits_per_dim", "dequantize", "data_bits_per_dim", "bits_per_dim_bound", "BitsPerDimBound",
           "AbstractDequantizer", "UniformDequantizer", "TruncatedNormalDequantizer", "LearnedDequantizer"]

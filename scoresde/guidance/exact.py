"""Exact conditional laws p(x | y) for Gaussian and Gaussian-mixture data, y = A x + sigma_y n.

Test oracles for the inverse-problem methods. For x ~ N(mu, S) and y = A x + sigma_y n,
n ~ N(0, I) (sigma_y = 0: noise-free), Gaussian conditioning gives (e.g. Bishop 2006,
"Pattern Recognition and Machine Learning", eq. 2.81-2.82)

    p(x | y) = N(mu + K (y - A mu), S - K A S),   K = S A^T (A S A^T + sigma_y^2 I)^{-1},

and y ~ N(A mu, A S A^T + sigma_y^2 I). For a mixture sum_k w_k N(mu_k, S_k) each
component is conditioned the same way and re-weighted by its evidence:

    p(x | y) = sum_k w'_k N(x; mu_k|y, S_k|y),   w'_k propto w_k N(y; A mu_k, A S_k A^T + sigma_y^2 I).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from scoresde.analytic import GaussianMixture
from scoresde.guidance.operators import AbstractLinearOperator

Array = jax.Array


def operator_matrix(op: AbstractLinearOperator, x_shape: tuple[int, ...]) -> np.ndarray:
    """The matrix (M, D) of A for one example of shape x_shape (no batch axis), rows that
    are identically zero removed (the unobserved pixels of a mask). Use
    `operator_rows(op, x_shape)` to pick the same entries from a flattened observation.
    Needs a concrete operator (numpy result); `exact_posterior` works under jit."""
    A, keep = (np.asarray(a) for a in _matrix_and_rows(op, x_shape))
    return A[keep]


def operator_rows(op: AbstractLinearOperator, x_shape: tuple[int, ...]) -> np.ndarray:
    """Boolean (prod obs_shape,): which flattened observation entries carry information."""
    return np.asarray(_matrix_and_rows(op, x_shape)[1])


def _matrix_and_rows(op, x_shape):
    """(A (prod obs_shape, D), rows (prod obs_shape,) bool: A's row is not identically zero),
    as jax arrays (traceable: the operator may be a traced argument)."""
    x_shape = tuple(x_shape)
    D = int(np.prod(x_shape))
    op.check_data(jnp.zeros((1,) + x_shape))
    eye = jnp.eye(D, dtype=jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    A = jax.vmap(lambda e: op.apply(e.reshape((1,) + x_shape))[0].reshape(-1))(eye).T  # (M, D)
    return A, jnp.any(A != 0, axis=1)


def gaussian_condition(mean, cov, A, y, sigma_y=0.0):
    """Condition N(mean, cov) on y = A x + sigma_y n. Returns (mean_post (D,), cov_post (D, D),
    log N(y; A mean, A cov A^T + sigma_y^2 I)). A: (M, D), y: (M,).

    Rows of A that are identically zero (entries that observe nothing, e.g. the unknown
    pixels of a mask) are dropped: they do not change the posterior, and the evidence is
    that of the other rows (their y entries are ignored). Works under jit (no boolean
    indexing): a dropped row gets a unit variance and a zero residual instead."""
    mean, cov, A, y = (jnp.asarray(v) for v in (mean, cov, A, y))
    live = jnp.any(A != 0, axis=1)
    Sy = A @ cov @ A.T + jnp.diag(jnp.where(live, sigma_y**2, 1.0).astype(cov.dtype))
    L = jnp.linalg.cholesky(Sy)
    r = jnp.where(live, y - A @ mean, 0.0)
    AS = A @ cov  # (M, D); zero rows where A is
    K_T = jax.scipy.linalg.cho_solve((L, True), AS)  # (M, D) = Sy^{-1} A S = K^T
    m = mean + K_T.T @ r
    C = cov - AS.T @ K_T
    C = 0.5 * (C + C.T)
    alpha = jax.scipy.linalg.solve_triangular(L, r, lower=True)
    logev = (-0.5 * (alpha @ alpha) - jnp.sum(jnp.log(jnp.diag(L)))
             - 0.5 * jnp.sum(live).astype(cov.dtype) * jnp.log(2 * jnp.pi))
    return m, C, logev


def mixture_condition(gm: GaussianMixture, A, y, sigma_y=0.0) -> GaussianMixture:
    """p(x | y) for x ~ gm and y = A x + sigma_y n, as a GaussianMixture (see module doc).
    A: (M, D), y: (M,). Component posterior weights are `result.weights`."""
    m, C, logev = jax.vmap(lambda mu, S: gaussian_condition(mu, S, A, y, sigma_y))(gm.means, gm.covs)
    w = jax.nn.softmax(jnp.log(gm.weights) + logev)
    return GaussianMixture(w, m, C)


def exact_posterior(prior: GaussianMixture, op: AbstractLinearOperator, y, x_shape,
                    sigma_y=0.0) -> GaussianMixture:
    """p(x | y) of data x ~ prior (one example of shape x_shape, prod = D) observed through
    `op` (y: one observation, shape op.observation_shape((1,) + x_shape)[1:], no batch axis),
    as a GaussianMixture over the flattened x. For an inpainting mask only the observed
    pixels enter (the zeros of y at unknown pixels carry no information). Runs under
    `jax.jit` (prior, op, y and sigma_y may be traced; x_shape is static)."""
    x_shape = tuple(x_shape)
    want = op.observation_shape((1,) + x_shape)[1:]
    if tuple(jnp.shape(y)) != tuple(want):
        raise ValueError(f"y must be one observation of shape {tuple(want)} (no batch axis), "
                         f"got {tuple(jnp.shape(y))}.")
    A, _ = _matrix_and_rows(op, x_shape)
    return mixture_condition(prior, A.astype(prior.means.dtype), jnp.asarray(y, prior.means.dtype).reshape(-1),
                             sigma_y)

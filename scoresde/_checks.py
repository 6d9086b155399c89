"""Input validation shared by the numerical core.

Checks run only on concrete (non-traced) values: inside `jit` the arguments are
abstract and the checks are skipped, so validation costs nothing on the hot path.
Every error names the argument, what was wrong and what to do.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp


def concrete_or_none(x):
    """Return x as a NumPy value if it is concrete, or None if it is a tracer."""
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x)
    except Exception:  # noqa: BLE001 - anything abstract is "not concrete"
        return None


def check_time(t, sde, name: str = "t", *, batch: int | None = None):
    """Raise if concrete t lies outside [sde.eps, sde.T] or has the wrong shape."""
    tc = concrete_or_none(t)
    if tc is None:
        return
    eps, T = concrete_or_none(sde.eps), concrete_or_none(sde.T)
    if tc.ndim > 1:
        raise ValueError(f"{name} must be a scalar or have shape (batch,), got shape {tc.shape}.")
    if batch is not None and tc.ndim == 1 and tc.shape[0] != batch:
        raise ValueError(f"{name} has shape {tc.shape} but the batch has {batch} examples; "
                         f"pass a scalar or shape ({batch},).")
    if not np.all(np.isfinite(tc)):
        raise ValueError(f"{name} must be finite, got {tc}.")
    if eps is None or T is None:
        return
    # A relative slack of a few float32 ulps: grids built in float32 land on eps/T.
    tol = 4 * np.finfo(np.float32).eps * max(1.0, abs(float(T)))
    if np.any(tc < eps - tol) or np.any(tc > T + tol):
        raise ValueError(
            f"{name} must lie in [eps, T] = [{float(eps):g}, {float(T):g}] of {type(sde).__name__}, "
            f"got values in [{float(tc.min()):g}, {float(tc.max()):g}]; clip it or build the SDE "
            "with a wider time range."
        )


def check_float_data(x, name: str = "x"):
    """Raise if x is not a floating-point array (integer pixels must be scaled first)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{name} must be a floating-point array, got dtype {dtype}; convert integer data "
            "with scoresde.data scaling (e.g. x / 255 * 2 - 1) before passing it."
        )


def data_batch(x, name: str = "x"):
    """x as a floating-point, batch-first array; a clear error otherwise."""
    x = jnp.asarray(x) if not hasattr(x, "dtype") else x
    check_float_data(x, name)
    check_batched(x, name)
    return x


def check_choice(value, name: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be " + " or ".join(repr(c) for c in choices) + f", got {value!r}.")


def check_batched(x, name: str = "x"):
    if x.ndim < 2:
        raise ValueError(f"{name} must be batch-first with at least 2 dimensions (batch, ...), "
                         f"got shape {x.shape}; add a batch axis with x[None].")


def check_same_shape(out, x, what: str = "score_fn(x, t)", name: str = "x"):
    if out.shape != x.shape:
        raise ValueError(f"{what} returned shape {out.shape} but {name} has shape {x.shape}; "
                         "a score function must return an array shaped like its input.")

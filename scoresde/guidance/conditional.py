"""Class-conditional scores, classifier-free guidance and classifier guidance.

Every function here maps score functions to a score function `score(x, t)`, so a
guided score plugs into every sampler of `scoresde.sampling` (and into pmap-ed
sampling) exactly like an unguided one. Labels are bound to a conditional score
`score(x, t, y)` with `with_labels`, which checks the class ids.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from scoresde._checks import concrete_or_none
from scoresde._util import bcast

Array = jax.Array


def check_labels(labels, num_classes: int, name: str = "labels", *, allow: tuple[int, ...] = ()):
    """Raise if concrete integer class ids lie outside [0, num_classes) (ids in `allow`,
    e.g. a null label, are accepted too). Traced labels are not checked."""
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    lab = concrete_or_none(labels)
    if lab is None:
        return
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"{name} must be integer class ids, got dtype {lab.dtype}.")
    bad = (lab < 0) | (lab >= num_classes)
    for a in allow:
        bad &= lab != a
    if np.any(bad):
        vals = sorted(set(np.asarray(lab)[bad].tolist()))[:5]
        extra = f" (or {list(allow)})" if allow else ""
        raise ValueError(f"{name} contains class ids {vals} outside the trained range "
                         f"[0, {num_classes}){extra}; the model knows classes 0..{num_classes - 1}.")


def with_labels(score_fn_y: Callable, labels, num_classes: int, *, name: str = "labels",
                allow: tuple[int, ...] = ()) -> Callable:
    """Bind class ids to a conditional score: `score(x, t) = score_fn_y(x, t, labels)`.

    labels: an int scalar (one class for the whole batch) or shape (B,) (one per
    example; the batch of x must then be B). Ids outside [0, num_classes) raise.
    """
    check_labels(labels, num_classes, name, allow=allow)
    labels = jnp.asarray(labels)
    if labels.ndim > 1:
        raise ValueError(f"{name} must be a scalar or have shape (batch,), got {labels.shape}.")

    def score(x, t):
        if labels.ndim == 1 and labels.shape[0] != x.shape[0]:
            raise ValueError(f"{name} has {labels.shape[0]} entries but x has a batch of "
                             f"{x.shape[0]}; pass one label per example or a scalar.")
        return score_fn_y(x, t, jnp.broadcast_to(labels, x.shape[:1]))

    return score


def cfg_score(score_cond: Callable, score_uncond: Callable, w) -> Callable:
    """Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", eq. 6):

        s_w(x, t) = (1 + w) s(x, t | y) - w s(x, t | null).

    Convention: w is the *extra* weight of Ho & Salimans; w = 0 is plain conditional
    sampling, w > 0 sharpens towards the class. (The "guidance scale" of Imagen /
    Stable Diffusion is gamma = 1 + w.) Since s(x|y) - s(x) = grad log p_t(y | x), s_w is
    the score of p_t(x) p_t(y | x)^(1 + w) up to normalisation, i.e. classifier guidance
    with the implicit classifier. Costs 2 score evaluations per call.
    """
    def score(x, t):
        return (1.0 + w) * score_cond(x, t) - w * score_uncond(x, t)

    return score


def classifier_free_guidance(score_fn_y: Callable, labels, w, *, num_classes: int,
                             null_label: int | None = None) -> Callable:
    """`cfg_score` for a network trained with label dropout: the unconditional score is the
    same network at the null label (default `num_classes`, the extra embedding row used by
    label dropout). Class ids outside [0, num_classes) raise a ValueError."""
    null = num_classes if null_label is None else null_label
    cond = with_labels(score_fn_y, labels, num_classes)
    uncond_labels = jnp.full(jnp.shape(labels), null, jnp.int32)

    def uncond(x, t):
        return score_fn_y(x, t, jnp.broadcast_to(uncond_labels, x.shape[:1]))

    return cfg_score(cond, uncond, w)


def classifier_guided_score(score_fn: Callable, log_prob_fn: Callable, scale=1.0) -> Callable:
    """Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image
    Synthesis", Alg. 1-2; Song et al. 2021 Sec. 5, eq. 14):

        s(x, t | y) = s(x, t) + scale * grad_x log p_t(y | x),

    log_prob_fn(x, t) -> (B,): log-probability of the requested class under a
    noise-conditional classifier at time t (bind labels first, e.g. with a lambda).
    scale = 1 gives the exact conditional score if the classifier is exact (Bayes);
    scale > 1 samples p_t(x) p_t(y | x)^scale. Examples must be independent in
    log_prob_fn (the gradient of the batch sum is the per-example gradient).
    """
    def score(x, t):
        g = jax.grad(lambda v: jnp.sum(log_prob_fn(v, t)))(x)
        return score_fn(x, t) + bcast(jnp.asarray(scale, x.dtype), x) * g

    return score

"""Class-conditional scores, classifier-free guidance and classifier guidance.

Every function here maps score functions to a guided score `score(x, t, cond)`, so a
guided score plugs into every sampler of `scoresde.sampling` (and into pmap-ed sampling)
exactly like an unguided one, with the labels (and per-example guidance weights) passed
as conditioning:

    sample(sampler, classifier_free_guidance(net_score, w=2.0, num_classes=10), sde, key,
           x_T, cond=labels)                                   # one weight for all
    sample(sampler, classifier_free_guidance(net_score, num_classes=10), sde, key, x_T,
           cond=(labels, w))                                   # w of shape (B,)

Conditioning travels as an argument (never a closure over batch-shaped arrays), so the
samplers that solve each example on its own (the diffrax ones) slice it per example.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from scoresde._checks import concrete_or_none
from scoresde._types import Array, PyTree, ScoreFn
from scoresde._util import bcast, call_score


def check_labels(labels, num_classes: int, name: str = "labels", *, allow: tuple[int, ...] = ()):
    """Raise if concrete integer class ids lie outside [0, num_classes) (ids in `allow`,
    e.g. a null label, are accepted too). Traced labels (inside jit or a sampler's loop)
    are not checked: call this on the labels before sampling."""
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


def _weight_and_cond(w, cond, who: str):
    """(guidance weight, conditioning of the conditional score): w bound at construction
    and cond the conditioning itself, or w=None and cond = (conditioning, w)."""
    if w is not None:
        return w, cond
    if not (isinstance(cond, tuple) and len(cond) == 2):
        raise ValueError(f"{who} was built without a guidance weight w, so cond must be the pair "
                         f"(labels, w) with w a scalar or of shape (batch,) (one weight per example); "
                         f"got {type(cond).__name__}. Or bind one weight for all: {who}(..., w=2.0).")
    return cond[1], cond[0]


def _combine(w, s_cond: Array, s_uncond: Array) -> Array:
    w = jnp.asarray(w, s_cond.dtype)
    if w.ndim > 1 or (w.ndim == 1 and w.shape[0] != s_cond.shape[0]):
        raise ValueError(f"the guidance weight w must be a scalar or have shape (batch,) = "
                         f"({s_cond.shape[0]},), one weight per example; got shape {w.shape}.")
    w = bcast(w, s_cond)
    return (1.0 + w) * s_cond - w * s_uncond


def cfg_score(score_cond: ScoreFn, score_uncond: ScoreFn, w=None) -> ScoreFn:
    """Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", eq. 6):

        s_w(x, t | c) = (1 + w) s(x, t | c) - w s(x, t | null),

    returned as `score(x, t, cond)`: score_cond(x, t, c) is the conditional score and
    score_uncond(x, t) the unconditional one. With w given here (one scalar for every
    example) cond is c; with w=None, cond is the pair (c, w) and w may differ per example
    (a scalar or shape (batch,)).

    Convention: w is the *extra* weight of Ho & Salimans; w = 0 is plain conditional
    sampling, w > 0 sharpens towards the class. (The "guidance scale" of Imagen /
    Stable Diffusion is gamma = 1 + w.) Since s(x|c) - s(x) = grad log p_t(c | x), s_w is
    the score of p_t(x) p_t(c | x)^(1 + w) up to normalisation, i.e. classifier guidance
    with the implicit classifier. Costs 2 score evaluations per call.
    """
    def score(x, t, cond):
        wc, c = _weight_and_cond(w, cond, "cfg_score")
        return _combine(wc, score_cond(x, t, c), score_uncond(x, t))

    return score


def classifier_free_guidance(score_fn_y: ScoreFn, w=None, *, num_classes: int,
                             null_label: Optional[int] = None) -> ScoreFn:
    """`cfg_score` for a network trained with label dropout: `score_fn_y(x, t, labels)` is
    the conditional score and the unconditional one is the same network at the null
    label (default `num_classes`, the extra embedding row used by label dropout).

    Returns `score(x, t, cond)` with cond = labels (shape (batch,) int, or a scalar when
    called directly) if w is given here, or cond = (labels, w) with one weight per example
    if w is None. Concrete labels outside [0, num_classes) raise a ValueError (traced
    ones cannot be checked: use `check_labels` before sampling)."""
    null = num_classes if null_label is None else null_label
    if not isinstance(null, (int, np.integer)):
        raise ValueError(f"null_label must be an integer class id, got {null_label!r}.")

    def score(x, t, cond):
        wc, labels = _weight_and_cond(w, cond, "classifier_free_guidance")
        check_labels(labels, num_classes)
        labels = jnp.asarray(labels)
        if labels.ndim > 1 or (labels.ndim == 1 and labels.shape[0] != x.shape[0]):
            raise ValueError(f"labels must be a scalar or have shape (batch,) = ({x.shape[0]},), one "
                             f"class id per example; got shape {labels.shape}.")
        labels = jnp.broadcast_to(labels, x.shape[:1])
        return _combine(wc, score_fn_y(x, t, labels), score_fn_y(x, t, jnp.full_like(labels, null)))

    return score


def classifier_guided_score(score_fn: ScoreFn, log_prob_fn: Callable, scale=1.0) -> ScoreFn:
    """Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image
    Synthesis", Alg. 1-2; Song et al. 2021 Sec. 5, eq. 14):

        s(x, t | y) = s(x, t) + scale * grad_x log p_t(y | x),

    returned as `score(x, t, cond=None)`. log_prob_fn(x, t, cond) -> (B,): log-probability
    of the requested class under a noise-conditional classifier at time t, with cond the
    per-example conditioning (e.g. the labels) passed through from the sampler
    (log_prob_fn(x, t) when cond is None). scale: a scalar, or shape (batch,) when called
    directly. scale = 1 gives the exact conditional score if the classifier is exact
    (Bayes); scale > 1 samples p_t(x) p_t(y | x)^scale. Examples must be independent in
    log_prob_fn (the gradient of the batch sum is the per-example gradient).
    """
    def score(x, t, cond: PyTree = None):
        g = jax.grad(lambda v: jnp.sum(call_score(log_prob_fn, v, t, cond)))(x)
        return score_fn(x, t) + bcast(jnp.asarray(scale, x.dtype), x) * g

    return score

"""Type aliases shared across the package (private module, public names)."""

from __future__ import annotations

from typing import Any, Callable

import jax

Array = jax.Array
# score(x, t) -> array like x, or score(x, t, cond) when conditioning is passed; x is
# batch-first, t a scalar or shape (batch,), cond any pytree with a leading batch axis.
ScoreFn = Callable[..., Array]
PyTree = Any

__all__ = ["Array", "ScoreFn", "PyTree"]

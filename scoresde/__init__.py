"""scoresde: continuous-time score-based generative modelling in JAX.

The numerical core (sde, parameterization, analytic, losses, sampling, likelihood)
takes score functions `score(x, t)` (or `score(x, t, cond)` with conditioning) and
arrays; it knows nothing of Flax, optax, files or devices, and is re-exported here
together with `scoresde.guidance` (guided sampling, inverse problems) and
`scoresde.consistency` (consistency models). Each sub-module
lists its public names in `__all__`; this package re-exports exactly those. The rest is
imported explicitly: `scoresde.models` (Flax networks), `scoresde.data` (TFDS
pipelines), `scoresde.training`, `scoresde.metrics` and `scoresde.parallel` (the only
module that knows about devices).
"""

from importlib import metadata as _metadata

from scoresde import analytic, consistency, guidance, likelihood, losses, parameterization, sampling, sde
from scoresde.sde import *  # noqa: F401,F403
from scoresde.parameterization import *  # noqa: F401,F403
from scoresde.analytic import *  # noqa: F401,F403
from scoresde.losses import *  # noqa: F401,F403
from scoresde.sampling import *  # noqa: F401,F403
from scoresde.likelihood import *  # noqa: F401,F403
from scoresde.guidance import *  # noqa: F401,F403
from scoresde.consistency import *  # noqa: F401,F403

try:
    __version__ = _metadata.version("scoresde")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [*sde.__all__, *parameterization.__all__, *analytic.__all__, *losses.__all__, *sampling.__all__,
           *likelihood.__all__, *guidance.__all__, *consistency.__all__, "__version__"]

"""Named random streams of a partition.

Every random choice comes from its own generator derived from ``(seed, stream, *keys)`` through a
:class:`numpy.random.SeedSequence`, so one step never shifts another's draws (e.g. the number of
Dirichlet retries does not change which clients lose a modality) and nothing touches global state.
"""

from __future__ import annotations

import numpy as np

_STREAMS = {"split": 0, "missing": 1, "merge": 2}


def stream_rng(seed: int, stream: str, *keys: int) -> np.random.Generator:
    """The generator of ``stream`` (``split``, ``missing`` or ``merge``) for ``seed`` and ``keys``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAMS[stream], *keys)))

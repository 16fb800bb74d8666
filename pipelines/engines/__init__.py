"""Training engines: what drives the rounds of a :class:`pipelines.training.session.TrainingSession`.

Each engine is a module exposing ``run(session, progress) -> None``; :data:`ENGINES` maps the
config's ``engine`` value to it.
"""

from __future__ import annotations

import importlib
from typing import Callable

#: engine name -> module with ``run(session, progress)``
ENGINES: dict[str, str] = {
    "local": "pipelines.engines.local",
    "flower": "pipelines.engines.flower.run",
}


def get_engine(name: str) -> Callable:
    """The ``run`` function of engine ``name`` (a key of :data:`ENGINES`)."""
    return importlib.import_module(ENGINES[name]).run

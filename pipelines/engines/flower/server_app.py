"""cmi's Flower ServerApp: continues the run directory named in the run config with
:class:`~pipelines.engines.flower.strategy.CmiStrategy`.

`cmi train --engine flower` creates the run directory (config, manifest) before it submits the
Flower run; the ServerApp opens it like ``cmi train --resume`` does (so a Flower run also resumes
from the last checkpoint), trains the remaining rounds and writes everything the local engine
writes. The message of an error that stops it is also left in ``<run>/flower/serverapp-error.txt``
for the command that launched the run.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from pipelines.artifacts import Workspace, atomic_write_text
from pipelines.errors import CmiError
from pipelines.training.session import resume_session

from pipelines.engines.flower.protocol import FLOWER_DIR, SERVER_ERROR, RunSettings
from pipelines.engines.flower.strategy import CmiStrategy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = RunSettings.from_run_config(context.run_config)
    workspace = Workspace(settings.workspace)
    error_file = Path(settings.run) / FLOWER_DIR / SERVER_ERROR
    try:
        session = resume_session(workspace, settings.run)
        strategy = CmiStrategy(session, min_clients=settings.min_clients, round_timeout=settings.round_timeout,
                               nodes_timeout=settings.nodes_timeout)
        strategy.run(grid)
    except Exception as exc:
        atomic_write_text(error_file, str(exc) if isinstance(exc, CmiError) else f"{type(exc).__name__}: {exc}")
        raise

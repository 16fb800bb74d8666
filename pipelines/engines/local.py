"""The local engine: simulates every client in this process, one after the other, on one device.

All clients share one in-memory train pool; a simulated client is its index array, so memory
does not grow with the number of clients.
"""

from __future__ import annotations

import time

from pipelines.training.progress import QuietProgress
from pipelines.training.session import TrainingSession


def run(session: TrainingSession, progress: QuietProgress) -> None:
    """Train ``session`` from its next round to its last, checkpointing after every round."""
    progress.start(session.config.rounds, session.rounds_done)
    try:
        with session.guard():
            for round_ in range(session.next_round, session.config.rounds + 1):
                started = time.perf_counter()
                clients = session.plan_round(round_)
                progress.round_started(round_, clients)
                updates = []
                for cid in clients:
                    progress.client_started(cid)
                    update = session.client_update(round_, cid)
                    progress.client_finished(update)
                    updates.append(update)
                progress.round_finished(session.finish_round(round_, updates, started))
    finally:
        progress.close()

"""Start a training run in this process and SIGKILL it at a chosen point (the resume test's victim).

    python -m tests.training.interrupted_run WORKSPACE NAME CONFIG_JSON ROUND WHERE

WHERE: ``after-checkpoint`` kills once round ROUND is checkpointed; ``before-checkpoint`` kills
after round ROUND's metrics line is written but before its checkpoint (the metrics log is then
ahead of the checkpoint, which a resume must repair).
"""

from __future__ import annotations

import json
import os
import signal
import sys

from pipelines.artifacts import Workspace
from pipelines.training.config import resolve_config
from pipelines.training.progress import QuietProgress
from pipelines.training.session import open_session, run_engine


def main(root: str, name: str, config: str, kill_round: int, where: str) -> None:
    session = open_session(Workspace(root), resolve_config(json.loads(config)), name=name)
    progress = QuietProgress()
    if where == "after-checkpoint":
        def round_finished(result) -> None:
            if result.round == kill_round:
                os.kill(os.getpid(), signal.SIGKILL)
        progress.round_finished = round_finished
    else:
        save = session.run.save_checkpoint

        def save_or_die(ckpt) -> None:
            if ckpt.round == kill_round:
                os.kill(os.getpid(), signal.SIGKILL)
            save(ckpt)
        session.run.save_checkpoint = save_or_die
    run_engine(session, progress, threads=1)   # recorded in the manifest: `--resume` continues on 1 thread


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])

"""The worker side of `cmi experiment run`, in this process (no training)."""

import queue

import pytest

from pipelines.experiments.runner import CellJob, _train_cell
from pipelines.experiments.spec import build_spec, expand
from tests.training.helpers import QUICK, partitioned_workspace


@pytest.mark.parametrize("engine", ["local", "flower"])
def test_a_cell_trains_its_run_on_its_engine_with_its_threads(tmp_path, monkeypatch, engine):
    import pipelines.training.session as session_module

    ws = partitioned_workspace(tmp_path)
    (planned,) = expand(build_spec(name="w", methods=["fedavg"], seeds=[3], settings={**QUICK, "engine": engine}), ws)
    calls = []
    monkeypatch.setattr(session_module, "run_engine", lambda session, progress, **kw: calls.append((session, kw)))
    job = CellJob(0, str(ws.root), planned.cell.run, planned.cell.partition, planned.config.to_dict(), 2, False,
                  str(tmp_path / "log"))
    status = _train_cell(job, queue.Queue())
    (session, kwargs), = calls
    assert session.run.name == "w-fedavg-s3" and session.config.engine == engine and session.config.seed == 3
    assert kwargs["threads"] == 2
    if engine == "flower":
        from pipelines.engines.flower.run import FlowerOptions

        assert kwargs["flower_options"] == FlowerOptions()
    else:
        assert kwargs["flower_options"] is None
    assert status == "running"    # the stand-in engine trained nothing

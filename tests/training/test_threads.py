import os
import subprocess
import sys
import time

import pytest
import torch

from pipelines.errors import CmiError
from pipelines.training.threads import (
    THREADS_ENV, available_cores, busy_cores, competing_load, resolve_threads, split_cores, use_threads,
)


@pytest.mark.parametrize("jobs, cores, expected", [
    (1, 2, (1, 2)), (2, 2, (2, 1)), (4, 2, (2, 1)), (2, 8, (2, 4)), (3, 8, (3, 2)), (5, 16, (5, 3)), (1, 1, (1, 1)),
])
def test_jobs_split_the_cores_evenly_and_never_oversubscribe(jobs, cores, expected):
    workers, threads = split_cores(jobs, cores)
    assert (workers, threads) == expected
    assert workers * threads <= cores


def test_zero_jobs_is_an_error():
    with pytest.raises(CmiError, match="--jobs must be at least 1"):
        split_cores(0, 4)


def test_threads_come_from_the_option_then_the_environment_then_the_default_then_the_cores(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert available_cores() == len(os.sched_getaffinity(0))
    assert resolve_threads(None) == available_cores()
    assert resolve_threads(None, default=3) == 3
    monkeypatch.setenv(THREADS_ENV, "2")
    assert resolve_threads(None, default=3) == 2
    assert resolve_threads(5) == 5
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(CmiError, match="CMI_THREADS='many' is not a positive integer"):
        resolve_threads(None)


def test_the_load_warning_appears_only_when_other_processes_hold_the_needed_cores():
    assert competing_load(2, 2, load=0.3) is None
    assert competing_load(1, 2, load=0.9) is None           # one core is free for the one thread
    assert "other processes keep 1.0 of 2 core(s) busy" in competing_load(2, 2, load=1.0)
    assert competing_load(1, 2, load=2.0) is not None
    assert competing_load(4, 16, load=11.5) is None


def test_use_threads_restores_torch_and_the_environment():
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    with use_threads(before + 1):
        assert torch.get_num_threads() == before + 1 and os.environ["OMP_NUM_THREADS"] == str(before + 1)
    assert torch.get_num_threads() == before and os.environ.get("OMP_NUM_THREADS") == env


def test_busy_cores_sees_a_process_spinning_now():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores() >= 1.0
    finally:
        spinner.kill()
        spinner.wait()

"""Interrupting `cmi prepare` (Ctrl-C, kill -9) and running it again resumes without redoing
finished shards, and ends with the same shards as an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.artifacts import Workspace
from pipelines.prepare import FeatureOptions, RunOptions, build_listing, prepare_listing
from tests.prepare.conftest import CLIPS

REPO = Path(__file__).resolve().parents[2]
SHARD_SIZE = 2
FEATURES = FeatureOptions(image_size=32, frames=2)
CLI_FEATURES = ["--image-size", "32", "--frames", "2"]


def start_prepare(workspace: Path, raw: Path, workers: int = 1) -> subprocess.Popen:
    command = [sys.executable, "-m", "cmi_cli", "-w", str(workspace), "prepare", "synthetic", "--root", str(raw),
               "--clips", str(CLIPS), "--shard-size", str(SHARD_SIZE), "--workers", str(workers), "-q", *CLI_FEATURES]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_shards(process: subprocess.Popen, shards: Path, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while len(list(shards.glob("part-*.parquet"))) < count:
        if process.poll() is not None:
            raise AssertionError(f"prepare ended early: {process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("no shard appeared in time")
        time.sleep(0.01)


def stats(shards: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards.glob("part-*.parquet")}


def prepare_in_process(workspace: Path, raw: Path):
    ws = Workspace(workspace)
    listing = build_listing(ws, "synthetic", raw, {"clips": CLIPS})
    return prepare_listing(ws, listing, FEATURES, RunOptions(shard_size=SHARD_SIZE))


@pytest.mark.slow
def test_ctrl_c_then_kill_9_then_resume(tmp_path, raw_copy):
    workspace = tmp_path / "ws"
    shards = workspace / "datasets" / "synthetic" / "shards"
    total = CLIPS // SHARD_SIZE

    process = start_prepare(workspace, raw_copy)
    wait_for_shards(process, shards, 1)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 130 and "interrupted" in output
    after_ctrl_c = stats(shards)
    assert 1 <= len(after_ctrl_c) < total

    process = start_prepare(workspace, raw_copy)
    wait_for_shards(process, shards, len(after_ctrl_c) + 1)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    after_kill = stats(shards)
    assert len(after_kill) < total, "the run finished before it was killed; nothing left to resume"
    assert {k: after_kill[k] for k in after_ctrl_c} == after_ctrl_c  # the second run skipped them

    result = prepare_in_process(workspace, raw_copy)
    assert result.shards_skipped == len(after_kill)
    final = stats(shards)
    assert {k: final[k] for k in after_kill} == after_kill and len(final) == total
    assert not list(shards.glob(".tmp-*"))

    reference = prepare_in_process(tmp_path / "uninterrupted", raw_copy).artifact
    for rel in reference.manifest["shards"] + ["rejects.parquet"]:
        assert (result.artifact.path / rel).read_bytes() == (reference.path / rel).read_bytes()
    assert result.artifact.manifest["checksums"] == reference.manifest["checksums"]


def child_pids(pid: int) -> set[int]:
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the worker processes")
def test_workers_exit_when_prepare_is_killed(tmp_path, raw_copy):
    workspace = tmp_path / "ws"
    process = start_prepare(workspace, raw_copy, workers=2)
    wait_for_shards(process, workspace / "datasets" / "synthetic" / "shards", 1)
    workers = child_pids(process.pid)
    assert workers, "no worker processes found"
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    deadline = time.monotonic() + 30  # the workers check their parent once a second
    while living(workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = living(workers)
    for pid in alive:  # never leave processes behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not alive, "worker processes outlived the killed prepare"


def living(pids: set[int]) -> list[int]:
    """The processes among ``pids`` that still run (not gone, not zombies)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive

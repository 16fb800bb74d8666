"""How many torch threads training uses: ``--threads``, ``CMI_THREADS`` or the cores this process
may run on, split between parallel runs so that their threads never outnumber the cores.

Torch's intra-op threads spin while they wait: two trainings whose threads together exceed the
cores do not share them, they slow each other down many times over (rounds 20-40x slower on a
2-core machine). Float results also depend on the thread count, so runs that are compared
should use the same one; run manifests record it.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipelines.errors import CmiError

THREADS_ENV = "CMI_THREADS"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's or `taskset`'s
    share; the machine's count where the platform has no affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_threads(requested: int | None, default: int | None = None) -> int:
    """The torch thread count of one run: ``requested`` (``--threads``), else ``CMI_THREADS``,
    else ``default`` (a resumed run's recorded count, so that it continues with the floats it
    started with), else :func:`available_cores`. A bad ``CMI_THREADS`` is a CmiError naming the
    variable."""
    if requested is not None:
        if requested < 1:
            raise CmiError(f"--threads must be at least 1, got {requested}.")
        return requested
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return default or available_cores()
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise CmiError(f"{THREADS_ENV}={raw!r} is not a positive integer; set it to a thread count or unset it.")
    return value


def split_cores(jobs: int, cores: int) -> tuple[int, int]:
    """``(workers, threads per worker)`` for ``jobs`` parallel runs on ``cores`` cores: at most
    one worker per core, every worker the same number of threads (so their results compare),
    and ``workers * threads <= cores``. E.g. 2 jobs on 8 cores -> (2, 4); 3 on 8 -> (3, 2);
    4 on 2 -> (2, 1)."""
    if jobs < 1:
        raise CmiError(f"--jobs must be at least 1, got {jobs}.")
    workers = min(jobs, max(1, cores))
    return workers, max(1, cores // workers)


def busy_cores(samples: int = 5, interval: float = 0.05) -> float | None:
    """How many cores other processes keep busy right now: the kernel's count of runnable tasks
    (``/proc/loadavg``) minus this process, the least of ``samples`` readings ``interval`` s apart
    (a passing spike is not a competitor). Unlike the load average it does not lag, so work that
    just finished (the `cmi prepare` before a `cmi train`) does not count. Where there is no
    ``/proc/loadavg``: the 1-minute load average; None where neither exists."""
    readings = []
    for i in range(samples):
        try:
            fields = Path("/proc/loadavg").read_text().split()
        except OSError:
            break
        readings.append(int(fields[3].split("/")[0]) - 1)
        if i + 1 < samples:
            time.sleep(interval)
    if readings:
        return float(min(readings))
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def competing_load(threads: int, cores: int, load: float | None = None) -> str | None:
    """A warning when other processes (``load`` cores' worth, default :func:`busy_cores`) run on
    the cores that ``threads`` new threads need: at least one core's worth beyond the
    ``cores - threads`` left free. None when the cores look free."""
    if load is None:
        load = busy_cores()
        if load is None:
            return None
    if load < cores - threads + 1:
        return None
    return (f"other processes keep {load:.1f} of {cores} core(s) busy, the cores that {threads} training "
            f"thread(s) need, so rounds will be slower (parallel trainings that oversubscribe the cores can be "
            f"many times slower). Wait for them to finish, or lower --threads.")


_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def use_threads(threads: int) -> Iterator[None]:
    """Within the block, torch and the OpenMP/MKL libraries of processes started in it use
    ``threads`` threads; the previous count and environment are restored after."""
    import torch  # late: importing this module must stay cheap

    before, env = torch.get_num_threads(), {var: os.environ.get(var) for var in _THREAD_VARS}
    os.environ.update({var: str(threads) for var in _THREAD_VARS})
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        for var, value in env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value

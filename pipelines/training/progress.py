"""What an engine shows while it trains: a rich rounds bar with the current client, its loss and
the last accuracies, and one line per evaluated round; or nothing (``--quiet``). The same
interface feeds a TensorBoard log (``--log tensorboard``) and an experiment's grid display in
another process (:class:`QueueProgress`); :class:`FanOut` combines several."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipelines.errors import CmiError
from pipelines.fl import ClientUpdate
from pipelines.training.run_dir import metrics_table

TENSORBOARD_DIR = "tensorboard"


class QuietProgress:
    """The progress interface engines call; shows nothing."""

    def start(self, total_rounds: int, rounds_done: int) -> None: ...

    def round_started(self, round_: int, clients: Sequence[int]) -> None: ...

    def client_started(self, cid: int) -> None: ...

    def client_finished(self, update: ClientUpdate) -> None: ...

    def round_finished(self, result) -> None: ...

    def close(self) -> None: ...


def format_accuracies(block: dict | None, paths: Sequence[str]) -> str:
    """``fused 0.612 audio_only 0.553 ...`` from a metrics split block (``-`` where undefined)."""
    if not block:
        return ""
    acc = block["accuracy"]
    return " ".join(f"{p} {acc[p]:.3f}" if acc.get(p) is not None else f"{p} -" for p in paths)


class RichProgress(QuietProgress):
    """Rounds bar with the current client, its loss and the last test accuracy of the first shown
    path; a log line per evaluated round (loss, test accuracy of every shown path) and per round
    with skipped clients."""

    def __init__(self, console: Console, paths: Sequence[str]):
        self.console, self.paths = console, list(paths)
        self.bar = Progress(
            TextColumn("[bold]round[/] {task.completed:>.0f}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            transient=False,
        )
        self.task = None
        self.round_clients: list[int] = []
        self.done_in_round = 0
        self.last_acc = ""

    def start(self, total_rounds: int, rounds_done: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task("rounds", total=total_rounds, completed=rounds_done, status="")

    def _status(self, text: str) -> None:
        self.bar.update(self.task, status=f"{text}  [dim]{self.last_acc}[/]" if text else f"[dim]{self.last_acc}[/]")

    def round_started(self, round_: int, clients: Sequence[int]) -> None:
        self.round_clients, self.done_in_round = list(clients), 0

    def client_started(self, cid: int) -> None:
        self._status(f"client {cid} ({self.done_in_round + 1}/{len(self.round_clients)})")

    def client_finished(self, update: ClientUpdate) -> None:
        self.done_in_round += 1
        loss = update.metrics.get("loss")
        self._status(f"client {update.cid} loss {loss:.3f}" if loss is not None else f"client {update.cid}")

    def round_finished(self, result) -> None:
        if result.skipped:
            self.console.print(f"round {result.round}: client(s) {result.skipped} skipped (no data for this method)")
        if result.record is not None:
            rec = result.record
            self.last_acc = format_accuracies(rec["test"], self.paths[:1])
            loss = f"loss {rec['train_loss']:.3f}" if rec["train_loss"] is not None else "loss -"
            self.console.print(f"round {result.round:>4}  {rec['time_s']:5.1f} s  {loss}  "
                               f"test {format_accuracies(rec['test'], self.paths)}")
        self.bar.update(self.task, completed=result.round)
        self._status("")

    def close(self) -> None:
        self.bar.stop()


class FanOut(QuietProgress):
    """Passes every call on to each of ``targets``, in order."""

    def __init__(self, *targets: QuietProgress):
        self.targets = targets

    def start(self, total_rounds: int, rounds_done: int) -> None:
        for t in self.targets:
            t.start(total_rounds, rounds_done)

    def round_started(self, round_: int, clients: Sequence[int]) -> None:
        for t in self.targets:
            t.round_started(round_, clients)

    def client_started(self, cid: int) -> None:
        for t in self.targets:
            t.client_started(cid)

    def client_finished(self, update: ClientUpdate) -> None:
        for t in self.targets:
            t.client_finished(update)

    def round_finished(self, result) -> None:
        for t in self.targets:
            t.round_finished(result)

    def close(self) -> None:
        for t in self.targets:
            t.close()


def require_tensorboard() -> None:
    """A CmiError naming the extra to install when TensorBoard logging is unavailable."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs the tensorboard package)
    except ImportError:
        raise CmiError('--log tensorboard needs the tensorboard package: pip install "cmi[tensorboard]" (from a '
                       'checkout: pip install -c constraints.txt -e ".[tensorboard]"), or drop --log.') from None


class TensorBoardLog(QuietProgress):
    """Writes every evaluated round's numbers (the columns of ``metrics.csv``, dots as ``/``:
    ``test/accuracy/fused``) as TensorBoard scalars with the round as step, into ``directory``
    (a run's ``tensorboard/``). Call :func:`require_tensorboard` first."""

    def __init__(self, directory: Path, classes: Sequence[str] | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(directory))
        self.classes = list(classes) if classes is not None else None

    def round_finished(self, result) -> None:
        if result.record is None:
            return
        _, (row,) = metrics_table([result.record], self.classes)
        for key, value in row.items():
            if key != "round" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key.replace(".", "/"), value, result.round)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class QueueProgress(QuietProgress):
    """Reports a run's rounds to another process through ``queue`` as tuples tagged with
    ``key`` (an experiment cell's index): ``("start", key, rounds_done, total_rounds)`` and,
    per finished round, ``("round", key, round, test accuracy per path or None)``."""

    def __init__(self, queue: Any, key: int):
        self.queue, self.key = queue, key

    def start(self, total_rounds: int, rounds_done: int) -> None:
        self.queue.put(("start", self.key, rounds_done, total_rounds))

    def round_finished(self, result) -> None:
        test = (result.record or {}).get("test")
        self.queue.put(("round", self.key, result.round, dict(test["accuracy"]) if test else None))

"""The progress display of a whole experiment: one bar for the grid (cells done of all, with the
counts of running, failed and skipped cells), one bar of rounds per running cell, and a line per
finished cell."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from pipelines.experiments.record import FINAL_STATUSES, Cell

_MARKS = {"complete": "[green]done[/]", "failed": "[red]failed[/]", "diverged": "[red]diverged[/]",
          "interrupted": "[yellow]stopped[/]"}


class GridDisplay:
    """See the module docstring; implements :class:`~pipelines.experiments.runner.Display`."""

    def __init__(self, console: Console, path: str = "fused"):
        self.console, self.path = console, path
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"), console=console, transient=False,
        )
        self.cells: list[Cell] = []
        self.grid: TaskID | None = None
        self.tasks: dict[int, TaskID] = {}
        self.skipped = 0

    def start(self, cells: Sequence[Cell], workers: int, threads: int) -> None:
        self.cells = list(cells)
        self.skipped = sum(c.status == "complete" for c in self.cells)
        todo = sum(c.status == "pending" for c in self.cells)
        self.console.print(f"{len(self.cells)} cell(s): {self.skipped} already complete (skipped), {todo} to train, "
                           f"{workers} at a time with {threads} torch thread(s) each")
        for cell in self.cells:
            if cell.status == "failed":
                self.console.print(f"  {_MARKS['failed']}  {escape(cell.run)}: {escape(cell.error or '')}")
        self.bar.start()
        self.grid = self.bar.add_task("[bold]cells[/]", total=len(self.cells), info="")
        self._update_grid()

    def cell_started(self, index: int) -> None:
        self.cells[index] = replace(self.cells[index], status="running")
        self.tasks[index] = self.bar.add_task(f"  {escape(self.cells[index].run)}", total=None, info="starting")
        self._update_grid()

    def cell_rounds(self, index: int, rounds_done: int, total: int | None, accuracy: dict[str, Any] | None) -> None:
        task = self.tasks.get(index)
        if task is None:
            return
        info = "" if accuracy is None else _accuracy_text(accuracy, self.path)
        fields: dict[str, Any] = {"completed": rounds_done}
        if total is not None:
            fields["total"] = total
        if info or total is not None:
            fields["info"] = info or "training"
        self.bar.update(task, **fields)

    def cell_finished(self, index: int, cell: Cell) -> None:
        self.cells[index] = cell
        task = self.tasks.pop(index, None)
        if task is not None:
            self.bar.remove_task(task)
        detail = f": {escape(cell.error)}" if cell.error else ""
        self.bar.console.print(f"  {_MARKS.get(cell.status, cell.status)}  {escape(cell.run)}{detail}")
        self._update_grid()

    def close(self) -> None:
        self.bar.stop()

    def _update_grid(self) -> None:
        counts = {s: sum(c.status == s for c in self.cells) for s in ("running", "failed", "diverged")}
        done = sum(c.status in FINAL_STATUSES for c in self.cells)
        info = (f"{counts['running']} running · {counts['failed'] + counts['diverged']} failed · "
                f"{self.skipped} skipped")
        self.bar.update(self.grid, completed=done, info=info)


def _accuracy_text(accuracy: dict[str, Any], path: str) -> str:
    value = accuracy.get(path)
    return f"test {path} {value:.3f}" if value is not None else ""

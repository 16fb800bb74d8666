"""What every command shares: the console, the workspace option, error reporting, option choices
read from cmi's registries, and help for a command group called without a command."""

from __future__ import annotations

import functools
from typing import Callable, Iterable, TypeVar

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipelines.artifacts import Workspace
from pipelines.errors import CmiError

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable)


def workspace(ctx: typer.Context) -> Workspace:
    """The workspace chosen by the global --workspace option (or CMI_WORKSPACE)."""
    root = (ctx.obj or {}).get("workspace") if ctx is not None else None
    return Workspace(root)


def user_errors(fn: F) -> F:
    """Turn a CmiError into a red one-line message and exit code 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CmiError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted: finished work is kept; run the same command again to resume.[/]")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


class RegistryChoice(click.Choice):
    """A ``click.Choice`` (listed in ``--help``, anything else a usage error) whose choices come
    from ``load()`` on first use: cmi's registries (methods, encoders...) import torch, which
    `cmi` must not load for every command."""

    def __init__(self, load: Callable[[], Iterable[str]]):
        self._load: Callable[[], Iterable[str]] | None = load
        self._choices: tuple[str, ...] = ()
        super().__init__((), case_sensitive=True)

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        if self._load is not None:
            self._choices, self._load = tuple(self._load()), None
        return self._choices

    @choices.setter
    def choices(self, value: Iterable[str]) -> None:  # click.Choice.__init__ assigns its argument
        self._choices = tuple(value)

    def get_metavar(self, *args, **kwargs) -> str:
        """``[a | b | c]``: spaced, so that a long list (the methods) wraps between choices in the
        help's options table instead of inside a name."""
        return "[" + " | ".join(self.choices) + "]"


def help_without_command(ctx: typer.Context) -> None:
    """In a command group's callback (``invoke_without_command=True``): with no command given
    (``cmi``, ``cmi experiment``) print the group's help and exit 0."""
    if ctx.invoked_subcommand is None:
        text = ctx.get_help()   # typer's rich help prints itself and returns ""
        if text:
            typer.echo(text)
        raise typer.Exit()


def print_table(table: Table) -> None:
    """Print ``table`` on stdout, never cut: at the terminal's width on a terminal, else (a file,
    a pipe, a CI log) as wide as the table needs."""
    if console.is_terminal:
        console.print(table)
    else:
        needed = console.measure(table, options=console.options.update_width(100_000)).maximum
        Console(highlight=False, width=max(80, needed)).print(table)


def _methods() -> Iterable[str]:
    from pipelines.fl import METHODS

    return METHODS


def _engines() -> Iterable[str]:
    from pipelines.engines import ENGINES

    return ENGINES


def _devices() -> Iterable[str]:
    from pipelines.training.config import DEVICES

    return DEVICES


#: the --method, --engine and --device choices of `cmi train` and `cmi experiment run`
METHOD_CHOICE = RegistryChoice(_methods)
ENGINE_CHOICE = RegistryChoice(_engines)
DEVICE_CHOICE = RegistryChoice(_devices)

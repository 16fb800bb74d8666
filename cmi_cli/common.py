"""What every command shares: the console, the workspace option and error reporting."""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import typer
from rich.console import Console

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
            err_console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted: finished work is kept; run the same command again to resume.[/]")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]

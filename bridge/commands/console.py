"""What every CLI command shares: the consoles and the progress bar of long work."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

console = Console()
err_console = Console(stderr=True)
Show = Callable[[str, "float | None"], None]


@contextlib.contextmanager
def progress_bar() -> Iterator[Show]:
    """A transient bar on stderr; gives ``show(description, done)``, the ``progress=`` callback
    of build, tune, compare and profile: indefinite while ``done`` is None, else the share done."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def show(description: str, done: float | None) -> None:
            total = None if done is None else 1.0
            bar.update(task, description=escape(description), total=total, completed=done or 0)

        yield show

"""What the commands print: readable tables (rich, which typer already brings) by default, the
API's JSON with ``--json`` for scripts. Times are the views' UTC text, shown as
``2026-03-01 10:15:03``; sizes in binary units."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rich is loaded by the commands that print, when they print
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

STATUS_STYLES = {
    "COMPLETE": "green",
    "SUCCESS": "green",
    "Succeeded": "green",
    "FAILED": "bold red",
    "Failed": "bold red",
    "IN_PROGRESS": "cyan",
    "PENDING": "cyan",
    "Running": "cyan",
    "Preparing": "cyan",
    "SCHEDULED": "cyan",
    "EXPIRED": "dim",
}


def console() -> Console:
    """stdout; wide when it is not a terminal, so a pipe or a log gets whole rows."""
    from rich.console import Console

    terminal = sys.stdout.isatty()
    return Console(highlight=False, width=None if terminal else 200, soft_wrap=not terminal)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def utc(text: str | None) -> str:
    return f"{text[:10]} {text[11:19]}" if text else "-"


def size(n: float | None) -> str:
    if n is None:
        return "-"
    value, unit = float(n), 0
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    while value >= 1024 and unit < len(units) - 1:
        value /= 1024
        unit += 1
    return f"{int(value)} B" if unit == 0 else f"{value:.1f} {units[unit]}"


def text(value: str, style: str = "") -> Text:
    from rich.text import Text

    return Text(value, style=style)


def status(text: str | None) -> Text:
    from rich.text import Text

    return Text(text or "-", style=STATUS_STYLES.get(text or "", ""))


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A table; a column whose name ends with ``>`` is right-aligned (numbers)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    out = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", title_style="bold")
    for column in columns:
        right = column.endswith(">")
        out.add_column(column.rstrip(">"), justify="right" if right else "left")
    for row in rows:
        out.add_row(*(cell if isinstance(cell, Text) else str(cell) for cell in row))
    return out


def show(*renderables: Any) -> None:
    out = console()
    for renderable in renderables:
        out.print(renderable)

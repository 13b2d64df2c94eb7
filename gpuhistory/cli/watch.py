"""``--watch``: a live view that redraws every few seconds until Ctrl-C, like
``watch gpustat``. On a terminal the frame is redrawn in place (rich's ``Live``) and the
last one stays on the screen; piped, each frame is printed after the previous one."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text


def header(seconds: float, what: str, now: datetime | None = None) -> Text:
    """``Every 2 s: gpuhistory status (host gpu-node-01)    16:52:07`` — the local time."""
    stamp = (now or datetime.now().astimezone()).strftime("%Y-%m-%d %H:%M:%S")
    return Text.assemble((f"Every {seconds:g} s: ", "bold"), what, "    ", (stamp, "dim"))


def watch(frame: Callable[[], RenderableType], seconds: float, what: str,
          out: Console, sleep: Callable[[float], None] = time.sleep) -> None:
    """Draw ``frame()`` under a header every ``seconds`` until Ctrl-C, then return (the
    command exits 0)."""

    def draw() -> RenderableType:
        return Group(header(seconds, what), Text(""), frame())

    try:
        if out.is_terminal:
            with Live(draw(), console=out, auto_refresh=False, transient=False,
                      vertical_overflow="visible") as live:
                while True:
                    sleep(seconds)
                    live.update(draw(), refresh=True)
        else:
            while True:
                out.print(draw())
                out.print()
                sleep(seconds)
    except KeyboardInterrupt:
        return

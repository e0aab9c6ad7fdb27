"""The sweep's progress bar: tqdm on a terminal, one plain line per update elsewhere (CI logs, Ray Jobs)."""

from __future__ import annotations

import sys


class _Lines:
    """tqdm redraws its bar with carriage returns; off a terminal each redraw becomes one clean line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: int, enabled: bool):
    from tqdm import tqdm
    tty = sys.stderr.isatty()
    return tqdm(total=total, disable=not enabled, unit="trial", file=sys.stderr if tty else _Lines(sys.stderr),
                mininterval=0.5 if tty else 10.0, dynamic_ncols=tty, ascii=not tty)

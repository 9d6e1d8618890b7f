"""metrics.jsonl, the one record of a training run: one JSON object a line, each with an
``event`` key (start, resume, step, skip, epoch, divergence, evaluation). The trainer
appends to it; this is the one reader (the trainer's resume, notebook 02, the loss
analysis). A torn last line, from a killed writer, is expected and passed over."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# What a line that is not an event is counted as.
BLANK, TRUNCATED, MALFORMED = "blank_lines", "truncated_lines", "malformed_lines"


def read_lines(path: Path) -> tuple[list[str], bool]:
    """Lines of a file (bytes that are not UTF-8 replaced) and whether the last one is cut
    (no final newline)."""
    text = Path(path).read_bytes().decode("utf-8", errors="replace")
    if not text:
        return [], False
    lines = text.split("\n")
    complete = text.endswith("\n")
    if complete:
        lines.pop()
    return [ln.rstrip("\r") for ln in lines], not complete


def parse_lines(lines: list[str], last_cut: bool) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number from 1, event) for each line that is a JSON object with a string
    ``event``; (line number, BLANK | TRUNCATED | MALFORMED) for every other line."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            yield number, BLANK
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            yield number, TRUNCATED if last_cut and number == len(lines) else MALFORMED
            continue
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            yield number, MALFORMED
            continue
        yield number, event


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The events of a metrics.jsonl, in order; none when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    return [e for _, e in parse_lines(*read_lines(path)) if isinstance(e, dict)]

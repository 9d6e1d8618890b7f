"""Where things are, and how a file is written: the project root, and the one atomic
write every file of the project goes through.

Notebooks and the CLI take paths relative to the project root, whatever the
working directory (JupyterLab starts kernels in notebooks/, papermill in the root).
"""

from __future__ import annotations

import contextlib
import math
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def project_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding this project's
    pyproject.toml; falls back to `$UMT_ROOT`, then to the cwd."""
    if os.environ.get("UMT_ROOT"):
        return Path(os.environ["UMT_ROOT"]).resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in [here, *here.parents]:
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and 'name = "umt_core"' in pyproject.read_text():
            return folder
    return here


def resolve(path: str | Path, root: Path | None = None) -> Path:
    """An absolute path; relative ones are taken from the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root or project_root()) / p


@contextlib.contextmanager
def atomic_path(path: str | Path, *, durable: bool = False) -> Iterator[Path]:
    """A fresh temporary name beside `path` (same suffix) to write the new file to; when
    the block ends without error it replaces `path` in one step, so a reader or a crash
    sees the old file or the new one, never half of one. `durable`: the file and its
    folder are also forced to disk first. On an error the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own per writer (concurrent writers each install a whole file); the
    # writer creates it, so it gets the usual permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through `atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_safe(obj: Any, non_finite: Callable[[float], Any] = lambda x: None) -> Any:
    """`obj` (dicts, lists, tuples, scalars) with every NaN or infinity replaced by
    `non_finite(x)`: JSON has no such numbers, and a strict reader refuses Python's
    NaN and Infinity. The default writes null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return non_finite(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v, non_finite) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v, non_finite) for v in obj]
    return obj

"""Output paths checked before the work: a command that would fail to write its
result fails at once, naming the path, instead of after minutes of generation.

`output_dir` makes a folder (or takes an existing one) and proves it writable by
creating and removing a file in it; `output_file` does the same for a file's folder
and refuses a folder where a file is wanted. Both raise `UsageError` for a path that
cannot be one (a file where a folder is wanted, a folder below a file) and `Failure`
for a folder this process may not write (read-only, permissions).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import Failure, UsageError, os_error_text


def _blocking_file(path: Path) -> Path | None:
    """The existing non-folder at or above `path`, if any (it blocks creating `path`)."""
    for p in [path, *path.parents]:
        if p.exists():
            return None if p.is_dir() else p
    return None


def output_dir(path: str | Path, what: str = "output folder") -> Path:
    """`path` as a writable folder, created if needed (with its parents)."""
    path = Path(path).expanduser()
    blocker = _blocking_file(path)
    if blocker == path:
        raise UsageError(f"{path}: exists and is not a folder; give a folder as the {what}")
    if blocker is not None:
        raise UsageError(f"{path}: cannot be a folder because {blocker} is a file; "
                         f"choose another {what}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise Failure(f"cannot write the {what}: {os_error_text(e)}") from e
    return path


def output_file(path: str | Path, what: str = "output file") -> Path:
    """`path` as a file this process can write: not a folder, its folder writable
    (created if needed), and writable itself if it exists (it is not modified)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UsageError(f"{path}: is a folder; give a file name for the {what}")
    if path.name in ("", ".", ".."):
        raise UsageError(f"{path}: not a file name; give a file name for the {what}")
    blocker = _blocking_file(path.parent)
    if blocker is not None:
        raise UsageError(f"{path}: cannot be written because {blocker} is a file, not a "
                         f"folder; choose another {what}")
    output_dir(path.parent, f"folder of the {what}")
    if path.exists() and not os.access(path, os.W_OK):
        raise Failure(f"cannot write the {what}: {path}: Permission denied")
    return path

"""What the command line does with an error: one line on stderr and an exit code.

- exit code 2, a usage error: the command was given something it cannot use (an
  option value, a missing or malformed input file, a manifest, a checkpoint, a run
  directory holding another run). Fixing the command line fixes it. `UsageError`,
  and every `ValueError` (the package's own error types derive from it: `DataError`,
  `CheckpointError`, `AudioError`), and `FileNotFoundError`.
- exit code 1, a failure: the command was fine but could not be carried out (another
  process writes the run directory, a folder is read-only, the disk is full).
  `Failure`, and every other `OSError`.

Each message names the file or value and says what to do; no traceback.
"""

from __future__ import annotations

import errno
import os

USAGE = 2
FAILURE = 1


class UsageError(ValueError):
    """A command line or input the command cannot use (exit code 2)."""


class Failure(RuntimeError):
    """A well-formed command that could not be carried out (exit code 1)."""


def os_error_text(e: OSError) -> str:
    """``<path>: <errno text>`` (both paths of a rename), whatever raised it."""
    text = e.strerror or (os.strerror(e.errno) if e.errno else "") or str(e)
    if e.errno == errno.ENOSPC:
        text += "; free some space or write elsewhere"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        text += "; choose a folder you can write to"
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {text}" if paths else text


def exit_status(e: BaseException) -> tuple[int, str] | None:
    """(exit code, one-line message) for an error meant for the user; None for a bug
    (which keeps its traceback)."""
    if isinstance(e, Failure):
        return FAILURE, str(e)
    if isinstance(e, FileNotFoundError):
        return USAGE, os_error_text(e) if e.strerror else str(e)
    if isinstance(e, OSError):
        return FAILURE, os_error_text(e)
    if isinstance(e, ValueError):
        return USAGE, str(e)
    return None

"""Where things are: the project root and its standard folders.

Notebooks and the CLI take paths relative to the project root, whatever the
working directory (JupyterLab starts kernels in notebooks/, papermill in the root).
"""

from __future__ import annotations

import os
from pathlib import Path


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


def data_dir() -> Path:
    return project_root() / "data"


def runs_dir() -> Path:
    return project_root() / "runs"


def results_dir() -> Path:
    return project_root() / "results"

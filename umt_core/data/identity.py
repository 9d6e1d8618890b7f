"""Which data a run was trained on, and whether the files read now are the locked ones.

A dataset's identity is the hash of its lock's file table (every file's path and
sha256): two preparations with the same identity hold byte-identical audio. A run
records it (with the manifest, the dataset folder and the prep parameters) in its
``config.yaml`` and in every checkpoint; resuming on data with another identity is
refused, naming what changed, unless explicitly allowed.

`verify_locked_file` checks a file that lies in a prepared dataset against the lock
(size, then sha256) before a command reads it, once per file and process: a test WAV
swapped for another valid WAV would otherwise change an evaluation without a word.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .manifest import LOCK_NAME, DataError, Manifest, sha_json, show_path
from .store import file_sha256, read_lock

ALLOW_FLAG = "--allow-data-change"


def dataset_identity(m: Manifest) -> dict[str, Any]:
    """The identity of the prepared dataset of `m` (its lock must exist)."""
    lock = read_lock(m)
    files = {rel: e["sha256"] for rel, e in sorted(lock["files"].items())}
    return {
        "manifest": show_path(m.path),
        "dataset": m.name,
        "data_dir": show_path(m.data_dir),
        "files_sha256": sha_json(files),
        "lock_sha256": file_sha256(m.lock_path),
        "n_files": len(files),
        "params": lock.get("params", {}),
        "files": files,
    }


def identity_summary(identity: dict[str, Any]) -> dict[str, Any]:
    """What config.yaml shows of an identity (without the file table)."""
    return {k: v for k, v in identity.items() if k not in ("files", "params")}


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def identity_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between the data a run was trained on and the data there now
    (empty when the file tables are equal)."""
    if stored.get("files_sha256") == current.get("files_sha256"):
        return []
    out = []
    for key in ("manifest", "dataset", "data_dir"):
        if stored.get(key) != current.get(key):
            out.append(f"{key} {stored.get(key)} -> {current.get(key)}")
    a, b = _flat(stored.get("params", {})), _flat(current.get("params", {}))
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key) and key != "dataset":
            out.append(f"{key} {a.get(key)!r} -> {b.get(key)!r}")
    old, new = stored.get("files", {}), current.get("files", {})
    gone = sorted(set(old) - set(new))
    added = sorted(set(new) - set(old))
    changed = sorted(r for r in set(old) & set(new) if old[r] != new[r])
    out.append(f"{len(old)} files then, {len(new)} now: {len(gone)} gone, {len(added)} new, "
               f"{len(changed)} changed"
               + "".join(f"; e.g. {kind} {names[0]}" for kind, names in
                         (("gone", gone), ("new", added), ("changed", changed)) if names))
    return out


def check_same_data(stored: dict[str, Any] | None, current: dict[str, Any] | None,
                    run_dir: Path, allow: bool) -> list[str]:
    """Refuse (DataError) to resume the run in `run_dir` on other data than it was
    trained on, unless `allow`; returns the differences (empty when the same)."""
    if not stored or not current:
        return []
    diffs = identity_differences(stored, current)
    if diffs and not allow:
        raise DataError(
            f"{run_dir} was trained on other data than {current['data_dir']} holds now "
            f"({'; '.join(diffs)}). Prepare the data it was trained on again (prep with the "
            f"run's settings, manifest {stored.get('manifest')}), start over with --fresh, or "
            f"resume anyway with {ALLOW_FLAG}")
    return diffs


# ----------------------------------------------------------------------------- reading files

_locks: dict[tuple[str, int], dict[str, Any] | None] = {}
_verified: set[tuple[str, int, int, int]] = set()


def _lock_of(path: Path) -> tuple[Path, dict[str, Any]] | None:
    """(dataset folder, lock) of the prepared dataset holding `path`, if any: a
    lock.json at most three folders up (<dataset>/<domain>/<split>/<file>)."""
    for folder in list(path.parents)[:3]:
        lock_path = folder / LOCK_NAME
        try:
            mtime = lock_path.stat().st_mtime_ns
        except OSError:
            continue
        key = (str(lock_path), mtime)
        if key not in _locks:
            try:
                lock = json.loads(lock_path.read_text())
                _locks[key] = lock if isinstance(lock, dict) and "files" in lock else None
            except (OSError, ValueError):
                _locks[key] = None
        if _locks[key] is not None:
            return folder, _locks[key]
    return None


def verify_locked_file(path: str | Path) -> None:
    """Raise DataError when `path` is a file of a prepared dataset (listed in its
    lock) whose size or sha256 no longer match the lock. Files outside a dataset,
    or not listed in its lock, pass. Each file is hashed once per process (again
    only when its size, mtime or inode change)."""
    path = Path(path).absolute()
    found = _lock_of(path)
    if found is None:
        return
    folder, lock = found
    rel = path.relative_to(folder).as_posix()
    entry = lock["files"].get(rel)
    if entry is None:
        return
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key in _verified:
        return
    fix = (f"run `python -m umt_core prep --manifest {lock.get('manifest', 'M')}` to restore "
           f"it (or `prep --verify` to list every mismatch)")
    if "bytes" in entry and st.st_size != entry["bytes"]:
        raise DataError(f"{path}: {st.st_size} bytes, but {folder / LOCK_NAME} lists "
                        f"{entry['bytes']}: the file changed since prep; {fix}")
    digest = file_sha256(path)
    if digest != entry["sha256"]:
        raise DataError(f"{path}: sha256 {digest[:12]}... differs from the lock's "
                        f"{entry['sha256'][:12]}... ({folder / LOCK_NAME}): the file changed "
                        f"since prep; {fix}")
    _verified.add(key)


def prep_replacement(m: Manifest, old_params: dict[str, Any], new_params: dict[str, Any],
                     n_files: int) -> str:
    """The refusal prep gives when it would rebuild an existing dataset in place with
    other settings."""
    a, b = _flat(old_params), _flat(new_params)
    diffs = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k)]
    return (f"{m.data_dir} already holds dataset {m.name!r} ({n_files} files) prepared with "
            f"other settings ({'; '.join(diffs)}); prep does not replace a dataset in place, "
            f"since runs trained on it would then resume on other data. Prepare it under its "
            f"own name (a copy of {show_path(m.path)} with another `dataset:`, which gets its own "
            f"folder), or pass --replace to rebuild {m.data_dir} with the new settings")

"""The prepared dataset on disk: its lock, its splits, checked audio files, and the
training audio of each domain.

The lock (``data/<dataset>/lock.json``) lists every produced file with its sha256,
sample count, duration and sample rate; a file that no longer matches it is refused
by `training_data`, which reads each domain's split through one memory-mapped
float32 ``.npy`` per domain and split (``data/<dataset>/.cache/``), rebuilt whenever
the lock's checksums change.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import AudioError, check_audio, read_audio
from ..paths import atomic_path, write_text_atomic
from .manifest import (
    LOCK_FORMAT,
    SPLITS,
    DataError,
    Manifest,
    as_manifest,
    select_domains,
    sha_json,
    show_path,
)
from .sampling import Augmenter, DomainAudio, PitchShiftAugmenter

# ----------------------------------------------------------------------------- lock

def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_lock(manifest: Manifest | str | Path) -> dict[str, Any]:
    m = as_manifest(manifest)
    path = m.lock_path
    if not path.exists():
        raise DataError(f"{path}: no lock file; run `python -m umt_core prep --manifest "
                        f"{show_path(m.path)}` first")
    try:
        lock = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: corrupt lock file ({e}); run prep again") from e
    if not isinstance(lock, dict) or lock.get("format") != LOCK_FORMAT or "files" not in lock:
        raise DataError(f"{path}: not a lock file of this version; run prep again")
    return lock


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- splits

def split_files(manifest: Manifest | str | Path, split: str) -> dict[str, list[Path]]:
    """Sorted files of `split` for every domain (manifest order). From the lock when
    there is one, else from the folders."""
    m = as_manifest(manifest)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    out: dict[str, list[Path]] = {d: [] for d in m.domains}
    if m.lock_path.exists():
        for rel, entry in read_lock(m)["files"].items():
            if entry["split"] == split and entry["domain"] in out:
                out[entry["domain"]].append(m.data_dir / rel)
    else:
        for d in m.domains:
            out[d] = list((m.data_dir / d / split).glob("*.wav"))
    return {d: sorted(v) for d, v in out.items()}


def read_checked(path: Path, sample_rate: int, channels: int | None = 1,
                 data: bytes | None = None, label: str | None = None) -> np.ndarray:
    """Float32 samples of a sound file (or its bytes, `data`) that must be
    `channels`-channel at `sample_rate`, mixed to mono.

    Raises `DataError` naming the file for missing, unreadable, empty, wrong-rate,
    wrong channel count, NaN-containing or silent audio.
    """
    label = label or str(path)
    try:
        audio, sr = read_audio(data if data is not None else path, label)
        if sr != sample_rate:
            raise DataError(f"{label}: sample rate {sr} Hz, expected {sample_rate} Hz")
        if channels is not None and audio.shape[1] != channels:
            raise DataError(f"{label}: {audio.shape[1]} channels, expected {channels}"
                            + (" (mono)" if channels == 1 else ""))
        return check_audio(audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0], label)
    except AudioError as e:
        raise DataError(str(e)) from e


def _cache_key(entries: list[tuple[str, dict]], sample_rate: int) -> str:
    return sha_json([sample_rate, [(rel, e["sha256"]) for rel, e in entries]])


def training_data(manifest: Manifest | str | Path, split: str = "train",
                  domains: Sequence[str] | None = None) -> list[DomainAudio]:
    """One `DomainAudio` per domain (manifest order, or `domains`), memory-mapped.

    Every file must match the lock: a changed file raises `DataError` naming it.
    """
    m = as_manifest(manifest)
    if split not in m.splits:
        raise DataError(f"dataset {m.name!r} has no split {split!r}; it has {list(m.splits)}")
    names = select_domains(m, domains)
    lock = read_lock(m)
    if lock["sample_rate"] != m.sample_rate:
        raise DataError(f"{m.lock_path}: data prepared at {lock['sample_rate']} Hz but "
                        f"{m.path} says {m.sample_rate} Hz; run prep again")
    out = []
    for name in names:
        entries = sorted((rel, e) for rel, e in lock["files"].items()
                         if e["domain"] == name and e["split"] == split)
        if not entries:
            raise DataError(f"{m.lock_path}: no {split} files for domain {name!r}; run prep again")
        out.append(_domain_cache(m, name, split, entries))
    return out


def _domain_cache(m: Manifest, name: str, split: str, entries: list[tuple[str, dict]]) -> DomainAudio:
    folder = m.cache_dir / split
    npy, index_path = folder / f"{name}.npy", folder / f"{name}.json"
    key = _cache_key(entries, m.sample_rate)
    index = None
    if index_path.exists() and npy.exists():
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError:
            index = None
    if index is not None and index.get("key") == key:
        stale = False
        for rel, e in entries:
            st = _stat(m.data_dir / rel)
            if st != index["stats"].get(rel):
                # Touched or replaced since the cache was made: the lock decides.
                _check_against_lock(m, rel, e)
                index["stats"][rel] = st
                stale = True
        if stale:
            write_json_atomic(index_path, index)
        return DomainAudio.from_cache(name, npy, index["offsets"],
                                      [str(m.data_dir / rel) for rel, _ in entries])
    # Build: read every file once, checking it against the lock and its format.
    folder.mkdir(parents=True, exist_ok=True)
    clips, stats = [], {}
    for rel, e in entries:
        path = m.data_dir / rel
        data = _check_against_lock(m, rel, e)
        clips.append(read_checked(path, m.sample_rate, 1, data=data))
        stats[rel] = _stat(path)
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in clips])]).tolist()
    with atomic_path(npy) as tmp:
        np.save(tmp, np.concatenate(clips).astype(np.float32))
    write_json_atomic(index_path, {"key": key, "offsets": offsets, "stats": stats})
    return DomainAudio.from_cache(name, npy, offsets, [str(m.data_dir / rel) for rel, _ in entries])


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _check_against_lock(m: Manifest, rel: str, entry: dict) -> bytes:
    path = m.data_dir / rel
    if not path.exists():
        raise DataError(f"{path}: missing (listed in {m.lock_path}); run prep again")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise DataError(f"{path}: changed since prep (sha256 {digest[:12]}..., lock says "
                        f"{entry['sha256'][:12]}...); run `python -m umt_core prep --manifest "
                        f"{show_path(m.path)}` to restore it, or --verify to list every mismatch")
    return data


def make_augmenter(cfg) -> Augmenter | None:
    """The paper's pitch-shift augmentation for `cfg` (a `Config`), or None when off."""
    if not cfg.train.augment or cfg.train.pitch_shift_semitones <= 0:
        return None
    return PitchShiftAugmenter(cfg.sample_rate, cfg.train.pitch_shift_semitones)

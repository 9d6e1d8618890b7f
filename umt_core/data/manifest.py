"""Dataset manifests: what a dataset is, read and checked.

A manifest (``data_manifests/*.yaml``) says what a dataset is: its name, sample
rate, domains in decoder order and how each is made (rendered from scores) or
selected (MusicNet ids by composer and ensemble), the split rule and seed, and what
to do with a bad input (``on_error: fail | skip``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..paths import project_root, resolve
from .render import GM_PROGRAMS

SPLITS = ("train", "val", "test", "test_alt")
ON_ERROR = ("fail", "skip")
LOCK_NAME = "lock.json"
LOCK_FORMAT = 1
MUSICNET_URL = "https://zenodo.org/records/5120004"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class DataError(ValueError):
    """A problem with a manifest, a source or a produced file; the message names it."""


# ----------------------------------------------------------------------------- manifest

@dataclass
class Manifest:
    path: Path
    name: str
    sample_rate: int
    domains: list[str]
    domain_specs: list[dict[str, Any]]
    source: dict[str, Any]
    split: dict[str, Any]
    seed: int
    on_error: str
    data_dir: Path
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        return self.source["type"]

    @property
    def splits(self) -> tuple[str, ...]:
        return SPLITS if self.kind == "scores" else SPLITS[:3]

    @property
    def lock_path(self) -> Path:
        return self.data_dir / LOCK_NAME

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / ".cache"

    def domain_index(self, name: str) -> int:
        if name not in self.domains:
            raise DataError(f"unknown domain {name!r} for dataset {self.name!r} ({self.path}); "
                            f"its domains are {self.domains}")
        return self.domains.index(name)

    def sha256(self) -> str:
        return sha_json(self.raw)


_REQUIRED = object()


def _get(d: dict, key: str, where: str, kind, default=_REQUIRED, choices=None, check=None):
    """Field `key` of mapping `d` (at `where`), type- and value-checked."""
    if key not in d or d[key] is None:
        if default is _REQUIRED:
            raise DataError(f"{where}: missing field '{key}'")
        return default
    value = d[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise DataError(f"{where}: field '{key}' must be {names}, got {value!r}")
    if choices is not None and value not in choices:
        raise DataError(f"{where}: field '{key}' is {value!r}; choose one of {list(choices)}")
    if check is not None:
        problem = check(value)
        if problem:
            raise DataError(f"{where}: field '{key}' = {value!r} {problem}")
    return value


def _no_unknown(d: dict, allowed: Iterable[str], where: str) -> None:
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise DataError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def _positive(v):
    return None if v > 0 else "must be positive"


_TOP = ("dataset", "description", "sample_rate", "seed", "on_error", "source", "split", "domains")
_SCORES_SOURCE = ("type", "corpus", "soundfont", "alt_soundfont", "tempo_qpm", "velocity",
                  "min_note_seconds", "tail_seconds", "gain", "peak", "excerpt_seconds")
_MUSICNET_SOURCE = ("type", "path", "metadata", "url", "expect_sample_rate", "expect_channels")


def load_manifest(path: str | Path, data_root: str | Path | None = None,
                  sample_rate: int | None = None) -> Manifest:
    """Read and validate a manifest. Errors name the file and the field.

    The dataset goes to ``<data_root>/<dataset>``; `data_root` defaults to the
    ``data/`` folder of the project that holds the manifest. A `sample_rate` other
    than the manifest's makes a separate dataset, ``<dataset>-<rate>hz``.
    """
    rate_override = sample_rate
    path = resolve(path)
    if not path.is_file():
        raise DataError(f"{path}: no such manifest; the ones shipped are in data_manifests/")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise DataError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from e
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a mapping with fields {list(_TOP)}")
    w = str(path)
    _no_unknown(raw, _TOP, w)
    name = _get(raw, "dataset", w, str, check=lambda v: None if _NAME.fullmatch(v)
                else "must be letters, digits, '_', '-' or '.'")
    sample_rate = _get(raw, "sample_rate", w, int, check=_positive)
    seed = _get(raw, "seed", w, int, default=0)
    on_error = _get(raw, "on_error", w, str, default="fail", choices=ON_ERROR)
    source = dict(_get(raw, "source", w, dict))
    kind = _get(source, "type", f"{w}: source", str, choices=("scores", "musicnet"))
    split = dict(_get(raw, "split", w, dict))
    domains_raw = _get(raw, "domains", w, list)
    if not domains_raw:
        raise DataError(f"{w}: field 'domains' is empty")
    specs = []
    for i, d in enumerate(domains_raw):
        where = f"{w}: domains[{i}]"
        if not isinstance(d, dict):
            raise DataError(f"{where}: expected a mapping with a 'name', got {d!r}")
        specs.append(_domain_spec(d, kind, where))
    names = [s["name"] for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{w}: field 'domains': duplicate domain name(s) {dup}")
    if kind == "scores":
        _check_scores(source, split, w)
    else:
        _check_musicnet(source, split, w)
    root = Path(data_root) if data_root is not None else _default_data_root(path)
    if rate_override is not None and int(rate_override) != sample_rate:
        if int(rate_override) <= 0:
            raise DataError(f"sample rate must be positive, got {rate_override}")
        name, sample_rate = f"{name}-{int(rate_override)}hz", int(rate_override)
    return Manifest(path=path, name=name, sample_rate=sample_rate, domains=names,
                    domain_specs=specs, source=source, split=split, seed=seed,
                    on_error=on_error, data_dir=Path(root) / name,
                    description=str(raw.get("description") or ""), raw=raw)


def _default_data_root(manifest_path: Path) -> Path:
    """``data/`` of the project holding the manifest; outside a project, beside the
    manifest's folder (or beside ``data_manifests/``)."""
    root = project_root(manifest_path.parent)
    if not (root / "pyproject.toml").is_file():
        folder = manifest_path.parent
        root = folder.parent if folder.name == "data_manifests" else folder
    return root / "data"


def _domain_spec(d: dict, kind: str, where: str) -> dict[str, Any]:
    name = _get(d, "name", where, str, check=lambda v: None if _NAME.fullmatch(v)
                else "must be letters, digits, '_', '-' or '.' (it names a folder)")
    where = f"{where} ({name})"
    if kind == "musicnet":
        _no_unknown(d, ("name", "composer", "ensemble"), where)
        return {"name": name, "composer": _get(d, "composer", where, str),
                "ensemble": _get(d, "ensemble", where, str)}
    _no_unknown(d, ("name", "instrument", "program", "low", "high"), where)
    if "program" in d:
        program = _get(d, "program", where, int,
                       check=lambda v: None if 0 <= v <= 127 else "must be in 0..127")
    else:
        instrument = _get(d, "instrument", where, str, default=name)
        if instrument not in GM_PROGRAMS:
            raise DataError(f"{where}: unknown instrument {instrument!r}; give 'program' "
                            f"(General MIDI, 0..127) or one of {sorted(GM_PROGRAMS)}")
        program = GM_PROGRAMS[instrument]
    in_midi = lambda v: None if 0 <= v <= 127 else "must be a MIDI pitch in 0..127"
    low = _get(d, "low", where, int, check=in_midi)
    high = _get(d, "high", where, int, check=in_midi)
    if high - low < 11:
        raise DataError(f"{where}: range low={low}..high={high} must span at least an octave")
    return {"name": name, "program": program, "low": low, "high": high}


def _check_scores(source: dict, split: dict, w: str) -> None:
    ws, wp = f"{w}: source", f"{w}: split"
    _no_unknown(source, _SCORES_SOURCE, ws)
    source.setdefault("corpus", "bach-chorales")
    _get(source, "corpus", ws, str, choices=("bach-chorales",))
    _get(source, "soundfont", ws, str)
    _get(source, "alt_soundfont", ws, str)
    for key, default in (("tempo_qpm", 80.0), ("min_note_seconds", 0.02), ("tail_seconds", 1.0),
                         ("gain", 0.5), ("peak", 0.7)):
        source[key] = _get(source, key, ws, float, default=default, check=_positive)
    source["velocity"] = _get(source, "velocity", ws, int, default=80,
                              check=lambda v: None if 1 <= v <= 127 else "must be in 1..127")
    source["excerpt_seconds"] = _get(source, "excerpt_seconds", ws, float, default=None,
                                     check=_positive)
    _no_unknown(split, ("rule", "test_works", "val_works", "val_fraction", "minutes_per_domain"), wp)
    _get(split, "rule", wp, str, default="by_work", choices=("by_work",))
    split["test_works"] = _get(split, "test_works", wp, int, check=_positive)
    # val_works: a paired validation split (the same works in every domain, in neither
    # train nor test); without it, val is a val_fraction of each domain's own works.
    if "val_works" in split and "val_fraction" in split:
        raise DataError(f"{wp}: give val_works (paired validation works) or val_fraction "
                        "(a share of each domain's own works), not both")
    if "val_works" in split:
        split["val_works"] = _get(split, "val_works", wp, int, check=_positive)
    else:
        split["val_fraction"] = _get(split, "val_fraction", wp, float, default=0.1,
                                     check=lambda v: None if 0 < v < 0.5 else "must be in (0, 0.5)")
    split["minutes_per_domain"] = _get(split, "minutes_per_domain", wp, float, check=_positive)


def _check_musicnet(source: dict, split: dict, w: str) -> None:
    ws, wp = f"{w}: source", f"{w}: split"
    _no_unknown(source, _MUSICNET_SOURCE, ws)
    _get(source, "path", ws, str, default=None)
    _get(source, "metadata", ws, str, default=None)
    source.setdefault("url", MUSICNET_URL)
    _get(source, "expect_sample_rate", ws, int, default=None, check=_positive)
    _get(source, "expect_channels", ws, int, default=None, check=_positive)
    _no_unknown(split, ("rule", "train", "val", "test"), wp)
    _get(split, "rule", wp, str, default="by_file", choices=("by_file",))
    fr = [_get(split, k, wp, float, check=_positive) for k in ("train", "val", "test")]
    if abs(sum(fr) - 1.0) > 1e-6:
        raise DataError(f"{wp}: fractions train + val + test must sum to 1, got {sum(fr):g}")


def sha_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def select_domains(manifest: Manifest, names: Sequence[str] | None) -> list[str]:
    """`names` checked against the manifest (None = all, in decoder order)."""
    if names is None:
        return list(manifest.domains)
    for n in names:
        manifest.domain_index(n)
    return list(names)


def as_manifest(manifest: Manifest | str | Path) -> Manifest:
    return manifest if isinstance(manifest, Manifest) else load_manifest(manifest)



def show_path(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(project_root()))
    except ValueError:
        return str(path)

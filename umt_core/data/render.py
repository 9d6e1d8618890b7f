"""Scores -> note lists -> audio, with a real sampled-instrument synthesizer.

The embedded dataset is made of the Bach chorales shipped inside the music21
package, rendered by FluidSynth with a General MIDI soundfont. Three stages:

1. `list_works` / `parse_work`: a score becomes a plain note list per part
   (MIDI pitch, onset and duration in quarter notes). Parsing MusicXML is the slow
   part, so `cached_notes` keeps one JSON file per work.
2. `arrange`: the note list is fitted to one instrument: the score is moved by
   whole octaves into the instrument's range (notes still outside are folded in),
   notes shorter than ``min_note_seconds`` are dropped, and every part gets its own
   MIDI channel (two voices on one channel would cut each other's unisons short).
3. `render`: FluidSynth's float renderer is driven sample-exactly offline (no
   audio driver), reverb and chorus off, then the stereo output is mixed to mono
   and peak-normalised. Every note-on has its note-off, so the tail is finite.

This module does not import torch: it runs in worker processes.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..paths import write_text_atomic

RENDERER_VERSION = 2  # bump when the rendered audio of a given spec changes

# General MIDI programs (0-based) of instruments a manifest may name.
GM_PROGRAMS = {
    "piano": 0, "bright_piano": 1, "electric_piano": 4, "harpsichord": 6, "celesta": 8,
    "glockenspiel": 9, "vibraphone": 11, "marimba": 12, "organ": 19, "church_organ": 19,
    "accordion": 21, "nylon_guitar": 24, "steel_guitar": 25, "violin": 40, "viola": 41,
    "cello": 42, "contrabass": 43, "strings": 48, "trumpet": 56, "trombone": 57,
    "tuba": 58, "horn": 60, "soprano_sax": 64, "alto_sax": 65, "tenor_sax": 66,
    "oboe": 68, "english_horn": 69, "bassoon": 70, "clarinet": 71, "piccolo": 72,
    "flute": 73, "recorder": 74, "pan_flute": 75,
}

# Works of the "bach-chorales" corpus: music21's four-part chorale harmonisations,
# one file per chorale (alternative versions such as "-a" or "-lz" left out).
_CHORALE_NAME = re.compile(r"bwv\d+(\.\d+)?")
_CORPORA = ("bach-chorales",)


def list_works(corpus: str = "bach-chorales") -> list[str]:
    """Sorted work ids of a score corpus shipped with music21 (e.g. "bwv26.6")."""
    if corpus not in _CORPORA:
        raise ValueError(f"unknown score corpus {corpus!r}; known: {list(_CORPORA)}")
    from music21 import corpus as m21corpus

    names = set()
    for p in m21corpus.getComposer("bach"):
        p = Path(p)
        if p.suffix in (".mxl", ".xml") and _CHORALE_NAME.fullmatch(p.stem) and p.stem != "bwv846":
            names.add(p.stem)
    return sorted(names, key=_natural_key)


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def parse_work(work: str) -> dict[str, Any]:
    """Note lists of one work: {"work", "parts": [[[pitch, onset_q, dur_q], ...], ...],
    "quarters": total length in quarter notes, "repeats_expanded": bool}."""
    from music21 import corpus as m21corpus

    score = m21corpus.parse(f"bach/{work}")
    expanded = True
    try:
        score = score.expandRepeats()
    except Exception:  # noqa: BLE001 - e.g. bwv277: inconsistent repeat marks; play it as written
        expanded = False
    parts = []
    end = 0.0
    for part in score.parts:
        notes = set()
        for el in part.stripTies().flatten().notes:
            onset = float(el.offset)
            dur = float(el.duration.quarterLength)
            if dur <= 0:  # grace notes and other zero-length events
                continue
            for pitch in el.pitches:
                notes.add((int(pitch.midi), round(onset, 6), round(dur, 6)))
                end = max(end, onset + dur)
        if notes:
            parts.append([list(n) for n in sorted(notes, key=lambda n: (n[1], n[0], n[2]))])
    if not parts:
        raise ValueError(f"score {work}: no notes")
    return {"work": work, "parts": parts, "quarters": end, "repeats_expanded": expanded}


def notes_sha256(notes: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(notes["parts"], separators=(",", ":")).encode()).hexdigest()


def note_cache_dir(root: Path) -> Path:
    import music21  # on use: over a second to import (measured), only rendering needs it

    return Path(root) / f"music21-{music21.__version__}"


def cached_notes(work: str, cache_dir: Path) -> dict[str, Any]:
    """The note list of `work`, parsed once and kept as JSON in `cache_dir`."""
    path = Path(cache_dir) / f"{work}.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            pass  # a truncated cache entry: parse again
    notes = parse_work(work)
    write_text_atomic(path, json.dumps(notes, separators=(",", ":")))
    return notes


def work_seconds(notes: dict[str, Any], tempo_qpm: float, excerpt_seconds: float | None = None) -> float:
    seconds = notes["quarters"] * 60.0 / tempo_qpm
    return min(seconds, excerpt_seconds) if excerpt_seconds else seconds


def arrange(notes: dict[str, Any], low: int, high: int, tempo_qpm: float,
            min_note_seconds: float = 0.02, excerpt_seconds: float | None = None) -> np.ndarray:
    """Notes fitted to an instrument: array (N, 4) of [channel, pitch, start_s, end_s].

    The score moves by the whole number of octaves that puts most of its notes in
    [low, high] (ties: the smallest move); remaining outliers fold in by octaves.
    """
    if high - low < 11:
        raise ValueError(f"instrument range [{low}, {high}] is narrower than an octave")
    sec_per_q = 60.0 / tempo_qpm
    parts = [np.asarray(part, dtype=np.float64).reshape(-1, 3) for part in notes["parts"]]
    every = np.concatenate([p[:, 0] for p in parts]).astype(int)
    # One octave move for the whole score keeps its voicing; outliers then fold in.
    best = max(
        (int(((every + 12 * s >= low) & (every + 12 * s <= high)).sum()), -abs(s), s)
        for s in range(-6, 7)
    )[2]
    rows = []
    channels = [c for c in range(16) if c != 9]  # channel 10 is percussion in GM
    for k, arr in enumerate(parts):
        pitch = arr[:, 0].astype(int) + 12 * best
        while (pitch < low).any():
            pitch = np.where(pitch < low, pitch + 12, pitch)
        while (pitch > high).any():
            pitch = np.where(pitch > high, pitch - 12, pitch)
        start = arr[:, 1] * sec_per_q
        end = (arr[:, 1] + arr[:, 2]) * sec_per_q
        if excerpt_seconds:
            keep = start < excerpt_seconds
            pitch, start, end = pitch[keep], start[keep], np.minimum(end[keep], excerpt_seconds)
        keep = (end - start) >= min_note_seconds
        ch = channels[k % len(channels)]
        rows.append(np.stack([np.full(keep.sum(), ch), pitch[keep], start[keep], end[keep]], 1))
    out = np.concatenate(rows) if rows else np.zeros((0, 4))
    # The same pitch twice on one channel (folding can merge two notes): keep the first.
    _, first = np.unique(out[:, [0, 1, 2]], axis=0, return_index=True)
    return out[np.sort(first)]


class _Renderer:
    """FluidSynth driven offline, one fresh synthesizer per render.

    A reused synthesizer is not deterministic: a voice's first block depends on what
    that voice played before. A fresh one costs little with dynamic sample loading
    (only the selected instrument's samples are read).
    """

    def __init__(self, soundfont: str, sample_rate: int, gain: float):
        import fluidsynth  # on use: needs the system library, only rendering does

        self._fluidsynth = fluidsynth
        self._lib = fluidsynth._fl
        self._lib.fluid_synth_write_float.argtypes = [
            ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
            ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        self.soundfont, self.sample_rate, self.gain = soundfont, sample_rate, gain

    def _synth(self):
        syn = self._fluidsynth.Synth(
            gain=self.gain, samplerate=float(self.sample_rate),
            **{"synth.reverb.active": 0, "synth.chorus.active": 0, "synth.cpu-cores": 1,
               "synth.polyphony": 256, "synth.verbose": 0, "synth.dynamic-sample-loading": 1})
        sfid = syn.sfload(str(self.soundfont))
        if sfid < 0:
            syn.delete()
            raise ValueError(f"{self.soundfont}: FluidSynth cannot load this soundfont")
        return syn, sfid

    def render(self, events: np.ndarray, program: int, velocity: int, tail_seconds: float) -> np.ndarray:
        syn, sfid = self._synth()
        try:
            return self._render(syn, sfid, events, program, velocity, tail_seconds)
        finally:
            syn.delete()

    def _render(self, syn, sfid: int, events: np.ndarray, program: int, velocity: int,
                tail_seconds: float) -> np.ndarray:
        self.synth = syn
        for ch in range(16):
            if ch != 9:
                syn.program_select(ch, sfid, 0, program)
        sr = self.sample_rate
        # (sample, 0 = off before 1 = on at the same sample, channel, pitch)
        ev = []
        for ch, pitch, start, end in events:
            s, e = round(start * sr), round(end * sr)
            if e <= s:
                continue
            ev.append((s, 1, int(ch), int(pitch)))
            ev.append((e, 0, int(ch), int(pitch)))
        ev.sort()
        last = ev[-1][0] if ev else 0
        total = last + round(tail_seconds * sr)
        buf = np.zeros((total, 2), dtype=np.float32)
        pos = 0
        for sample, on, ch, pitch in ev:
            pos = self._write(buf, pos, sample - pos)
            if on:
                syn.noteon(ch, pitch, velocity)
            else:
                syn.noteoff(ch, pitch)
        self._write(buf, pos, total - pos)
        return buf.mean(axis=1)  # stereo -> mono

    def _write(self, buf: np.ndarray, pos: int, n: int) -> int:
        while n > 0:
            k = min(n, 65536)
            view = buf[pos:pos + k]
            self._lib.fluid_synth_write_float(self.synth.synth, k, view.ctypes.data, 0, 2,
                                              view.ctypes.data, 1, 2)
            pos += k
            n -= k
        return pos


_RENDERERS: dict[tuple, _Renderer] = {}


def render(events: np.ndarray, *, soundfont: str, program: int, sample_rate: int,
           velocity: int = 80, tail_seconds: float = 1.0, gain: float = 0.5,
           peak: float = 0.7) -> np.ndarray:
    """Float32 mono audio of arranged notes (see `arrange`), peak-normalised to `peak`."""
    if not Path(soundfont).is_file():
        raise FileNotFoundError(
            f"{soundfont}: soundfont not found; install it with "
            "`apt-get install fluid-soundfont-gm timgm6mb-soundfont`")
    key = (str(soundfont), int(sample_rate), float(gain))
    if key not in _RENDERERS:
        _RENDERERS[key] = _Renderer(str(soundfont), int(sample_rate), float(gain))
    audio = _RENDERERS[key].render(events, int(program), int(velocity), float(tail_seconds))
    top = float(np.abs(audio).max()) if audio.size else 0.0
    if top < 1e-4:
        raise ValueError(f"{Path(soundfont).name} program {program}: rendered silence")
    return (audio * (peak / top)).astype(np.float32)


def render_spec(spec: dict[str, Any], notes_path: str) -> np.ndarray:
    """Render one job of the scores dataset (see `umt_core.data`)."""
    notes = json.loads(Path(notes_path).read_text())
    if notes_sha256(notes) != spec["notes_sha256"]:
        raise ValueError(f"{notes_path}: cached notes changed; delete the cache and prep again")
    events = arrange(notes, spec["low"], spec["high"], spec["tempo_qpm"],
                     spec["min_note_seconds"], spec.get("excerpt_seconds"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return render(events, soundfont=spec["soundfont"], program=spec["program"],
                      sample_rate=spec["sample_rate"], velocity=spec["velocity"],
                      tail_seconds=spec["tail_seconds"], gain=spec["gain"], peak=spec["peak"])

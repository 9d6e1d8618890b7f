"""Does a translation keep the notes? Pitch content measured against the truth.

An STFT chroma compared with the *source* rewards keeping the source's timbre: two
renderings of the same notes by different instruments agree only about 0.46 on it, and
a translation that keeps some piano sound scores above the real cello. Here the pitch
content is a constant-Q chroma (librosa's `chroma_cqt`, one bin per semitone folded into
12 pitch classes, little spread from the harmonics of one instrument) and it is compared
with what the notes really are:

- the **score**: the rendered note list of the work (the scores dataset renders known
  notes; `ScoreNotes` finds them from the dataset's lock and the note cache) over the
  clip's time span, as a 12-bin pitch-class vector per frame;
- the **paired ground truth**: the real rendering of the same notes by the target
  instrument, through the same CQT chroma.

Agreement is the frame-wise correlation of two 12-bin vectors averaged over the frames
where the reference has notes. It becomes **notes kept** on a scale with two anchors:

    notes_kept = (agreement - wrong_notes) / (truth - wrong_notes)

where ``truth`` is the ground truth's own agreement with the score (1 against itself)
and ``wrong_notes`` the agreement of the ground truth with another work's score (or of
another work's rendering with the ground truth). 0 = no more than wrong notes, 1 = as
good as the real rendering; below 0 is worse than wrong notes (e.g. noise).

`segment_starts` spreads several clips over a whole work (not only its first seconds).
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import load_manifest, read_lock
from .data.render import arrange, cached_notes, note_cache_dir

CQT_HOP = 256  # samples between chroma frames (32 ms at 8 kHz, 16 ms at 16 kHz)
CQT_FMIN_NOTE = "C1"  # lowest CQT bin (32.7 Hz): below every instrument's range here
CQT_MAX_OCTAVES = 7
ACTIVE_DB = -40.0  # a frame within this many dB of the clip's loudest frame has notes


def _audio(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32).reshape(-1))


@functools.lru_cache(maxsize=8)
def _octaves(sample_rate: int) -> int:
    """Whole octaves above C1 whose CQT filters stay below 95% of Nyquist."""
    import librosa

    fmin = float(librosa.note_to_hz(CQT_FMIN_NOTE))
    n = int(np.floor(np.log2(0.95 * sample_rate / 2 / fmin)))
    if n < 3:
        raise ValueError(f"sample rate {sample_rate} Hz is too low for a CQT chroma")
    return min(n, CQT_MAX_OCTAVES)


_CHROMA_MEMO: dict[tuple[str, int], np.ndarray] = {}
_MEMO_SIZE = 64  # the same ground truth and controls are compared with many candidates


def cqt_chroma(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Constant-Q chroma (12, frames) of `audio`, frames every CQT_HOP samples, tuning
    fixed at A440, unnormalised (silence stays near zero)."""
    import librosa

    a = _audio(audio)
    if a.size == 0:
        raise ValueError("cqt_chroma: empty audio")
    key = (hashlib.sha1(a.tobytes()).hexdigest(), int(sample_rate))
    if key not in _CHROMA_MEMO:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # short inputs at the lowest octaves
            C = librosa.feature.chroma_cqt(
                y=a, sr=sample_rate, hop_length=CQT_HOP, fmin=librosa.note_to_hz(CQT_FMIN_NOTE),
                n_octaves=_octaves(sample_rate), tuning=0.0, norm=None)
        if len(_CHROMA_MEMO) >= _MEMO_SIZE:
            _CHROMA_MEMO.pop(next(iter(_CHROMA_MEMO)))
        _CHROMA_MEMO[key] = C
    return _CHROMA_MEMO[key].copy()


def active_frames(chroma: np.ndarray, db: float = ACTIVE_DB) -> np.ndarray:
    """Frames whose chroma energy is within `db` dB of the loudest frame."""
    energy = np.asarray(chroma, dtype=np.float64).sum(axis=0)
    peak = float(energy.max()) if energy.size else 0.0
    if peak <= 0:
        return np.zeros(energy.shape, dtype=bool)
    return energy >= peak * 10 ** (db / 20)


def framewise_agreement(reference: np.ndarray, candidate: np.ndarray,
                        frames: np.ndarray | None = None) -> float:
    """Mean over `frames` (default: the reference's active frames) of the correlation
    between the two 12-bin vectors of each frame; a constant frame counts 0. Both
    arrays are (12, frames); the longer is cut to the shorter."""
    n = min(reference.shape[1], candidate.shape[1])
    A = np.asarray(reference[:, :n], dtype=np.float64)
    B = np.asarray(candidate[:, :n], dtype=np.float64)
    sel = active_frames(A) if frames is None else np.asarray(frames[:n], dtype=bool)
    if not sel.any():
        return float("nan")
    A, B = A[:, sel] - A[:, sel].mean(axis=0), B[:, sel] - B[:, sel].mean(axis=0)
    na, nb = np.linalg.norm(A, axis=0), np.linalg.norm(B, axis=0)
    ok = (na > 1e-9) & (nb > 1e-9)
    r = np.zeros(A.shape[1])
    r[ok] = (A[:, ok] * B[:, ok]).sum(axis=0) / (na[ok] * nb[ok])
    return float(r.mean())


# ---------------------------------------------------------------------- the score


def score_chroma(events: np.ndarray, start: float, n_frames: int, sample_rate: int) -> np.ndarray:
    """Pitch classes sounding at each chroma frame of a clip that starts `start` seconds
    into the rendering: (12, n_frames), 1 where a note of that class sounds (frame
    centre within [note start, note end)). `events` is `render.arrange`'s (N, 4) array
    of [channel, pitch, start_s, end_s]."""
    return pitch_classes_at(events, start + np.arange(n_frames) * CQT_HOP / sample_rate)


def pitch_classes_at(events: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(12, len(times)): 1 where a note of that pitch class sounds at that time (seconds
    from the start of the rendering; a note sounds in [start, end))."""
    ev = np.asarray(events, dtype=np.float64).reshape(-1, 4)
    t = np.asarray(times, dtype=np.float64)
    out = np.zeros((12, len(t)))
    if not len(ev):
        return out
    sounding = (ev[:, 2][None, :] <= t[:, None]) & (t[:, None] < ev[:, 3][None, :])
    pcs = ev[:, 1].astype(int) % 12
    for pc in range(12):
        out[pc] = sounding[:, pcs == pc].any(axis=1)
    return out


def notes_kept(agreement: float, truth: float, wrong_notes: float) -> float:
    """(agreement - wrong_notes) / (truth - wrong_notes): 0 = wrong notes, 1 = as good as
    the real rendering. NaN when the anchors do not separate (truth <= wrong_notes)."""
    if not np.isfinite([agreement, truth, wrong_notes]).all() or truth - wrong_notes <= 1e-6:
        return float("nan")
    return float((agreement - wrong_notes) / (truth - wrong_notes))


@dataclass
class ScoreNotes:
    """The note lists a scores dataset rendered: `events(work, domain)` gives the notes
    exactly as `render.arrange` placed them for that domain's instrument (seconds from
    the start of the rendered file).

    Built from the dataset's lock (tempo, shortest note, excerpt, instrument ranges) and
    the note cache that prep filled (parsed again into `note_cache` when missing)."""

    params: dict[str, Any]
    note_cache: Path

    @classmethod
    def from_manifest(cls, manifest, note_cache: str | Path | None = None) -> ScoreNotes:
        m = load_manifest(manifest) if isinstance(manifest, str | Path) else manifest
        if m.kind != "scores":
            raise ValueError(f"{m.path}: dataset {m.name!r} is not rendered from scores "
                             f"(source type {m.kind!r}); it has no note lists")
        lock = read_lock(m)
        cache = (Path(note_cache) if note_cache else
                 note_cache_dir(m.data_dir.parent / ".cache" / "notes"))
        return cls(lock["params"], cache)

    @functools.cached_property
    def _domains(self) -> dict[str, dict[str, Any]]:
        return {d["name"]: d for d in self.params["domains"]}

    def notes(self, work: str) -> dict[str, Any]:
        return cached_notes(work, self.note_cache)

    def events(self, work: str, domain: str) -> np.ndarray:
        if domain not in self._domains:
            raise ValueError(f"domain {domain!r} is not in this dataset ({sorted(self._domains)})")
        d, src = self._domains[domain], self.params["source"]
        return arrange(self.notes(work), d["low"], d["high"], src["tempo_qpm"],
                       src["min_note_seconds"], src.get("excerpt_seconds"))

    def check_rendering(self, work: str, domain: str, n_samples: int, sample_rate: int) -> None:
        """Raise if a rendered file's length does not match its notes (last note-off plus
        the release tail): the note list would not describe that file."""
        ev = self.events(work, domain)
        tail = self.params["source"]["tail_seconds"]
        expected = (round(float(ev[:, 3].max()) * sample_rate) if len(ev) else 0) + round(tail * sample_rate)
        if abs(expected - n_samples) > 1:
            raise ValueError(f"{work} ({domain}): the rendered file has {n_samples} samples, its "
                             f"notes give {expected}; the note cache {self.note_cache} does not "
                             "match this dataset (delete it and run prep again)")


# ---------------------------------------------------------------------- segments


def music_span(audio: np.ndarray, sample_rate: int, threshold: float = 0.05) -> tuple[int, int]:
    """(first, last) sample where the audio exceeds `threshold` x its peak: the span that
    holds music, without the silent lead-in and the release tail."""
    a = np.abs(_audio(audio))
    if not a.size or a.max() <= 0:
        return 0, 0
    loud = np.flatnonzero(a > threshold * a.max())
    return int(loud[0]), int(loud[-1]) + 1


def segment_starts(audio: np.ndarray, sample_rate: int, seconds: float, count: int) -> list[int]:
    """`count` start samples of `seconds`-long segments spread evenly over the music of
    `audio` (first start at the music's onset, last segment ending at its end), so a
    work is judged on its whole length. Fewer when the work is too short to hold them
    without overlap; at least one."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    length = round(seconds * sample_rate)
    first, last = music_span(audio, sample_rate)
    room = max(0, min(last, len(audio)) - length - first)
    n = max(1, min(count, room // max(length, 1) + 1))
    return [int(s) for s in np.linspace(first, first + room, n).round()]


# ---------------------------------------------------------------- per-clip signals


def content_signals(candidate: np.ndarray, sample_rate: int, *, start: float,
                    events: np.ndarray | None = None,
                    wrong_events: Sequence[np.ndarray] = (),
                    ground_truth: np.ndarray | None = None,
                    unrelated: Sequence[np.ndarray] = ()) -> dict[str, float]:
    """Every content signal of one candidate clip that starts `start` seconds into the
    work:

    - ``score_agreement``: with the score's pitch classes (`events`);
    - ``score_truth``: the ground truth's agreement with the score;
    - ``score_wrong_notes``: the ground truth's mean agreement with other works' scores
      (`wrong_events`, each over the same span);
    - ``notes_kept_score``: notes_kept of the three;
    - ``truth_agreement``: with the paired ground truth (CQT chroma);
    - ``truth_wrong_notes``: the mean agreement of `unrelated` clips (other works by the
      target instrument) with the ground truth;
    - ``notes_kept_truth``: notes_kept of these (the truth agrees 1 with itself).
    """
    nan = float("nan")
    out = {k: nan for k in ("score_agreement", "score_truth", "score_wrong_notes",
                            "notes_kept_score", "truth_agreement", "truth_wrong_notes",
                            "notes_kept_truth")}
    C = cqt_chroma(candidate, sample_rate)
    G = cqt_chroma(ground_truth, sample_rate) if ground_truth is not None else None
    if events is not None:
        S = score_chroma(events, start, C.shape[1], sample_rate)
        has_notes = S.sum(axis=0) > 0
        out["score_agreement"] = framewise_agreement(S, C, has_notes)
        if G is not None:
            out["score_truth"] = framewise_agreement(S, G, has_notes)
            wrong = []
            for ev in wrong_events:
                W = score_chroma(ev, _wrapped_start(ev, start, C.shape[1], sample_rate),
                                 G.shape[1], sample_rate)
                wrong.append(framewise_agreement(W, G, W.sum(axis=0) > 0))
            wrong = [w for w in wrong if np.isfinite(w)]
            if wrong:
                out["score_wrong_notes"] = float(np.mean(wrong))
            out["notes_kept_score"] = notes_kept(out["score_agreement"], out["score_truth"],
                                                 out["score_wrong_notes"])
    if G is not None:
        out["truth_agreement"] = framewise_agreement(G, C)
        wrong = [framewise_agreement(G, cqt_chroma(u, sample_rate)) for u in unrelated]
        wrong = [w for w in wrong if np.isfinite(w)]
        if wrong:
            out["truth_wrong_notes"] = float(np.mean(wrong))
        out["notes_kept_truth"] = notes_kept(out["truth_agreement"], 1.0, out["truth_wrong_notes"])
    return out


def _wrapped_start(events: np.ndarray, start: float, n_frames: int, sample_rate: int) -> float:
    """`start` if another work still has notes there for the whole clip, else the same
    offset wrapped into that work's length (it is only a source of wrong notes)."""
    ev = np.asarray(events).reshape(-1, 4)
    if not len(ev):
        return start
    end = float(ev[:, 3].max())
    span = n_frames * CQT_HOP / sample_rate
    room = end - span
    return start if start <= room or room <= 0 else float(start % room)

"""Translations of recordings that have no paired rendering: real recordings (MusicNet,
with its aligned note labels, or any monophonic file, with a pitch estimate), and
renderings by a soundfont the model never heard.

There is no ground truth here, so the content anchor is the source itself: **notes
kept** = (the translation's CQT-chroma agreement with the source's notes - the
wrong-notes baseline) / (the source recording's own agreement with its notes - that
baseline), where the baseline is the source's agreement with the notes of the other
clips. 1 = the notes as well as the recording itself carries them, 0 = no better than
other notes. The criteria are the study's (`umt_core.calibration`), with thresholds
chosen on the paired validation works of the dataset the model trained on:
**instrument**, **clean**, **notes**, and **success** = all three (closer-to-target
needs a target rendering; it is not defined here). Calibration rows on the same clips
show each criterion failing where it must: the source itself (a copy: fails
instrument), the source at 5 dB SNR (fails clean), and a clip of the target instrument
from the dataset's test works (right timbre, other notes: fails notes).

Notes: MusicNet's label files (`start_time,end_time,instrument,note,...`, times in
samples at 44.1 kHz) or, for a monophonic recording, `pitch_events` (librosa's pYIN).

    python -m umt_core evaluate-recording --checkpoint runs/cpu/checkpoints/best.pt \\
        --audio 1759.wav --labels 1759.csv --json out.json
    python -m umt_core evaluate-recording --checkpoint ... --audio melody.wav --pitch --json out.json
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import calibration, content
from .audio import load_audio
from .calibration import PairedClip, Thresholds, white_noise_at_snr
from .signals import cut, spread
from .statistics import bootstrap_mean, rate

MUSICNET_LABEL_RATE = 44100  # MusicNet's label times are sample indices at this rate
CONDITIONS = ("translation", "source", "source_snr5", "target_unrelated")
CRITERIA = ("instrument", "clean", "notes", "success")


# ------------------------------------------------------------------------- notes
def musicnet_events(path: str | Path) -> np.ndarray:
    """A MusicNet label file as events (N, 4): [instrument, midi pitch, start s, end s]."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such label file (MusicNet's train_labels/<id>.csv)") from None
    rows = list(csv.DictReader(text.splitlines()))
    need = {"start_time", "end_time", "instrument", "note"}
    if not rows or need - set(rows[0]):
        have = sorted(rows[0]) if rows else []
        raise ValueError(f"{path}: not a MusicNet label file: needs columns {sorted(need)}, "
                         f"has {have}")
    events = []
    for i, r in enumerate(rows, start=2):
        try:
            start, end = int(r["start_time"]), int(r["end_time"])
            events.append([int(r["instrument"]), int(r["note"]),
                           start / MUSICNET_LABEL_RATE, end / MUSICNET_LABEL_RATE])
        except (TypeError, ValueError):
            raise ValueError(f"{path}, line {i}: start_time, end_time, instrument and note "
                             f"must be whole numbers, got {r}") from None
        if end <= start:
            raise ValueError(f"{path}, line {i}: the note ends ({end}) before it starts ({start})")
    return np.asarray(events, dtype=np.float64).reshape(-1, 4)


def pitch_events(audio: np.ndarray, sample_rate: int, fmin: float = 65.0, fmax: float = 1050.0,
                 min_seconds: float = 0.06) -> np.ndarray:
    """The notes of a monophonic recording as events (N, 4) [0, midi, start s, end s]:
    librosa's pYIN pitch track, rounded to semitones, runs of one pitch merged, runs
    shorter than `min_seconds` dropped."""
    import librosa

    audio = np.asarray(audio, dtype=np.float32)
    hop = 256 if sample_rate <= 16000 else 512
    f0, voiced, _ = librosa.pyin(audio, fmin=fmin, fmax=fmax, sr=sample_rate,
                                 frame_length=4 * hop, hop_length=hop)
    midi = np.where(voiced & np.isfinite(f0), np.round(librosa.hz_to_midi(np.nan_to_num(f0, nan=1.0))), -1)
    events, start = [], 0
    for i in range(1, len(midi) + 1):
        if i == len(midi) or midi[i] != midi[start]:
            t0, t1 = start * hop / sample_rate, i * hop / sample_rate
            if midi[start] >= 0 and t1 - t0 >= min_seconds:
                events.append([0, float(midi[start]), t0, t1])
            start = i
    return np.asarray(events, dtype=np.float64).reshape(-1, 4)


# ------------------------------------------------------------------------- clips
@dataclass
class Recording:
    name: str
    audio: np.ndarray  # at the model's sample rate
    events: np.ndarray  # (N, 4) seconds from the start of `audio`


def recording_clips(rec: Recording, sample_rate: int, target_clips: list[np.ndarray], *,
                    segments: int = 4, seconds: float = 2.0) -> list[PairedClip]:
    """`segments` clips spread over the recording, each with the source as its own
    content anchor, the notes of the other clips as wrong notes, and a clip of the target
    instrument (dataset test works) as the unrelated row."""
    if not len(rec.events):
        raise ValueError(f"{rec.name}: no notes (labels empty, or no voiced frames found); "
                         "nothing to measure notes kept against")
    length = round(seconds * sample_rate)
    starts = content.segment_starts(rec.audio, sample_rate, seconds, segments)
    if len(starts) < 2:
        raise ValueError(f"{rec.name}: {len(rec.audio) / sample_rate:.1f} s hold fewer than two "
                         f"clips of {seconds:g} s; the other clips' notes are the wrong-notes "
                         "baseline, so give a longer recording or shorter --seconds")
    clips = []
    for i, s in enumerate(starts):
        src = cut(rec.audio, s, length)
        shifted = []  # the other clips' notes, moved to start where this one starts
        for j, o in enumerate(starts):
            if j != i:
                ev = rec.events.copy()
                ev[:, 2:] += (s - o) / sample_rate
                shifted.append(ev)
        clips.append(PairedClip(f"{rec.name}@{s / sample_rate:.1f}s", s, src, src,
                                [target_clips[i % len(target_clips)]], rec.events, shifted))
    return clips


def _signals(candidate, clip: PairedClip, target: str, sr: int, classifier) -> dict[str, Any]:
    sig = calibration.candidate_signals(candidate, clip, target, sr, classifier)
    sig.pop("dist_target", None)  # the "truth" is the source here: no target distance
    return sig


def verdicts(df: pd.DataFrame, th: Thresholds) -> pd.DataFrame:
    """`calibration.verdicts` without closer-to-target (there is no target rendering to
    be closer to): success = instrument, clean and notes."""
    out = calibration.verdicts(df.assign(dist_target=np.nan), th)[["instrument", "clean", "notes"]]
    out["success"] = out.all(axis=1)
    return out


def judging_context(data, domains: list[str], *, segments: int, seconds: float,
                    seed: int = 0) -> tuple[Any, dict[str, Any], dict[str, list[np.ndarray]]]:
    """What judging translations into `domains` needs, built once for every model of
    those domains: the instrument classifier over them, the thresholds chosen on the
    dataset's paired validation works (`evaluate.thresholds_on_val`) and clips of each
    target instrument from the test works (the other-notes row)."""
    from .evaluate import dataset_classifier, thresholds_on_val

    classifier = dataset_classifier(data, domains, seconds=seconds, seed=seed)
    pairs = [(s, t) for s in domains for t in domains if s != t]
    thresholds = thresholds_on_val(data, classifier, pairs, seed=seed, segments=segments,
                                   seconds=seconds)
    length = round(seconds * data.sample_rate)
    test = data.split("test")
    target_clips = {t: [cut(data.load(p), 0, length) for p in spread(test[t], 4)] for t in domains}
    return classifier, thresholds, target_clips


def evaluate_recordings(recordings: list[Recording], translate, *, targets: list[str],
                        classifier, thresholds: Thresholds, target_clips: dict[str, list[np.ndarray]],
                        sample_rate: int, segments: int = 4, seconds: float = 2.0,
                        seed: int = 0) -> pd.DataFrame:
    """One row per (recording clip, target, condition) with the signals and verdicts.
    `translate(audio, target)` is the model (or a stand-in)."""
    rng = np.random.default_rng([seed, 77])
    records = []
    for rec in recordings:
        for target in targets:
            clips = recording_clips(rec, sample_rate, target_clips[target], segments=segments,
                                    seconds=seconds)
            for clip in clips:
                rows = {"translation": cut(np.asarray(translate(clip.source, target), np.float32),
                                           0, len(clip.source)),
                        "source": clip.source,
                        "source_snr5": white_noise_at_snr(clip.source, 5, rng),
                        "target_unrelated": clip.unrelated[0]}
                for cond, cand in rows.items():
                    records.append({"recording": rec.name, "clip": clip.work, "target": target,
                                    "condition": cond,
                                    **_signals(cand, clip, target, sample_rate, classifier)})
    df = pd.DataFrame(records)
    return pd.concat([df, verdicts(df, thresholds)], axis=1)


def summarize(df: pd.DataFrame, seed: int = 0) -> dict[str, Any]:
    """Per condition: each criterion's rate (Wilson interval) and notes kept's mean (a
    bootstrap over clips of 2 s: one recording has no independent works)."""
    out: dict[str, Any] = {}
    for cond in CONDITIONS:
        g = df[df.condition == cond]
        if g.empty:
            continue
        entry = {crit: rate(g[crit].tolist()) for crit in CRITERIA}
        entry["notes_kept"] = bootstrap_mean(g["notes_kept_score"].to_numpy(float),
                                             g["clip"].to_numpy(), seed=seed)
        out[cond] = entry
    return out


# --------------------------------------------------------------------------- CLI
def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate-recording",
                       help="judge a model's translations of a recording with no paired "
                            "rendering (MusicNet with its labels, or a monophonic file)")
    p.add_argument("--checkpoint", required=True, help="umt_core checkpoint (.pt)")
    p.add_argument("--audio", required=True, nargs="+", help="the recording(s)")
    notes = p.add_mutually_exclusive_group(required=True)
    notes.add_argument("--labels", nargs="+",
                       help="MusicNet label files (train_labels/<id>.csv), one per --audio")
    notes.add_argument("--pitch", action="store_true",
                       help="notes from a pitch estimate (pYIN): monophonic recordings only")
    p.add_argument("--manifest", default="data_manifests/scores-8k.yaml",
                   help="the dataset the model trained on: its instrument classifier, its val "
                        "thresholds and its target clips (default: %(default)s)")
    p.add_argument("--segments", type=int, default=4, help="clips spread over each recording")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per clip")
    p.add_argument("--json", required=True, help="write the results here")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .evaluate import EvalData, run_temperature
    from .generate import translate
    from .outputs import output_file
    from .paths import resolve

    out = output_file(resolve(args.json), "--json file")
    if args.labels and len(args.labels) != len(args.audio):
        raise ValueError(f"{len(args.audio)} --audio file(s) but {len(args.labels)} --labels file(s): "
                         "give one label file per recording, in the same order")
    checkpoint = resolve(args.checkpoint)
    model = load_model(checkpoint).eval()
    sr = model.config.sample_rate
    data = EvalData.from_manifest(resolve(args.manifest))
    if data.sample_rate != sr:
        raise ValueError(f"{args.manifest} is at {data.sample_rate} Hz, the model at {sr} Hz")
    targets = [d for d in model.domains if d in data.domains]
    if not targets:
        raise ValueError(f"the model's domains {model.domains} share none with {args.manifest}")
    recordings = []
    for i, path in enumerate(args.audio):
        audio = load_audio(resolve(path), sr, allow_silent=False)[0]
        events = (musicnet_events(resolve(args.labels[i])) if args.labels
                  else pitch_events(audio, sr))
        recordings.append(Recording(Path(path).stem, audio, events))
    classifier, th, target_clips = judging_context(data, targets, segments=args.segments,
                                                   seconds=args.seconds)
    temperature, origin = run_temperature(checkpoint)

    def run(audio, target):
        return translate(model, audio, sr, [target], temperature=temperature)[target]

    df = evaluate_recordings(recordings, run, targets=targets, classifier=classifier,
                             thresholds=Thresholds(**th["values"]), target_clips=target_clips,
                             sample_rate=sr, segments=args.segments, seconds=args.seconds)
    summary = summarize(df)
    payload = {"checkpoint": str(args.checkpoint), "audio": list(args.audio),
               "notes_from": "MusicNet labels" if args.labels else "pYIN pitch estimate",
               "temperature": temperature, "temperature_from": origin,
               "thresholds": th, "summary": summary,
               "clips": json.loads(df.to_json(orient="records"))}
    out.write_text(json.dumps(payload, indent=1, default=float) + "\n")
    for cond, entry in summary.items():
        rates = "  ".join(f"{c} {entry[c]['rate']:.2f}" for c in CRITERIA)
        print(f"{cond:18s} notes kept {entry['notes_kept']['mean']:.3f}  {rates}")
    print(f"wrote {out}")
    return 0

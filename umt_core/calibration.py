"""Calibrated criteria: every verdict is shown passing and failing on known cases.

A criterion's threshold means something only next to cases whose answer is known. So
each evaluation also scores *calibration rows*, built per clip from the paired ground
truth (the real rendering of the same notes by the target instrument):

==================  =====================================================  ==========
row                 what it is                                             expected
==================  =====================================================  ==========
ground_truth        the real rendering                                     passes all
gt_snr20            + white noise at 20 dB SNR                             passes all
gt_snr10            + white noise at 10 dB SNR                             (shown)
gt_snr5             + white noise at 5 dB SNR (what sampled output is)     fails clean
gt_code_noise       through mu-law with integer code noise                 (shown)
gt_source_envelope  under the source's loudness envelope                   (shown)
shaped_noise        noise with the target's average spectrum, the         fails clean
                    source's envelope (timbre without notes)
source              the source clip itself (a copy)                        fails target
unrelated           another work played by the target instrument           fails notes
==================  =====================================================  ==========

Criteria (`Thresholds`): **instrument** (the instrument classifier's probability of the
target domain; the classifier knows only the model's domains, chance = 1/domains),
**clean** (`noise_flatness`: the flatness of the spectrum's fine structure, a noise
floor that noise shaped like an instrument cannot hide under),
**notes** (notes kept against the score, `umt_core.content`), **closer_to_target**
(log-mel distance to the ground truth below that to the source) and **success**, all
four. `choose_thresholds` places each threshold between the rows that must pass and
the rows that must fail, and says whether they separate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from . import content
from .signals import (
    MEL_FFT,
    InstrumentClassifier,
    chroma_agreement,
    cut,
    degrade,
    logmel_distance,
    loud_frames,
    power_spectrogram,
    spectral_flatness,
    spread,
    train_instrument_classifier,
)
from .statistics import rate

ROWS = ("ground_truth", "gt_snr20", "gt_snr10", "gt_snr5", "gt_code_noise",
        "gt_source_envelope", "shaped_noise", "source", "unrelated")
CRITERIA = ("instrument", "clean", "notes", "closer_to_target", "success")
# What a threshold must do: rows that must pass and rows that must fail, per criterion.
MUST_PASS = {"instrument": ("ground_truth", "gt_snr20"), "clean": ("ground_truth", "gt_snr20"),
             "notes": ("ground_truth", "gt_snr20")}
MUST_FAIL = {"instrument": ("source",), "clean": ("gt_snr5", "shaped_noise"),
             "notes": ("unrelated",)}
ENVELOPE_HOP = 128
SPECTRUM_SMOOTHING_BINS = 4.0  # Gaussian sigma (STFT bins) of the shaped noise's envelope
CODE_NOISE = 2.0  # std of the integer offset added to mu-law codes in gt_code_noise


@dataclass
class Thresholds:
    """The calibrated per-clip criteria (see the module docstring)."""

    target_prob: float = 0.5  # classifier's target probability at least this = target
    clean_flatness: float = 0.25  # noise_flatness below this = clean
    notes_kept: float = 0.5  # notes kept against the score at least this = notes
    # The first evaluation's noise flag (plain flatness above 0.3), shown for comparison only.
    old_noise_flatness: float = 0.3


# --------------------------------------------------------------------- the rows


def white_noise_at_snr(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """`audio` plus white Gaussian noise whose power is `snr_db` below the audio's mean
    power over the clip."""
    a = np.asarray(audio, dtype=np.float64)
    power = float(np.mean(a ** 2))
    if power <= 0:
        raise ValueError("white_noise_at_snr: the clip is silent, SNR is undefined")
    noise = rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), size=a.shape)
    return (a + noise).astype(np.float32)


def loudness_envelope(audio: np.ndarray, length: int | None = None) -> np.ndarray:
    """Frame RMS (librosa) interpolated to one value per sample."""
    import librosa

    a = np.asarray(audio, dtype=np.float32)
    n = len(a) if length is None else length
    rms = librosa.feature.rms(y=a, frame_length=4 * ENVELOPE_HOP, hop_length=ENVELOPE_HOP)[0]
    centres = np.arange(len(rms)) * ENVELOPE_HOP
    return np.interp(np.arange(n), centres, rms).astype(np.float32)


def with_envelope(audio: np.ndarray, envelope_of: np.ndarray, max_gain_db: float = 30.0) -> np.ndarray:
    """`audio` re-shaped to follow the loudness envelope of `envelope_of` (gain limited
    to `max_gain_db` either way), at the original peak."""
    a = np.asarray(audio, dtype=np.float32)
    own = loudness_envelope(a)
    other = loudness_envelope(envelope_of, len(a))
    floor = max(float(own.max()), 1e-9) * 10 ** (-max_gain_db / 20)
    gain = other / np.maximum(own, floor) * float(own.max()) / max(float(other.max()), 1e-9)
    gain = np.clip(gain, 10 ** (-max_gain_db / 20), 10 ** (max_gain_db / 20))
    out = a * gain
    return (out * (np.abs(a).max() / max(float(np.abs(out).max()), 1e-9))).astype(np.float32)


def average_spectrum(clips: Sequence[np.ndarray]) -> np.ndarray:
    """Mean power spectrum (MEL_FFT // 2 + 1 bins) over every frame of `clips`."""
    specs = [power_spectrogram(np.asarray(c, dtype=np.float32)) for c in clips if len(c)]
    if not specs:
        raise ValueError("average_spectrum: no audio")
    return np.concatenate(specs, axis=1).mean(axis=1)


def shaped_noise(spectrum: np.ndarray, envelope_of: np.ndarray, rng: np.random.Generator,
                 peak: float = 0.7) -> np.ndarray:
    """Noise with the spectral envelope of `spectrum` (e.g. the target instrument's
    average) under the loudness envelope of `envelope_of`: an instrument's timbre, no
    notes."""
    import librosa
    from scipy.ndimage import gaussian_filter1d

    n = len(envelope_of)
    if len(spectrum) != MEL_FFT // 2 + 1:
        raise ValueError(f"shaped_noise: spectrum has {len(spectrum)} bins, expected "
                         f"{MEL_FFT // 2 + 1} (average_spectrum's)")
    # The spectral envelope only: smoothed over ~4 bins, so no note's harmonics survive
    # as peaks (the noise must carry the timbre, not pitches).
    envelope = gaussian_filter1d(np.asarray(spectrum, dtype=np.float64), SPECTRUM_SMOOTHING_BINS)
    white = librosa.stft(rng.normal(size=n).astype(np.float32), n_fft=MEL_FFT, hop_length=MEL_FFT // 4)
    coloured = librosa.istft(white * np.sqrt(envelope)[:, None], hop_length=MEL_FFT // 4, length=n)
    out = coloured * loudness_envelope(envelope_of) / max(float(np.std(coloured)), 1e-12)
    return (out * (peak / max(float(np.abs(out).max()), 1e-12))).astype(np.float32)


def calibration_rows(ground_truth: np.ndarray, source: np.ndarray, unrelated: np.ndarray, *,
                     target_spectrum: np.ndarray, rng: np.random.Generator,
                     mu_law: str = "torchaudio") -> dict[str, np.ndarray]:
    """The calibration rows of one clip (see the module docstring), all as long as the
    ground truth."""
    gt = np.asarray(ground_truth, dtype=np.float32)
    n = len(gt)

    def fit(a):
        a = np.asarray(a, dtype=np.float32)[:n]
        return np.pad(a, (0, n - len(a)))

    src = fit(source)
    return {
        "ground_truth": gt,
        "gt_snr20": white_noise_at_snr(gt, 20, rng),
        "gt_snr10": white_noise_at_snr(gt, 10, rng),
        "gt_snr5": white_noise_at_snr(gt, 5, rng),
        "gt_code_noise": degrade(gt, rng, mu_law, CODE_NOISE),
        "gt_source_envelope": with_envelope(gt, src),
        "shaped_noise": shaped_noise(target_spectrum, src, rng),
        "source": src,
        "unrelated": fit(unrelated),
    }


# ------------------------------------------------------------------- the classifier


def domain_classifier(train: Mapping[str, Sequence[np.ndarray]], sample_rate: int,
                      model_domains: Sequence[str], **kwargs: Any) -> InstrumentClassifier:
    """The instrument classifier over the model's domains only (a translation can only
    be one of them); its report states chance = 1 / number of domains."""
    missing = [d for d in model_domains if d not in train]
    if missing:
        raise ValueError(f"no training audio for the model's domains {missing}")
    if len(model_domains) < 2:
        raise ValueError(f"a classifier needs at least 2 domains, the model has {list(model_domains)}")
    clf = train_instrument_classifier({d: train[d] for d in model_domains}, sample_rate, **kwargs)
    clf.report["domains"] = list(model_domains)
    clf.report["chance"] = 1 / len(model_domains)
    return clf


# ------------------------------------------------------------------ scoring rows


def noise_flatness(audio: np.ndarray, sample_rate: int) -> float:
    """The noise floor: median over the active frames of the spectral flatness of the
    spectrum's fine structure (each frame divided by its own envelope, smoothed over
    SPECTRUM_SMOOTHING_BINS x 2 bins). Notes are peaks above their envelope (flatness
    near 0); noise of any colour is flat around it (about 0.56), so unlike the plain
    flatness it is not fooled by noise with an instrument's spectral tilt."""
    import librosa
    from scipy.ndimage import gaussian_filter1d

    a = np.asarray(audio, dtype=np.float32)
    if not a.size or np.abs(a).max() <= 0:
        return 0.0
    S = power_spectrogram(a)
    envelope = gaussian_filter1d(S, 2 * SPECTRUM_SMOOTHING_BINS, axis=0)
    flat = librosa.feature.spectral_flatness(S=S / np.maximum(envelope, 1e-20), power=1.0)[0]
    active = loud_frames(S.sum(axis=0))
    return float(np.median(flat[active])) if active.any() else 0.0


def clip_signals(candidate: np.ndarray, sample_rate: int, *, classifier: InstrumentClassifier,
                 target: str, source: np.ndarray, ground_truth: np.ndarray, start: float,
                 events: np.ndarray | None = None, wrong_events: Sequence[np.ndarray] = (),
                 unrelated: Sequence[np.ndarray] = ()) -> dict[str, float]:
    """The raw signals behind every criterion for one candidate clip."""
    if target not in classifier.domains:
        raise ValueError(f"target {target!r} is not a classifier domain {classifier.domains}")
    proba = classifier.predict_proba([candidate])[0]
    row = {"target_prob": float(proba[classifier.domains.index(target)]),
           "predicted": classifier.domains[int(proba.argmax())],
           "noise_flatness": noise_flatness(candidate, sample_rate),
           "flatness": spectral_flatness(candidate, sample_rate),
           "dist_target": logmel_distance(candidate, ground_truth, sample_rate),
           "dist_source": logmel_distance(candidate, source, sample_rate)}
    row.update(content.content_signals(candidate, sample_rate, start=start, events=events,
                                       wrong_events=wrong_events, ground_truth=ground_truth,
                                       unrelated=unrelated))
    return row


def verdicts(signals: pd.DataFrame, th: Thresholds) -> pd.DataFrame:
    """Pass/fail of every criterion for each row of `clip_signals` values. The notes
    criterion uses notes kept against the score, or against the ground truth where the
    score is unknown."""
    s = signals
    notes = s["notes_kept_score"].where(s["notes_kept_score"].notna(), s["notes_kept_truth"])
    out = pd.DataFrame(index=s.index)
    out["instrument"] = s["target_prob"] >= th.target_prob
    out["clean"] = s["noise_flatness"] < th.clean_flatness
    out["notes"] = notes >= th.notes_kept
    out["closer_to_target"] = s["dist_target"] < s["dist_source"]
    out["success"] = out[["instrument", "clean", "notes", "closer_to_target"]].all(axis=1)
    out["old_not_noise"] = s["flatness"] <= th.old_noise_flatness
    return out


def pass_rates(signals: pd.DataFrame, th: Thresholds, confidence: float = 0.95) -> pd.DataFrame:
    """Long table: row x criterion -> rate, k, n and its Wilson interval. `signals` has
    a "row" column (ROWS, or "translation" for a model's outputs)."""
    v = verdicts(signals, th)
    records = []
    for row, idx in signals.groupby("row", sort=False).groups.items():
        for crit in v.columns:
            records.append({"row": row, "criterion": crit,
                            **rate(v.loc[idx, crit].tolist(), confidence)})
    return pd.DataFrame(records)


def pass_table(rates: pd.DataFrame) -> pd.DataFrame:
    """`pass_rates` as a criterion (rows) x calibration row (columns) table of rates."""
    order = [r for r in (*ROWS, "translation") if r in set(rates.row)]
    order += [r for r in dict.fromkeys(rates.row) if r not in order]
    t = rates.pivot(index="criterion", columns="row", values="rate")
    crit = [c for c in (*CRITERIA, "old_not_noise") if c in t.index]
    return t.loc[crit, order]


def _between(passing: np.ndarray, failing: np.ndarray, higher_passes: bool,
             tolerance: float = 0.0) -> tuple[float, bool]:
    """A threshold midway between the worst value that must pass and the best that must
    fail (ignoring the `tolerance` share of the most extreme clips on each side), and
    whether the two sets separate."""
    passing, failing = passing[np.isfinite(passing)], failing[np.isfinite(failing)]
    if not passing.size or not failing.size:
        raise ValueError("choose_thresholds: a criterion has no rows that must pass or fail")
    q = float(tolerance)
    if higher_passes:
        lo, hi = np.quantile(failing, 1 - q), np.quantile(passing, q)
    else:
        lo, hi = np.quantile(passing, 1 - q), np.quantile(failing, q)
    return float((lo + hi) / 2), bool(lo < hi)


def choose_thresholds(signals: pd.DataFrame, tolerance: float = 0.0) -> tuple[Thresholds, dict[str, Any]]:
    """Thresholds from calibration rows: each one midway between the rows that must pass
    (MUST_PASS) and those that must fail (MUST_FAIL), with a report saying, per
    criterion, the threshold and whether the rows separate. `tolerance` (0 to 0.5) lets
    that share of the most extreme clips on each side lie beyond the threshold (e.g. an
    unrelated work that happens to share a chord progression). Choose on validation
    clips and report on others."""
    if not 0.0 <= tolerance < 0.5:
        raise ValueError(f"choose_thresholds: tolerance must be in [0, 0.5), got {tolerance}")
    by = {r: g for r, g in signals.groupby("row")}
    need = {r for rows in (*MUST_PASS.values(), *MUST_FAIL.values()) for r in rows}
    missing = sorted(need - set(by))
    if missing:
        raise ValueError(f"choose_thresholds: calibration rows {missing} are missing")
    notes = signals["notes_kept_score"].where(signals["notes_kept_score"].notna(),
                                              signals["notes_kept_truth"])

    def values(col, rows):
        if col == "notes":
            return np.concatenate([notes[by[r].index].to_numpy(float) for r in rows])
        return np.concatenate([by[r][col].to_numpy(float) for r in rows])

    report: dict[str, Any] = {}
    t_target, ok_t = _between(values("target_prob", MUST_PASS["instrument"]),
                              values("target_prob", MUST_FAIL["instrument"]), True, tolerance)
    t_clean, ok_c = _between(values("noise_flatness", MUST_PASS["clean"]),
                             values("noise_flatness", MUST_FAIL["clean"]), False, tolerance)
    t_notes, ok_n = _between(values("notes", MUST_PASS["notes"]),
                             values("notes", MUST_FAIL["notes"]), True, tolerance)
    th = Thresholds(target_prob=t_target, clean_flatness=t_clean, notes_kept=t_notes)
    for name, value, ok in (("target_prob", t_target, ok_t), ("clean_flatness", t_clean, ok_c),
                            ("notes_kept", t_notes, ok_n)):
        crit = {"target_prob": "instrument", "clean_flatness": "clean", "notes_kept": "notes"}[name]
        report[name] = {"value": value, "separates": ok, "tolerance": tolerance,
                        "must_pass": list(MUST_PASS[crit]), "must_fail": list(MUST_FAIL[crit])}
    return th, report


# ------------------------------------------------------------ a dataset's rows


@dataclass
class PairedClip:
    """One segment of one paired work, translating `source` into `target`: the source's
    audio, the ground truth (the target's rendering of the same notes), unrelated clips
    (other works by the target instrument), and the score's notes where known."""

    work: str
    start: int  # samples into the rendered work
    source: np.ndarray
    ground_truth: np.ndarray
    unrelated: list[np.ndarray]
    events: np.ndarray | None = None
    wrong_events: list[np.ndarray] = field(default_factory=list)


def paired_clips(data, source: str, target: str, *, split: str = "test", segments: int = 4,
                 seconds: float = 2.0, works: int | None = None, other_works: int = 3,
                 notes: content.ScoreNotes | None = None) -> list[PairedClip]:
    """`segments` clips of `seconds` spread over each work of `split` rendered in both
    `source` and `target` (`works` of them at most, spread over the sorted list; `data`
    is an `evaluate.EvalData`). `notes` (the dataset's score notes) adds the notes."""
    sr = data.sample_rate
    for d in (source, target):
        if d not in data.domains:
            raise ValueError(f"{d!r} is not a domain of the data {data.domains}")
    files = data.split(split)
    tgt_files = {p.stem: p for p in files[target]}
    pairs = [(p, tgt_files[p.stem]) for p in files[source] if p.stem in tgt_files]
    if len(pairs) < 2:
        raise ValueError(f"{split} split: {len(pairs)} works rendered in both {source!r} and "
                         f"{target!r}; at least 2 paired works are needed (one is another's "
                         "wrong notes). A dataset rendered from scores gets a paired val split "
                         "from `split.val_works` in its manifest: prepare it again")
    if works is not None:
        pairs = spread(pairs, max(works, 2))
    length = round(seconds * sr)
    audio = {p: data.load(p) for pair in pairs for p in pair}
    events = {}
    if notes is not None:
        for _, g in pairs:
            notes.check_rendering(g.stem, target, len(audio[g]), sr)
            events[g.stem] = notes.events(g.stem, target)
    out = []
    for i, (s_path, g_path) in enumerate(pairs):
        others = [pairs[(i + k) % len(pairs)][1]
                  for k in range(1, min(other_works, len(pairs) - 1) + 1)]
        for start in content.segment_starts(audio[g_path], sr, seconds, segments):
            unrelated = []
            for o in others:
                s = start if start + length <= len(audio[o]) else \
                    content.segment_starts(audio[o], sr, seconds, 1)[0]
                unrelated.append(cut(audio[o], s, length))
            out.append(PairedClip(s_path.stem, start, cut(audio[s_path], start, length),
                                  cut(audio[g_path], start, length), unrelated,
                                  events.get(s_path.stem),
                                  [events[o.stem] for o in others if o.stem in events]))
    return out


def target_spectrum(data, target: str, files: int = 8) -> np.ndarray:
    """The target instrument's average spectrum over `files` of its training audio."""
    train = data.split("train")[target]
    if not train:
        raise ValueError(f"domain {target!r} has no training audio for its average spectrum")
    return average_spectrum([data.load(p) for p in spread(train, files)])


def candidate_signals(candidate: np.ndarray, clip: PairedClip, target: str, sample_rate: int,
                      classifier: InstrumentClassifier) -> dict[str, Any]:
    """`clip_signals` of one candidate for `clip`, with the STFT chroma agreement with
    the source as a secondary column (`source_chroma`: it rewards the source's timbre)."""
    sig = clip_signals(candidate, sample_rate, classifier=classifier, target=target,
                       source=clip.source, ground_truth=clip.ground_truth,
                       start=clip.start / sample_rate, events=clip.events,
                       wrong_events=clip.wrong_events, unrelated=clip.unrelated)
    return {**sig, "source_chroma": chroma_agreement(clip.source, candidate, sample_rate)}


def calibration_signals(data, source: str, target: str, classifier: InstrumentClassifier, *,
                        clips: Sequence[PairedClip] | None = None, spectrum_files: int = 8,
                        seed: int = 0, mu_law: str = "torchaudio",
                        translate: Callable[[np.ndarray], np.ndarray] | None = None,
                        **clip_options: Any) -> pd.DataFrame:
    """The signals of every calibration row for each paired clip (`clips`, or
    `paired_clips(data, source, target, **clip_options)`), translating `source` into
    `target`. One row per (work, segment, calibration row), with columns row, work,
    start (seconds) and the signals. `translate` (source clip -> a model's output in
    `target`) adds the row "translation", scored on the same clips as the others."""
    sr = data.sample_rate
    if clips is None:
        clips = paired_clips(data, source, target, **clip_options)
    spectrum = target_spectrum(data, target, spectrum_files)
    rng = np.random.default_rng([seed, 1616])
    records = []
    for clip in clips:
        rows = calibration_rows(clip.ground_truth, clip.source, clip.unrelated[0],
                                target_spectrum=spectrum, rng=rng, mu_law=mu_law)
        if translate is not None:
            rows["translation"] = cut(np.asarray(translate(clip.source), dtype=np.float32), 0,
                                      len(clip.source))
        for name, cand in rows.items():
            records.append({"row": name, "work": clip.work, "start": clip.start / sr,
                            **candidate_signals(cand, clip, target, sr, classifier)})
    return pd.DataFrame(records)

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

Criteria (`Thresholds`): **target** (the instrument classifier's probability of the
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
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from . import content
from .evaluate import (
    MEL_FFT,
    InstrumentClassifier,
    _active,
    _power_spectrogram,
    degrade,
    logmel_distance,
    spectral_flatness,
    train_instrument_classifier,
)
from .statistics import rate

ROWS = ("ground_truth", "gt_snr20", "gt_snr10", "gt_snr5", "gt_code_noise",
        "gt_source_envelope", "shaped_noise", "source", "unrelated")
CRITERIA = ("target", "clean", "notes", "closer_to_target", "success")
# What a threshold must do: rows that must pass and rows that must fail, per criterion.
MUST_PASS = {"target": ("ground_truth", "gt_snr20"), "clean": ("ground_truth", "gt_snr20"),
             "notes": ("ground_truth", "gt_snr20")}
MUST_FAIL = {"target": ("source",), "clean": ("gt_snr5", "shaped_noise"),
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
    # The old noise flag (evaluate.Criteria.noise_flatness), shown for comparison only.
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
    specs = [_power_spectrogram(np.asarray(c, dtype=np.float32)) for c in clips if len(c)]
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
    S = _power_spectrogram(a)
    envelope = gaussian_filter1d(S, 2 * SPECTRUM_SMOOTHING_BINS, axis=0)
    flat = librosa.feature.spectral_flatness(S=S / np.maximum(envelope, 1e-20), power=1.0)[0]
    active = _active(S.sum(axis=0))
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
    out["target"] = s["target_prob"] >= th.target_prob
    out["clean"] = s["noise_flatness"] < th.clean_flatness
    out["notes"] = notes >= th.notes_kept
    out["closer_to_target"] = s["dist_target"] < s["dist_source"]
    out["success"] = out[["target", "clean", "notes", "closer_to_target"]].all(axis=1)
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
    t_target, ok_t = _between(values("target_prob", MUST_PASS["target"]),
                              values("target_prob", MUST_FAIL["target"]), True, tolerance)
    t_clean, ok_c = _between(values("noise_flatness", MUST_PASS["clean"]),
                             values("noise_flatness", MUST_FAIL["clean"]), False, tolerance)
    t_notes, ok_n = _between(values("notes", MUST_PASS["notes"]),
                             values("notes", MUST_FAIL["notes"]), True, tolerance)
    th = Thresholds(target_prob=t_target, clean_flatness=t_clean, notes_kept=t_notes)
    for name, value, ok in (("target_prob", t_target, ok_t), ("clean_flatness", t_clean, ok_c),
                            ("notes_kept", t_notes, ok_n)):
        crit = {"target_prob": "target", "clean_flatness": "clean", "notes_kept": "notes"}[name]
        report[name] = {"value": value, "separates": ok, "tolerance": tolerance,
                        "must_pass": list(MUST_PASS[crit]), "must_fail": list(MUST_FAIL[crit])}
    return th, report


# ------------------------------------------------------------ a dataset's rows


def calibration_signals(data, source: str, target: str, classifier: InstrumentClassifier, *,
                        notes: content.ScoreNotes | None = None, split: str = "test",
                        segments: int = 4, seconds: float = 2.0, spectrum_files: int = 8,
                        other_works: int = 3, seed: int = 0, mu_law: str = "torchaudio",
                        translate: Callable[[np.ndarray], np.ndarray] | None = None
                        ) -> pd.DataFrame:
    """`clip_signals` of every calibration row for `segments` clips of `seconds` spread
    over each paired work of `split` (`data` is an `evaluate.EvalData`), translating
    `source` into `target`. One row per (work, segment, calibration row), with columns
    row, work, start (seconds) and the signals. `notes` (the dataset's score notes)
    adds the score-based content signals. `translate` (source clip -> a model's output in
    `target`) adds the row "translation", scored on the same clips as the others."""
    from .evaluate import _spread

    sr = data.sample_rate
    for d in (source, target):
        if d not in data.domains:
            raise ValueError(f"{d!r} is not a domain of the data {data.domains}")
    files = data.split(split)
    tgt_files = {p.stem: p for p in files[target]}
    pairs = [(p, tgt_files[p.stem]) for p in files[source] if p.stem in tgt_files]
    if len(pairs) < 2:
        raise ValueError(f"{split} split: {len(pairs)} works rendered in both {source!r} and "
                         f"{target!r}; calibration needs at least 2 paired works")
    train = data.split("train")[target]
    if not train:
        raise ValueError(f"domain {target!r} has no training audio for its average spectrum")
    spectrum = average_spectrum([data.load(p) for p in _spread(train, spectrum_files)])
    rng = np.random.default_rng([seed, 1616])
    length = round(seconds * sr)
    audio = {p: data.load(p) for pair in pairs for p in pair}
    works = [p.stem for p, _ in pairs]
    events = ({w: notes.events(w, target) for w in works} if notes is not None else {})
    for (_, g) in pairs:
        if notes is not None:
            notes.check_rendering(g.stem, target, len(audio[g]), sr)
    records = []
    for i, (s_path, g_path) in enumerate(pairs):
        work = s_path.stem
        others = [pairs[(i + k) % len(pairs)][1] for k in range(1, min(other_works, len(pairs) - 1) + 1)]
        wrong = [events[o.stem] for o in others] if notes is not None else []
        for start in content.segment_starts(audio[g_path], sr, seconds, segments):
            cut = lambda a, s=start: np.pad(a[s:s + length], (0, max(0, s + length - len(a))))
            gt, src = cut(audio[g_path]), cut(audio[s_path])
            unrelated = []
            for o in others:
                oa = audio[o]
                s = start if start + length <= len(oa) else content.segment_starts(oa, sr, seconds, 1)[0]
                unrelated.append(cut(oa, s))
            rows = calibration_rows(gt, src, unrelated[0], target_spectrum=spectrum, rng=rng,
                                    mu_law=mu_law)
            if translate is not None:
                out = np.asarray(translate(src), dtype=np.float32)[:length]
                rows["translation"] = np.pad(out, (0, length - len(out)))
            for name, cand in rows.items():
                sig = clip_signals(cand, sr, classifier=classifier, target=target, source=src,
                                   ground_truth=gt, start=start / sr, events=events.get(work),
                                   wrong_events=wrong, unrelated=unrelated)
                records.append({"row": name, "work": work, "start": start / sr, **sig})
    return pd.DataFrame(records)

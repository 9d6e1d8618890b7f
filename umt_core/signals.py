"""Per-clip audio signals and the instrument classifier that the evaluation and the
calibration rows share: log-mel features and distance, STFT chroma agreement with the
source (a secondary content column; `umt_core.content` measures the notes), spectral
flatness, the model's mu-law degradation, and a logistic-regression classifier of the
instrument trained on a dataset's audio.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import torch
from threadpoolctl import threadpool_limits

from .audio import mu_law_decode, mu_law_encode
from .model import N_CLASSES

# Feature settings (16 kHz audio; other rates scale the window in time).
N_MELS = 64
MEL_FFT = 1024
MEL_HOP = 256
CHROMA_FFT = 4096
CHROMA_HOP = 512
DB_FLOOR = -80.0
ACTIVE_DB = -40.0  # a frame within this many dB of the loudest frame is "active"

# Generation-like noise for the classifier's training audio: standard deviations of
# an integer offset added to the mu-law codes (0 = quantisation only, as greedy output).
CODE_NOISE_LEVELS = (0.0, 0.5, 1.0, 2.0, 3.0)


# --------------------------------------------------------------------------- signals


def as_audio(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(torch.as_tensor(a).detach().cpu(), dtype=np.float32))


def _same_length(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(a), len(b))
    return a[:n], b[:n]


def loud_frames(energy: np.ndarray, db: float = ACTIVE_DB) -> np.ndarray:
    """Frames whose energy is within `db` dB of the loudest frame."""
    peak = float(energy.max()) if energy.size else 0.0
    if peak <= 0:
        return np.zeros(energy.shape, dtype=bool)
    return energy >= peak * 10 ** (db / 10)


@functools.lru_cache(maxsize=8)
def _mel_basis(sample_rate: int) -> np.ndarray:
    return librosa.filters.mel(sr=sample_rate, n_fft=MEL_FFT, n_mels=N_MELS,
                               fmax=sample_rate / 2).astype(np.float32)


def power_spectrogram(audio: np.ndarray) -> np.ndarray:
    return np.abs(librosa.stft(as_audio(audio), n_fft=MEL_FFT, hop_length=MEL_HOP)) ** 2


def logmel(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Log-mel spectrogram (N_MELS, frames) in dB relative to its own maximum, floored
    at -80 dB: independent of the clip's level."""
    S = _mel_basis(sample_rate) @ power_spectrogram(audio)
    peak = float(S.max()) if S.size else 0.0
    if peak <= 1e-12:
        return np.full(S.shape, DB_FLOOR, dtype=np.float32)
    return np.maximum(10 * np.log10(np.maximum(S, 1e-12) / peak), DB_FLOOR).astype(np.float32)


def instrument_features(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Per log-mel band over the active frames: mean, standard deviation and mean
    absolute change from frame to frame (how notes decay or sustain)."""
    L = logmel(audio, sample_rate)
    active = loud_frames(np.power(10, L / 10).sum(axis=0))
    if active.sum() < 2:
        active = np.ones(L.shape[1], dtype=bool)
    La = L[:, active]
    change = np.abs(np.diff(L, axis=1))[:, active[1:]] if L.shape[1] > 1 else np.zeros_like(La)
    if change.shape[1] == 0:
        change = np.zeros((L.shape[0], 1), dtype=L.dtype)
    return np.concatenate([La.mean(axis=1), La.std(axis=1), change.mean(axis=1)]).astype(np.float32)


def chroma(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """12-bin chroma (12, frames) from a long-window STFT, tuning fixed at A440."""
    return librosa.feature.chroma_stft(
        y=as_audio(audio), sr=sample_rate, n_fft=CHROMA_FFT, hop_length=CHROMA_HOP,
        tuning=0.0, norm=None,
    )


def chroma_agreement(reference: np.ndarray, candidate: np.ndarray, sample_rate: int) -> float:
    """Time-aligned pitch-content agreement in [-1, 1]: the correlation between the two
    12-bin chroma vectors of each frame, averaged over the reference's active frames.
    Identical notes give 1; unrelated notes give roughly the key's overlap."""
    ref, cand = _same_length(as_audio(reference), as_audio(candidate))
    A, B = chroma(ref, sample_rate), chroma(cand, sample_rate)
    frames = loud_frames(A.sum(axis=0))
    if not frames.any():
        return float("nan")
    A, B = A[:, frames], B[:, frames]
    A = A - A.mean(axis=0)
    B = B - B.mean(axis=0)
    na, nb = np.linalg.norm(A, axis=0), np.linalg.norm(B, axis=0)
    ok = (na > 1e-9) & (nb > 1e-9)
    r = np.zeros(A.shape[1])
    r[ok] = (A[:, ok] * B[:, ok]).sum(axis=0) / (na[ok] * nb[ok])
    return float(r.mean())


def logmel_distance(a: np.ndarray, b: np.ndarray, sample_rate: int) -> float:
    """Mean absolute difference (dB) of the time-aligned, level-normalised log-mels."""
    x, y = _same_length(as_audio(a), as_audio(b))
    return float(np.abs(logmel(x, sample_rate) - logmel(y, sample_rate)).mean())


def spectral_flatness(audio: np.ndarray, sample_rate: int) -> float:
    """Median spectral flatness of the active frames: about 0.56 for white noise,
    below 0.05 for pitched music."""
    a = as_audio(audio)
    if np.abs(a).max() <= 0:
        return 0.0
    S = power_spectrogram(a)
    flat = librosa.feature.spectral_flatness(S=S, power=1.0)[0]
    active = loud_frames(S.sum(axis=0))
    return float(np.median(flat[active])) if active.any() else 0.0


def small_blas(fn):
    """Run `fn` with single-threaded BLAS: the matrices here are small, and BLAS threads
    fighting over a busy CPU made them 10-50 times slower."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------- instrument classifier


def degrade(audio: np.ndarray, rng: np.random.Generator, mu_law: str = "torchaudio",
            code_noise: float | None = None) -> np.ndarray:
    """The audio as a model would output it: mu-law quantised, with an integer noise of
    standard deviation `code_noise` (drawn from CODE_NOISE_LEVELS when None) added to
    the codes, as sampling from the decoder's softmax does."""
    return degrade_many([audio], rng, mu_law, code_noise)[0]


def degrade_many(clips: Sequence[np.ndarray], rng: np.random.Generator,
                 mu_law: str = "torchaudio", code_noise: float | None = None) -> list[np.ndarray]:
    """`degrade` for many clips at once (one quantisation call; the noise level is drawn
    per clip when `code_noise` is None)."""
    clips = [as_audio(c) for c in clips]
    if not clips:
        return []
    bounds = np.cumsum([0] + [len(c) for c in clips])
    codes = mu_law_encode(torch.from_numpy(np.concatenate(clips)), mu_law).numpy()
    levels = [float(rng.choice(CODE_NOISE_LEVELS)) if code_noise is None else float(code_noise)
              for _ in clips]
    for (a, b), level in zip(itertools.pairwise(bounds), levels):
        if level > 0:
            codes[a:b] += np.rint(rng.normal(0.0, level, size=b - a)).astype(codes.dtype)
    out = mu_law_decode(torch.from_numpy(np.clip(codes, 0, N_CLASSES - 1)), mu_law).numpy()
    return [out[a:b] for a, b in itertools.pairwise(bounds)]


def windows(audio: np.ndarray, length: int, max_windows: int | None = None,
            hop: int | None = None) -> list[np.ndarray]:
    """Windows of `length` samples every `hop` (default: `length`, no overlap) that are
    not (nearly) silent."""
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    out = []
    for start in range(0, len(audio) - length + 1, hop or length):
        w = audio[start:start + length]
        if peak > 0 and np.sqrt(np.mean(w.astype(np.float64) ** 2)) > 0.01 * peak:
            out.append(w)
        if max_windows is not None and len(out) >= max_windows:
            break
    return out


@dataclass
class InstrumentClassifier:
    """Names the instrument of a clip; trained by `train_instrument_classifier`.

    Every clip it judges first goes through the model's mu-law quantisation (a model's
    output already has; clean recordings do not), so quantisation noise says nothing.
    """

    domains: list[str]
    sample_rate: int
    pipeline: Any
    mu_law: str = "torchaudio"
    report: dict[str, Any] = field(default_factory=dict)

    def features(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        rng = np.random.default_rng(0)  # unused by noise-free quantisation
        quantised = degrade_many(clips, rng, self.mu_law, 0.0)
        return np.stack([instrument_features(c, self.sample_rate) for c in quantised])

    def predict_proba(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        X = self.features(clips)
        proba = self.pipeline.predict_proba(X)
        order = [list(self.pipeline.classes_).index(d) for d in self.domains]
        return proba[:, order]

    def predict(self, clips: Sequence[np.ndarray]) -> list[str]:
        return [self.domains[i] for i in self.predict_proba(clips).argmax(axis=1)]


def _labelled_windows(audio: dict[str, Sequence[np.ndarray]], length: int, per_domain: int,
                      rng: np.random.Generator) -> tuple[list[np.ndarray], list[str]]:
    clips, labels = [], []
    for domain, items in audio.items():
        ws = [w for a in items for w in windows(as_audio(a), length, hop=length // 2)]
        if not ws:
            raise ValueError(f"domain {domain!r}: no non-silent {length}-sample window to learn from")
        if len(ws) > per_domain:
            ws = [ws[i] for i in sorted(rng.choice(len(ws), per_domain, replace=False))]
        clips += ws
        labels += [domain] * len(ws)
    return clips, labels


@small_blas
def train_instrument_classifier(
    train: dict[str, Sequence[np.ndarray]], sample_rate: int, *,
    heldout: dict[str, Sequence[np.ndarray]] | None = None, seconds: float = 2.0,
    mu_law: str = "torchaudio", windows_per_domain: int = 120, seed: int = 0,
) -> InstrumentClassifier:
    """Logistic regression on log-mel statistics of `seconds`-long windows.

    Every training window is used twice: quantised as the model's mu-law (greedy-like)
    and with generation-like code noise. The held-out accuracy is measured on
    `heldout` (other files, e.g. the val split) or, without it, on a quarter of each
    domain's files; both clean-quantised and noisy versions are reported.
    """
    # On use: scikit-learn takes seconds to import (measured) and every CLI command
    # imports this module to list its own.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng([seed, 7])
    domains = list(train)
    length = max(int(seconds * sample_rate), MEL_FFT)
    if heldout is None:
        heldout, rest = {}, {}
        for d, items in train.items():
            items = list(items)
            k = len(items) // 4
            heldout[d], rest[d] = items[:k], items[k:]
        if any(not v for v in heldout.values()):
            heldout = None  # too few files to hold any out
        else:
            train = rest
    clips, labels = _labelled_windows(train, length, windows_per_domain, rng)
    clf = InstrumentClassifier(domains, sample_rate, None, mu_law)
    # Each window twice: quantised only (greedy-like) and with generation-like noise
    # (`features` quantises again: no change for "torchaudio", at most one code step
    # for the truncating "reference" variant).
    X = np.concatenate([clf.features(degrade_many(clips, rng, mu_law, noise))
                        for noise in (0.0, None)])
    y = np.array(labels * 2)
    clf.pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=3000))
    clf.pipeline.fit(X, y)
    report: dict[str, Any] = {"train_windows": len(clips), "window_seconds": length / sample_rate,
                              "mu_law": mu_law, "code_noise_levels": list(CODE_NOISE_LEVELS)}
    if heldout is not None:
        hclips, hlabels = _labelled_windows(heldout, length, windows_per_domain, rng)
        clean = clf.predict(hclips)
        noisy = clf.predict(degrade_many(hclips, rng, mu_law, max(CODE_NOISE_LEVELS)))
        report.update(
            heldout_windows=len(hclips),
            heldout_accuracy=float(np.mean([p == t for p, t in zip(clean, hlabels)])),
            heldout_accuracy_noisy=float(np.mean([p == t for p, t in zip(noisy, hlabels)])),
        )
    clf.report = report
    return clf


# ------------------------------------------------------------------------ clips


def spread(items: Sequence[Path], n: int) -> list[Path]:
    """At most `n` items, evenly spread over the list."""
    if len(items) <= n:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, max(n, 1))]


def cut(audio: np.ndarray, start: int, length: int) -> np.ndarray:
    """`length` samples from `start`, zero-padded past the end."""
    w = audio[start:start + length]
    if len(w) < length:
        w = np.pad(w, (0, length - len(w)))
    return np.ascontiguousarray(w, dtype=np.float32)

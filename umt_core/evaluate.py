"""Objective evaluation of translations: does it sound like the target instrument,
does it keep the notes, is it more than a copy, and does the latent still carry the
source instrument?

No single number says whether a translation worked. A decoder can stamp its timbre
on babble (100% "classified as the target", notes gone), or copy its input (notes
perfect, instrument unchanged). So every clip gets several signals and a combined
verdict, and every table carries reference rows computed on the same clips:

- ``translation``: the model's output for a source clip and a target domain;
- ``identity``: the source itself, relabelled as the target (a perfect copy);
- ``ground_truth``: the real rendering of the same notes by the target instrument
  (paired test set);
- ``unrelated``: another test clip of the target instrument (right timbre, wrong notes);
- ``reconstruction``: the source decoded by its own domain's decoder.

Signals per clip (thresholds in `Criteria`):

- instrument classifier verdict (log-mel statistics, logistic regression trained on
  the dataset's training audio after the model's mu-law quantisation and
  generation-like code noise, so it judges the instrument and not the artefacts);
- chroma agreement with the source (time-aligned, frame-wise correlation of 12-bin
  chroma), compared with the same measure between the source and unrelated clips of
  the target instrument (the control);
- waveform correlation with the source (a copy correlates highly; the real rendering
  by another instrument correlates about 0.05);
- log-mel distance to the paired ground truth and to the source (direction);
- spectral flatness (a diverged model outputs noise).

``success = classified as target AND chroma clearly above the control AND not a copy
AND closer to the target than to the source``.

Model-level signals: a fresh logistic-regression probe predicting the source domain
from encoder latents of held-out audio (against chance), and the latent-use gap (the
reconstruction loss with a time-shuffled latent minus the loss with the true one).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from .audio import load_audio, mu_law_decode, mu_law_encode
from .checkpoint import load_model
from .data import load_manifest, split_files
from .forward import reconstruction_loss_sum
from .generate import translate
from .model import N_CLASSES
from .options import non_negative_float, positive_float, positive_int
from .outputs import output_file
from .paths import resolve

CONDITIONS = ("translation", "identity", "ground_truth", "unrelated", "reconstruction")

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


@dataclass
class Criteria:
    """Thresholds of the per-clip verdicts."""

    copy_correlation: float = 0.3  # waveform correlation with the source above this = copy
    content_margin: float = 0.05  # chroma agreement must beat the best control by this
    noise_flatness: float = 0.3  # median spectral flatness of active frames above this = noise
    silent_peak: float = 1e-3  # peak amplitude below this = silent output


# --------------------------------------------------------------------------- signals


def _as_audio(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(torch.as_tensor(a).detach().cpu(), dtype=np.float32))


def _same_length(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(a), len(b))
    return a[:n], b[:n]


def _active(energy: np.ndarray, db: float = ACTIVE_DB) -> np.ndarray:
    """Frames whose energy is within `db` dB of the loudest frame."""
    peak = float(energy.max()) if energy.size else 0.0
    if peak <= 0:
        return np.zeros(energy.shape, dtype=bool)
    return energy >= peak * 10 ** (db / 10)


@functools.lru_cache(maxsize=8)
def _mel_basis(sample_rate: int) -> np.ndarray:
    return librosa.filters.mel(sr=sample_rate, n_fft=MEL_FFT, n_mels=N_MELS,
                               fmax=sample_rate / 2).astype(np.float32)


def _power_spectrogram(audio: np.ndarray) -> np.ndarray:
    return np.abs(librosa.stft(_as_audio(audio), n_fft=MEL_FFT, hop_length=MEL_HOP)) ** 2


def logmel(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Log-mel spectrogram (N_MELS, frames) in dB relative to its own maximum, floored
    at -80 dB: independent of the clip's level."""
    S = _mel_basis(sample_rate) @ _power_spectrogram(audio)
    peak = float(S.max()) if S.size else 0.0
    if peak <= 1e-12:
        return np.full(S.shape, DB_FLOOR, dtype=np.float32)
    return np.maximum(10 * np.log10(np.maximum(S, 1e-12) / peak), DB_FLOOR).astype(np.float32)


def instrument_features(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Per log-mel band over the active frames: mean, standard deviation and mean
    absolute change from frame to frame (how notes decay or sustain)."""
    L = logmel(audio, sample_rate)
    active = _active(np.power(10, L / 10).sum(axis=0))
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
        y=_as_audio(audio), sr=sample_rate, n_fft=CHROMA_FFT, hop_length=CHROMA_HOP,
        tuning=0.0, norm=None,
    )


def chroma_agreement(reference: np.ndarray, candidate: np.ndarray, sample_rate: int) -> float:
    """Time-aligned pitch-content agreement in [-1, 1]: the correlation between the two
    12-bin chroma vectors of each frame, averaged over the reference's active frames.
    Identical notes give 1; unrelated notes give roughly the key's overlap."""
    ref, cand = _same_length(_as_audio(reference), _as_audio(candidate))
    A, B = chroma(ref, sample_rate), chroma(cand, sample_rate)
    frames = _active(A.sum(axis=0))
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


def waveform_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two time-aligned waveforms (0 if either is constant)."""
    x, y = _same_length(_as_audio(a).astype(np.float64), _as_audio(b).astype(np.float64))
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / den) if den > 1e-12 else 0.0


def logmel_distance(a: np.ndarray, b: np.ndarray, sample_rate: int) -> float:
    """Mean absolute difference (dB) of the time-aligned, level-normalised log-mels."""
    x, y = _same_length(_as_audio(a), _as_audio(b))
    return float(np.abs(logmel(x, sample_rate) - logmel(y, sample_rate)).mean())


def spectral_flatness(audio: np.ndarray, sample_rate: int) -> float:
    """Median spectral flatness of the active frames: about 0.56 for white noise,
    below 0.05 for pitched music."""
    a = _as_audio(audio)
    if np.abs(a).max() <= 0:
        return 0.0
    S = _power_spectrogram(a)
    flat = librosa.feature.spectral_flatness(S=S, power=1.0)[0]
    active = _active(S.sum(axis=0))
    return float(np.median(flat[active])) if active.any() else 0.0


def is_noise(audio: np.ndarray, sample_rate: int, criteria: Criteria | None = None) -> bool:
    """The output sanity check: is this (broadband) noise rather than music?"""
    return spectral_flatness(audio, sample_rate) > (criteria or Criteria()).noise_flatness


def _small_blas(fn):
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
    clips = [_as_audio(c) for c in clips]
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
        ws = [w for a in items for w in windows(_as_audio(a), length, hop=length // 2)]
        if not ws:
            raise ValueError(f"domain {domain!r}: no non-silent {length}-sample window to learn from")
        if len(ws) > per_domain:
            ws = [ws[i] for i in sorted(rng.choice(len(ws), per_domain, replace=False))]
        clips += ws
        labels += [domain] * len(ws)
    return clips, labels


@_small_blas
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


# ------------------------------------------------------------------- latent signals


def latent_features(model, clips: Sequence[np.ndarray], batch: int = 16) -> np.ndarray:
    """Per clip: mean and standard deviation over time of each encoder latent channel.
    Clips of one call must have the same length."""
    feats = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(clips), batch):
            x = torch.from_numpy(np.stack([_as_audio(c) for c in clips[i:i + batch]]))
            z = model.encoder(mu_law_encode(x, model.config.mu_law).to(device)).float().cpu()
            std = z.std(dim=-1) if z.shape[-1] > 1 else torch.zeros_like(z[..., 0])
            feats.append(torch.cat([z.mean(dim=-1), std], dim=1).numpy())
    return np.concatenate(feats)


@_small_blas
def latent_probe(features: np.ndarray, labels: Sequence[str], groups: Sequence[str] | None = None,
                 folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Cross-validated accuracy of a fresh logistic regression predicting the domain
    from latent features, against chance (the majority share). With `groups` (e.g. the
    work a segment comes from), folds never split a group, so the probe cannot
    recognise the notes."""
    # On use: scikit-learn takes seconds to import (measured) and every CLI command
    # imports this module to list its own.
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    _, counts = np.unique(y, return_counts=True)
    chance = float(counts.max() / counts.sum())
    result = {"n": len(y), "n_domains": len(counts), "chance": chance}
    if len(counts) < 2:
        return {**result, "accuracy": float("nan"), "folds": 0}
    if groups is not None and len(set(groups)) >= 2:
        k = min(folds, len(set(groups)))
        splitter = GroupKFold(n_splits=k)
        split_groups = np.asarray(groups)
    else:
        k = max(2, min(folds, int(counts.min())))
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        split_groups = None
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
    pred = cross_val_predict(probe, X, y, cv=splitter, groups=split_groups)
    return {**result, "accuracy": float(np.mean(pred == y)), "folds": int(k)}


def latent_use_gap(model, clips: dict[str, Sequence[np.ndarray]], seed: int = 0) -> pd.DataFrame:
    """Per domain: the decoder's training loss (teacher-forced cross-entropy in nats per
    sample, or the spectral loss) with the true latent and with its frames shuffled in
    time; the gap says how much the decoder uses the latent (0 = it ignores it)."""
    rows = []
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for domain, items in clips.items():
            if not items:
                continue
            x = torch.from_numpy(np.stack([_as_audio(c) for c in items]))
            codes = mu_law_encode(x, model.config.mu_law).to(device)
            z = model.encoder(codes)
            frames = z.shape[-1]
            if frames > 1:
                perm = torch.randperm(frames, generator=g)
                while frames > 1 and bool((perm == torch.arange(frames)).all()):
                    perm = torch.randperm(frames, generator=g)
                z_shuffled = z[..., perm.to(device)]
            elif z.shape[0] > 1:
                z_shuffled = z.roll(1, dims=0)
            else:
                rows.append({"domain": domain, "loss_true": float("nan"),
                             "loss_shuffled": float("nan"), "gap": float("nan")})
                continue
            # the decoder's own training loss: nats per sample, or the spectral loss
            k = model.domain_index(domain)
            true = float(reconstruction_loss_sum(model, k, codes, z)) / codes.numel()
            shuf = float(reconstruction_loss_sum(model, k, codes, z_shuffled)) / codes.numel()
            rows.append({"domain": domain, "loss_true": true, "loss_shuffled": shuf,
                         "gap": shuf - true})
    return pd.DataFrame(rows, columns=["domain", "loss_true", "loss_shuffled", "gap"])


# ------------------------------------------------------------------------ the data


@dataclass
class EvalData:
    """Audio files of a dataset: split -> domain -> sorted files (data layout
    data/<dataset>/<domain>/<split>/<stem>.wav; on the paired test split the same stem
    means the same notes in every domain)."""

    sample_rate: int
    domains: list[str]
    files: dict[str, dict[str, list[Path]]]

    @classmethod
    def from_manifest(cls, manifest) -> EvalData:
        if isinstance(manifest, str | Path):
            manifest = load_manifest(manifest)
        files = {}
        for split in ("train", "val", "test"):
            try:
                files[split] = {d: [Path(p) for p in ps]
                                for d, ps in split_files(manifest, split).items()}
            except (FileNotFoundError, ValueError):
                files[split] = {}
        if not manifest.lock_path.is_file() and not any(files.get("test", {}).values()):
            from .data.manifest import DataError, show_path

            raise DataError(f"dataset {manifest.name!r} is not prepared ({manifest.lock_path} "
                            f"does not exist and {manifest.data_dir} holds no test clips); run "
                            f"`python -m umt_core prep --manifest {show_path(manifest.path)}` "
                            "first")
        return cls(int(manifest.sample_rate), list(manifest.domains), files)

    @classmethod
    def from_folder(cls, root: str | Path, sample_rate: int,
                    domains: Sequence[str] | None = None) -> EvalData:
        root = Path(root)
        if domains is None:
            domains = sorted(p.name for p in root.iterdir() if p.is_dir())
        files = {
            split: {d: sorted((root / d / split).glob("*.wav")) for d in domains}
            for split in ("train", "val", "test")
        }
        return cls(sample_rate, list(domains), files)

    def split(self, name: str) -> dict[str, list[Path]]:
        return {d: list(self.files.get(name, {}).get(d, [])) for d in self.domains}

    def load(self, path: Path) -> np.ndarray:
        from .data.identity import verify_locked_file

        verify_locked_file(path)  # a file of a prepared dataset must still match its lock
        return load_audio(path, self.sample_rate)[0]


def _spread(items: Sequence[Path], n: int) -> list[Path]:
    """At most `n` items, evenly spread over the list."""
    if len(items) <= n:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, max(n, 1))]


def _start_of_music(audio: np.ndarray, sample_rate: int) -> int:
    """First sample within 0.05 s before the music gets loud (5% of the peak)."""
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    if peak <= 0:
        return 0
    first = int(np.argmax(np.abs(audio) > 0.05 * peak))
    return max(0, first - int(0.05 * sample_rate))


def _cut(audio: np.ndarray, start: int, length: int) -> np.ndarray:
    w = audio[start:start + length]
    if len(w) < length:
        w = np.pad(w, (0, length - len(w)))
    return np.ascontiguousarray(w, dtype=np.float32)


def dataset_classifier(data: EvalData, *, seconds: float = 2.0, mu_law: str = "torchaudio",
                       seed: int = 0, files: int = 12) -> InstrumentClassifier:
    """The instrument classifier of a dataset: trained on up to `files` training files
    per domain, checked on half as many validation files (or held-out training files)."""
    train, val = data.split("train"), data.split("val")
    missing = [d for d in data.domains if not train[d]]
    if missing:
        raise ValueError(f"domains {missing} have no training audio; prepare the dataset first")
    train_audio = {d: [data.load(p) for p in _spread(train[d], files)] for d in data.domains}
    heldout = ({d: [data.load(p) for p in _spread(val[d], max(files // 2, 1))]
                for d in data.domains} if all(val[d] for d in data.domains) else None)
    return train_instrument_classifier(train_audio, data.sample_rate, heldout=heldout,
                                       seconds=seconds, mu_law=mu_law, seed=seed)


# ---------------------------------------------------------------------- evaluation

# translator(audio list, source domain, stems, targets) -> {target: list of audio}
Translator = Callable[[list[np.ndarray], str, list[str], list[str]], dict[str, list[np.ndarray]]]


def model_translator(model, *, temperature: float = 1.0, seed: int = 0,
                     progress: bool = False, chunk_samples: int = 0,
                     overlap_samples: int | None = None) -> Translator:
    """Translate with `umt_core.generate.translate` (batched over the clips). Each clip
    in one piece by default, as the study's figures were made (the clips are short
    and already a batch); `chunk_samples` > 0 translates clips longer than that in
    cross-faded chunks (`umt_core.generate.chunked`)."""

    def run(audio: list[np.ndarray], source: str, stems: list[str], targets: list[str]):
        out = translate(model, audio, model.config.sample_rate, targets,
                        temperature=temperature, seed=seed, progress=progress,
                        chunk_samples=chunk_samples, overlap_samples=overlap_samples)
        return {t: [_as_audio(a) for a in out[t]] for t in targets}

    return run


@dataclass
class Evaluation:
    """Per-clip rows (`clips`) and everything derived from them."""

    clips: pd.DataFrame
    classifier: dict[str, Any]
    settings: dict[str, Any]
    latent_probe: dict[str, Any] | None = None
    latent_use: pd.DataFrame | None = None
    audio: dict[tuple[str, str, str, str], np.ndarray] = field(default_factory=dict, repr=False)

    SIGNALS = ("classified_as_target", "classified_as_source", "chroma", "control_chroma",
               "content_ok", "wave_corr", "is_copy", "dist_target", "dist_source",
               "closer_to_target", "flatness", "noise", "silent", "success")

    def summary(self, by: Sequence[str] = ("system", "condition")) -> pd.DataFrame:
        """Mean of every signal per group (shares for the yes/no ones), with n."""
        df = self.clips.copy()
        cols = [c for c in self.SIGNALS if c in df]
        for c in cols:
            df[c] = pd.to_numeric(df[c].astype("Float64"), errors="coerce")
        g = df.groupby(list(by), sort=False)
        out = g[cols].mean()
        out.insert(0, "n", g.size())
        out = out.reset_index()
        order = {c: i for i, c in enumerate(CONDITIONS)}
        if "condition" in out:
            out = out.sort_values([*[b for b in by if b != "condition"], "condition"],
                                  key=lambda s: s.map(order) if s.name == "condition" else s,
                                  kind="stable")
        return out.reset_index(drop=True)

    def by_pair(self) -> pd.DataFrame:
        return self.summary(("system", "condition", "source", "target"))

    def confusion(self, condition: str = "translation", system: str | None = None) -> pd.DataFrame:
        """Counts of (source domain, classifier verdict) for one condition."""
        df = self.clips[self.clips.condition == condition]
        if system is not None:
            df = df[df.system == system]
        domains = self.settings.get("classifier_domains") or sorted(set(df.predicted))
        table = pd.crosstab(df.source, df.predicted)
        return table.reindex(columns=domains, fill_value=0)

    def key_figures(self) -> dict[str, float | str]:
        """A flat dict of the headline numbers (for a notebook's results JSON)."""
        out: dict[str, float | str] = {}
        for k in ("heldout_accuracy", "heldout_accuracy_noisy"):
            if k in self.classifier:
                out[f"classifier_{k}"] = self.classifier[k]
        for row in self.summary().to_dict("records"):
            prefix = f"{row['system']}_{row['condition']}"
            for col in ("classified_as_target", "chroma", "wave_corr", "is_copy",
                        "closer_to_target", "noise", "success"):
                v = row.get(col)
                if v is not None and not pd.isna(v):
                    out[f"{prefix}_{col}"] = float(v)
        if self.latent_probe:
            out["latent_probe_accuracy"] = self.latent_probe["accuracy"]
            out["latent_probe_chance"] = self.latent_probe["chance"]
        if self.latent_use is not None and len(self.latent_use):
            out["latent_use_gap"] = float(self.latent_use.gap.mean())
        return out

    def examples(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Translated clips with their source and (where paired) ground truth:
        dicts with system, source, target, clip and the audio of each."""
        out = []
        for (cond, src, stem, tgt), audio in self.audio.items():
            if cond != "translation":
                continue
            out.append({"system": self.settings["system"], "source": src, "target": tgt,
                        "clip": stem, "source_audio": self.audio[("identity", src, stem, tgt)],
                        "translation": audio,
                        "ground_truth": self.audio.get(("ground_truth", src, stem, tgt))})
            if limit is not None and len(out) >= limit:
                break
        return out

    def to_json(self) -> dict[str, Any]:
        def records(df: pd.DataFrame) -> list[dict[str, Any]]:
            return json.loads(df.to_json(orient="records"))

        confusion = {}
        for cond in self.clips.condition.unique():
            c = self.confusion(cond)
            confusion[cond] = {str(s): {str(k): int(v) for k, v in r.items()}
                               for s, r in c.iterrows()}
        return {
            "settings": self.settings,
            "classifier": self.classifier,
            "summary": records(self.summary()),
            "pairs": records(self.by_pair()),
            "confusion": confusion,
            "latent_probe": self.latent_probe,
            "latent_use": records(self.latent_use) if self.latent_use is not None else None,
            "key_figures": self.key_figures(),
            "clips": records(self.clips),
        }


def control_agreement(source: np.ndarray, controls: Sequence[np.ndarray],
                      sample_rate: int) -> float:
    """The bar for content preservation: the highest chroma agreement between the
    source and unrelated clips (other works) of the target instrument."""
    return max(chroma_agreement(source, u, sample_rate) for u in controls)


def judge(source: np.ndarray, candidate: np.ndarray, sample_rate: int, *, predicted: str,
          source_domain: str, target_domain: str, paired: np.ndarray | None,
          control: float | None, proba: dict[str, float] | None = None,
          criteria: Criteria | None = None, translation: bool = True) -> dict[str, Any]:
    """Every per-clip signal of one candidate against its source, and the verdict.

    `control` is `control_agreement` of the source with unrelated clips of the target
    domain: the candidate's chroma agreement must clear it by `content_margin`.
    `translation=False` (a reconstruction) leaves the translation-only verdicts empty.
    """
    c = criteria or Criteria()
    chroma_c = chroma_agreement(source, candidate, sample_rate)
    has_control = control is not None and not math.isnan(control)
    control_max = control if has_control else float("nan")
    wave = waveform_correlation(source, candidate)
    flat = spectral_flatness(candidate, sample_rate)
    row: dict[str, Any] = {
        "predicted": predicted,
        "classified_as_target": predicted == target_domain,
        "classified_as_source": predicted == source_domain,
        "target_prob": (proba or {}).get(target_domain, float("nan")),
        "chroma": chroma_c,
        "control_chroma": control_max,
        "content_ok": bool(chroma_c > control_max + c.content_margin) if has_control else None,
        "wave_corr": wave,
        "is_copy": bool(wave > c.copy_correlation),
        "dist_source": logmel_distance(candidate, source, sample_rate),
        "dist_target": float("nan"),
        "closer_to_target": None,
        "direction_basis": None,
        "flatness": flat,
        "noise": bool(flat > c.noise_flatness),
        "silent": bool(np.abs(_as_audio(candidate)).max() < c.silent_peak),
        "success": None,
    }
    if not translation:
        return row
    if paired is not None:
        row["dist_target"] = logmel_distance(candidate, paired, sample_rate)
        row["closer_to_target"] = bool(row["dist_target"] < row["dist_source"])
        row["direction_basis"] = "paired"
    elif proba is not None:
        row["closer_to_target"] = bool(proba[target_domain] > proba.get(source_domain, 0.0))
        row["direction_basis"] = "classifier"
    verdicts = [row["classified_as_target"], row["content_ok"], not row["is_copy"],
                row["closer_to_target"]]
    row["success"] = None if any(v is None for v in verdicts) else bool(all(verdicts))
    return row


@_small_blas
def evaluate(
    model, data: EvalData, *, sources: Sequence[str] | None = None,
    targets: Sequence[str] | None = None, clips: int = 2, seconds: float = 2.0,
    temperature: float = 1.0, seed: int = 0, system: str = "model",
    translator: Translator | None = None, classifier: InstrumentClassifier | None = None,
    controls: int = 3, probe_seconds: float = 1.0, probe_segments: int = 24,
    gap_segments: int = 4, gap_seconds: float = 0.5, criteria: Criteria | None = None,
    classifier_files: int = 12, progress: bool = False,
) -> Evaluation:
    """Translate `clips` test clips of each source domain into each target domain and
    judge them, with the reference conditions on the same clips.

    `model=None` evaluates only the reference conditions (identity, ground truth,
    unrelated). `translator` replaces the model's generation (tests use it to stand in
    for a perfect or a copying model). `classifier` reuses a trained classifier; else
    one is trained on `classifier_files` training files per domain (spread over the
    sorted list) and checked on half as many validation files.
    """
    criteria = criteria or Criteria()
    sr = data.sample_rate
    if model is not None and model.config.sample_rate != sr:
        raise ValueError(f"model works at {model.config.sample_rate} Hz, the data at {sr} Hz")
    model_domains = list(model.domains) if model is not None else list(data.domains)
    sources = list(sources or data.domains)
    targets = list(targets or [d for d in model_domains if d in data.domains])
    _check_domains(data, model_domains, sources, targets)
    test = data.split("test")
    _check_test_audio(test, sources, targets)
    mu_law = model.config.mu_law if model is not None else "torchaudio"
    if classifier is None:
        classifier = dataset_classifier(data, seconds=seconds, mu_law=mu_law, seed=seed,
                                        files=classifier_files)
    if translator is None and model is not None:
        translator = model_translator(model, temperature=temperature, seed=seed,
                                      progress=progress)
    judged = _Judged(classifier, sr, criteria, system)
    clip_set = _TestClips(data, test, round(seconds * sr))
    for src in sources:
        chosen = clip_set.pick(src, targets, clips)
        src_audio, starts = clip_set.cut_from_music(chosen)
        stems = [p.stem for p in chosen]
        outputs: dict[str, list[np.ndarray]] = {}
        if translator is not None:
            wanted = [t for t in targets if t != src] + ([src] if src in model_domains else [])
            outputs = translator(src_audio, src, stems, wanted)
        for i, (stem, start, source) in enumerate(zip(stems, starts, src_audio)):
            _judge_clip(judged, clip_set, outputs, i, src, stem, start, source, targets, controls)
    probe, use = None, None
    if model is not None:
        probe, use = _latent_signals(model, data, sources, probe_seconds, probe_segments,
                                     gap_segments, gap_seconds, seed)
    settings = {
        "system": system, "sources": sources, "targets": targets, "clips": clips,
        "seconds": seconds, "temperature": temperature, "seed": seed,
        "sample_rate": sr, "criteria": asdict(criteria), "classifier_domains": classifier.domains,
    }
    return Evaluation(judged.table(), dict(classifier.report), settings, probe, use,
                      judged.audio)


def _check_domains(data: EvalData, model_domains: list[str], sources: list[str],
                   targets: list[str]) -> None:
    """Every source a domain of the data, every target a domain of both, some target."""
    for d in sources:
        if d not in data.domains:
            raise ValueError(f"source domain {d!r} is not in the data's domains {data.domains}")
    for d in targets:
        if d not in data.domains or d not in model_domains:
            raise ValueError(f"target domain {d!r} must be a domain of both the model "
                             f"{model_domains} and the data {data.domains}")
    if not targets:
        raise ValueError(f"the model's domains {model_domains} share none with the data's "
                         f"{data.domains}: nothing to translate to")


def _check_test_audio(test: dict[str, list[Path]], sources: list[str],
                      targets: list[str]) -> None:
    """A test clip for every domain, and two for every target (one is a control)."""
    for d in set(sources) | set(targets):
        if len(test[d]) < 1:
            raise ValueError(f"domain {d!r} has no test audio; prepare the dataset first")
    for d in targets:
        if len(test[d]) < 2:
            raise ValueError(f"domain {d!r} needs at least 2 test clips (one is the "
                             "unrelated-clip control)")


class _TestClips:
    """The test split's clips, read once each, cut to `length` samples."""

    def __init__(self, data: EvalData, test: dict[str, list[Path]], length: int):
        self.data, self.test, self.length = data, test, length
        self.sample_rate = data.sample_rate
        self._cache: dict[Path, np.ndarray] = {}

    def audio(self, path: Path) -> np.ndarray:
        if path not in self._cache:
            self._cache[path] = self.data.load(path)
        return self._cache[path]

    def file(self, domain: str, stem: str) -> Path | None:
        return next((p for p in self.test[domain] if p.stem == stem), None)

    def pick(self, src: str, targets: list[str], clips: int) -> list[Path]:
        """Up to `clips` files of `src` spread over its sorted list, preferring works
        rendered in every target domain (paired ground truth)."""
        files = self.test[src]
        paired_files = [p for p in files if all(self.file(t, p.stem) for t in targets)]
        pool = paired_files or files
        picks = sorted({int(i) for i in np.linspace(0, len(pool) - 1, min(clips, len(pool)))})
        return [pool[i] for i in picks]

    def cut_from_music(self, files: list[Path]) -> tuple[list[np.ndarray], list[int]]:
        """Each file cut where its music starts; the cuts and their starts."""
        cuts, starts = [], []
        for p in files:
            a = self.audio(p)
            starts.append(_start_of_music(a, self.sample_rate))
            cuts.append(_cut(a, starts[-1], self.length))
        return cuts, starts


class _Judged:
    """The per-clip rows of an evaluation and the audio each one judged."""

    def __init__(self, classifier: InstrumentClassifier, sample_rate: int, criteria: Criteria,
                 system: str):
        self.classifier, self.sample_rate = classifier, sample_rate
        self.criteria, self.system = criteria, system
        self.rows: list[dict[str, Any]] = []
        self.audio: dict[tuple[str, str, str, str], np.ndarray] = {}

    def add(self, condition: str, src: str, stem: str, tgt: str, source: np.ndarray,
            candidate: np.ndarray, paired: np.ndarray | None, ctrl: float | None,
            translation: bool = True) -> None:
        proba_vec = self.classifier.predict_proba([candidate])[0]
        proba = dict(zip(self.classifier.domains, map(float, proba_vec)))
        predicted = self.classifier.domains[int(proba_vec.argmax())]
        row = judge(source, candidate, self.sample_rate, predicted=predicted,
                    source_domain=src, target_domain=tgt, paired=paired, control=ctrl,
                    proba=proba, criteria=self.criteria, translation=translation)
        self.rows.append({"system": self.system, "condition": condition, "source": src,
                          "target": tgt, "clip": stem, "paired": paired is not None, **row})
        self.audio[(condition, src, stem, tgt)] = candidate

    def table(self) -> pd.DataFrame:
        """The rows by source, target, clip and condition (in `CONDITIONS` order)."""
        order = {c: i for i, c in enumerate(CONDITIONS)}
        return pd.DataFrame(self.rows).sort_values(
            ["source", "target", "clip", "condition"],
            key=lambda s: s.map(order) if s.name == "condition" else s,
            kind="stable").reset_index(drop=True)


def _judge_clip(judged: _Judged, clip_set: _TestClips, outputs: dict[str, list[np.ndarray]],
                i: int, src: str, stem: str, start: int, source: np.ndarray,
                targets: list[str], controls: int) -> None:
    """The reconstruction of one source clip and, for each other target, its translation
    beside the reference conditions (identity, ground truth, an unrelated clip)."""
    length, sr = clip_set.length, clip_set.sample_rate
    if src in outputs:
        rec = _cut(_as_audio(outputs[src][i]), 0, length)
        judged.add("reconstruction", src, stem, src, source, rec, None, None, translation=False)
    for tgt in targets:
        if tgt == src:
            continue
        gt_file = clip_set.file(tgt, stem)
        paired = _cut(clip_set.audio(gt_file), start, length) if gt_file else None
        others = [p for p in clip_set.test[tgt] if p.stem != stem]
        k = (i + 1) % len(others)
        others = (others[k:] + others[:k])[:max(controls, 1)]
        unrelated = [_cut(clip_set.audio(p), _start_of_music(clip_set.audio(p), sr), length)
                     for p in others]
        ctrl = control_agreement(source, unrelated, sr)
        if tgt in outputs:
            out = _cut(_as_audio(outputs[tgt][i]), 0, length)
            judged.add("translation", src, stem, tgt, source, out, paired, ctrl)
        judged.add("identity", src, stem, tgt, source, source, paired, ctrl)
        if paired is not None:
            judged.add("ground_truth", src, stem, tgt, source, paired, paired, ctrl)
        judged.add("unrelated", src, stem, tgt, source, unrelated[0], paired, ctrl)


def _latent_signals(model, data: EvalData, domains: Sequence[str], probe_seconds: float,
                    probe_segments: int, gap_segments: int, gap_seconds: float, seed: int):
    sr = data.sample_rate
    pool = model.config.model.pool
    length = max(int(probe_seconds * sr) // pool * pool, pool)
    held = data.split("test")
    if not all(held[d] for d in domains):
        held = data.split("val")
    segs, labels, groups = [], [], []
    by_domain: dict[str, list[np.ndarray]] = {}
    for d in domains:
        got: list[np.ndarray] = []
        per_file = max(1, math.ceil(probe_segments / max(len(held[d]), 1)))
        for p in held[d]:
            ws = windows(data.load(p), length, per_file)
            got += ws
            groups += [p.stem] * len(ws)
            if len(got) >= probe_segments:
                break
        extra = len(got) - probe_segments
        if extra > 0:
            got, groups = got[:probe_segments], groups[:len(groups) - extra]
        segs += got
        labels += [d] * len(got)
        by_domain[d] = got
    probe = None
    if len(set(labels)) >= 2:
        probe = latent_probe(latent_features(model, segs), labels, groups, seed=seed)
        probe["segment_seconds"] = length / sr
    gap_len = max(int(gap_seconds * sr) // pool * pool, pool)
    gap_clips = {d: [w[:gap_len] for w in by_domain[d][:gap_segments] if len(w) >= gap_len]
                 for d in domains if d in model.domains}
    use = latent_use_gap(model, gap_clips, seed=seed)
    return probe, use


def format_tables(ev: Evaluation) -> str:
    """Plain-text rendering of the summary, confusion and latent tables."""
    cols = ["system", "condition", "n", "classified_as_target", "chroma", "control_chroma",
            "content_ok", "wave_corr", "is_copy", "closer_to_target", "noise", "success"]
    summary = ev.summary()
    parts = ["Per condition (shares for yes/no signals):",
             summary[[c for c in cols if c in summary]].to_string(index=False,
                                                                  float_format=lambda v: f"{v:.3f}")]
    if (ev.clips.condition == "translation").any():
        parts += ["", "Translations: source (rows) x classifier verdict (columns):",
                  ev.confusion("translation").to_string()]
    if (ev.clips.condition == "reconstruction").any():
        parts += ["", "Reconstructions: source (rows) x classifier verdict (columns):",
                  ev.confusion("reconstruction").to_string()]
    c = ev.classifier
    if "heldout_accuracy" in c:
        parts += ["", (f"Instrument classifier held-out accuracy: {c['heldout_accuracy']:.3f} "
                      f"(with generation-like noise: {c['heldout_accuracy_noisy']:.3f})")]
    if ev.latent_probe:
        p = ev.latent_probe
        parts += [(f"Latent domain probe: accuracy {p['accuracy']:.3f} vs chance "
                  f"{p['chance']:.3f} (n={p['n']})")]
    if ev.latent_use is not None and len(ev.latent_use):
        parts += ["Latent-use gap (loss with shuffled latent - loss with true latent, nats):",
                  ev.latent_use.to_string(index=False, float_format=lambda v: f"{v:.3f}")]
    return "\n".join(parts)


# --------------------------------------------------------------------------- CLI


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="objective metrics of a model's translations",
                       description="Translate test clips of a prepared dataset with a model "
                       "and measure them (instrument classifier, pitch agreement with the "
                       "ground truth); every file read is checked against the dataset's lock.")
    p.add_argument("--checkpoint", required=True,
                   help="umt_core checkpoint (.pt): a run's checkpoints/last.pt or best.pt")
    p.add_argument("--manifest", default=None,
                   help="dataset manifest (None: the one the checkpoint's preset trains on: "
                        "data_manifests/scores-8k.yaml for cpu, data_manifests/scores.yaml "
                        "for paper, data/manifests/scores-smoke.yaml for smoke)")
    p.add_argument("--sources", nargs="+", default=None, help="source domains (None: all)")
    p.add_argument("--targets", nargs="+", default=None, help="target domains (None: all)")
    p.add_argument("--clips", type=positive_int, default=2, help="test clips per source domain")
    p.add_argument("--seconds", type=positive_float, default=2.0, help="seconds per clip")
    p.add_argument("--temperature", type=non_negative_float, default=1.0,
                   help="sampling temperature, a finite number >= 0 (0 = greedy)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampling")
    p.add_argument("--json", required=True, help="write the results to this JSON file")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    out = output_file(resolve(args.json), "--json file")  # before any work
    model = load_model(resolve(args.checkpoint))
    if args.manifest is None:
        from .study.pipeline import default_manifest, preset_manifest

        args.manifest = preset_manifest(resolve("."), default_manifest(model.config.preset),
                                        model.config.preset, write=False)
    data = EvalData.from_manifest(resolve(args.manifest))
    ev = evaluate(model, data, sources=args.sources, targets=args.targets, clips=args.clips,
                  seconds=args.seconds, temperature=args.temperature, seed=args.seed,
                  system=Path(args.checkpoint).stem, progress=True)
    payload = {"checkpoint": str(args.checkpoint), "manifest": str(args.manifest), **ev.to_json()}
    out.write_text(json.dumps(payload, indent=1, allow_nan=True) + "\n")
    print(format_tables(ev))
    print(f"\nwrote {out}")
    return 0

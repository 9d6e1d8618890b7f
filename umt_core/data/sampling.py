"""Random training segments: duration-weighted, deterministic, rank-independent.

Sample ``i`` of the global batch of domain ``d`` at step ``s`` is drawn from its own
random stream ``(seed, stream, s, d, i)``. So the batch is the same whatever the
number of devices (each rank takes a slice of the indices), and resuming at step
``s`` reproduces exactly the segments an uninterrupted run would have seen: the
sampler state is just the step.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import torch
import torchaudio.functional as AF

from ..audio import mu_law_encode

TRAIN_STREAM = 0
VALIDATION_STREAM = 1

# augment(segment float32 (T,), rng) -> float32 (T,)
Augmenter = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass
class DomainAudio:
    """All audio of one domain and split: float32 arrays (memory-mapped or in memory).

    When ``cache_path`` is set, ``clips`` are views of one memory-mapped ``.npy``
    file (``offsets[i]:offsets[i+1]`` is clip ``i``); pickling then sends only the
    path, so DataLoader workers map the same file instead of copying the audio.
    """

    name: str
    clips: list[np.ndarray]
    sources: list[str]
    cache_path: str | None = None
    offsets: list[int] | None = None

    @classmethod
    def from_cache(cls, name: str, cache_path: str | Path, offsets: Sequence[int],
                   sources: Sequence[str]) -> DomainAudio:
        """Clips as views of a memory-mapped float32 ``.npy`` (no decoding, no copy)."""
        data = np.load(str(cache_path), mmap_mode="r")
        offsets = [int(o) for o in offsets]
        if data.dtype != np.float32 or data.ndim != 1 or len(data) != offsets[-1]:
            raise ValueError(f"{cache_path}: not the float32 audio cache its index describes")
        clips = [data[a:b] for a, b in itertools.pairwise(offsets)]
        return cls(name, clips, list(sources), str(cache_path), offsets)

    def __getstate__(self):
        if self.cache_path is None:
            return self.__dict__
        return {"name": self.name, "sources": self.sources, "cache_path": self.cache_path,
                "offsets": self.offsets}

    def __setstate__(self, state):
        if "clips" in state:
            self.__dict__.update(state)
        else:
            other = DomainAudio.from_cache(state["name"], state["cache_path"], state["offsets"],
                                           state["sources"])
            self.__dict__.update(other.__dict__)

    @property
    def total_samples(self) -> int:
        return int(sum(len(c) for c in self.clips))


class SegmentSampler:
    """Draws (clean, augmented) mu-law code segments from a list of domains."""

    def __init__(self, domains: Sequence[DomainAudio], segment_samples: int, seed: int,
                 mu_law: str = "torchaudio", augment: Augmenter | None = None):
        self.domains = list(domains)
        self.segment_samples = int(segment_samples)
        self.seed = int(seed)
        self.mu_law = mu_law
        self.augment = augment
        self._weights = []
        for dom in self.domains:
            lengths = np.array([len(c) for c in dom.clips], dtype=np.float64)
            if lengths.max() < self.segment_samples:
                raise ValueError(
                    f"domain {dom.name!r}: every file is shorter than one segment "
                    f"({self.segment_samples} samples); use shorter segments or longer files"
                )
            # Probability proportional to the number of distinct segment starts.
            starts = np.maximum(lengths - self.segment_samples + 1, 0)
            self._weights.append(starts / starts.sum())
        self._cumulative = [np.cumsum(w) for w in self._weights]

    def segment(self, domain: int, index: int, step: int,
                stream: int = TRAIN_STREAM) -> tuple[np.ndarray, np.ndarray]:
        """Float audio of one segment and its augmented copy."""
        rng = np.random.default_rng([self.seed, stream, step, domain, index])
        dom = self.domains[domain]
        cum = self._cumulative[domain]
        f = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(cum) - 1)
        clip = dom.clips[f]
        start = int(rng.integers(0, len(clip) - self.segment_samples + 1))
        clean = np.asarray(clip[start:start + self.segment_samples], dtype=np.float32)
        aug = self.augment(clean, rng) if self.augment is not None else clean
        return clean, aug

    def batch(self, domain: int, indices: Sequence[int] | range, step: int,
              stream: int = TRAIN_STREAM) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (len(indices), segment_samples) int64 of the clean and augmented segments."""
        pairs = [self.segment(domain, i, step, stream) for i in indices]
        clean = torch.from_numpy(np.stack([p[0] for p in pairs]))
        aug = torch.from_numpy(np.stack([p[1] for p in pairs]))
        return mu_law_encode(clean, self.mu_law), mu_law_encode(aug, self.mu_law)


class _Requests(torch.utils.data.Dataset):
    def __init__(self, sampler: SegmentSampler, requests: Sequence[tuple[int, Sequence[int], int, int]]):
        self.sampler = sampler
        self.requests = list(requests)

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        domain, indices, step, stream = self.requests[i]
        return self.sampler.batch(domain, indices, step, stream)


def prefetch(sampler: SegmentSampler, requests: Sequence[tuple[int, Sequence[int], int, int]],
             num_workers: int = 0, prefetch_factor: int = 2):
    """Iterate `sampler.batch(domain, indices, step, stream)` for each request, in order,
    computed ahead by `num_workers` DataLoader worker processes (0 = in this process).

    The results do not depend on the number of workers: every segment has its own seed.
    """
    if num_workers <= 0:
        for domain, indices, step, stream in requests:
            yield sampler.batch(domain, indices, step, stream)
        return
    loader = torch.utils.data.DataLoader(
        _Requests(sampler, requests), batch_size=None, shuffle=False,
        num_workers=num_workers, prefetch_factor=prefetch_factor, persistent_workers=False,
    )
    yield from loader


class PitchShiftAugmenter:
    """The paper's augmentation: a random sub-segment (a quarter to a half of the
    segment) is pitch-shifted by a uniform amount within +-``max_semitones``; the
    rest of the segment is returned untouched and the length is kept.

    ``method="librosa"``: phase-vocoder time stretch + soxr resampling (librosa),
    the fastest exact option measured on CPU (see `python -m umt_core bench loader`).
    ``method="torchaudio"``: `torchaudio.functional.pitch_shift`, much slower for
    fractional shifts (its resampling kernel follows the rational ratio).
    """

    def __init__(self, sample_rate: int, max_semitones: float = 0.5,
                 fraction: tuple[float, float] = (0.25, 0.5), method: str = "librosa"):
        if method not in ("librosa", "torchaudio"):
            raise ValueError(f"unknown pitch-shift method {method!r}; use librosa or torchaudio")
        self.sample_rate = int(sample_rate)
        self.max_semitones = float(max_semitones)
        self.fraction = (float(fraction[0]), float(fraction[1]))
        self.method = method

    def draw(self, length: int, rng: np.random.Generator) -> tuple[int, int, float]:
        """(start, sub-segment length, semitones) for a segment of `length` samples."""
        lo = max(1, int(np.ceil(length * self.fraction[0])))
        hi = max(lo, int(np.floor(length * self.fraction[1])))
        n = int(rng.integers(lo, hi + 1))
        start = int(rng.integers(0, length - n + 1))
        semitones = float(rng.uniform(-self.max_semitones, self.max_semitones))
        return start, n, semitones

    def shift(self, audio: np.ndarray, semitones: float) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)
        if self.method == "librosa":
            # librosa's default window (2048) unless the sub-segment is shorter than that
            # (small presets): then the largest power of two that fits.
            n_fft = 2048 if len(audio) >= 2048 else max(16, 1 << (len(audio).bit_length() - 1))
            out = librosa.effects.pitch_shift(audio, sr=self.sample_rate, n_steps=semitones,
                                              n_fft=n_fft, hop_length=n_fft // 4)
        else:
            out = AF.pitch_shift(torch.from_numpy(audio.copy()), self.sample_rate,
                                 semitones).numpy()
        out = np.asarray(out, dtype=np.float32)
        if len(out) != len(audio):  # both libraries keep the length; be sure anyway
            out = np.pad(out, (0, max(0, len(audio) - len(out))))[:len(audio)]
        return out

    def __call__(self, segment: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        start, n, semitones = self.draw(len(segment), rng)
        out = np.array(segment, dtype=np.float32, copy=True)
        out[start:start + n] = self.shift(out[start:start + n], semitones)
        return out

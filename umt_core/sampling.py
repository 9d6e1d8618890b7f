"""Random training segments: duration-weighted, deterministic, rank-independent.

Sample ``i`` of the global batch of domain ``d`` at step ``s`` is drawn from its own
random stream ``(seed, stream, s, d, i)``. So the batch is the same whatever the
number of devices (each rank takes a slice of the indices), and resuming at step
``s`` reproduces exactly the segments an uninterrupted run would have seen: the
sampler state is just the step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio import load_audio, mu_law_encode

TRAIN_STREAM = 0
VALIDATION_STREAM = 1

# augment(segment float32 (T,), rng) -> float32 (T,)
Augmenter = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass
class DomainAudio:
    """All audio of one domain and split: float32 arrays (memory-mapped or in memory)."""

    name: str
    clips: list[np.ndarray]
    sources: list[str]

    @classmethod
    def from_files(cls, name: str, paths: Sequence[str | Path], sample_rate: int) -> DomainAudio:
        clips, sources = [], []
        for p in sorted(Path(p) for p in paths):
            audio, _ = load_audio(p, sample_rate)
            clips.append(audio)
            sources.append(str(p))
        if not clips:
            raise ValueError(f"domain {name!r}: no audio files")
        return cls(name, clips, sources)

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

    def segment(self, domain: int, index: int, step: int,
                stream: int = TRAIN_STREAM) -> tuple[np.ndarray, np.ndarray]:
        """Float audio of one segment and its augmented copy."""
        rng = np.random.default_rng([self.seed, stream, step, domain, index])
        dom = self.domains[domain]
        f = int(rng.choice(len(dom.clips), p=self._weights[domain]))
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

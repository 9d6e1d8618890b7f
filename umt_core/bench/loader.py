"""`python -m umt_core bench loader`: segments/s of the training loader, with and
without pitch-shift augmentation, against what a paper step needs."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.manifest import Manifest, as_manifest, load_manifest
from ..data.sampling import DomainAudio, PitchShiftAugmenter, SegmentSampler, prefetch
from ..data.store import training_data


def measure(manifest: Manifest | str | Path | None = None, segment_samples: int = 12000,
                 batch: int = 32, batches: int = 8, num_workers: Sequence[int] = (0, 2),
                 method: str = "librosa", seed: int = 0) -> dict[str, float]:
    """Segments/s of the training loader, with and without augmentation, against a
    paper step's need of ``batch x domains`` segments.

    Reads the prepared train split of `manifest`; without one, four domains of
    noise (the speed does not depend on the content). Figures, not a test.
    """
    if manifest is None:
        rng = np.random.default_rng(seed)
        sample_rate = 16000
        domains = [DomainAudio(f"noise{k}", [(0.1 * rng.standard_normal(60 * sample_rate))
                                             .astype(np.float32)], [f"noise{k}"]) for k in range(4)]
    else:
        m = as_manifest(manifest)
        sample_rate, domains = m.sample_rate, training_data(m, "train")
    aug = PitchShiftAugmenter(sample_rate, 0.5, method=method)
    out: dict[str, Any] = {"segment_samples": segment_samples, "batch_per_domain": batch,
                           "domains": len(domains), "segments_per_step": batch * len(domains),
                           "method": method}
    torch.set_num_threads(1)
    SegmentSampler(domains, segment_samples, seed, augment=aug).batch(0, range(2), 0)  # warm-up
    for label, augment in (("plain", None), ("augmented", aug)):
        sampler = SegmentSampler(domains, segment_samples, seed, augment=augment)
        for w in num_workers if augment is not None else (0,):
            # One extra batch per worker first, not timed: worker start-up is paid once.
            requests = [(k % len(domains), range(batch), k, 0) for k in range(batches + max(w, 1))]
            it = prefetch(sampler, requests, num_workers=w)
            for _ in range(max(w, 1)):
                next(it)
            t = time.perf_counter()
            n = sum(len(c) for c, _ in it)
            out[f"{label}_segments_per_s_workers{w}"] = round(n / (time.perf_counter() - t), 1)
    return out


def run(args: argparse.Namespace) -> int:
    m = load_manifest(args.manifest)
    prepared = m.lock_path.exists()
    if not prepared:
        print(f"{m.name} is not prepared: measuring on noise")
    res = measure(m if prepared else None, args.segment, args.batch,
                  num_workers=(0, args.workers))
    for k, v in res.items():
        print(f"{k:>36}: {v}")
    return 0

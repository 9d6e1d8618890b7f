"""Chunked parallel translation of long inputs.

Generation is one sample at a time, so a single long clip keeps the fast kernel at batch
one. Training, though, starts every segment from an empty history, so the decoder is
used to starting cold: a long input is cut into chunks of ``length`` samples, each
generated from an empty history as its own stream, all chunks (of every file) as rows
of one batch, ``batch`` at a time. Consecutive chunks overlap by ``overlap`` samples and
are cross-faded there with weights that keep the level constant through the seam
whether the two chunks are independent or alike (`seam_weights`).

    chunks of one clip:  [0 ............ L)
                                    [H ............ H+L)        H = L - overlap
                                                 [2H ........ end)
    output:              chunk 0 | fade | chunk 1 | fade | chunk 2

Exactness: every chunk is what `umt_core.generate.generate` gives for the latent frames
of its span with the seed `chunk_seed(seed, i)` (the first chunk's is `seed` itself),
so chunk 0, and with it the output up to the first seam, is the sequential translation
of the clip sample for sample. A clip's output does not depend on the other clips of
the batch. Memory: the latent of a clip is computed in windows (a few KiB per second
of audio), the decoder state and the codes of one batch of chunks are all that
generation holds; only the output itself (4 bytes per sample and target) grows with
the input's length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..audio import mu_law_decode, mu_law_encode
from ..config import Config
from ..model import UMTN
from .incremental import IncrementalDecoder, _progress, encode_windows

# Defaults. Batch: the C++ kernel's samples/s of the paper decoder level off between 8
# and 32 rows (`bench generate`: +20% from 8 to 32, little beyond) while the decoders'
# state grows by 32 MiB a row, so 32 chunks run together. Length: one second, never
# shorter than a training segment: a 60 s file is 64 chunks, two full batches, with 5%
# of its samples generated twice in the overlaps; shorter chunks would add overlap and
# seams without a faster batch, longer ones leave short files with few rows. Overlap:
# 50 ms, long enough that the fade's own slope is far below the audio's (a level step
# of 0.5 spreads to under 1e-3 a sample at 16 kHz).
CHUNK_SECONDS = 1.0
OVERLAP_SECONDS = 0.05
CHUNK_BATCH = 32


def _up_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class Chunking:
    """Chunk `length` and `overlap` (model-rate samples, multiples of the pool) and
    how many chunks are generated together (`batch`)."""

    length: int
    overlap: int
    batch: int = CHUNK_BATCH

    @classmethod
    def for_model(cls, cfg: Config, length: int | None = None, overlap: int | None = None,
                  batch: int | None = None) -> Chunking:
        """The defaults of a model (None), or the given values checked against it."""
        pool, rate = cfg.model.pool, cfg.sample_rate
        segment = cfg.train.segment_samples
        if length is None:
            length = _up_to(max(round(CHUNK_SECONDS * rate), segment), pool)
        if overlap is None:
            overlap = _up_to(round(OVERLAP_SECONDS * rate), pool)
        batch = CHUNK_BATCH if batch is None else batch
        if length < segment or length % pool:
            raise ValueError(f"chunk length {length} must be at least a training segment "
                             f"({segment} samples) and a multiple of the pool ({pool})")
        if overlap < 0 or overlap % pool or overlap > length // 2:
            raise ValueError(f"chunk overlap {overlap} must be a multiple of the pool "
                             f"({pool}) between 0 and half the chunk length ({length})")
        if batch < 1:
            raise ValueError(f"chunk batch {batch} must be at least 1")
        return cls(int(length), int(overlap), int(batch))


def spans(total: int, length: int, overlap: int) -> list[tuple[int, int]]:
    """[start, stop) of each chunk of `total` samples; every chunk but the last is
    `length` long, and the last is longer than `overlap`."""
    if total <= length:
        return [(0, total)]
    out, start = [], 0
    while True:
        stop = min(start + length, total)
        out.append((start, stop))
        if stop == total:
            return out
        start += length - overlap


def chunk_seed(seed: int, index: int) -> int:
    """The seed of chunk `index` of a clip: `seed` for the first, so that it equals the
    sequential translation; independent streams for the others."""
    if index == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed) % 2**63, index]).generate_state(1, np.uint64)[0]
               % 2**63)


def seam_weights(tail: np.ndarray, head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights (fade-out of `tail`, fade-in of `head`), each (..., overlap), that keep the
    level through a seam: a linear ramp f scaled by 1 / sqrt(f^2 + (1-f)^2 + 2 r f (1-f)),
    r the two signals' correlation over the seam clipped to [0, 1]. Independent
    signals (r = 0) get an equal-power fade, identical ones (r = 1) a linear fade; a
    fixed fade would dip by 3 dB in the first case or rise by 3 dB in the second."""
    n = tail.shape[-1]
    f = ((np.arange(n) + 0.5) / max(n, 1)).astype(np.float64)
    a, b = tail.astype(np.float64), head.astype(np.float64)
    energy = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    r = np.divide((a * b).sum(-1), energy, out=np.zeros_like(energy), where=energy > 0)
    r = np.clip(r, 0.0, 1.0)[..., None]
    g = 1.0 / np.sqrt(f * f + (1 - f) ** 2 + 2 * r * f * (1 - f))
    return ((1 - f) * g).astype(np.float32), (f * g).astype(np.float32)


def cross_fade(out: np.ndarray, piece: np.ndarray, start: int, overlap: int) -> None:
    """Write `piece` (..., n) into `out` at `start`, its first `overlap` samples faded
    in over what `out` holds there (the previous chunk's tail), which fades out
    (`seam_weights`)."""
    n = piece.shape[-1]
    if overlap and start > 0:
        seam = slice(start, start + overlap)
        w_out, w_in = seam_weights(out[..., seam], piece[..., :overlap])
        mix = out[..., seam] * w_out + piece[..., :overlap] * w_in
        out[..., seam] = np.clip(mix, -1.0, 1.0)  # the fade may lift a peak past full scale
        out[..., start + overlap:start + n] = piece[..., overlap:]
    else:
        out[..., start:start + n] = piece


@torch.no_grad()
def encode_audio(model: UMTN, audio: np.ndarray, padded: int, *,
                 chunk_frames: int = 64) -> torch.Tensor:
    """The latent (1, latent, frames) of `audio` zero-padded to `padded` samples, the
    same windows and numbers as `umt_core.generate.encode` of its codes, but holding
    only one window of codes at a time."""
    mu_law = model.config.mu_law
    device = next(model.parameters()).device

    def codes(lo: int, hi: int) -> torch.Tensor:
        window = np.zeros(hi - lo, dtype=np.float32)
        part = audio[lo:min(hi, len(audio))]
        window[:len(part)] = part
        return mu_law_encode(torch.from_numpy(window)[None], mu_law).to(device)

    return encode_windows(model.encoder, codes, padded, chunk_frames=chunk_frames)


@torch.no_grad()
def translate_chunked(model: UMTN, clips: Sequence[np.ndarray], decoders: Sequence[int],
                      chunking: Chunking, *, temperature: float = 1.0, seed: int = 0,
                      method: str = "auto", precision: str = "float32",
                      steps_per_call: int | None = None, progress: bool = False
                      ) -> list[np.ndarray]:
    """Translate `clips` (1-D float arrays at the model's rate) with the decoders of the
    given indices: per clip a (D, samples) float32 array (see the module docstring)."""
    if model.config.model.decoder != "wavenet":
        raise ValueError(f"chunked translation is for WaveNet generation; a "
                         f"{model.config.model.decoder} model decodes a whole clip in one "
                         "pass (`translate` does so)")
    pool = model.config.model.pool
    mu_law = model.config.mu_law
    decs = [model.decoder(k) for k in decoders]
    padded = [max(1, -(-len(c) // pool)) * pool for c in clips]
    latents = [encode_audio(model, c, p) for c, p in zip(clips, padded)]
    outputs = [np.zeros((len(decs), p), dtype=np.float32) for p in padded]
    # (clip, index in clip, start, stop) of every chunk, clip by clip
    work = [(b, i, s, e) for b, p in enumerate(padded)
            for i, (s, e) in enumerate(spans(p, chunking.length, chunking.overlap))]
    bar = _progress(sum(e - s for _, _, s, e in work) * len(decs), progress)
    for w0 in range(0, len(work), chunking.batch):
        wave = work[w0:w0 + chunking.batch]
        steps = max(e - s for _, _, s, e in wave)
        frames = steps // pool
        z = torch.zeros(len(wave), latents[0].shape[1], frames, device=latents[0].device)
        for row, (b, _, s, e) in enumerate(wave):
            z[row, :, :(e - s) // pool] = latents[b][0, :, s // pool:e // pool]
        # a shorter (last) chunk is padded with later frames of nothing: the decoder is
        # causal, so its samples are those of its own length
        inc = IncrementalDecoder(decs, z, steps, method=method, precision=precision,
                                 chunk=steps_per_call)
        generators = [torch.Generator().manual_seed(chunk_seed(seed, i)) for _, i, _, _ in wave]
        codes, _ = inc.run(steps, temperature=temperature, generator=generators)
        wave_audio = mu_law_decode(codes.cpu(), mu_law).numpy()  # (D, rows, steps)
        for row, (b, _, s, e) in enumerate(wave):
            cross_fade(outputs[b], wave_audio[:, row, :e - s], s, chunking.overlap)
        del inc, codes, wave_audio
        if bar is not None:
            bar.update(sum(e - s for _, _, s, e in wave) * len(decs))
    if bar is not None:
        bar.close()
    return [o[:, :len(c)] for o, c in zip(outputs, clips)]

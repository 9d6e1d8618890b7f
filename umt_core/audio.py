"""Audio I/O, resampling and 8-bit mu-law.

Two mu-law variants exist and a model always states which one it was trained with
(`Config.mu_law`):

- ``"torchaudio"``: `torchaudio.functional.mu_law_encoding` / `mu_law_decoding`
  (rounds to the nearest code). The default for models trained here.
- ``"reference"``: the reference implementation's quantisation, which truncates
  (floors) instead of rounding, and its own inverse, whose code scale is
  ``2 (c - 128) / 256`` rather than ``2 c / 255 - 1``. Converted reference models use
  it, so they see exactly the codes they were trained on.
"""

from __future__ import annotations

import io
import logging
import wave
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

MU = 255
MU_LAW_VARIANTS = ("torchaudio", "reference")
log = logging.getLogger(__name__)


def _check_variant(variant: str) -> None:
    if variant not in MU_LAW_VARIANTS:
        raise ValueError(f"unknown mu-law variant {variant!r}; choose one of {MU_LAW_VARIANTS}")


def mu_law_encode(audio: torch.Tensor, variant: str = "torchaudio") -> torch.Tensor:
    """Float audio in [-1, 1] (clipped) -> int64 codes 0..255."""
    _check_variant(variant)
    x = torch.as_tensor(audio).clamp(-1.0, 1.0)
    if variant == "torchaudio":
        return AF.mu_law_encoding(x.float(), MU + 1).long()
    x = x.double()
    companded = torch.sign(x) * torch.log1p(MU * x.abs()) / np.log1p(MU)
    return ((companded + 1) / 2 * MU).long()  # truncation, as the reference


def mu_law_decode(codes: torch.Tensor, variant: str = "torchaudio") -> torch.Tensor:
    """int codes 0..255 -> float32 audio in [-1, 1]."""
    _check_variant(variant)
    c = torch.as_tensor(codes)
    if variant == "torchaudio":
        return AF.mu_law_decoding(c.long(), MU + 1).float()
    y = 2.0 * (c.float() - (MU + 1.0) / 2.0) / (MU + 1.0)
    return (torch.sign(y) * (1.0 / MU) * ((1.0 + MU) ** y.abs() - 1.0)).float()


class AudioError(ValueError):
    """Unusable audio; the message names the file and what to do."""


# A peak below -80 dBFS is silence.
SILENCE_PEAK = 1e-4


def check_audio(audio: np.ndarray, label: str, *, allow_silent: bool = False) -> np.ndarray:
    """`audio` itself when it has samples, all finite, and (unless `allow_silent`) is
    not silent; else `AudioError` naming `label`."""
    if audio.size == 0:
        raise AudioError(f"{label}: contains no samples")
    if not np.isfinite(audio).all():
        raise AudioError(f"{label}: contains NaN or infinite samples; re-export it")
    if not allow_silent and float(np.abs(audio).max()) < SILENCE_PEAK:
        raise AudioError(f"{label}: is silent (peak below -80 dBFS)")
    return audio


def read_audio(source: str | Path | bytes, label: str | None = None) -> tuple[np.ndarray, int]:
    """The samples of a sound file (a path, or the file's bytes) as float32
    (samples, channels), and its sample rate. `AudioError` naming `label` (default:
    the path) for a missing or unreadable file; the samples are not checked."""
    from_bytes = isinstance(source, bytes)
    label = label or ("<bytes>" if from_bytes else str(source))
    if not from_bytes and not Path(source).exists():
        raise AudioError(f"{label}: missing file")
    try:
        data, sr = sf.read(io.BytesIO(source) if from_bytes else str(source), dtype="float32",
                           always_2d=True)
    except Exception as e:  # soundfile raises several types for corrupt files
        raise AudioError(f"{label}: cannot be read as audio ({e})") from e
    declared = None if from_bytes else declared_frames(source)
    if declared is not None and declared > data.shape[0]:
        log.warning(f"warning: {label}: truncated: its header announces {declared} samples "
                    f"({declared / sr:.2f} s), the file holds {data.shape[0]} "
                    f"({data.shape[0] / sr:.2f} s); only those are used. Re-export the file "
                    "if it was cut off by a failed copy")
    return data, sr


def load_audio(path: str | Path, sample_rate: int | None = None, mono: bool = True,
               allow_silent: bool = True) -> tuple[np.ndarray, int]:
    """Read a sound file as float32 (mono by channel mean), optionally resampled.

    Raises `AudioError` naming the file for missing, unreadable, empty, non-finite or
    (when ``allow_silent`` is false) silent audio.
    """
    data, sr = read_audio(path)
    audio = check_audio(data.mean(axis=1) if mono else data.T, str(path),
                        allow_silent=allow_silent)
    if sample_rate is not None and sr != sample_rate:
        audio = resample(audio, sr, sample_rate)
        sr = sample_rate
    return np.ascontiguousarray(audio, dtype=np.float32), sr


def declared_frames(path: str | Path) -> int | None:
    """Samples per channel a PCM WAV's header announces (None for other formats).
    libsndfile reads a truncated file's remaining samples without a word; the header
    still tells how many there should be."""
    try:
        with wave.open(str(path), "rb") as w:
            return int(w.getnframes())
    except (wave.Error, EOFError, OSError):
        return None


def resample(audio: np.ndarray | torch.Tensor, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling (torchaudio's windowed sinc)."""
    t = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    if orig_sr == new_sr:
        return t.numpy()
    return AF.resample(t, orig_sr, new_sr).numpy()


def save_audio(path: str | Path, audio: np.ndarray | torch.Tensor, sample_rate: int) -> None:
    """Write 16-bit PCM WAV (mono or (channels, T))."""
    a = np.asarray(torch.as_tensor(audio).detach().cpu().float().numpy())
    if a.ndim == 2:
        a = a.T
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(a, -1.0, 1.0), sample_rate, subtype="PCM_16")

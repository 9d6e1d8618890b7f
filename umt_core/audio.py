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

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

MU = 255
MU_LAW_VARIANTS = ("torchaudio", "reference")


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


def load_audio(path: str | Path, sample_rate: int | None = None, mono: bool = True,
               allow_silent: bool = True) -> tuple[np.ndarray, int]:
    """Read a sound file as float32 (mono by channel mean), optionally resampled.

    Raises `AudioError` naming the file for unreadable, empty, non-finite or (when
    ``allow_silent`` is false) silent audio.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such audio file")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for corrupt files
        raise AudioError(f"{path}: cannot be read as audio ({e}); re-export or remove it") from e
    if data.shape[0] == 0:
        raise AudioError(f"{path}: contains no samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: contains NaN or infinite samples; re-export it")
    audio = data.mean(axis=1) if mono else data.T
    if not allow_silent and np.abs(audio).max() < 1e-4:
        raise AudioError(f"{path}: is silent (peak below -80 dBFS)")
    if sample_rate is not None and sr != sample_rate:
        audio = resample(audio, sr, sample_rate)
        sr = sample_rate
    return np.ascontiguousarray(audio, dtype=np.float32), sr


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

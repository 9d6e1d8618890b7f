"""The spectral decoder: an ablation of the paper's WaveNet decoder.

Everything of the network stays (shared encoder, domain classifier, confusion loss,
augmentation, sampler, run directory, checkpoints) except the decoders: one
`SpectralDecoder` per domain maps the latent, resampled to the STFT frame rate, to
log-magnitude frames in one non-autoregressive pass. It is trained with a spectral
loss (log-magnitude L1 plus spectral convergence) and its frames are turned into
audio with Griffin-Lim. This is not the paper's model: it asks whether the shared
latent translates when the decoder is cheap to train and to run.

Resolution: the frames must resolve the pitches that the content metrics measure.
At 8 kHz an FFT of 1024 samples has bins 7.8 Hz apart (a semitone at the cello's C2,
65 Hz, is 3.9 Hz wide; at C3 7.8 Hz), which the round-trip figures in
`round_trip` (results/spectral/README.md) justify against a coarser FFT and a mel band representation.

Targets come from the sampler's mu-law codes (decoded to audio), so the spectral
model sees exactly the segments and augmentation the WaveNet model sees.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from .audio import mu_law_decode
from .config import ModelConfig

DECODERS = ("wavenet", "spectral")
# Magnitudes below this are the noise floor (the signal peaks at ~0.7, a full-scale
# sine gives ~n_fft/4 in its bin); log-magnitudes are compared above it only.
MAGNITUDE_FLOOR = 1e-3


def check_decoder_kind(kind: str) -> str:
    if kind not in DECODERS:
        raise ValueError(f"model.decoder={kind!r}: choose one of {list(DECODERS)}")
    return kind


def n_bins(cfg: ModelConfig) -> int:
    return cfg.spectral_n_fft // 2 + 1


def frames_for(samples: int, cfg: ModelConfig) -> int:
    """STFT frames of `samples` audio samples (centred frames, as `torch.stft`)."""
    return samples // cfg.spectral_hop + 1


def _window(cfg: ModelConfig, device: torch.device) -> torch.Tensor:
    return torch.hann_window(cfg.spectral_n_fft, device=device)


def magnitude(audio: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """|STFT| (B, bins, frames) of audio (B, T), Hann window, centred frames."""
    spec = torch.stft(audio.float(), cfg.spectral_n_fft, cfg.spectral_hop,
                      window=_window(cfg, audio.device), center=True, return_complex=True)
    return spec.abs()


def log_magnitude(mag: torch.Tensor) -> torch.Tensor:
    return torch.log(mag.clamp_min(MAGNITUDE_FLOOR))


class SpectralLayer(nn.Module):
    """``x + conv1x1(gelu(dilated_conv(x)))`` over frames, 'same' padding."""

    def __init__(self, channels: int, kernel: int, dilation: int):
        super().__init__()
        self.dilated_conv = nn.Conv1d(channels, channels, kernel,
                                      padding=dilation * (kernel - 1) // 2, dilation=dilation)
        self.conv_1x1 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_1x1(F.gelu(self.dilated_conv(x)))


def normalize_over_time(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each channel of each clip to zero mean and unit variance over time: the first
    version's latent normalisation (``model.latent_norm: none``), kept so that its
    checkpoints compute as they were trained.

    It was meant to lift the encoder's small variations above its per-channel offsets
    (without it the latent-use gap was 0.000 after 300 steps), but it has two faults,
    measured on the 30-minute goal run (results/spectral/): it removes what a channel
    holds for the whole clip (a held chord), and it makes the decoders blind to the
    latent's scale while the domain classifier still reads the raw latent, so the
    confusion term alone sets the scale and drove it from ~1e-2 (step 100) past 1e10
    (step 1,000): the encoder's updates became vanishingly small against its weights and
    it stopped learning. `model.normalize_frames` (``latent_norm: frame``) replaces it."""
    mean = z.mean(dim=-1, keepdim=True)
    var = z.var(dim=-1, keepdim=True, unbiased=False)
    return (z - mean) * torch.rsqrt(var + eps)


class SpectralDecoder(nn.Module):
    """Latent (B, latent, L) -> log-magnitude frames (B, bins, frames), one pass.

    The latent is linearly interpolated to the frame count, so any pool/hop ratio
    works; dilated convolutions over frames (dilation 2**i) give each output frame
    context on both sides; a 1x1 convolution gives every frequency bin."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # Without a normalised latent (model.latent_norm "none", the first version) each
        # channel is normalised over the clip's time here.
        self.over_time = cfg.latent_norm == "none"
        if cfg.spectral_n_fft < 16 or cfg.spectral_hop < 1 or cfg.spectral_hop > cfg.spectral_n_fft:
            raise ValueError(f"spectral decoder: n_fft {cfg.spectral_n_fft} and hop "
                             f"{cfg.spectral_hop} must satisfy 1 <= hop <= n_fft, n_fft >= 16")
        ch = cfg.spectral_channels
        self.n_fft, self.hop = cfg.spectral_n_fft, cfg.spectral_hop
        self.start = nn.Conv1d(cfg.latent_channels, ch, 3, padding=1)
        self.layers = nn.Sequential(*[
            SpectralLayer(ch, cfg.spectral_kernel, 2**i) for i in range(cfg.spectral_layers)
        ])
        self.out = nn.Conv1d(ch, n_bins(cfg), 1)
        with torch.no_grad():  # start near a quiet spectrum, not at magnitude 1
            self.out.bias.fill_(math.log(MAGNITUDE_FLOOR))

    def forward(self, z: torch.Tensor, frames: int) -> torch.Tensor:
        if z.shape[-1] == 0:
            raise ValueError("latent has no frames: the input is shorter than one pool window")
        if self.over_time:
            z = normalize_over_time(z)
        up = F.interpolate(z, size=frames, mode="linear", align_corners=True) \
            if z.shape[-1] > 1 else z.expand(-1, -1, frames)
        return self.out(self.layers(F.gelu(self.start(up))))


def spectral_loss(pred_log: torch.Tensor, target_mag: torch.Tensor,
                  sc_weight: float = 1.0) -> torch.Tensor:
    """Per-segment loss (B,): mean |log-magnitude error| against the target floored at
    MAGNITUDE_FLOOR, plus `sc_weight` x spectral convergence ||S - S^||_F / ||S||_F.

    The prediction is not clamped at the floor: a clamp gives a frame predicted below it
    no gradient, and a decoder pushed there by one large update stays there (measured:
    the piano decoder of a cpu-spectral run fell to its initial loss, 6.2, at step ~920
    and never came back, since the spectral convergence term's gradient is exp(pred),
    nil down there too). Unclamped, a prediction below the floor is pulled back up to it."""
    target_log = log_magnitude(target_mag)
    l1 = (pred_log - target_log).abs().mean(dim=(1, 2))
    # |STFT| of audio in [-1, 1] is at most the window's sum (n_fft / 2): a prediction
    # above it is wrong anyway, and unbounded exp() made early steps explode
    ceiling = math.log(target_mag.shape[1] - 1)
    pred_mag = torch.exp(pred_log.clamp(max=ceiling))
    diff = torch.linalg.vector_norm(target_mag - pred_mag, dim=(1, 2))
    # a silent segment has no spectrum to converge to: its norm is floored
    norm = torch.linalg.vector_norm(target_mag, dim=(1, 2)).clamp_min(1.0)
    return l1 + sc_weight * diff / norm


def spectral_loss_sum(decoder: SpectralDecoder, codes: torch.Tensor, z: torch.Tensor,
                      cfg: ModelConfig, mu_law: str) -> torch.Tensor:
    """Per-segment spectral losses of the clean `codes` (B, T), summed over the batch
    and multiplied by T, so that dividing by (segments x samples), as the training loop
    does for the WaveNet's cross-entropy, gives the mean per-segment loss."""
    audio = mu_law_decode(codes, mu_law)
    target = magnitude(audio, cfg)
    pred = decoder(z, target.shape[-1])
    return spectral_loss(pred.float(), target, cfg.spectral_sc_weight).sum() * codes.shape[-1]


def griffin_lim(mag: torch.Tensor, cfg: ModelConfig, length: int | None = None,
                n_iter: int | None = None) -> torch.Tensor:
    """Audio (B, T) from magnitudes (B, bins, frames) by Griffin-Lim (fast variant,
    momentum 0.99), starting from zero phase so that the result is deterministic."""
    gl = torchaudio.transforms.GriffinLim(
        n_fft=cfg.spectral_n_fft, n_iter=n_iter or cfg.spectral_griffin_lim_iters,
        hop_length=cfg.spectral_hop, power=1.0, momentum=0.99, length=length,
        rand_init=False).to(mag.device)
    return gl(mag.float())


@torch.no_grad()
def decode_audio(decoders, z: torch.Tensor, samples: int, cfg: ModelConfig) -> torch.Tensor:
    """Audio (targets, B, samples) of each decoder's log-magnitude frames of `z`."""
    frames = frames_for(samples, cfg)
    out = []
    for dec in decoders:
        mag = torch.exp(dec(z, frames).float().clamp(max=math.log(cfg.spectral_n_fft / 2)))
        out.append(griffin_lim(mag, cfg, length=samples))
    return torch.stack(out)


def round_trip(audio: np.ndarray, sample_rate: int, representation: str, *,
               n_fft: int = 1024, hop: int = 256, n_mels: int = 64,
               n_iter: int = 64) -> np.ndarray:
    """Ground truth -> representation -> Griffin-Lim: the best a decoder that predicts
    this representation perfectly could sound. `representation` is "stft" (|STFT| of
    `n_fft`) or "mel" (`n_mels` mel bands of the same STFT, inverted through the
    pseudo-inverse of the mel filterbank, as `torchaudio.transforms.InverseMelScale`)."""
    cfg = ModelConfig(spectral_n_fft=n_fft, spectral_hop=hop, spectral_griffin_lim_iters=n_iter)
    x = torch.from_numpy(np.asarray(audio, dtype=np.float32))[None]
    mag = magnitude(x, cfg)
    if representation == "mel":
        mel = torchaudio.transforms.MelScale(n_mels=n_mels, sample_rate=sample_rate,
                                             n_stft=n_bins(cfg))
        inv = torchaudio.transforms.InverseMelScale(n_stft=n_bins(cfg), n_mels=n_mels,
                                                    sample_rate=sample_rate)
        mag = inv(mel(mag)).clamp_min(0.0)
    elif representation != "stft":
        raise ValueError(f"representation {representation!r}: choose 'stft' or 'mel'")
    return griffin_lim(mag, cfg, length=x.shape[-1])[0].numpy()

"""The Universal Music Translation Network: a shared encoder, one WaveNet decoder per
domain and a domain classifier on the latent code.

The structure and parameter names follow the reference implementation, so its
checkpoints load with a plain key prefix (see `umt_core.reference`). Conventions:

- audio enters as mu-law codes, int64 (B, T) in 0..255, scaled to ``c / 255 - 0.5``;
- ``encoder(codes) -> z`` of shape (B, latent_channels, T // pool);
- ``decoders[k](codes, z) -> logits`` (B, 256, T), teacher forced: the output at t
  predicts ``codes[:, t]`` from ``codes[:, :t]`` and z.

Two things differ from the reference in how, not what, is computed: the latent
conditioning is projected once per latent frame and then repeated in time (a 1x1
convolution commutes with repetition, so the result is the same, at ``1/pool`` of
the cost), and a latent whose frames do not tile T exactly is padded with its last
frame instead of failing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config, ModelConfig
from .spectral import SpectralDecoder, check_decoder_kind

N_CLASSES = 256  # 8-bit mu-law codes 0..255
# Nats: the cross-entropy of a uniform guess over the codes, where an untrained (or a
# diverged) decoder's loss sits.
UNIFORM_LOSS = math.log(N_CLASSES)


def code_values(codes: torch.Tensor) -> torch.Tensor:
    """int codes (any shape) -> the decoder's float input in [-0.5, 0.5]."""
    return codes.float() / (N_CLASSES - 1) - 0.5


def scale_codes(codes: torch.Tensor) -> torch.Tensor:
    """int codes (B, T) -> float input (B, 1, T) in [-0.5, 0.5]."""
    return code_values(codes).unsqueeze(1)


def upsample_frames(c: torch.Tensor, length: int) -> torch.Tensor:
    """Repeat latent frames (B, C, L) in time to (B, C, length).

    Each frame covers ``length // L`` samples (the reference's rule); leftover samples
    at the end reuse the last frame.
    """
    frames = c.shape[-1]
    if frames == length:
        return c
    if frames == 0:
        raise ValueError("latent has no frames: the input is shorter than one pool window")
    per_frame = max(length // frames, 1)
    up = c.repeat_interleave(per_frame, dim=-1)[..., :length]
    if up.shape[-1] < length:
        up = torch.cat([up, up[..., -1:].expand(*up.shape[:-1], length - up.shape[-1])], -1)
    return up


class EncoderLayer(nn.Module):
    """``x + conv1x1(relu(dilated_conv(x)))`` with 'same' padding."""

    def __init__(self, channels: int, dilation: int, kernel: int = 3):
        super().__init__()
        self.dilated_conv = nn.Conv1d(
            channels, channels, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation
        )
        self.conv_1x1 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_1x1(F.relu(self.dilated_conv(x)))


LATENT_NORMS = ("none", "frame")


def normalize_frames(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each latent frame (B, C, L) to zero mean and unit variance over its C channels.

    What the latent says is the pattern across its channels, not their scale: a decoder
    that reads only the latent (the spectral one) is then free of the scale, and so is
    the classifier. Frame by frame, so windowed encoding and batch splits cannot change
    it."""
    mean = z.mean(dim=1, keepdim=True)
    var = z.var(dim=1, keepdim=True, unbiased=False)
    return (z - mean) * torch.rsqrt(var + eps)


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.latent_norm not in LATENT_NORMS:
            raise ValueError(f"model.latent_norm={cfg.latent_norm!r}: choose one of {list(LATENT_NORMS)}")
        self.latent_norm = cfg.latent_norm
        ch = cfg.encoder_channels
        self.start = nn.Conv1d(1, ch, kernel_size=3, padding=1)
        self.dilated_convs = nn.Sequential(*[
            EncoderLayer(ch, 2**i, cfg.encoder_kernel)
            for _ in range(cfg.encoder_blocks) for i in range(cfg.encoder_layers)
        ])
        self.conv_1x1 = nn.Conv1d(ch, cfg.latent_channels, 1)
        self.pool = nn.AvgPool1d(cfg.pool)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = self.start(scale_codes(codes))
        x = self.dilated_convs(x)
        return self.finish(self.pool(self.conv_1x1(x)))

    def finish(self, z: torch.Tensor) -> torch.Tensor:
        """The pooled latent (B, C, L) as decoders and classifier see it."""
        return normalize_frames(z) if self.latent_norm == "frame" else z


class DomainClassifier(nn.Module):
    """Predicts the domain from the latent: 1x1 convs with ELU, mean over time."""

    def __init__(self, cfg: ModelConfig, n_domains: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(cfg.classifier_layers):
            layers += [
                nn.Conv1d(cfg.latent_channels if i == 0 else cfg.classifier_channels,
                          cfg.classifier_channels, 1),
                nn.ELU(),
            ]
        layers.append(nn.Conv1d(cfg.classifier_channels, n_domains, 1))
        self.dropout = nn.Dropout(cfg.classifier_dropout)
        self.convs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.convs(self.dropout(z)).mean(dim=2)


class CausalConv1d(nn.Conv1d):
    """A Conv1d padded on the left only, so output t sees inputs <= t."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, dilation: int = 1):
        super().__init__(in_ch, out_ch, kernel, dilation=dilation)
        self.left_padding = dilation * (kernel - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left_padding, 0)))


class DecoderLayer(nn.Module):
    """Gated WaveNet layer: causal dilated conv + latent conditioning, gate, 1x1 outs."""

    def __init__(self, residual: int, skip: int, latent: int, kernel: int, dilation: int):
        super().__init__()
        self.dilation = dilation
        self.causal = CausalConv1d(residual, 2 * residual, kernel, dilation)
        self.condition = nn.Conv1d(latent, 2 * residual, 1)
        self.residual = nn.Conv1d(residual, residual, 1)
        self.skip = nn.Conv1d(residual, skip, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`cond` is this layer's conditioning, already projected and upsampled."""
        h = self.causal(x) + cond
        sig, tanh = h.chunk(2, dim=1)
        g = torch.sigmoid(sig) * torch.tanh(tanh)
        return self.residual(g), self.skip(g)


class WaveNetDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        r, s, lat = cfg.residual_channels, cfg.skip_channels, cfg.latent_channels
        self.layers = nn.ModuleList([
            DecoderLayer(r, s, lat, cfg.decoder_kernel, 2**i)
            for _ in range(cfg.decoder_blocks) for i in range(cfg.decoder_layers)
        ])
        self.first_conv = CausalConv1d(1, r, cfg.decoder_kernel)
        self.skip_conv = nn.Conv1d(r, s, 1)
        self.condition = nn.Conv1d(lat, s, 1)
        self.fc = nn.Conv1d(s, s, 1)
        self.logits = nn.Conv1d(s, N_CLASSES, 1)

    def project_latent(self, z: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-layer conditioning and the head's conditioning, per latent frame."""
        per_layer = [layer.condition(z) for layer in self.layers]
        return per_layer, self.condition(z)

    def forward(self, codes: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = scale_codes(codes)
        x = F.pad(x, (1, 0))[..., :-1]  # shift right: output t predicts codes[t]
        length = x.shape[-1]
        layer_conds, head_cond = self.project_latent(z)
        residual = self.first_conv(x)
        skip = self.skip_conv(residual)
        for layer, cond in zip(self.layers, layer_conds):
            r, s = layer(residual, upsample_frames(cond, length))
            residual = residual + r
            skip = skip + s
        h = self.fc(F.relu(skip)) + upsample_frames(head_cond, length)
        return self.logits(F.relu(h))


class UMTN(nn.Module):
    """Encoder, one decoder per domain (or one shared, the reference bug) and the
    domain classifier. ``domains`` names the decoders in order."""

    def __init__(self, cfg: Config):
        super().__init__()
        if not cfg.domains:
            raise ValueError("Config.domains is empty: a UMTN needs at least one domain")
        self.config = cfg
        self.domains = list(cfg.domains)
        m = cfg.model
        self.encoder = Encoder(m)
        n_decoders = 1 if m.shared_decoder else len(self.domains)
        kind = SpectralDecoder if check_decoder_kind(m.decoder) == "spectral" else WaveNetDecoder
        self.decoders = nn.ModuleList([kind(m) for _ in range(n_decoders)])
        self.domain_classifier = DomainClassifier(m, len(self.domains))

    def decoder(self, domain: int | str) -> WaveNetDecoder | SpectralDecoder:
        k = self.domain_index(domain)
        return self.decoders[0 if self.config.model.shared_decoder else k]

    def domain_index(self, domain: int | str) -> int:
        if isinstance(domain, str):
            if domain not in self.domains:
                raise ValueError(f"unknown domain {domain!r}; this model has {self.domains}")
            return self.domains.index(domain)
        if not 0 <= domain < len(self.domains):
            raise ValueError(f"domain index {domain} out of range 0..{len(self.domains) - 1}")
        return int(domain)

    def forward(self, codes: torch.Tensor, domain: int | str) -> torch.Tensor:
        """Reconstruction logits of `codes` through `domain`'s decoder."""
        return self.decoder(domain)(codes, self.encoder(codes))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def copy_shared_weights(source: UMTN, target: UMTN) -> list[str]:
    """Give `target` the weights of `source` that carry over between two models of one
    architecture: the encoder, the decoder of every domain both have (by name), the
    domain classifier's hidden layers and its output rows of shared domains. This is
    the one way a model gains domains (fine-tuning, `umt_core.reference.extend_domains`).
    Returns `target`'s domains that keep their fresh weights."""
    fresh = []
    with torch.no_grad():
        target.encoder.load_state_dict(source.encoder.state_dict())
        for i, name in enumerate(target.domains):
            if name in source.domains:
                target.decoder(i).load_state_dict(source.decoder(name).state_dict())
            else:
                fresh.append(name)
        theirs, ours = source.domain_classifier.convs, target.domain_classifier.convs
        for their_layer, our_layer in zip(theirs[:-1], ours[:-1]):
            our_layer.load_state_dict(their_layer.state_dict())
        for i, name in enumerate(target.domains):
            if name in source.domains:
                j = source.domains.index(name)
                ours[-1].weight[i] = theirs[-1].weight[j]
                ours[-1].bias[i] = theirs[-1].bias[j]
    return fresh

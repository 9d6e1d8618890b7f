"""One config system: plain dataclasses, named presets, dotted overrides.

A `Config` fully describes a model and how it is trained. It is stored, resolved,
in every run directory (`config.yaml`) and inside every checkpoint, so a checkpoint
can always rebuild its own model.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .paths import write_text_atomic


@dataclass
class ModelConfig:
    # Encoder: non-causal dilated residual convolutions, then a 1x1 to the latent, then
    # average pooling. Dilation 2**i for layer i of each block.
    encoder_blocks: int = 3
    encoder_layers: int = 10
    encoder_channels: int = 128
    encoder_kernel: int = 3
    latent_channels: int = 64
    pool: int = 800  # audio samples per latent frame
    # Decoders: one WaveNet per domain.
    decoder_blocks: int = 4
    decoder_layers: int = 14
    residual_channels: int = 128
    skip_channels: int = 128
    decoder_kernel: int = 2
    # Domain classifier ("discriminator" in the reference): 1x1 convs with ELU.
    classifier_layers: int = 3
    classifier_channels: int = 100
    classifier_dropout: float = 0.0
    # Reference bug, kept for the study's comparison: one decoder for every domain.
    shared_decoder: bool = False
    # Decoder kind: "wavenet" (the paper's) or "spectral" (the ablation in
    # umt_core.spectral: log-magnitude STFT frames, inverted with Griffin-Lim).
    decoder: str = "wavenet"
    spectral_n_fft: int = 1024
    spectral_hop: int = 256
    spectral_channels: int = 128
    spectral_layers: int = 6  # dilated conv layers over frames, dilation 2**i
    spectral_kernel: int = 3
    spectral_sc_weight: float = 1.0  # weight of spectral convergence beside log-magnitude L1
    spectral_griffin_lim_iters: int = 64
    # "frame": each latent frame normalised over its channels (zero mean, unit variance),
    # as decoders and classifier see it (`model.normalize_frames`); "none": the encoder's
    # output as it is (the paper's), where a spectral decoder normalises each channel
    # over time itself (the ablation's first version, which let the latent's scale run
    # away: see umt_core/spectral.py).
    latent_norm: str = "none"

    @property
    def receptive_field(self) -> int:
        """Samples of past input one decoder output sees (including the first conv)."""
        per_block = (self.decoder_kernel - 1) * (2**self.decoder_layers - 1)
        return self.decoder_blocks * per_block + self.decoder_kernel


@dataclass
class TrainConfig:
    lr: float = 1e-3
    lr_decay: float = 0.995  # multiplied into the learning rate after every epoch
    batch_per_domain: int = 32  # effective batch per domain, whatever the device count
    micro_batch: int = 0  # per-device forward batch; 0 = the whole per-device share
    segment_samples: int = 12000
    steps_per_epoch: int = 1000
    epochs: int = 10000
    confusion_weight: float = 1e-2  # lambda of the domain-confusion term
    grad_clip: float = 1.0  # gradient value clip, as the reference; inf = no clipping
    augment: bool = True  # pitch-shift a sub-segment of the encoder input
    pitch_shift_semitones: float = 0.5
    schedule: str = "all_domains"  # or "round_robin": one domain per step (reference)
    # "fp32", or "bf16": matrix products and convolutions under bfloat16 autocast (CPU and
    # CUDA), weights, gradients and optimizer states kept in fp32
    precision: str = "fp32"
    # CUDA: deterministic kernels (cuDNN, cuBLAS workspace), so that a resumed run equals
    # an uninterrupted one there too; CPU training is deterministic regardless
    deterministic: bool = True
    seed: int = 1
    val_batches: int = 4  # validation batches per domain at the end of every epoch
    num_workers: int = 0
    # Divergence guard. guard=False (an experiment's control, as the reference trained):
    # spikes are taken and a validation loss back at ln 256 is only logged; non-finite
    # steps are still refused (they cannot be taken).
    guard: bool = True
    spike_factor: float = 10.0  # a step loss this many times the running median is skipped
    spike_window: int = 50
    max_bad_steps: int = 20  # this many skipped steps in a row -> roll back
    rollback_lr_factor: float = 0.5
    uniform_margin: float = 0.05  # validation loss within this of ln 256 -> diverged
    checkpoint_every: int = 0  # also keep checkpoints/step_<n>.pt every n steps (0 = never)
    # Fine-tuning (train --init-from): keep the encoder as it is, train decoders only.
    freeze_encoder: bool = False
    # Wall-clock budget: stop after this many minutes of training (steps, validation and
    # data loading), counted across resumes; 0 = no budget. Used to compare settings at
    # equal cost (the cpu-bottleneck experiment).
    max_minutes: float = 0.0
    # Share of the decoders' teacher-forced input codes replaced by uniformly random
    # codes (targets stay clean): the past audio becomes less reliable than the latent,
    # so a decoder has to use the latent.
    input_corruption: float = 0.0
    # The encoder's confusion term rises linearly from 0 to confusion_weight over this
    # many steps (0 = full weight from the start); the classifier's own update always
    # uses confusion_weight.
    confusion_ramp_steps: int = 0


@dataclass
class Config:
    preset: str = "paper"
    sample_rate: int = 16000
    mu_law: str = "torchaudio"  # "torchaudio" (rounding) or "reference" (truncation)
    domains: list[str] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, trained_on: str | None = None) -> Config:
        """`trained_on` ("cpu" or "cuda"): the device a stored run trained on, which
        decides what an old config's ``train.bf16`` computed (see `legacy_precision`)."""
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        model = _build(ModelConfig, d.pop("model", {}), "model")
        train = _build(TrainConfig, legacy_precision(d.pop("train", {}), trained_on), "train")
        return cls(model=model, train=train, **d)

    def save_yaml(self, path: str | Path) -> None:
        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def legacy_precision(train: dict[str, Any], trained_on: str | None = None) -> dict[str, Any]:
    """A train section with an old ``bf16`` flag as ``precision``. The flag meant bf16
    autocast on CUDA and fp32 on the CPU whatever its value, so a run stored as trained
    on the CPU gets "fp32"; otherwise the flag is taken as written."""
    if "bf16" not in train:
        return train
    train = dict(train)
    bf16 = train.pop("bf16")
    if bf16 is not True and bf16 is not False:
        raise ValueError(f"train.bf16 must be true or false, not {bf16!r}")
    if "precision" in train:
        raise ValueError("train.bf16 (old) and train.precision are both set; keep precision")
    train["precision"] = "bf16" if bf16 and trained_on != "cpu" else "fp32"
    return train


PRECISIONS = ("fp32", "bf16")


def _build(klass, values: dict[str, Any], section: str):
    names = {f.name for f in dataclasses.fields(klass)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {section} config keys {sorted(unknown)}; known: {sorted(names)}")
    return klass(**values)


# The cpu preset's training budget in wall-clock minutes (train.max_minutes).
CPU_TRAIN_MINUTES = 60.0


def _paper() -> Config:
    return Config(preset="paper")


def _cpu() -> Config:
    # The reference's architecture scaled to 2 CPU cores, as the CPU translation search
    # (umt_core.study.cpu_experiment) found it: a latent of 16 channels at one frame per 64 samples
    # (2,000 numbers per second at 8 kHz), a short decoder (1 block of 6 layers: a
    # receptive field of 65 samples), 30% of the decoders' input codes corrupted and a
    # strong confusion term, so that the decoders take the notes from the latent. Short
    # segments and small batches give many steps; a time budget ends training.
    return Config(
        preset="cpu",
        model=ModelConfig(
            encoder_blocks=2, encoder_layers=8, encoder_channels=32, latent_channels=16,
            pool=64, decoder_blocks=1, decoder_layers=6, residual_channels=48,
            skip_channels=48, classifier_layers=2, classifier_channels=32,
        ),
        train=TrainConfig(
            batch_per_domain=4, segment_samples=2048, steps_per_epoch=100, lr_decay=0.99,
            val_batches=2, confusion_weight=0.1, input_corruption=0.3,
            max_minutes=CPU_TRAIN_MINUTES,
        ),
    )


def _smoke() -> Config:
    # Seconds, for tests.
    return Config(
        preset="smoke",
        model=ModelConfig(
            encoder_blocks=1, encoder_layers=3, encoder_channels=8, latent_channels=4,
            pool=16, decoder_blocks=1, decoder_layers=4, residual_channels=8,
            skip_channels=8, classifier_layers=2, classifier_channels=8,
        ),
        train=TrainConfig(
            batch_per_domain=2, segment_samples=256, steps_per_epoch=10, epochs=2,
            lr_decay=1.0, val_batches=1, augment=False, lr=3e-3,
        ),
    )


def _cpu_spectral() -> Config:
    # The spectral decoder ablation (umt_core.spectral) on the cpu preset's data and
    # encoder structure: each decoder predicts 513-bin log-magnitude frames at 8 kHz
    # (n_fft 1024: the round trip keeps 0.996 of the notes, a 64-band mel 0.54). The
    # encoder is the cost of a step here, so it is half as wide (16 channels: ~2x the
    # steps in the same time) and segments are 0.5 s (17 frames) at a higher rate.
    cfg = _cpu()
    cfg.preset = "cpu-spectral"
    cfg.model.decoder = "spectral"
    cfg.model.latent_norm = "frame"
    cfg.model.encoder_channels = 16
    cfg.train.input_corruption = 0.0  # no teacher-forced input to corrupt
    cfg.train.segment_samples = 4096
    cfg.train.lr = 2e-3
    cfg.train.max_minutes = 30.0
    return cfg


PRESETS = {"paper": _paper, "cpu": _cpu, "cpu-spectral": _cpu_spectral, "smoke": _smoke}


def preset(name: str, overrides: dict[str, Any] | None = None) -> Config:
    """The named preset with dotted overrides applied, e.g. {"train.lr": 1e-4}."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]()
    return apply_overrides(cfg, overrides or {})


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return a copy of `cfg` with `{"section.field": value}` overrides applied.

    String values (from the command line) are parsed by `parse_value`, so "1e-4",
    "true" and "[a, b]" get their natural types.
    """
    cfg = copy.deepcopy(cfg)
    for key, value in overrides.items():
        if isinstance(value, str):
            value = parse_value(value)
        if key == "train.bf16":  # the old flag, as in a stored config
            key, value = "train.precision", legacy_precision({"bf16": value})["precision"]
        target: Any = cfg
        *path, name = key.split(".")
        for part in path:
            if not dataclasses.is_dataclass(target) or not hasattr(target, part):
                raise ValueError(f"unknown config override {key!r}")
            target = getattr(target, part)
        if not dataclasses.is_dataclass(target) or name not in {
            f.name for f in dataclasses.fields(target)
        }:
            raise ValueError(f"unknown config override {key!r}")
        current = getattr(target, name)
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (isinstance(current, int) and not isinstance(current, bool)
                and isinstance(value, float) and value.is_integer()):
            value = int(value)  # 1E3 for a count
        if current is not None and not isinstance(value, type(current)):
            raise ValueError(
                f"config override {key}={value!r}: expected {type(current).__name__}"
            )
        setattr(target, name, value)
    return cfg


# YAML 1.1 (PyYAML) reads 1e-4, 5E3 or .5e-3 as strings: its floats need a dot and a signed
# exponent. A command line means a number by them.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_value(text: str) -> Any:
    """A command-line value: a YAML scalar or list ("true", "null", "[a, b]"), and any
    decimal number as a number (1e-4, 5E3 and 1_000 as YAML 1.2 reads them), and inf or
    nan as Python writes them (train.grad_clip=inf: no clipping)."""
    if text == "":
        return text
    if text.strip().lower() in ("inf", "+inf", "-inf", "nan"):
        return float(text)
    value = yaml.safe_load(text)
    if isinstance(value, str) and _NUMBER.fullmatch(text.strip()):
        number = float(text)
        return int(number) if re.fullmatch(r"[-+]?\d+", text.strip()) else number
    return value


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """Parse CLI `key=value` strings."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.field=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out

"""Autoregressive generation and translation.

Translating a clip = mu-law codes -> shared encoder -> latent z -> sample a new clip,
one audio sample at a time, from the target domain's WaveNet decoder (run
incrementally: `umt_core.generate.incremental`). `translate` cuts an input longer
than about a second into overlapping chunks that start from an empty history,
generates them in parallel as one batch and cross-fades them
(`umt_core.generate.chunked`); memory does not grow with the clip length beyond the
output itself either way.

    codes = generate(model.decoder("cello"), z, length, temperature=1.0, seed=0)
    out = translate(model, audio, 16000, ["cello", "piano"])   # {"cello": array, ...}

    python -m umt_core translate --checkpoint C --input in.wav --to cello --out-dir D

A model with spectral decoders (the ablation, `umt_core.spectral`) has nothing to
sample: `translate` encodes each clip, predicts its magnitude frames in one pass and
inverts them with Griffin-Lim, the whole clip at once. Chunks exist to run a
sequential generation in parallel, so they do not apply; a chunk would also see other
latent statistics than its clip (the spectral decoder normalises the latent per clip).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..audio import load_audio, mu_law_decode, mu_law_encode, resample, save_audio
from ..checkpoint import load_model
from ..device import resolve_device
from ..model import UMTN
from ..options import (
    non_negative_float,
    non_negative_int,
    output_rate,
    positive_float,
    positive_int,
)
from ..outputs import output_dir
from ..spectral import decode_audio
from .chunked import Chunking, translate_chunked
from .incremental import METHODS, _device_of, encode, generate

# ------------------------------------------------------------------------- translate


def _as_clip(a, i: int) -> np.ndarray:
    x = np.asarray(a.detach().cpu().numpy() if torch.is_tensor(a) else a, dtype=np.float32)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"audio clip {i} must be a non-empty 1-D array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"audio clip {i} contains NaN or infinite samples")
    return x


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad to exactly n samples (resampling can be off by one)."""
    if len(x) >= n:
        return np.ascontiguousarray(x[:n])
    return np.pad(x, (0, n - len(x)))


def _target_names(model: UMTN, targets) -> tuple[list[int], list[str]]:
    if isinstance(targets, (str, int)):
        targets = [targets]
    indices: list[int] = []
    for t in targets:
        k = model.domain_index(t)  # ValueError naming the model's domains
        if k not in indices:
            indices.append(k)
    if not indices:
        raise ValueError(f"no target domain given; this model has {model.domains}")
    return indices, [model.domains[k] for k in indices]


@torch.no_grad()
def translate(model: UMTN, audio, sample_rate: int, targets, *, temperature: float = 1.0,
              seed: int = 0, seconds: float | None = None, output_rate: int | None = None,
              progress: bool = False, method: str = "auto", precision: str = "float32",
              steps_per_call: int | None = None, chunk_samples: int | None = None,
              overlap_samples: int | None = None, chunk_batch: int | None = None) -> dict:
    """Translate audio to each target domain (name or index).

    `audio` is a 1-D float array at `sample_rate`, or a list of them or a 2-D array
    (translated as one batch: each clip is zero-padded to the longest and its outputs
    trimmed back).
    An input longer than a chunk (`chunk_samples` at the model's rate; default about
    1 s, see `umt_core.generate.chunked`) is cut into chunks that overlap by
    `overlap_samples`, generated in parallel, `chunk_batch` at a time across all clips,
    and cross-faded;
    ``chunk_samples=0`` generates every clip in one piece instead. A spectral model
    decodes every clip in one piece (Griffin-Lim; no sampling, no chunks: the sampling
    and chunking options do not apply).
    `steps_per_call`: samples per call of the generation step (memory of the
    conditioning), not a change of the result.
    Returns {target name: array} (or {target name: [array per clip]}) at the model's
    sample rate, or at `output_rate`; each output has the input's duration, in samples
    exactly when the rates agree. `seconds` keeps only the first seconds of each clip.
    """
    if (torch.is_tensor(audio) or isinstance(audio, np.ndarray)) and audio.ndim == 2:
        audio = list(audio)  # (clips, samples): a batch
    single = not isinstance(audio, (list, tuple))
    clips = [_as_clip(a, i) for i, a in enumerate([audio] if single else audio)]
    if not clips:
        raise ValueError("no audio to translate")
    indices, names = _target_names(model, targets)
    if seconds is not None:
        if seconds <= 0:
            raise ValueError("seconds must be positive")
        clips = [c[:max(1, round(seconds * sample_rate))] for c in clips]
    cfg = model.config
    rate, pool = cfg.sample_rate, cfg.model.pool
    at_model = [resample(c, sample_rate, rate) for c in clips]
    lengths = [len(c) for c in at_model]
    chunking = None
    if chunk_samples != 0 and cfg.model.decoder == "wavenet":
        chunking = Chunking.for_model(cfg, chunk_samples, overlap_samples, chunk_batch)
        if max(lengths) <= chunking.length:
            chunking = None  # one chunk per clip: the sequential batch below
    if chunking is not None:
        wave = translate_chunked(model, at_model, indices, chunking, temperature=temperature,
                                 seed=seed, method=method, precision=precision,
                                 steps_per_call=steps_per_call, progress=progress)
        return _outputs(wave, names, clips, lengths, sample_rate, rate, output_rate, single)
    padded = max(1, max(-(-n // pool) for n in lengths)) * pool
    batch = np.zeros((len(clips), padded), dtype=np.float32)
    for b, c in enumerate(at_model):
        batch[b, :len(c)] = c
    device = _device_of(model)
    codes = mu_law_encode(torch.from_numpy(batch), cfg.mu_law).to(device)
    z = encode(model, codes)
    if cfg.model.decoder == "spectral":  # non-autoregressive: frames, then Griffin-Lim
        wave = decode_audio([model.decoder(k) for k in indices], z, padded, cfg.model).cpu().numpy()
    else:
        out = generate([model.decoder(k) for k in indices], z, padded, temperature=temperature,
                       seed=seed, method=method, precision=precision, chunk=steps_per_call,
                       progress=progress)
        wave = mu_law_decode(out.cpu(), cfg.mu_law).numpy()
    return _outputs([wave[:, b] for b in range(len(clips))], names, clips, lengths,
                    sample_rate, rate, output_rate, single)


def _outputs(wave: Sequence[np.ndarray], names: list[str], clips: list[np.ndarray],
             lengths: list[int], sample_rate: int, rate: int, output_rate: int | None,
             single: bool) -> dict:
    """{target: array or [array per clip]} from per-clip (D, samples) model-rate audio."""
    result: dict = {}
    for d, name in enumerate(names):
        per_clip = []
        for b, n in enumerate(lengths):
            y = wave[b][d, :n]
            if output_rate is not None and output_rate != rate:
                y = resample(y, rate, output_rate)
            if output_rate is not None:
                y = _fit(y, round(len(clips[b]) * output_rate / sample_rate))
            per_clip.append(np.ascontiguousarray(y, dtype=np.float32))
        result[name] = per_clip[0] if single else per_clip
    return result


def reconstruct(model: UMTN, audio, sample_rate: int, domain, **kwargs):
    """Translate to the source's own domain: what the autoencoder keeps of the audio."""
    _, names = _target_names(model, [domain])
    return translate(model, audio, sample_rate, names, **kwargs)[names[0]]


# ------------------------------------------------------------------------------- CLI


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("translate", help="translate audio files to other domains",
                       description="Encode each input and decode it with each target domain's "
                       "decoder; writes <out-dir>/<stem>_to_<domain>.wav.")
    p.add_argument("--checkpoint", required=True,
                   help="umt_core checkpoint (.pt): a run's checkpoints/last.pt or best.pt, or "
                        "one written by convert-reference")
    p.add_argument("--input", action="append", required=True, metavar="WAV",
                   help="audio file (repeat for several; they are translated as one batch)")
    p.add_argument("--to", action="append", required=True, metavar="DOMAIN",
                   help="target domain name or index (repeat for several)")
    p.add_argument("--out-dir", required=True, help="folder for <stem>_to_<domain>.wav")
    p.add_argument("--seconds", type=positive_float, default=None,
                   help="translate only the first S seconds (None: whole files)")
    p.add_argument("--temperature", type=non_negative_float, default=1.0,
                   help="sampling temperature, a finite number >= 0 (0 = greedy)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampling")
    p.add_argument("--output-rate", type=output_rate, default="model",
                   help="'model' (the model's rate), 'input' (each file's own rate) or a "
                        "rate in Hz")
    p.add_argument("--method", default="auto", choices=METHODS,
                   help="generation backend (auto: the fastest available)")
    p.add_argument("--precision", default="float32", choices=("float32", "bfloat16"),
                   help="weights of the C++ CPU kernel")
    p.add_argument("--chunk", type=non_negative_int, default=None, metavar="SAMPLES",
                   help="chunk length at the model's rate for parallel generation of long "
                        "inputs (None: about 1 s, at least a training segment; 0 = "
                        "each file in one piece)")
    p.add_argument("--overlap", type=non_negative_int, default=None, metavar="SAMPLES",
                   help="cross-faded overlap of consecutive chunks (None: about 50 ms)")
    p.add_argument("--chunk-batch", type=positive_int, default=None, metavar="N",
                   help="chunks generated together, across files (None: 32)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cli_translate)


def _cli_translate(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    output_dir(args.out_dir, "--out-dir")  # before any work
    model = load_model(args.checkpoint, map_location=device)
    targets = [int(t) if t.isdigit() and t not in model.domains else t for t in args.to]
    t0 = time.perf_counter()
    paths, samples = translate_files(
        model, args.input, targets, args.out_dir, output_rate=args.output_rate,
        seconds=args.seconds, temperature=args.temperature, seed=args.seed,
        progress=not args.quiet, method=args.method, precision=args.precision,
        chunk_samples=args.chunk, overlap_samples=args.overlap, chunk_batch=args.chunk_batch)
    elapsed = time.perf_counter() - t0
    for path in paths:
        print(path)
    rate = model.config.sample_rate
    print(f"{len(args.input)} input(s) x {len(set(targets))} target(s): {samples / rate:.2f} s "
          f"of audio in {elapsed:.1f} s, reading and writing included "
          f"({samples / max(elapsed, 1e-9):,.0f} samples/s)", file=sys.stderr)
    return 0


def translate_files(model: UMTN, inputs: Sequence[str | Path], targets, out_dir: str | Path, *,
                    output_rate: str | int = "model", seconds: float | None = None,
                    **options) -> tuple[list[Path], int]:
    """Read audio files, translate them (`translate` with `options`) and write
    ``<stem>_to_<domain>.wav`` into `out_dir` at the model's rate, each input's own
    (``output_rate="input"``) or a given rate. Returns the paths written and the
    number of model-rate samples translated."""
    from ..data.identity import verify_locked_file

    _, names = _target_names(model, targets)  # unknown domains fail before any work
    out_dir = output_dir(out_dir, "--out-dir")
    inputs = [Path(p) for p in inputs]
    for p in inputs:
        verify_locked_file(p)  # a file of a prepared dataset must match its lock
    stems = [p.stem for p in inputs]
    if len(set(stems)) != len(stems):
        raise ValueError(f"inputs must have distinct file names (stems), got {stems}")
    rate = model.config.sample_rate
    loaded = [load_audio(p) for p in inputs]  # AudioError names an unreadable file
    clips = [resample(a, sr, rate) for a, sr in loaded]
    out = translate(model, clips, rate, names, seconds=seconds, **options)
    samples, paths = 0, []
    for name in names:
        for stem, (a, sr), y in zip(stems, loaded, out[name]):
            samples += len(y)
            if output_rate == "model":
                write_rate = rate
            else:
                write_rate = sr if output_rate == "input" else int(output_rate)
                n = len(a) if seconds is None else min(len(a), round(seconds * sr))
                y = _fit(resample(y, rate, write_rate), round(n * write_rate / sr))
            path = out_dir / f"{stem}_to_{name}.wav"
            save_audio(path, y, write_rate)
            paths.append(path)
    return paths, samples


__all__ = ["reconstruct", "translate", "translate_files"]

"""Autoregressive generation and translation.

Translating a clip = mu-law codes -> shared encoder -> latent z -> sample a new clip,
one audio sample at a time, from the target domain's WaveNet decoder. The decoder
is run incrementally: each layer keeps a ring buffer of its past inputs, the latent
conditioning is projected once per latent frame, and D target decoders x B clips run
together in one step (see `umt_core.generate.steps` and `umt_core.generate.cpu`).
A generation runs its samples in calls of up to `DEFAULT_CHUNK` steps with the state
carried across. `translate` cuts an input longer than about a second into overlapping
chunks that start from an empty history, generates them in parallel as one batch and
cross-fades them (`umt_core.generate.chunked`); memory does not grow with the clip
length beyond the output itself either way.

    codes = generate(model.decoder("cello"), z, length, temperature=1.0, seed=0)
    out = translate(model, audio, 16000, ["cello", "piano"])   # {"cello": array, ...}

    python -m umt_core translate --checkpoint C --input in.wav --to cello --out-dir D

Sampling draws one uniform number per sample and stream from a seeded
`torch.Generator` (time-major, independent of the chunk size and of the backend) and
takes the inverse CDF of softmax(logits / temperature); temperature 0 is greedy.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..audio import load_audio, mu_law_decode, mu_law_encode, resample, save_audio
from ..checkpoint import load_model
from ..device import resolve_device
from ..model import UMTN, Encoder, WaveNetDecoder
from .chunked import Chunking, translate_chunked
from .cpu import CppStep, cpp_kernel
from .steps import Chunk, EagerStep, Layout, State, TorchStep

METHODS = ("auto", "cpp", "torch", "cuda-graph", "eager")
DEFAULT_CHUNK = 16000  # samples per chunk: 1 s of audio at 16 kHz


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def resolve_method(method: str, device: torch.device | str) -> str:
    """'auto' -> 'cuda-graph' on CUDA, 'cpp' on the CPU where a compiler works, else 'torch'."""
    if method not in METHODS:
        raise ValueError(f"unknown generation method {method!r}; choose one of {METHODS}")
    cuda = torch.device(device).type == "cuda"
    if method == "auto":
        if cuda:
            return "cuda-graph"
        return "cpp" if cpp_kernel() is not None else "torch"
    if method == "cpp" and cuda:
        raise ValueError("method 'cpp' runs on the CPU; use 'cuda-graph' or 'torch' on CUDA")
    if method == "cuda-graph" and not cuda:
        raise ValueError("method 'cuda-graph' needs the decoder and z on a CUDA device")
    if method == "cpp" and cpp_kernel() is None:
        raise RuntimeError("the C++ generation kernel could not be built here (see the warning)")
    return method


class IncrementalDecoder:
    """D decoders x B clips decoded one sample at a time, in chunks, state carried.

    ``z`` (B, latent, frames) conditions every decoder; ``length`` is the full output
    length, which fixes how frames map to samples exactly as the teacher-forced
    forward pass does (``upsample_frames``).
    """

    def __init__(self, decoders: WaveNetDecoder | Sequence[WaveNetDecoder], z: torch.Tensor,
                 length: int, *, method: str = "auto", precision: str = "float32",
                 chunk: int | None = None):
        self.decoders = [decoders] if isinstance(decoders, WaveNetDecoder) else list(decoders)
        if not self.decoders:
            raise ValueError("no decoders to generate with")
        if z.dim() != 3:
            raise ValueError(f"z must be (batch, latent, frames), got {tuple(z.shape)}")
        if z.shape[-1] == 0:
            raise ValueError("the latent has no frames: the input is shorter than one pool window")
        if length < 1:
            raise ValueError("length must be at least one sample")
        self.device = z.device
        self.z = z.detach().float()
        self.length = int(length)
        self.frames = z.shape[-1]
        self.per_frame = max(self.length // self.frames, 1)
        self.chunk = int(chunk or DEFAULT_CHUNK)
        self.layout = Layout.of(self.decoders)
        self.D, self.B = len(self.decoders), z.shape[0]
        self.state = State(self.layout, self.D * self.B, self.device)
        self.method = resolve_method(method, self.device)
        # Every layer's conditioning 1x1 conv stacked into one matrix per decoder.
        with torch.no_grad():
            self._cond_w = torch.stack([
                torch.cat([layer.condition.weight[:, :, 0] for layer in d.layers])
                for d in self.decoders]).float()
            self._cond_b = torch.stack([
                torch.cat([layer.condition.bias for layer in d.layers])
                for d in self.decoders]).float()
            self._head_w = torch.stack([d.condition.weight[:, :, 0] for d in self.decoders]).float()
            self._head_b = torch.stack([d.condition.bias for d in self.decoders]).float()
        if self.method == "eager":
            self.step = EagerStep(self.decoders, self.state)
        elif self.method == "cpp":
            self.step = CppStep(self.decoders, self.state, cpp_kernel(), precision)
        else:
            max_frames = min(self.frames, self.chunk // self.per_frame + 2)
            self.step = TorchStep(self.decoders, self.state, max_steps=self.chunk,
                                  max_frames=max_frames, cuda_graph=self.method == "cuda-graph")

    @property
    def t(self) -> int:
        return self.state.t

    def _frame(self, t: torch.Tensor) -> torch.Tensor:
        return torch.clamp(t // self.per_frame, max=self.frames - 1)

    def _conditioning(self, f0: int, f1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``decoder.project_latent`` computes for frames [f0, f1) of every decoder
        (all layers' 1x1 convs as one matmul): (D, B, F, L, 2R) and (D, B, F, S)."""
        zc = self.z[..., f0:f1]
        D, B, F, L = self.D, self.B, f1 - f0, self.layout.layers
        cond = torch.einsum("dok,bkf->dbfo", self._cond_w, zc) + self._cond_b[:, None, None]
        head = torch.einsum("dok,bkf->dbfo", self._head_w, zc) + self._head_b[:, None, None]
        return cond.reshape(D, B, F, L, -1), head

    @torch.no_grad()
    def run(self, steps: int, *, temperature: float = 1.0,
            generator: torch.Generator | Sequence[torch.Generator] | None = None,
            forced: torch.Tensor | None = None,
            return_logits: bool = False, progress: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Advance `steps` samples. Returns codes (D, B, steps) and, on request, the
        logits (D, B, 256, steps). ``forced`` (B, steps) or (D, B, steps) feeds given
        codes instead of sampled ones (teacher forcing). `generator`: one for all rows,
        or one per clip (B), each drawing its clip's D rows as that clip alone would."""
        if temperature < 0:
            raise ValueError("temperature must be >= 0 (0 = greedy)")
        rows = self.D * self.B
        if forced is not None:
            forced = forced.to(self.device, torch.long)
            forced = forced.expand(self.D, *forced.shape[-2:]) if forced.dim() == 2 else forced
            if forced.shape != (self.D, self.B, steps):
                raise ValueError(f"forced codes must be ({self.B}, {steps}) or "
                                 f"({self.D}, {self.B}, {steps}), got {tuple(forced.shape)}")
            forced = forced.reshape(rows, steps)
        sample = forced is None and temperature > 0
        if sample and generator is None:
            generator = torch.Generator().manual_seed(0)
        if sample and not isinstance(generator, torch.Generator) and len(generator) != self.B:
            raise ValueError(f"{len(generator)} generators for {self.B} clips")
        codes, logits = [], []
        bar = _progress(steps, progress)
        done = 0
        while done < steps:
            n = min(self.chunk, steps - done)
            t = torch.arange(self.t, self.t + n)
            frames = self._frame(t)
            f0, f1 = int(frames[0]), int(frames[-1]) + 1
            cond, head = self._conditioning(f0, f1)
            uniforms = None
            if sample:  # time-major draws: the same numbers whatever the chunking
                uniforms = _uniforms(generator, n, self.D, self.B).to(self.device)
            c = Chunk(cond=cond, head=head, frame_of_step=(frames - f0).to(self.device), steps=n,
                      uniforms=uniforms,
                      forced=None if forced is None else forced[:, done:done + n],
                      inv_temperature=1.0 / temperature if sample else 1.0,
                      want_logits=return_logits)
            out, lg = self.step.run(c)
            codes.append(out)
            if return_logits:
                logits.append(lg)
            done += n
            if bar is not None:
                bar.update(n)
        if bar is not None:
            bar.close()
        codes_t = torch.cat(codes, 1).view(self.D, self.B, steps)
        logits_t = None
        if return_logits:
            logits_t = torch.cat(logits, 1).view(self.D, self.B, steps, -1).permute(0, 1, 3, 2)
        return codes_t, logits_t


def _uniforms(generator: torch.Generator | Sequence[torch.Generator], n: int, d: int,
              b: int) -> torch.Tensor:
    """(D * B, n) uniform draws, row d * B + b; with one generator per clip, clip b's
    rows are drawn time-major from its own generator, as if it were alone."""
    if isinstance(generator, torch.Generator):
        return torch.rand(n, d * b, generator=generator).t()
    per_clip = torch.stack([torch.rand(n, d, generator=g) for g in generator], 2)
    return per_clip.reshape(n, d * b).t()


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    return tqdm(total=total, unit="sample", unit_scale=True, desc="generating", leave=False)


def generate(decoder: WaveNetDecoder | Sequence[WaveNetDecoder], z: torch.Tensor, length: int,
             *, temperature: float = 1.0, seed: int = 0, method: str = "auto",
             precision: str = "float32", chunk: int | None = None,
             progress: bool = False) -> torch.Tensor:
    """Sample `length` codes from a decoder conditioned on z (B, latent, frames).

    Returns (B, length) int64 codes for one decoder, (D, B, length) for a sequence of
    D decoders (batched together). temperature 0 = greedy; the same seed gives the
    same output on every backend.
    """
    inc = IncrementalDecoder(decoder, z, length, method=method, precision=precision, chunk=chunk)
    generator = torch.Generator().manual_seed(int(seed))
    codes, _ = inc.run(length, temperature=temperature, generator=generator, progress=progress)
    return codes[0] if isinstance(decoder, WaveNetDecoder) else codes


@torch.no_grad()
def teacher_forced_logits(decoder: WaveNetDecoder | Sequence[WaveNetDecoder], z: torch.Tensor,
                          codes: torch.Tensor, *, method: str = "auto",
                          precision: str = "float32", chunk: int | None = None) -> torch.Tensor:
    """Incremental logits for given codes (B, T): what ``decoder(codes, z)`` computes,
    one sample at a time. (B, 256, T), or (D, B, 256, T) for a sequence of decoders."""
    inc = IncrementalDecoder(decoder, z, codes.shape[-1], method=method, precision=precision,
                             chunk=chunk)
    _, logits = inc.run(codes.shape[-1], forced=codes, return_logits=True)
    return logits[0] if isinstance(decoder, WaveNetDecoder) else logits


# ---------------------------------------------------------------------------- encode


def _encoder_margin(encoder: Encoder) -> int:
    """Samples of context on each side that one encoder output depends on."""
    margin = encoder.start.padding[0]
    for layer in encoder.dilated_convs:
        margin += layer.dilated_conv.padding[0]
    return margin


@torch.no_grad()
def encode(model: UMTN | Encoder, codes: torch.Tensor, *, chunk_frames: int = 64) -> torch.Tensor:
    """``encoder(codes)`` computed over windows of `chunk_frames` latent frames with
    enough context on both sides that the result is the same as one pass."""
    encoder = model.encoder if isinstance(model, UMTN) else model
    return encode_windows(encoder, lambda lo, hi: codes[..., lo:hi], codes.shape[-1],
                          chunk_frames=chunk_frames)


@torch.no_grad()
def encode_windows(encoder: Encoder, codes_of, length: int, *,
                   chunk_frames: int = 64) -> torch.Tensor:
    """`encode` of `length` samples whose codes ``codes_of(lo, hi)`` gives window by
    window (B, hi - lo), so that only one window of codes is held at a time."""
    pool = encoder.pool.kernel_size
    pool = pool[0] if isinstance(pool, tuple) else pool
    frames = length // pool
    if frames <= chunk_frames:
        return encoder(codes_of(0, length))
    ctx = -(-_encoder_margin(encoder) // pool)  # context, in whole frames
    parts = []
    for a in range(0, frames, chunk_frames):
        b = min(a + chunk_frames, frames)
        lo = max(a - ctx, 0)
        hi = min((b + ctx) * pool, length)
        z = encoder(codes_of(lo * pool, hi))
        parts.append(z[..., a - lo:b - lo])
    return torch.cat(parts, -1)


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
    ``chunk_samples=0`` generates every clip in one piece instead.
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
    if chunk_samples != 0:
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
    p = sub.add_parser("translate", help="translate audio files to other domains")
    p.add_argument("--checkpoint", required=True, help="umt_core checkpoint (.pt)")
    p.add_argument("--input", action="append", required=True, metavar="WAV",
                   help="audio file (repeat for several; they are translated as one batch)")
    p.add_argument("--to", action="append", required=True, metavar="DOMAIN",
                   help="target domain name or index (repeat for several)")
    p.add_argument("--out-dir", required=True, help="folder for <stem>_to_<domain>.wav")
    p.add_argument("--seconds", type=float, default=None, help="translate only the first S seconds")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-rate", default="model",
                   help="'model' (default), 'input' (each file's own rate) or a rate in Hz")
    p.add_argument("--method", default="auto", choices=METHODS)
    p.add_argument("--precision", default="float32", choices=("float32", "bfloat16"),
                   help="weights of the C++ CPU kernel")
    p.add_argument("--chunk", type=int, default=None, metavar="SAMPLES",
                   help="chunk length at the model's rate for parallel generation of long "
                        "inputs (default: about 1 s, at least a training segment; 0 = "
                        "each file in one piece)")
    p.add_argument("--overlap", type=int, default=None, metavar="SAMPLES",
                   help="cross-faded overlap of consecutive chunks (default: about 50 ms)")
    p.add_argument("--chunk-batch", type=int, default=None, metavar="N",
                   help="chunks generated together, across files (default: 32)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cli_translate)


def _cli_translate(args: argparse.Namespace) -> int:
    model = load_model(args.checkpoint, map_location=resolve_device(args.device))
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
    _, names = _target_names(model, targets)  # unknown domains fail before any work
    inputs = [Path(p) for p in inputs]
    stems = [p.stem for p in inputs]
    if len(set(stems)) != len(stems):
        raise ValueError(f"inputs must have distinct file names (stems), got {stems}")
    rate = model.config.sample_rate
    loaded = [load_audio(p) for p in inputs]  # AudioError names an unreadable file
    clips = [resample(a, sr, rate) for a, sr in loaded]
    out = translate(model, clips, rate, names, seconds=seconds, **options)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
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


__all__ = [
    "IncrementalDecoder", "encode", "generate", "reconstruct", "resolve_method",
    "teacher_forced_logits", "translate", "translate_files",
]

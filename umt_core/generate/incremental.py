"""Sampling a WaveNet decoder one audio sample at a time, and encoding audio to the
latent, in windows that hold bounded memory.

The decoder runs incrementally: each layer keeps a ring buffer of its past inputs, the
latent conditioning is projected once per latent frame, and D target decoders x B clips
run together in one step (see `umt_core.generate.steps` and `umt_core.generate.cpu`).
A generation runs its samples in calls of up to `DEFAULT_CHUNK` steps with the state
carried across.

Sampling draws one uniform number per sample and stream from a seeded
`torch.Generator` (time-major, independent of the chunk size and of the backend) and
takes the inverse CDF of softmax(logits / temperature); temperature 0 is greedy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..model import UMTN, Encoder, WaveNetDecoder
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
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), "
                             f"not {temperature}")
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

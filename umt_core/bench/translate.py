"""``python -m umt_core bench translate``: a whole file translated end to end (read,
encode, generate, write), in one run: in one piece (sequential) and in cross-faded
chunks (`umt_core.generate.chunked`), with the generation step's weights in fp32 and in bf16.

The model has the preset's architecture and seeded random weights (speed does not
depend on what the weights learned); the input is a synthetic melody written to a
temporary WAV at the model's rate. Per row: wall time, the real-time factor (wall
time / audio duration; below 1 is faster than real time) and the peak resident
memory of the process while the row ran (sampled every 20 ms).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import numpy as np
import torch

from ..audio import save_audio
from ..config import PRESETS, preset
from ..device import cpu_name, resolve_device
from ..generate.api import translate_files
from ..generate.chunked import Chunking
from ..generate.incremental import resolve_method
from ..model import UMTN
from ..options import non_negative_int, positive_float, positive_int


def _rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class PeakMemory:
    """Peak resident memory of this process while the block runs (sampled)."""

    def __init__(self, every_s: float = 0.02):
        self.every_s = every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(self.every_s)

    def __enter__(self) -> Self:
        self.peak = _rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def melody_input(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """A melody of quarter-second notes with a few harmonics, at -8 dBFS."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    notes = 220.0 * 2 ** (rng.integers(0, 24, n // (rate // 4) + 1) / 12)
    f = np.repeat(notes, rate // 4)[:n]
    phase = 2 * np.pi * np.cumsum(f) / rate
    y = sum(np.sin(h * phase) / h for h in (1, 2, 3))
    return (0.4 * y / np.abs(y).max()).astype(np.float32)


ROWS = (("sequential", "float32"), ("sequential", "bfloat16"), ("chunked", "float32"),
        ("chunked", "bfloat16"))


def measure(args: argparse.Namespace) -> list[dict]:
    device = resolve_device(args.device)
    cfg = preset(args.preset)
    cfg.domains = ["source", "target"]
    torch.manual_seed(0)
    model = UMTN(cfg).to(device).eval()
    rate = cfg.sample_rate
    method = resolve_method(args.method, device)
    chunking = Chunking.for_model(cfg, args.chunk, args.overlap, args.chunk_batch)
    rows = [r for r in ROWS if r[0] in args.modes]
    if method != "cpp":  # bf16 weights are a choice of the C++ kernel
        rows = [r for r in rows if r[1] == "float32"]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "input.wav"
        save_audio(wav, melody_input(args.seconds, rate), rate)
        print(f"bench translate: preset {args.preset} (decoder {cfg.model.decoder_blocks} x "
              f"{cfg.model.decoder_layers} layers, {cfg.model.residual_channels} channels), "
              f"{args.seconds:g} s at {rate} Hz, one target, method {method}, {_where(device)}; "
              f"chunks of {chunking.length} samples, {chunking.overlap} overlap, "
              f"{chunking.batch} per batch", flush=True)
        print(f"{'mode':<11} {'weights':<9} {'wall s':>8} {'real-time factor':>17} "
              f"{'x real time':>12} {'peak RSS':>10}", flush=True)
        for mode, precision in rows:
            options = {"chunk_samples": 0} if mode == "sequential" else {
                "chunk_samples": chunking.length, "overlap_samples": chunking.overlap,
                "chunk_batch": chunking.batch}
            if device.type == "cuda":
                torch.cuda.synchronize()
            with PeakMemory() as mem:
                t0 = time.perf_counter()
                translate_files(model, [wav], ["target"], Path(tmp) / f"{mode}-{precision}",
                                seed=0, method=method, precision=precision,
                                progress=args.progress, **options)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                wall = time.perf_counter() - t0
            r = {"mode": mode, "weights": "fp32" if precision == "float32" else "bf16",
                 "wall_s": wall, "rtf": wall / args.seconds, "peak_rss": mem.peak}
            results.append(r)
            print(f"{mode:<11} {r['weights']:<9} {wall:>8.1f} {r['rtf']:>17.2f} "
                  f"{1 / r['rtf']:>11.2f}x {r['peak_rss'] / 2**20:>7,.0f} MiB", flush=True)
    return results


def _where(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"CPU, {torch.get_num_threads()} threads ({cpu_name()}{load})"


def register(which: argparse._SubParsersAction) -> None:
    p = which.add_parser("translate", help="a whole file end to end: wall time, real-time "
                                           "factor; sequential and chunked, fp32 and bf16")
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS),
                   help="config preset whose model translates")
    p.add_argument("--seconds", type=positive_float, default=60.0, help="length of the input")
    p.add_argument("--modes", nargs="+", default=["sequential", "chunked"],
                   choices=["sequential", "chunked"], help="ways of translating measured")
    p.add_argument("--chunk", type=non_negative_int, default=None,
                   help="chunk length (None: the model's)")
    p.add_argument("--overlap", type=non_negative_int, default=None,
                   help="chunk overlap (None: the model's)")
    p.add_argument("--chunk-batch", type=positive_int, default=None,
                   help="chunks per batch (None: 32)")
    p.add_argument("--method", default="auto", help="generation backend (auto: the fastest)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--progress", action="store_true", help="progress bars")
    p.set_defaults(func=lambda args: (measure(args), 0)[1])

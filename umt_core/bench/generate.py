"""`python -m umt_core bench generate`: audio samples/s of each generation backend
(`umt_core.generate`), with the plain eager loop measured in the same run."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Sequence

import torch

from ..config import preset
from ..device import cpu_name, resolve_device
from ..generate import IncrementalDecoder
from ..generate.cpu import cpp_kernel
from ..model import WaveNetDecoder

# (label, method, precision) of each column of the benchmark table
_CPU_COLUMNS = [("cpp fp32", "cpp", "float32"), ("cpp bf16", "cpp", "bfloat16"),
                ("torch", "torch", "float32"), ("eager", "eager", "float32")]
_CUDA_COLUMNS = [("cuda-graph", "cuda-graph", "float32"), ("torch", "torch", "float32"),
                 ("eager", "eager", "float32")]


def _time_run(dec: WaveNetDecoder, z: torch.Tensor, steps: int, method: str, precision: str,
              seed: int) -> float:
    inc = IncrementalDecoder(dec, z, steps, method=method, precision=precision, chunk=steps)
    g = torch.Generator().manual_seed(seed)
    if z.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    inc.run(steps, temperature=1.0, generator=g)
    if z.is_cuda:
        torch.cuda.synchronize()
    return z.shape[0] * steps / (time.perf_counter() - t0)


def benchmark(dec: WaveNetDecoder, batch: int, columns: Sequence[tuple[str, str, str]], *,
              steps: dict[str, int], pool: int, repeats: int = 3) -> dict[str, float]:
    """Median audio samples/s (all streams together) of each (label, method, precision)
    at one batch size, one latent frame per `pool` samples; the state is allocated outside
    the timed part."""
    dev = next(dec.parameters()).device
    latent = dec.layers[0].condition.in_channels
    rates = {}
    for label, method, precision in columns:
        n = steps[label]
        z = torch.randn(batch, latent, max(1, n // pool), device=dev,
                        generator=torch.Generator(dev).manual_seed(0))
        _time_run(dec, z, min(n, 32), method, precision, 0)  # warm-up: build, graph capture
        rates[label] = statistics.median(
            _time_run(dec, z, n, method, precision, r) for r in range(repeats))
    return rates


def run(args: argparse.Namespace) -> int:
    """`python -m umt_core bench generate`: the fast paths and the plain eager loop,
    measured in the same run, per batch size."""
    device = resolve_device(args.device)
    cfg = preset(args.preset)
    torch.manual_seed(0)
    dec = WaveNetDecoder(cfg.model).to(device).eval()
    batches = list(dict.fromkeys(args.batch))
    if device.type == "cuda":
        batches = sorted(set(batches) | {1, 64})
        columns = _CUDA_COLUMNS
    else:
        columns = _CPU_COLUMNS if cpp_kernel() is not None else _CPU_COLUMNS[2:]
    m = cfg.model
    print(f"decoder: preset {args.preset}, {m.decoder_blocks} blocks x {m.decoder_layers} layers, "
          f"{m.residual_channels} residual / {m.skip_channels} skip channels")
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}")
    else:
        load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
        print(f"device: CPU, {torch.get_num_threads()} threads ({cpu_name()}{load})")
    print(f"torch {torch.__version__}; audio samples/s of all streams together, "
          f"median of {args.repeats} runs")
    print(f"{'batch':>5} " + " ".join(f"{c[0]:>11}" for c in columns) + f" {'speed-up':>9}")
    for b in batches:
        per = {}
        for label, method, _ in columns:
            if args.samples:
                per[label] = args.samples
            elif method == "eager" or (method == "torch" and device.type == "cpu"):
                per[label] = int(min(max(2048 // b, 128), 256))
            else:
                per[label] = int(min(max(8192 // b, 256), 2048))
        rates = benchmark(dec, b, columns, steps=per, pool=m.pool, repeats=args.repeats)
        fast = rates[columns[0][0]]
        print(f"{b:>5} " + " ".join(f"{rates[c[0]]:>11,.0f}" for c in columns)
              + f" {fast / rates['eager']:>8.1f}x", flush=True)
    print("speed-up: first column over eager")
    return 0

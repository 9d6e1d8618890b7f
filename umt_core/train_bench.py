"""``python -m umt_core bench train``: seconds per training step, audio samples/s and
peak memory of the reference-exact eager step and of the step `umt_core.train` runs,
measured in the same run, plus a check that both compute the same losses and
gradients.

A step here is the reference's unit of work: one batch of ``--batch`` segments of
``--segment`` samples from one domain, a classifier update and an encoder+decoder
update. Each path is timed in its own child process (so its peak memory is its
own); the equality check runs in this process on the same initial weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import forward as fw
from .config import Config, preset
from .model import UMTN
from .sampling import DomainAudio

PATHS = {
    "reference": "reference eager: conditioning at audio rate, separate residual/skip convs",
    "optimized": "umt_core.train: time-major matrix products, per-frame conditioning, "
                 "fused residual+skip",
}


def _config(preset_name: str, domains: int, batch: int, segment: int) -> Config:
    cfg = preset(preset_name, {"train.batch_per_domain": batch, "train.segment_samples": segment,
                               "train.schedule": "round_robin", "train.augment": False})
    cfg.domains = [f"domain{i}" for i in range(domains)]
    return cfg


def _codes(batch: int, segment: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 256, (batch, segment), generator=g)
    aug = torch.randint(0, 256, (batch, segment), generator=g)
    return clean.to(device), aug.to(device)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# --------------------------------------------------------------------------- the two steps
def reference_step(model: UMTN, opt_model, opt_clf, clean, aug, domain: int, cfg: Config) -> float:
    """One step exactly as the reference computes it (fp32, (B, C, T) convolutions)."""
    tc = cfg.train
    target = torch.full((clean.shape[0],), domain, device=clean.device)
    z = model.encoder(clean)  # the reference keeps this graph and back-propagates into it
    loss = tc.confusion_weight * F.cross_entropy(model.domain_classifier(z), target)
    opt_clf.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_value_(model.domain_classifier.parameters(), tc.grad_clip)
    opt_clf.step()
    z = model.encoder(aug)
    recon = F.cross_entropy(fw.reference_decode(model.decoder(domain), clean, z), clean)
    adv = -F.cross_entropy(model.domain_classifier(z), target)
    loss = recon + tc.confusion_weight * adv
    opt_model.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_value_(model.encoder.parameters(), tc.grad_clip)
    torch.nn.utils.clip_grad_value_(model.decoder(domain).parameters(), tc.grad_clip)
    opt_model.step()
    return float(recon.detach())


def _optimized_runner(cfg: Config):
    """A `Trainer` without a run directory (an inactive run writes nothing)."""
    from .train import Trainer, _Dist, _RunFiles

    data = [DomainAudio(n, [np.zeros(cfg.train.segment_samples, np.float32)], [n])
            for n in cfg.domains]
    nowhere = Path(os.devnull)
    files = _RunFiles(nowhere, active=False, progress=False, on_event=None)
    return Trainer(cfg, nowhere, data, data, None, _Dist(), files)


# --------------------------------------------------------------------------- measuring
class _PeakRSS:
    """Samples this process's resident memory while a block runs (CPU)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def __enter__(self):
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss(),
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def measure(path: str, preset_name: str, domains: int, batch: int, segment: int, repeats: int,
            device_name: str) -> dict[str, Any]:
    """Time `repeats` steps (after one warm-up step) of one path in this process."""
    device = _device(device_name)
    cfg = _config(preset_name, domains, batch, segment)
    clean, aug = _codes(batch, segment, device)
    if path == "reference":
        torch.manual_seed(cfg.train.seed)
        model = UMTN(cfg).to(device).train()
        params = list(model.encoder.parameters()) + list(model.decoders.parameters())
        opt_model = torch.optim.Adam(params, lr=cfg.train.lr)
        opt_clf = torch.optim.Adam(model.domain_classifier.parameters(), lr=cfg.train.lr)
        counter = {"step": 0}

        def step() -> None:
            d = counter["step"] % domains
            reference_step(model, opt_model, opt_clf, clean, aug, d, cfg)
            counter["step"] += 1
    else:
        trainer = _optimized_runner(cfg)

        def step() -> None:
            d = trainer.step_domains(trainer.step)[0]
            trainer.train_step([(d, clean, aug)])

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    with _PeakRSS() as rss:
        for i in range(repeats + 1):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            if i > 0:  # the first step pays one-time costs
                times.append(time.perf_counter() - t0)
    out = {"path": path, "seconds_per_step": statistics.median(times), "times": times,
           "samples_per_s": batch * segment / statistics.median(times),
           "peak_rss_bytes": rss.peak, "device": str(device),
           "bf16": device.type == "cuda" and cfg.train.bf16 and path == "optimized",
           "threads": torch.get_num_threads()}
    if path == "optimized":
        out["skipped"] = trainer.n_skipped
    if device.type == "cuda":
        out["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return out


def check_equal(preset_name: str, domains: int, batch: int, segment: int,
                device_name: str) -> dict[str, float]:
    """Losses and gradients of both paths on the same weights and batch (fp32)."""
    device = _device(device_name)
    cfg = _config(preset_name, domains, batch, segment)
    torch.manual_seed(cfg.train.seed)
    model = UMTN(cfg).to(device).train()
    clean, aug = _codes(batch, segment, device)
    target = torch.zeros(batch, dtype=torch.long, device=device)
    lam = cfg.train.confusion_weight
    results = []
    for fast in (False, True):
        model.zero_grad(set_to_none=True)
        z = fw.encode(model.encoder, aug, fast)
        recon = fw.recon_loss_sum(model.decoder(0), clean, z, fast) / clean.numel()
        adv = F.cross_entropy(model.domain_classifier(z), target)
        (recon - lam * adv).backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
                 if p.grad is not None}
        results.append((float(recon.detach()), float(adv.detach()), grads))
    (r0, a0, g0), (r1, a1, g1) = results
    if g0.keys() != g1.keys():
        raise AssertionError("the two paths give gradients to different parameters")
    rel = max(float((g0[k] - g1[k]).norm() / g0[k].norm().clamp_min(1e-30)) for k in g0)
    return {"recon_loss_reference": r0, "recon_loss_optimized": r1,
            "recon_loss_abs_diff": abs(r0 - r1), "adv_loss_abs_diff": abs(a0 - a1),
            "max_grad_rel_diff": rel}


# --------------------------------------------------------------------------- entry points
def _child(path: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "umt_core.train_bench", path, args.preset, str(args.domains),
           str(args.batch), str(args.segment), str(args.repeats), args.device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark of the {path} path failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def run_benchmark(args: argparse.Namespace) -> int:
    device = _device(args.device)
    batch = args.batch
    if device.type == "cuda" and batch < 32:
        print(f"note: on CUDA the figure of interest is --batch 32 (bf16); running {batch}")
    print(f"bench train: preset {args.preset}, {batch} x {args.segment} samples of one domain "
          f"per step ({args.domains} decoders), {device}"
          f"{'' if device.type == 'cuda' else f', fp32, {torch.get_num_threads()} threads'}, "
          f"median of {args.repeats} steps after one warm-up", flush=True)
    rows = [_child(path, args) for path in PATHS]
    print(f"{'path':<11} {'s/step':>8} {'samples/s':>10} {'peak memory':>14}")
    for r in rows:
        mem = r.get("peak_cuda_bytes", r["peak_rss_bytes"])
        kind = "CUDA" if "peak_cuda_bytes" in r else "RSS"
        print(f"{r['path']:<11} {r['seconds_per_step']:>8.3f} {r['samples_per_s']:>10,.0f} "
              f"{_mib(mem):>10} {kind}{'  (bf16)' if r['bf16'] else ''}")
    for path, what in PATHS.items():
        print(f"  {path}: {what}")
    speedup = rows[0]["seconds_per_step"] / rows[1]["seconds_per_step"]
    print(f"speed-up of optimized over reference eager: {speedup:.2f}x", flush=True)
    check = check_equal(args.preset, args.domains, batch, args.segment, args.device)
    ok = check["recon_loss_abs_diff"] < 1e-4 and check["max_grad_rel_diff"] < 1e-3
    print(f"equality (fp32, same weights and batch): recon loss {check['recon_loss_reference']:.6f}"
          f" vs {check['recon_loss_optimized']:.6f}, adversarial |diff| "
          f"{check['adv_loss_abs_diff']:.2e}, max relative gradient diff "
          f"{check['max_grad_rel_diff']:.2e} -> {'equal within float tolerance' if ok else 'DIFFERENT'}")
    if rows[1].get("skipped"):
        print(f"warning: the divergence guard skipped {rows[1]['skipped']} timed steps")
    return 0 if ok else 1


def _main(argv: list[str]) -> None:
    path, preset_name, domains, batch, segment, repeats, device = argv
    result = measure(path, preset_name, int(domains), int(batch), int(segment), int(repeats),
                     device)
    print(json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                      for k, v in result.items()}))


if __name__ == "__main__":
    _main(sys.argv[1:])

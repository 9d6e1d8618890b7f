"""``python -m umt_core bench train``: seconds per training step, audio samples/s and
memory of the reference-exact eager step and of the step `umt_core.train` runs, in fp32
and in bf16 autocast (``train.precision``), measured in the same run, plus a check that
the reference and the fp32 step compute the same losses and gradients.

A step here is the reference's unit of work: one batch of ``--batch`` segments of
``--segment`` samples from one domain, a classifier update and an encoder+decoder
update. The three rows alternate step by step (after one warm-up step each), so on a
shared machine all see the same load; the medians are reported. Memory: the bytes of
activations each path keeps for its backward pass (counted exactly, with saved-tensor
hooks, during its warm-up step), the process's peak resident memory, and on CUDA the
peak allocated memory of each path's steps.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import forward as fw
from ..config import Config, preset
from ..data.sampling import DomainAudio
from ..device import cpu_has_native_bf16, exact_fp32, resolve_device
from ..model import N_CLASSES, UMTN
from ..train import ProcessGroup, RunFiles, Trainer

PATHS = {
    "reference": "eager, as the reference (fp32): conditioning 1x1 convs at audio rate, "
                 "separate residual/skip convs, backward through the encoder in the "
                 "classifier update",
    "optimized": "umt_core.train's step: time-major matrix products, conditioning per latent "
                 "frame, one residual+skip product, detached latent for the classifier; "
                 "fp32, and bf16 autocast with fp32 weights and optimizer states "
                 "(train.precision)",
}
# The rows of the table: (row, path, train.precision)
ROWS = (("reference", "reference", "fp32"), ("optimized fp32", "optimized", "fp32"),
        ("optimized bf16", "optimized", "bf16"))


def _config(preset_name: str, domains: int, batch: int, segment: int,
            deterministic: bool = True, precision: str = "fp32") -> Config:
    cfg = preset(preset_name, {"train.batch_per_domain": batch, "train.segment_samples": segment,
                               "train.schedule": "round_robin", "train.augment": False,
                               "train.deterministic": deterministic,
                               "train.precision": precision})
    cfg.domains = [f"domain{i}" for i in range(domains)]
    return cfg


def _codes(batch: int, segment: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, N_CLASSES, (batch, segment), generator=g)
    aug = torch.randint(0, N_CLASSES, (batch, segment), generator=g)
    return clean.to(device), aug.to(device)


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


def _reference_runner(cfg: Config, device: torch.device, clean, aug):
    torch.manual_seed(cfg.train.seed)
    model = UMTN(cfg).to(device).train()
    params = list(model.encoder.parameters()) + list(model.decoders.parameters())
    opt_model = torch.optim.Adam(params, lr=cfg.train.lr)
    opt_clf = torch.optim.Adam(model.domain_classifier.parameters(), lr=cfg.train.lr)
    count = [0]

    def step() -> float:
        loss = reference_step(model, opt_model, opt_clf, clean, aug,
                              count[0] % len(cfg.domains), cfg)
        count[0] += 1
        return loss

    return step, None


def _optimized_runner(cfg: Config, device: torch.device, clean, aug):
    """`umt_core.train.Trainer.train_step` (a trainer without a run directory)."""
    data = [DomainAudio(n, [np.zeros(cfg.train.segment_samples, np.float32)], [n])
            for n in cfg.domains]
    nowhere = Path(os.devnull)
    files = RunFiles(nowhere, active=False, progress=False, on_event=None)
    trainer = Trainer(cfg, nowhere, data, data, None, ProcessGroup(), files)

    def step() -> float:
        trainer.train_step([(trainer.step_domains(trainer.step)[0], clean, aug)])
        return trainer.last_step_loss

    return step, trainer


# --------------------------------------------------------------------------- measuring
@contextlib.contextmanager
def _count_saved_bytes(out: list[int]):
    """Bytes of distinct storages autograd saves for backward inside the block."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield
    out.append(sum(storages.values()))


def measure(preset_name: str, domains: int, batch: int, segment: int, repeats: int,
            device_name: str, deterministic: bool = True) -> dict[str, dict[str, Any]]:
    """Alternate steps of the rows (`ROWS`); per row: step times, activation bytes, CUDA
    peak."""
    device = resolve_device(device_name)
    clean, aug = _codes(batch, segment, device)
    runners = {}
    for row, path, precision in ROWS:
        cfg = _config(preset_name, domains, batch, segment, deterministic, precision)
        make = _reference_runner if path == "reference" else _optimized_runner
        runners[row] = make(cfg, device, clean, aug)
    results: dict[str, dict[str, Any]] = {p: {"times": [], "cuda_peak": 0} for p in runners}

    def timed(path: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        results[path].setdefault("first_loss", runners[path][0]())
        if device.type == "cuda":
            torch.cuda.synchronize()
            results[path]["cuda_peak"] = max(results[path]["cuda_peak"],
                                             torch.cuda.max_memory_allocated())
        return time.perf_counter() - t0

    for path in runners:  # warm-up (one-time costs), counting what backward keeps
        saved: list[int] = []
        with _count_saved_bytes(saved):
            timed(path)
        results[path]["activation_bytes"] = saved[0]
    for _ in range(repeats):
        for path in runners:
            results[path]["times"].append(timed(path))
    for path, r in results.items():
        r["seconds_per_step"] = statistics.median(r["times"])
        r["samples_per_s"] = batch * segment / r["seconds_per_step"]
        trainer = runners[path][1]
        if trainer is not None:
            r["skipped"] = trainer.n_skipped
    return results


def check_equal(preset_name: str, domains: int, batch: int, segment: int,
                device_name: str) -> dict[str, float]:
    """Losses and gradients of both paths on the same weights and batch (fp32)."""
    device = resolve_device(device_name)
    cfg = _config(preset_name, domains, batch, segment)
    torch.manual_seed(cfg.train.seed)
    model = UMTN(cfg).to(device).train()
    clean, aug = _codes(batch, segment, device)
    target = torch.zeros(batch, dtype=torch.long, device=device)
    lam = cfg.train.confusion_weight
    results = []
    with exact_fp32():
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


# --------------------------------------------------------------------------- entry point
def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    batch = args.batch
    if device.type == "cuda" and batch < 32:
        print(f"note: on CUDA the figure of interest is --batch 32; running {batch}")
    native = "native bf16" if cpu_has_native_bf16() else "bf16 emulated (no AVX-512 BF16/AMX)"
    where = (f"{torch.cuda.get_device_name(device)}" if device.type == "cuda"
             else f"cpu, {torch.get_num_threads()} threads, {native}")
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"bench train: preset {args.preset}, {batch} x {args.segment} samples of one domain per "
          f"step ({args.domains} decoders), {where}{load}; the rows alternate, median of "
          f"{args.repeats} steps each after one warm-up step", flush=True)
    deterministic = not getattr(args, "nondeterministic", False)
    if device.type == "cuda":
        print(f"CUDA kernels: {'deterministic' if deterministic else 'fastest (nondeterministic)'}"
              " (train.deterministic)")
    rows = measure(args.preset, args.domains, batch, args.segment, args.repeats, args.device,
                   deterministic)
    cuda = device.type == "cuda"
    ref = rows["reference"]
    head = (f"{'path':<15} {'s/step':>8} {'samples/s':>10} {'speed-up':>8} {'activations':>12}"
            f" {'first loss':>10}")
    print(head + (f" {'peak CUDA':>12}" if cuda else ""))
    for path, r in rows.items():
        line = (f"{path:<15} {r['seconds_per_step']:>8.3f} {r['samples_per_s']:>10,.0f} "
                f"{ref['seconds_per_step'] / r['seconds_per_step']:>7.2f}x "
                f"{_mib(r['activation_bytes']):>12} {r['first_loss']:>10.4f}")
        if cuda:
            line += f" {_mib(r['cuda_peak']):>12}"
        print(line)
    for path, what in PATHS.items():
        print(f"  {path}: {what}")
    print("  speed-up: over the reference in this run; first loss: reconstruction loss of "
          "the warm-up step (same weights and batch)")
    print("step times (s): " + "; ".join(f"{p} {[round(t, 3) for t in r['times']]}"
                                          for p, r in rows.items()))
    print(f"process peak resident memory: "
          f"{_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}", flush=True)
    check = check_equal(args.preset, args.domains, batch, args.segment, args.device)
    ok = check["recon_loss_abs_diff"] < 1e-4 and check["max_grad_rel_diff"] < 1e-3
    print(f"equality (fp32, same weights and batch): recon loss {check['recon_loss_reference']:.6f}"
          f" vs {check['recon_loss_optimized']:.6f}, adversarial |diff| "
          f"{check['adv_loss_abs_diff']:.2e}, max relative gradient diff "
          f"{check['max_grad_rel_diff']:.2e}: "
          f"{'equal within float tolerance' if ok else 'DIFFERENT'}")
    for path, r in rows.items():
        if r.get("skipped"):
            print(f"warning: the divergence guard skipped {r['skipped']} timed steps of {path}")
    return 0 if ok else 1

"""The training loop: every decoder trained, exact resume, a divergence guard.

One optimizer step (the reference's two updates, per domain ``d`` of the step):

1. domain classifier: ``λ · CE(classifier(encoder(clean)), d)`` with the encoder
   output detached (the reference back-propagates into the encoder here and then
   throws those gradients away; skipping that is the same update, cheaper);
2. encoder + decoders: ``CE(decoder_d(clean, encoder(augmented)), clean)
   − λ · CE(classifier(encoder(augmented)), d)``.

Both use Adam, gradient value clipping and a per-epoch exponential learning-rate
decay. Schedule ``all_domains`` (default) sums the losses of one batch from every
domain per step, so the encoder and every decoder see every domain at every step;
``round_robin`` takes one domain per step (``step % K``), as the reference's
single-machine loop. Gradients are reset with ``set_to_none=True``, so a parameter
that got no gradient in a step is skipped by Adam entirely: a decoder whose domain
was not in the step does not move, not even by momentum.

Batches: ``batch_per_domain`` segments per domain and step, whatever the number of
processes. Segment ``i`` of a step comes from its own random stream (see
`umt_core.data.sampling`), rank ``r`` of ``W`` takes a contiguous slice of the indices and
cuts it into micro-batches of ``micro_batch``; every loss is a sum divided by the
*global* count, and gradients are summed across processes, so one process with the
whole batch and W processes with slices compute the same step (float tolerance).

Distributed (``torchrun``): Gloo on CPU, NCCL on CUDA, one explicit all-reduce of the
gradients (and step statistics) per update instead of DDP. DDP averages over ranks,
which is only the global mean when every rank holds the same number of samples,
cannot express the two separate backward passes per step without extra
``no_sync``/``find_unused_parameters`` machinery, and would give unused decoders zero
gradients (so Adam would move them) unless told otherwise. The explicit reduction
covers exactly the parameters the step's schedule uses, in one bucket.

Run directory: ``config.yaml``, ``checkpoints/{last,best}.pt`` (atomic writes),
``metrics.jsonl`` (one JSON object per line, flushed per line) and ``train.log``.
Only rank 0 writes. Re-running in an existing run directory resumes from
``last.pt`` exactly: same parameters, optimizer moments, learning rates, data
and metrics as an uninterrupted run (events logged after the checkpoint by a run
that was killed are dropped from ``metrics.jsonl`` first, since they are redone).

Divergence guard: a step whose loss (or gradient) is not finite, or whose mean
reconstruction loss exceeds ``spike_factor`` times the running median of the last
``spike_window`` accepted steps, is skipped (no parameter moves) and logged as a
``skip`` event. ``max_bad_steps`` skips in a row, a non-finite validation loss, or a
validation loss back within ``uniform_margin`` of ln 256 (the loss of a uniform
output, i.e. noise) after the model had learned, roll the model and optimizers back
to ``best.pt``, multiply the learning
rates by ``rollback_lr_factor`` and log a ``divergence`` event. Non-finite weights
are never saved. ``guard=False`` (the reference's behaviour, for experiments) takes
spikes and only logs a ``diverged`` event for a validation loss back at ln 256.

``best.pt`` holds the weights a run starts from until a validation beats them: for the
WaveNet decoder, a validation loss above ln 256 (worse than a uniform guess) never
becomes best.pt. So a run whose weights broke before its first validation rolls back
to its start, not to the broken weights that validation saw.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from . import data
from . import forward as fw
from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .config import (
    PRECISIONS,
    PRESETS,
    Config,
    TrainConfig,
    apply_overrides,
    parse_overrides,
    preset,
)
from .data.identity import ALLOW_FLAG, check_same_data, dataset_identity, identity_summary
from .data.sampling import TRAIN_STREAM, VALIDATION_STREAM, DomainAudio, SegmentSampler, prefetch
from .device import cpu_has_native_bf16
from .metrics import read_metrics
from .model import N_CLASSES, UMTN, UNIFORM_LOSS, copy_shared_weights
from .options import non_negative_int, positive_int
from .paths import atomic_path, json_safe, resolve, write_text_atomic
from .run_lock import RunLock

# The spike test needs some history: the running median of fewer steps is noise.
MIN_SPIKE_HISTORY = 5
# "Had learned": best validation loss this far below ln 256 before a return to it
# counts as divergence (an untrained model sits at ln 256 from the start).
LEARNED_MARGIN = 0.5
# Config fields that may differ when resuming: they change neither the
# numbers an uninterrupted run computes nor how results compare.
RESUMABLE_CHANGES = {"train.epochs", "train.num_workers", "train.checkpoint_every",
                     "train.micro_batch", "train.max_minutes", "train.deterministic"}
# Random stream of the decoder-input corruption (train.input_corruption); the sampler's
# streams are TRAIN_STREAM and VALIDATION_STREAM.
CORRUPTION_STREAM = 2

EventCallback = Callable[[dict[str, Any]], None]


# --------------------------------------------------------------------------- helpers
def build_model(cfg: Config) -> UMTN:
    """The freshly initialised model of a run: seeded by ``cfg.train.seed``."""
    torch.manual_seed(cfg.train.seed)
    return UMTN(cfg)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(stored: Config, requested: Config) -> dict[str, tuple[Any, Any]]:
    """Dotted field -> (stored, requested) for every field that differs."""
    a, b = _flat(stored.to_dict()), _flat(requested.to_dict())
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def is_spike(step_loss: float, window: Sequence[float], factor: float) -> bool:
    """The guard's spike rule: enough accepted steps behind it, and a step loss above
    `factor` times their median."""
    return len(window) >= MIN_SPIKE_HISTORY and step_loss > factor * statistics.median(window)


def replay_guard(metrics: str | Path) -> dict[str, Any] | None:
    """What the divergence guard would have done to a run trained without it
    (train.guard false), read from its metrics.jsonl: the first accepted step whose loss
    the guard would have refused as a spike, or the first validation it would have rolled
    back from (the run's `diverged` events). The guard changes nothing else, so up to that
    point the same run with the guard is this run, step for step; after it nothing can be
    said. A roll-back that both would do (`max_bad_steps` non-finite steps in a row)
    restores a window the log does not hold, so the replay stops there.

    Returns {"steps": accepted steps replayed, "first_step": the step (None: never),
    "reason": "spike" or "validation back at ln 256" (None), "stopped_at": the step of a
    roll-back that ended the replay (None)}; None for a run trained with the guard, whose
    own skip and divergence events say what it did."""
    events = read_metrics(metrics)
    starts = [e for e in events if e.get("event") == "start"]
    if not starts:
        raise ValueError(f"{metrics}: no start event, so no training configuration to replay; "
                         "give the metrics.jsonl of a training run")
    tc = starts[0].get("config", {}).get("train", {})
    if tc.get("guard", True):
        return None
    factor = float(tc.get("spike_factor", TrainConfig.spike_factor))
    window: deque[float] = deque(maxlen=int(tc.get("spike_window", TrainConfig.spike_window)))
    out: dict[str, Any] = {"steps": 0, "first_step": None, "reason": None, "stopped_at": None}
    for i, e in enumerate(events):
        kind = e.get("event")
        if kind == "start" and e.get("fresh") and i:  # trained again from scratch
            window.clear()
        elif kind == "step":
            loss = sum(e["recon"].values()) / len(e["recon"])
            if is_spike(loss, window, factor):
                return {**out, "first_step": int(e["step"]), "reason": "spike"}
            window.append(loss)
            out["steps"] += 1
        elif kind == "diverged":
            return {**out, "first_step": int(e["step"]), "reason": "validation back at ln 256"}
        elif kind == "divergence":
            return {**out, "stopped_at": int(e["step"])}
    return out


def corrupt_codes(codes: torch.Tensor, share: float, seed: int, step: int, domain: int,
                  indices: Sequence[int]) -> torch.Tensor:
    """`codes` (B, T) with about `share` of each row's codes replaced by uniform random
    codes. Row b is drawn from its own seed (seed, step, domain, global sample index
    indices[b]), so the result does not depend on how a batch is split over devices."""
    if share <= 0:
        return codes
    if not 0 < share <= 1:
        raise ValueError(f"train.input_corruption must be in [0, 1], not {share}")
    out = codes.clone()
    t = codes.shape[1]
    for row, index in enumerate(indices):
        rng = np.random.default_rng([seed, CORRUPTION_STREAM, step, domain, int(index)])
        mask = torch.from_numpy(rng.random(t) < share)
        noise = torch.from_numpy(rng.integers(0, N_CLASSES, t)).to(codes.dtype)
        out[row] = torch.where(mask.to(codes.device), noise.to(codes.device), codes[row])
    return out


def _split(n: int, parts: int, index: int) -> range:
    """Contiguous share `index` of range(n) cut into `parts` nearly equal pieces."""
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return range(start, start + base + (1 if index < extra else 0))


def _chunks(r: range, size: int) -> list[range]:
    if len(r) == 0:
        return []
    if size <= 0:
        return [r]
    return [r[i:i + size] for i in range(0, len(r), size)]


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available() \
            and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make `dst` an atomic copy of the finished file `src` (a hard link when possible)."""
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


# --------------------------------------------------------------------------- distributed
class ProcessGroup:
    """The process group of a torchrun launch (or a single process)."""

    def __init__(self) -> None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        use_cuda = torch.cuda.is_available() and os.environ.get("UMT_DEVICE", "") != "cpu"
        self.owns_group = False
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
            self.owns_group = True
        self.enabled = dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.enabled else 0
        self.world = dist.get_world_size() if self.enabled else 1
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce(self, tensors: list[torch.Tensor]) -> None:
        """Sum every tensor across processes, in place, as one flat buffer."""
        if not self.enabled or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def broadcast_module(self, module: torch.nn.Module) -> None:
        if self.enabled:
            for t in module.state_dict().values():
                dist.broadcast(t, 0)

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


# --------------------------------------------------------------------------- run files
class RunFiles:
    """metrics.jsonl, train.log and checkpoints of one run; silent on ranks > 0."""

    def __init__(self, run_dir: Path, active: bool, progress: bool,
                 on_event: EventCallback | None):
        self.run_dir = run_dir
        self.ckpt_dir = run_dir / "checkpoints"
        self.metrics_path = run_dir / "metrics.jsonl"
        self.last = self.ckpt_dir / "last.pt"
        self.best = self.ckpt_dir / "best.pt"
        self.active = active
        self.on_event = on_event
        self.log = logging.getLogger(f"umt_core.train.{id(self)}")
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        self.progress = progress
        self._metrics = None
        self.log.addHandler(logging.NullHandler())

    def open(self) -> None:
        """Start appending to metrics.jsonl and train.log."""
        if not self.active:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(self.run_dir / "train.log")
        fh.setFormatter(logging.Formatter("%(levelname)s - %(asctime)s - %(message)s"))
        self.log.addHandler(fh)
        if self.progress:
            self.log.addHandler(_TqdmHandler())
        self._metrics = self.metrics_path.open("a")

    def truncate_metrics(self, step: int) -> None:
        """Keep only events up to `step` (what a killed run logged after its checkpoint is
        redone by the resumed run); rewritten atomically."""
        if not self.active or not self.metrics_path.exists():
            return
        kept = [e for e in read_metrics(self.metrics_path) if int(e.get("step", 0)) <= step]
        write_text_atomic(self.metrics_path, "".join(json.dumps(e) + "\n" for e in kept))

    def event(self, kind: str, step: int, epoch: int, **fields: Any) -> None:
        if not self.active:
            return
        obj = json_safe({"event": kind, "time": time.time(), "step": step, "epoch": epoch,
                          **fields})
        if self._metrics is not None:
            self._metrics.write(json.dumps(obj, allow_nan=False) + "\n")
            self._metrics.flush()
        if self.on_event is not None:
            self.on_event(obj)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        for h in list(self.log.handlers):
            h.close()
            self.log.removeHandler(h)


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record))


# What a run writes (and the temporary files of its atomic writes, see paths.atomic_path).
RUN_FILE = re.compile(r"(metrics\.jsonl|train\.log|config\.yaml)"
                      r"|\.(metrics\.jsonl|config\.yaml)\..*tmp.*")
RUN_CHECKPOINT = re.compile(r"(last|best|step_\d+)\.pt|\.(last|best|step_\d+)\.pt\..*tmp.*")


def _wipe_run(run_dir: Path) -> None:
    """--fresh: remove what a previous run in `run_dir` wrote (and only that: a file
    the user put into the run directory or checkpoints/ stays)."""
    for folder, pattern in ((run_dir, RUN_FILE), (run_dir / "checkpoints", RUN_CHECKPOINT)):
        if folder.is_dir():
            for f in folder.iterdir():
                if f.is_file() and pattern.fullmatch(f.name):
                    f.unlink()


def _write_config(path: Path, cfg: Config, identity: dict[str, Any] | None) -> None:
    """config.yaml: the resolved config, then (a record, not config) the data it trains on."""
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    if identity is not None:
        text += yaml.safe_dump({"data": identity_summary(identity)}, sort_keys=False)
    write_text_atomic(path, text)


def _deterministic_cuda() -> None:
    """Kernels that give the same numbers on every run (train.deterministic). cuBLAS
    reads its workspace setting when it first starts, so set it before any product."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


# --------------------------------------------------------------------------- the trainer
class StepStats:
    """The sums one training step gathers, as named views into one float64 tensor, so
    that processes add them up in one all-reduce per update."""

    def __init__(self, n_domains: int, device: torch.device) -> None:
        self.values = torch.zeros(6 + n_domains + 1, dtype=torch.float64, device=device)
        v = self.values
        self.classifier_ce = v[0]  # cross-entropy sum of the classifier update
        self.classifier_correct = v[1]
        self.classifier_count = v[2]
        self.bad_input = v[3]  # > 0: some input held an invalid code
        # The latent's sum of squares and size (its RMS is logged: a latent whose scale
        # runs away is a model that has stopped learning, see umt_core/spectral.py)
        self.latent_sq = v[4]
        self.latent_n = v[5]
        self.model_part = v[6:]  # what the model update adds (summed on its own)
        self.recon = v[6:6 + n_domains]  # reconstruction cross-entropy sum per domain
        self.adversarial_ce = v[6 + n_domains]  # the classifier's loss on the model update

    def classifier_loss(self) -> float:
        return float(self.classifier_ce / max(float(self.classifier_count), 1.0))

    def classifier_acc(self) -> float:
        return float(self.classifier_correct / max(float(self.classifier_count), 1.0))

    def latent_rms(self) -> float:
        return math.sqrt(float(self.latent_sq) / max(float(self.latent_n), 1.0))

    def recon_per_domain(self, domains: list[int], names: list[str], tc) -> dict[str, float]:
        """Mean reconstruction loss per sample of each trained domain, by name."""
        per_domain = tc.batch_per_domain * tc.segment_samples
        return {names[d]: float(self.recon[d]) / per_domain for d in domains}


class Trainer:
    """State of one training run; `train` is the entry point."""

    def __init__(self, cfg: Config, run_dir: Path, train_data: Sequence[DomainAudio],
                 val_data: Sequence[DomainAudio], augment, group: ProcessGroup, files: RunFiles):
        self.cfg = cfg
        self.tc = cfg.train
        self.run_dir = run_dir
        self.group = group
        self.files = files
        self.device = group.device
        self.domains = list(cfg.domains)
        self.k = len(self.domains)
        if self.device.type == "cuda" and self.tc.deterministic:
            _deterministic_cuda()
        self.model = build_model(cfg).to(self.device)
        self.model.train()
        m = self.model
        if self.tc.freeze_encoder:
            m.encoder.requires_grad_(False)
        self.encoder_params = [] if self.tc.freeze_encoder else list(m.encoder.parameters())
        self.model_params = self.encoder_params + list(m.decoders.parameters())
        self.opt_model = torch.optim.Adam(self.model_params, lr=self.tc.lr)
        self.opt_clf = torch.optim.Adam(m.domain_classifier.parameters(), lr=self.tc.lr)
        self.sched_model = torch.optim.lr_scheduler.ExponentialLR(self.opt_model, self.tc.lr_decay)
        self.sched_clf = torch.optim.lr_scheduler.ExponentialLR(self.opt_clf, self.tc.lr_decay)
        self.sampler = SegmentSampler(train_data, self.tc.segment_samples, self.tc.seed,
                                      cfg.mu_law, augment)
        self.val_sampler = SegmentSampler(val_data, self.tc.segment_samples, self.tc.seed,
                                          cfg.mu_law, None)
        self.use_bf16 = self.tc.precision == "bf16"  # autocast; weights stay fp32
        if self.use_bf16 and self.device.type == "cpu" and not cpu_has_native_bf16():
            files.log.warning("train.precision bf16: this CPU has no bf16 instructions "
                              "(AVX-512 BF16 or AMX), so bf16 products are emulated and "
                              "slower than fp32")
        self.step = 0
        self.best_val = math.inf
        self.window: deque[float] = deque(maxlen=self.tc.spike_window)
        self.bad_steps = 0
        self.epoch_sums = self._empty_sums()
        self.n_skipped = 0
        self.n_rollbacks = 0
        self.saved_step = -1
        self.train_seconds = 0.0  # wall time spent training, across resumes (max_minutes)
        self.last_step_loss = math.nan
        self.last_speed = 0.0
        self.local = _split(self.tc.batch_per_domain, group.world, group.rank)
        self.data_identity: dict[str, Any] | None = None  # the data it trains on (a record)

    def init_weights(self, source: UMTN) -> list[str]:
        """Start from another model's weights (fine-tuning): see `copy_shared_weights`.
        Returns the domains that start from scratch."""
        return copy_shared_weights(source, self.model)

    # -- bookkeeping
    def _empty_sums(self) -> dict[str, list[float]]:
        return {"recon": [0.0] * self.k, "count": [0.0] * self.k}

    @property
    def epoch(self) -> int:
        """Index of the epoch the next step belongs to (= completed epochs)."""
        return self.step // self.tc.steps_per_epoch

    def _autocast(self):
        if self.use_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def lr(self) -> float:
        return float(self.opt_model.param_groups[0]["lr"])

    def confusion_weight(self, step: int) -> float:
        """Weight of the encoder's confusion term at `step` (train.confusion_ramp_steps)."""
        ramp = self.tc.confusion_ramp_steps
        if ramp <= 0:
            return self.tc.confusion_weight
        return self.tc.confusion_weight * min(1.0, (step + 1) / ramp)

    def budget_spent(self) -> bool:
        return bool(self.tc.max_minutes) and self.train_seconds >= 60.0 * self.tc.max_minutes

    def step_domains(self, step: int) -> list[int]:
        if self.tc.schedule == "round_robin":
            return [step % self.k]
        return list(range(self.k))

    def _decoder_params(self, domains: list[int]) -> list[torch.nn.Parameter]:
        used = sorted({0 if self.cfg.model.shared_decoder else d for d in domains})
        return [p for i in used for p in self.model.decoders[i].parameters()]

    def requests(self, start: int, stop: int) -> list[tuple[int, range, int, int]]:
        """(domain, indices, step, stream) of every micro-batch of steps start..stop-1."""
        out = []
        for s in range(start, stop):
            for d in self.step_domains(s):
                for idx in _chunks(self.local, self.tc.micro_batch):
                    out.append((d, idx, s, TRAIN_STREAM))
        return out

    # -- checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "domains": list(self.domains),
            "model": self.model.state_dict(),
            "optimizers": {"model": self.opt_model.state_dict(),
                           "classifier": self.opt_clf.state_dict()},
            "schedulers": {"model": self.sched_model.state_dict(),
                           "classifier": self.sched_clf.state_dict()},
            "epoch": self.epoch,
            "step": self.step,
            "rng": _rng_state(),
            "sampler": {"seed": self.sampler.seed, "step": self.step},
            "guard": {"window": list(self.window), "bad_steps": self.bad_steps},
            "epoch_sums": {k: list(v) for k, v in self.epoch_sums.items()},
            "best_val": self.best_val,
            "train_seconds": self.train_seconds,
            "world_size": self.group.world,
            **({"data": self.data_identity} if self.data_identity is not None else {}),
        }

    def load_state(self, state: dict[str, Any], training_state: bool = True) -> None:
        self.model.load_state_dict(state["model"])
        self.opt_model.load_state_dict(state["optimizers"]["model"])
        self.opt_clf.load_state_dict(state["optimizers"]["classifier"])
        if not training_state:
            return
        self.sched_model.load_state_dict(state["schedulers"]["model"])
        self.sched_clf.load_state_dict(state["schedulers"]["classifier"])
        self.step = int(state["step"])
        self.best_val = float(state["best_val"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.window = deque(state["guard"]["window"], maxlen=self.tc.spike_window)
        self.bad_steps = int(state["guard"]["bad_steps"])
        self.epoch_sums = {k: list(v) for k, v in state["epoch_sums"].items()}
        _set_rng_state(state["rng"])

    def save(self, best: bool = False) -> None:
        """last.pt (and best.pt / step_<n>.pt as hard links of the same file), rank 0."""
        self.saved_step = self.step
        if not self.group.main:
            return
        save_checkpoint(self.state(), self.files.last)
        if best:
            _link_or_copy(self.files.last, self.files.best)
        every = self.tc.checkpoint_every
        if every and self.step % every == 0:
            _link_or_copy(self.files.last, self.files.ckpt_dir / f"step_{self.step}.pt")

    # -- one step
    def _codes_ok(self, codes: torch.Tensor) -> bool:
        return bool(codes.numel() == 0 or (codes.min() >= 0 and codes.max() < N_CLASSES))

    def train_step(self, batches: list[tuple[int, torch.Tensor, torch.Tensor]],
                   indices: Sequence[Sequence[int]] | None = None) -> None:
        """One optimizer step on this rank's micro-batches [(domain, clean, augmented)];
        `indices` are their samples' global indices in the step's batch (they seed the
        input corruption; default: 0..n-1 in each micro-batch).

        Three steps: the domain classifier's update, the encoder and decoders' update
        against the updated classifier, and the guard that keeps or refuses the step."""
        t0 = time.perf_counter()
        domains = self.step_domains(self.step)
        batches = [(d, c.to(self.device, non_blocking=True), a.to(self.device, non_blocking=True))
                   for d, c, a in batches]
        stats = StepStats(self.k, self.device)
        if not all(self._codes_ok(c) and self._codes_ok(a) for _, c, a in batches):
            stats.bad_input.fill_(1.0)  # a non-finite sample became an invalid code: skip it
        classifier_state = self._classifier_update(batches, stats)
        if classifier_state is None:
            return
        confusion = self.confusion_weight(self.step)
        used = self._model_update(batches, indices, domains, confusion, stats)
        recon = stats.recon_per_domain(domains, self.domains, self.tc)
        step_loss = sum(recon.values()) / len(recon)
        grad_norm = _norm([p.grad for p in used if p.grad is not None])
        if not self._guard(step_loss, stats, grad_norm, used, classifier_state):
            return
        self._record_step(domains, recon, step_loss, stats, grad_norm, confusion, t0)

    def _classifier_update(self, batches: list[tuple[int, torch.Tensor, torch.Tensor]],
                           stats: StepStats) -> tuple[dict, dict] | None:
        """Step 1: the domain classifier on the detached latent of the clean input. Returns
        its state from before the update (restored if the guard refuses the step), or None
        when the step was skipped here (bad input, non-finite loss or gradients)."""
        tc, m = self.tc, self.model
        params = list(m.domain_classifier.parameters())
        self.opt_clf.zero_grad(set_to_none=True)
        if stats.bad_input == 0:
            for d, clean, _ in batches:
                target = torch.full((clean.shape[0],), d, device=self.device)
                with self._autocast():
                    with torch.no_grad():
                        z = fw.fast_encode(m.encoder, clean)
                    logits = m.domain_classifier(z).float()
                ce = F.cross_entropy(logits, target, reduction="sum")
                (tc.confusion_weight * ce / tc.batch_per_domain).backward()
                stats.classifier_ce += ce.detach()
                stats.classifier_correct += (logits.argmax(1) == target).sum()
                stats.classifier_count += clean.shape[0]
                stats.latent_sq += z.detach().double().pow(2).sum()
                stats.latent_n += z.numel()
        self._reduce(params, stats.values)
        if (stats.bad_input > 0 or not math.isfinite(stats.classifier_loss())
                or not self._grads_finite(params)):
            self._skip("nonfinite", math.nan)
            return None
        before = ({name: v.clone() for name, v in m.domain_classifier.state_dict().items()},
                  _clone_state(self.opt_clf.state_dict()))
        torch.nn.utils.clip_grad_value_(params, tc.grad_clip)
        self.opt_clf.step()
        return before

    def _model_update(self, batches: list[tuple[int, torch.Tensor, torch.Tensor]],
                      indices: Sequence[Sequence[int]] | None, domains: list[int],
                      confusion: float, stats: StepStats) -> list[torch.nn.Parameter]:
        """Step 2: gradients of the encoder and the step's decoders: reconstruction, and
        confusing the (updated, here frozen) classifier. Returns the parameters it used;
        the optimizer step itself waits for the guard."""
        tc, m = self.tc, self.model
        n_global, seg = tc.batch_per_domain, tc.segment_samples
        used = self.encoder_params + self._decoder_params(domains)
        classifier_params = list(m.domain_classifier.parameters())
        self.opt_model.zero_grad(set_to_none=True)
        for p in classifier_params:
            p.requires_grad_(False)
        if indices is None:
            indices = [range(c.shape[0]) for _, c, _ in batches]
        try:
            for (d, clean, aug), idx in zip(batches, indices):
                target = torch.full((clean.shape[0],), d, device=self.device)
                inputs = corrupt_codes(clean, tc.input_corruption, tc.seed, self.step, d, idx)
                with self._autocast():
                    z = fw.fast_encode(m.encoder, aug)
                    recon = fw.reconstruction_loss_sum(m, d, clean, z, inputs=inputs)
                    adv = F.cross_entropy(m.domain_classifier(z).float(), target, reduction="sum")
                loss = recon / (n_global * seg) - confusion * adv / n_global
                loss.backward()
                stats.recon[d] += recon.detach()
                stats.adversarial_ce += adv.detach()
        finally:
            for p in classifier_params:
                p.requires_grad_(True)
        self._reduce(used, stats.model_part)
        return used

    def _guard(self, step_loss: float, stats: StepStats, grad_norm: float,
               used: list[torch.nn.Parameter], classifier_state: tuple[dict, dict]) -> bool:
        """Step 3: refuse a step whose loss or gradients are not finite or whose loss
        spikes (the classifier goes back to `classifier_state`); else take the model's
        optimizer step, and refuse it after all if the weights broke. True: kept."""
        tc, m = self.tc, self.model
        reason = None
        if not (math.isfinite(step_loss) and math.isfinite(float(stats.adversarial_ce))
                and math.isfinite(grad_norm)):
            reason = "nonfinite"
        elif tc.guard and is_spike(step_loss, self.window, tc.spike_factor):
            reason = "spike"
        if reason is not None:
            m.domain_classifier.load_state_dict(classifier_state[0])
            self.opt_clf.load_state_dict(classifier_state[1])
            self._skip(reason, step_loss)
            return False
        torch.nn.utils.clip_grad_value_(used, tc.grad_clip)
        self.opt_model.step()
        if not math.isfinite(_norm(list(m.parameters()))):
            # the weights broke despite finite gradients: nothing of this step is kept
            self._skip("nonfinite", step_loss, rollback="non-finite weights")
            return False
        return True

    def _record_step(self, domains: list[int], recon: dict[str, float], step_loss: float,
                     stats: StepStats, grad_norm: float, confusion: float, t0: float) -> None:
        """A kept step: the spike window, the epoch's sums, the step counter, the event."""
        tc = self.tc
        self.window.append(step_loss)
        self.bad_steps = 0
        for d in domains:
            self.epoch_sums["recon"][d] += recon[self.domains[d]]
            self.epoch_sums["count"][d] += 1
        self.step += 1
        elapsed = time.perf_counter() - t0
        self.last_step_loss = step_loss
        samples = len(domains) * tc.batch_per_domain * tc.segment_samples
        self.last_speed = samples / max(elapsed, 1e-9)
        self.files.event("step", self.step, (self.step - 1) // tc.steps_per_epoch, recon=recon,
                         classifier_loss=stats.classifier_loss(),
                         classifier_acc=stats.classifier_acc(), grad_norm=grad_norm,
                         latent_rms=stats.latent_rms(),
                         lr=self.lr(), samples_per_s=self.last_speed,
                         confusion_weight=confusion)

    def _reduce(self, params: list[torch.nn.Parameter], stats: torch.Tensor) -> None:
        """Sum gradients of `params` (None counts as zero) and `stats` across processes."""
        if not self.group.enabled:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.group.all_reduce([p.grad for p in params])
        self.group.all_reduce([stats])

    @staticmethod
    def _grads_finite(params: list[torch.nn.Parameter]) -> bool:
        return math.isfinite(_norm([p.grad for p in params if p.grad is not None]))

    def _skip(self, reason: str, loss: float, rollback: str | None = None) -> None:
        median = statistics.median(self.window) if self.window else math.nan
        self.opt_clf.zero_grad(set_to_none=True)
        self.opt_model.zero_grad(set_to_none=True)
        self.step += 1
        self.n_skipped += 1
        self.bad_steps += 1
        self.last_step_loss = loss
        self.files.event("skip", self.step, (self.step - 1) // self.tc.steps_per_epoch,
                         reason=reason, loss=loss, median=median)
        self.files.log.warning(f"step {self.step}: skipped ({reason}, loss {loss:.4g}, "
                               f"running median {median:.4g})")
        if rollback is None and self.bad_steps >= self.tc.max_bad_steps:
            rollback = f"{self.bad_steps} bad steps in a row"
        if rollback is not None:
            self.rollback(rollback)

    def rollback(self, reason: str) -> None:
        """Back to best.pt (the start until a validation beat it; last.pt in a run made
        before best.pt was written at the start) with lower learning rates."""
        source = self.files.best if self.files.best.exists() else self.files.last
        self.group.barrier()
        state = load_checkpoint(source, map_location=self.device)
        lrs = [[g["lr"] for g in o.param_groups] for o in (self.opt_model, self.opt_clf)]
        self.load_state(state, training_state=False)
        factor = self.tc.rollback_lr_factor
        for opt, sched, old in ((self.opt_model, self.sched_model, lrs[0]),
                                (self.opt_clf, self.sched_clf, lrs[1])):
            for g, lr in zip(opt.param_groups, old):
                g["lr"] = lr * factor
            sched._last_lr = [g["lr"] for g in opt.param_groups]
        self.bad_steps = 0
        self.n_rollbacks += 1
        epoch = (self.step - 1) // self.tc.steps_per_epoch if self.step else 0
        self.files.event("divergence", self.step, epoch, reason=reason,
                         rolled_back_to_step=int(state["step"]), lr=self.lr())
        self.files.log.warning(f"step {self.step}: divergence ({reason}); rolled back to "
                               f"{source.name} (step {state['step']}), lr now {self.lr():.3g}")

    # -- validation and epochs
    @torch.no_grad()
    def validate(self) -> tuple[dict[str, float], float]:
        """Per-domain reconstruction loss (clean input) and the classifier's accuracy."""
        m, tc, k = self.model, self.tc, self.k
        m.eval()
        stats = torch.zeros(2 * k + 2, dtype=torch.float64, device=self.device)
        for d in range(k):
            for b in range(tc.val_batches):
                for idx in _chunks(self.local, tc.micro_batch):
                    clean, _ = self.val_sampler.batch(d, idx, b, VALIDATION_STREAM)
                    clean = clean.to(self.device)
                    with self._autocast():
                        z = fw.fast_encode(m.encoder, clean)
                        stats[d] += fw.reconstruction_loss_sum(m, d, clean, z)
                        logits = m.domain_classifier(z)
                    stats[k + d] += clean.numel()
                    stats[2 * k] += (logits.argmax(1) == d).sum()
                    stats[2 * k + 1] += clean.shape[0]
        self.group.all_reduce([stats])
        m.train()
        val = {self.domains[d]: float(stats[d] / stats[k + d]) for d in range(k)}
        return val, float(stats[2 * k] / stats[2 * k + 1])

    def end_epoch(self) -> None:
        ended = self.step // self.tc.steps_per_epoch - 1
        sums = self.epoch_sums
        train_recon = {self.domains[d]: (sums["recon"][d] / sums["count"][d]
                                         if sums["count"][d] else math.nan)
                       for d in range(self.k)}
        val, acc = self.validate()
        val_loss = sum(val.values()) / len(val)
        self.files.event("epoch", self.step, ended, train_recon=train_recon, val_recon=val,
                         val_classifier_acc=acc, lr=self.lr())
        self.files.log.info(
            f"Epoch {ended} step {self.step} - train {_fmt(train_recon)} - val {_fmt(val)} "
            f"acc {acc:.3f} - lr {self.lr():.3g}")
        self.epoch_sums = self._empty_sums()
        diverged = None
        if not math.isfinite(val_loss):
            diverged = "non-finite validation loss"
        elif (self.cfg.model.decoder == "wavenet"  # only a cross-entropy has a uniform level
              and self.best_val < UNIFORM_LOSS - LEARNED_MARGIN
              and val_loss > UNIFORM_LOSS - self.tc.uniform_margin):
            diverged = f"validation loss {val_loss:.3f} is back at ln 256 (uniform output)"
            if not self.tc.guard:  # the control without a guard: logged, not undone
                self.files.event("diverged", self.step, ended, reason=diverged)
                diverged = None
        if diverged:
            self.rollback(diverged)
        self.sched_model.step()
        self.sched_clf.step()
        improved = (diverged is None and val_loss < self.best_val
                    and not (self.cfg.model.decoder == "wavenet" and val_loss > UNIFORM_LOSS))
        if improved:
            self.best_val = val_loss
        self.save(best=improved)


def _norm(tensors: list[torch.Tensor]) -> float:
    """Total 2-norm (not finite iff some element is not finite, or beyond ~1e19)."""
    return float(torch.nn.utils.get_total_norm(tensors)) if tensors else 0.0


def _fmt(d: dict[str, float]) -> str:
    return "(" + ", ".join(f"{k} {v:.4f}" for k, v in d.items()) + ")"


def _clone_state(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _clone_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone_state(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- entry point
def _resolve_data(cfg: Config, manifest, train_data, val_data):
    augment = None
    if manifest is not None:
        m = data.load_manifest(resolve(manifest)) if isinstance(manifest, (str, Path)) \
            else manifest
        if train_data is None:
            train_data = data.training_data(m, "train")
        if val_data is None:
            val_data = data.training_data(m, "val")
        names = list(m.domains)
        if [d.name for d in train_data] != names:
            raise ValueError(f"training data domains {[d.name for d in train_data]} differ "
                             f"from the manifest's {names}")
        cfg.sample_rate = int(m.sample_rate)
    if train_data is None:
        raise ValueError("train needs a manifest or train_data")
    if val_data is None:
        val_data = train_data  # validated on their own stream of segments
    names = [d.name for d in train_data]
    if [d.name for d in val_data] != names:
        raise ValueError(f"validation domains {[d.name for d in val_data]} differ from {names}")
    if cfg.domains:  # a subset of the data's domains, in the config's order
        missing = [d for d in cfg.domains if d not in names]
        if missing or len(set(cfg.domains)) != len(cfg.domains):
            raise ValueError(f"config domains {cfg.domains} must be distinct domains of the "
                             f"data {names}; {missing or 'repeated'} is not")
        train_data = [train_data[names.index(d)] for d in cfg.domains]
        val_data = [val_data[names.index(d)] for d in cfg.domains]
        names = list(cfg.domains)
    cfg.domains = names
    if cfg.train.augment and cfg.train.pitch_shift_semitones > 0:
        augment = data.make_augmenter(cfg)
    return list(train_data), list(val_data), augment


def _check_config(cfg: Config) -> None:
    tc = cfg.train
    if tc.precision not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {PRECISIONS}, not {tc.precision!r}")
    if tc.schedule not in ("all_domains", "round_robin"):
        raise ValueError(f"train.schedule must be all_domains or round_robin, not {tc.schedule!r}")
    if tc.batch_per_domain < 1 or tc.steps_per_epoch < 1 or tc.segment_samples < cfg.model.pool:
        raise ValueError("train.batch_per_domain and steps_per_epoch must be >= 1 and "
                         "segment_samples at least one pool window")
    if not tc.grad_clip > 0:  # 0 would clip every gradient to 0: nothing would train
        raise ValueError(f"train.grad_clip must be > 0, not {tc.grad_clip!r} "
                         "(inf switches clipping off)")
    if not 0 < tc.lr < math.inf:
        raise ValueError(f"train.lr must be a positive finite number, not {tc.lr!r}")


def train(cfg: Config, run_dir: str | Path, *, manifest=None,
          train_data: Sequence[DomainAudio] | None = None,
          val_data: Sequence[DomainAudio] | None = None, steps: int | None = None,
          epochs: int | None = None, fresh: bool = False, progress: bool = True,
          on_event: EventCallback | None = None,
          init_from: str | Path | None = None,
          allow_data_change: bool = False) -> dict[str, Any]:
    """Train (or resume) the run in `run_dir` until `steps` steps or `epochs` epochs in
    total (default ``cfg.train.epochs``); see the module docstring.

    `manifest` (a path or `umt_core.data.Manifest`) provides the data and the domain
    names; `train_data` / `val_data` (lists of `DomainAudio`) may be given instead.
    `on_event` is called with every event written to metrics.jsonl (rank 0).
    `init_from` (a umt_core checkpoint, e.g. one made by `convert-reference`) starts a
    new run from that model's weights: its architecture and mu-law replace the
    preset's, decoders of domains it knows are reused, others start fresh; with
    ``train.freeze_encoder`` only the decoders (and the classifier) train. Ignored when
    the run resumes from its own last.pt.

    One process writes a run directory: rank 0 holds its writer lock
    (`umt_core.run_lock`) while it trains; another training there is refused
    (`RunBusyError`). The run records the identity of its data (`manifest`'s lock) in
    config.yaml and its checkpoints; resuming on data whose lock differs raises
    `DataError` naming the difference, unless `allow_data_change`.
    Returns a summary: steps, epochs, best_val, last/best checkpoint paths, skipped
    steps and rollbacks of this call.
    """
    if steps is not None and epochs is not None:
        raise ValueError("give steps or epochs, not both")
    cfg = apply_overrides(cfg, {})  # a private copy
    if epochs is not None:
        cfg.train.epochs = int(epochs)
    source = None
    if init_from is not None:
        source = load_model(resolve(init_from))
        cfg.model = copy.deepcopy(source.config.model)
        cfg.mu_law = source.config.mu_law
    if isinstance(manifest, (str, Path)):
        manifest = data.load_manifest(resolve(manifest))
    train_data, val_data, augment = _resolve_data(cfg, manifest, train_data, val_data)
    identity = (dataset_identity(manifest)
                if manifest is not None and manifest.lock_path.is_file() else None)
    if source is not None and source.config.sample_rate != cfg.sample_rate:
        raise ValueError(f"{init_from}: the model was trained at {source.config.sample_rate} Hz, "
                         f"the data is at {cfg.sample_rate} Hz; prepare the data at the "
                         "model's rate")
    _check_config(cfg)
    run_dir = resolve(run_dir)
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    with RunLock(run_dir) if rank == 0 else contextlib.nullcontext():
        group = ProcessGroup()
        files = RunFiles(run_dir, group.main, progress, on_event)
        try:
            return _run(cfg, run_dir, train_data, val_data, augment, group, files,
                        steps, fresh, progress, source, init_from, identity, allow_data_change)
        finally:
            files.close()
            group.close()


def _run(cfg: Config, run_dir: Path, train_data, val_data, augment, group: ProcessGroup,
         files: RunFiles, steps: int | None, fresh: bool, progress: bool,
         source: UMTN | None = None, init_from: str | Path | None = None,
         identity: dict[str, Any] | None = None, allow_data_change: bool = False
         ) -> dict[str, Any]:
    resume = files.last.exists() and not fresh
    data_changes: list[str] = []
    if resume:
        state = load_checkpoint(files.last, map_location="cpu")
        stored = Config.from_dict(state["config"], trained_on=group.device.type)
        diffs = {k: v for k, v in config_differences(stored, cfg).items()
                 if k not in RESUMABLE_CHANGES}
        if diffs:
            listed = "; ".join(f"{k}: {a!r} in the run, {b!r} requested"
                               for k, (a, b) in diffs.items())
            raise ValueError(f"{run_dir} holds a run with another config ({listed}). "
                             "Resume it with its own config, start over with --fresh, "
                             "or use another run directory")
        data_changes = check_same_data(state.get("data"), identity, run_dir, allow_data_change)
    group.barrier()
    if group.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if fresh or not resume:
            _wipe_run(run_dir)
        _write_config(run_dir / "config.yaml", cfg, identity)
    group.barrier()

    trainer = Trainer(cfg, run_dir, train_data, val_data, augment, group, files)
    trainer.data_identity = identity
    tc = cfg.train
    target = int(steps) if steps is not None else tc.epochs * tc.steps_per_epoch
    if resume:
        trainer.load_state(state)
        trainer.saved_step = trainer.step
        files.truncate_metrics(trainer.step)
    elif source is not None:
        new_domains = trainer.init_weights(source)
    first_step = trainer.step
    group.broadcast_module(trainer.model)
    files.open()
    files.event("start", trainer.step, trainer.epoch, config=cfg.to_dict(), fresh=not resume,
                world_size=group.world)
    if resume:
        files.event("resume", trainer.step, trainer.epoch, **{"from": str(files.last)},
                    **({"data_changed": data_changes} if data_changes else {}))
        files.log.info(f"Resumed from {files.last} at step {trainer.step} "
                       f"(epoch {trainer.epoch})")
        if data_changes:
            files.log.warning(f"resumed on changed data ({ALLOW_FLAG}): "
                              + "; ".join(data_changes))
    else:
        files.log.info(f"Training {cfg.preset} on {cfg.domains} in {run_dir} "
                       f"(world size {group.world}, device {group.device})")
        if source is not None:
            files.event("init", 0, 0, **{"from": str(init_from)}, new_domains=new_domains,
                        freeze_encoder=cfg.train.freeze_encoder)
        # step 0: best.pt is the start until a validation beats it (what a roll-back
        # before then goes back to)
        trainer.save(best=True)
    _loop(trainer, target, progress and group.main)
    if trainer.saved_step != trainer.step:
        trainer.save()
    group.barrier()
    return {
        "run_dir": str(run_dir),
        "steps": trainer.step,
        "epochs": trainer.epoch,
        "best_val": None if math.isinf(trainer.best_val) else trainer.best_val,
        "last_checkpoint": str(files.last),
        "best_checkpoint": str(files.best) if files.best.exists() else None,
        "skipped": trainer.n_skipped,
        "rollbacks": trainer.n_rollbacks,
        "domains": list(cfg.domains),
        "train_minutes": round(trainer.train_seconds / 60.0, 2),
        "trained_steps": trainer.step - first_step,
    }


def _loop(trainer: Trainer, target: int, progress: bool) -> None:
    tc = trainer.tc
    bar = tqdm(total=target, initial=min(trainer.step, target), desc="train", unit="step",
               disable=not progress, dynamic_ncols=True)
    try:
        while trainer.step < target and not trainer.budget_spent():
            # One pass of the data loader per epoch (or up to the target).
            stop = min(target, (trainer.epoch + 1) * tc.steps_per_epoch)
            start = trainer.step
            batches: Iterator = prefetch(trainer.sampler, trainer.requests(start, stop),
                                         tc.num_workers)
            for s in range(start, stop):
                t0 = time.perf_counter()
                n = len(trainer.step_domains(s)) * len(_chunks(trainer.local, tc.micro_batch))
                items = [next(batches) for _ in range(n)]
                reqs = trainer.requests(s, s + 1)
                trainer.train_step([(d, c, a) for (d, _, _, _), (c, a) in zip(reqs, items)],
                                   [idx for _, idx, _, _ in reqs])
                bar.update(1)
                bar.set_postfix(loss=f"{trainer.last_step_loss:.3f}",
                                samples_s=f"{trainer.last_speed:.0f}")
                if trainer.step % tc.steps_per_epoch == 0:
                    trainer.end_epoch()
                elif tc.checkpoint_every and trainer.step % tc.checkpoint_every == 0:
                    trainer.save()
                trainer.train_seconds += _agreed(trainer.group, time.perf_counter() - t0,
                                                 bool(tc.max_minutes))
                if trainer.budget_spent():
                    trainer.files.event("budget", trainer.step, trainer.epoch,
                                        minutes=tc.max_minutes,
                                        train_seconds=trainer.train_seconds)
                    trainer.files.log.info(
                        f"Time budget of {tc.max_minutes:g} min spent at step {trainer.step} "
                        f"({trainer.train_seconds / 60:.1f} min of training)")
                    break
            batches.close()
    finally:
        bar.close()


# --------------------------------------------------------------------------- launching
def _agreed(group: ProcessGroup, seconds: float, needed: bool) -> float:
    """The slowest process's time, so that a time budget stops every process at the same
    step (`needed`: a budget is set; otherwise each keeps its own time, no collective)."""
    if not (group.enabled and needed):
        return seconds
    t = torch.tensor([seconds], dtype=torch.float64, device=group.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def summarize_run(run_dir: str | Path) -> dict[str, Any]:
    """The summary `train` returns, read back from a run directory."""
    run_dir = resolve(run_dir)
    ckpt = run_dir / "checkpoints"
    state = load_checkpoint(ckpt / "last.pt")
    best = float(state.get("best_val", math.inf))
    events = read_metrics(run_dir / "metrics.jsonl")
    return {
        "run_dir": str(run_dir),
        "steps": int(state["step"]),
        "epochs": int(state["epoch"]),
        "best_val": None if math.isinf(best) else best,
        "last_checkpoint": str(ckpt / "last.pt"),
        "best_checkpoint": str(ckpt / "best.pt") if (ckpt / "best.pt").exists() else None,
        "skipped": sum(e.get("event") == "skip" for e in events),
        "rollbacks": sum(e.get("event") == "divergence" for e in events),
        "domains": list(state["config"]["domains"]),
        "train_minutes": round(float(state.get("train_seconds", 0.0)) / 60.0, 2),
    }


def launch_distributed(preset_name: str, manifest: str | Path, run_dir: str | Path, nproc: int,
                       *, steps: int | None = None, epochs: int | None = None,
                       overrides: dict[str, Any] | None = None, fresh: bool = False,
                       on_event: EventCallback | None = None, poll_s: float = 2.0
                       ) -> dict[str, Any]:
    """Run ``python -m umt_core train`` in `nproc` processes under torchrun (one per GPU),
    calling `on_event` with each new metrics.jsonl event while it runs."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "umt_core", "train", "--preset", preset_name,
           "--manifest", str(manifest), "--run-dir", str(run_dir), "--no-progress"]
    if steps is not None:
        cmd += ["--steps", str(steps)]
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    if fresh:
        cmd.append("--fresh")
    for k, v in (overrides or {}).items():
        cmd += ["-o", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
    metrics = resolve(run_dir) / "metrics.jsonl"
    seen = len(read_metrics(metrics)) if not fresh else 0
    proc = subprocess.Popen(cmd, cwd=str(resolve(".")))

    def follow() -> None:
        nonlocal seen
        events = read_metrics(metrics)
        if len(events) < seen:  # truncated by a resume or rewritten by --fresh
            seen = 0
        for e in events[seen:]:
            if on_event is not None:
                on_event(e)
        seen = len(events)

    while proc.poll() is None:
        time.sleep(poll_s)
        follow()
    follow()
    if proc.returncode != 0:
        raise RuntimeError(f"distributed training failed (exit code {proc.returncode}): "
                           f"{' '.join(cmd)}; see {resolve(run_dir) / 'train.log'}")
    return summarize_run(run_dir)


# --------------------------------------------------------------------------- CLI
def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train (or resume) a model; torchrun-compatible",
                       description="Train the preset's model on a prepared dataset into a run "
                       "directory, or resume the run there from its last.pt. One process "
                       "writes a run directory at a time.")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="config preset")
    p.add_argument("--manifest", default=None,
                   help="dataset manifest, prepared with `prep` (None: the preset's, as its "
                        "study uses: data_manifests/scores-8k.yaml for cpu and cpu-spectral, "
                        "data_manifests/scores.yaml for paper, "
                        "data/manifests/scores-smoke.yaml for smoke)")
    p.add_argument("--run-dir", required=True, help="the run directory, e.g. runs/cpu-scores")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=non_negative_int,
                   help="train until this many steps in total (None: the epochs)")
    g.add_argument("--epochs", type=positive_int,
                   help="train until this many epochs in total (None: the preset's)")
    p.add_argument("--fresh", action="store_true",
                   help="start over: remove what the earlier run in the run directory wrote "
                        "(config.yaml, metrics.jsonl, train.log, last/best/step_<n>.pt), "
                        "keeping any other file")
    p.add_argument("--allow-data-change", action="store_true",
                   help="resume even though the dataset's lock differs from the one the run "
                        "was trained on")
    p.add_argument("-o", "--override", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="config override, e.g. -o train.lr=1e-4 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--init-from", metavar="CHECKPOINT", default=None,
                   help="start a new run from this model's weights (e.g. a converted "
                        "pretrained model); add -o train.freeze_encoder=true to train "
                        "decoders only")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    cfg = preset(args.preset, parse_overrides(args.override))
    manifest = args.manifest
    if manifest is None:
        from .study.pipeline import default_manifest, preset_manifest

        manifest = preset_manifest(resolve("."), default_manifest(args.preset), args.preset,
                                   write=False)
    summary = train(cfg, args.run_dir, manifest=manifest, steps=args.steps,
                    epochs=args.epochs, fresh=args.fresh, progress=not args.no_progress,
                    init_from=args.init_from, allow_data_change=args.allow_data_change)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
        if summary["trained_steps"] == 0:
            print(f"nothing was trained: the run is at step {summary['steps']}, which already "
                  "reaches the target (--steps/--epochs count in total, and the time budget "
                  "train.max_minutes across resumes); ask for more", file=sys.stderr)
    return 0

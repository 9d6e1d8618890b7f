"""The training loop: which parameters move, learning, exact resume after SIGKILL,
the divergence guard and distributed equivalence. CPU, synthetic audio, seconds."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from umt_core import forward as fw
from umt_core import spectral
from umt_core.checkpoint import load_checkpoint, load_model
from umt_core.config import preset
from umt_core.data.sampling import VALIDATION_STREAM, DomainAudio, SegmentSampler
from umt_core.model import UNIFORM_LOSS
from umt_core.train import Trainer, build_model, read_metrics, replay_guard, train

TESTS = Path(__file__).resolve().parent
DOMAINS = ["piano", "cello", "flute"]


# --------------------------------------------------------------------------- synthetic audio
def _note(kind: int, freq: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / sr
    if kind == 0:  # plucked: decaying harmonics
        return sum(np.sin(2 * np.pi * freq * h * t) / h**2 for h in range(1, 6)) * np.exp(-6 * t)
    if kind == 1:  # bowed: bright sawtooth-like tone with vibrato
        phase = 2 * np.pi * freq * t + 0.3 * np.sin(2 * np.pi * 5 * t)
        return sum(np.sin(h * phase) / h for h in range(1, 10))
    return np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(n)  # blown: sine + breath


def synthetic_domains(names=DOMAINS, clips: int = 2, seconds: float = 0.5, sr: int = 16000,
                      seed: int = 0) -> list[DomainAudio]:
    """One timbre per domain (cycling through three), random melodies of 0.1 s notes."""
    out = []
    for k, name in enumerate(names):
        rng = np.random.default_rng([seed, k])
        audio = []
        for _ in range(clips):
            notes = [_note(k % 3, 110 * 2 ** (rng.integers(0, 24) / 12), sr // 10, sr, rng)
                     for _ in range(int(seconds * 10))]
            y = np.concatenate(notes)
            audio.append((0.5 * y / np.abs(y).max()).astype(np.float32))
        out.append(DomainAudio(name, audio, [f"{name}_{i}" for i in range(clips)]))
    return out


def smoke(**overrides):
    return preset("smoke", overrides)


# The loop's tests run for both decoder kinds; the spectral one at smoke size (a 64-sample
# FFT: 33 bins, 17 frames of a 256-sample segment).
SPECTRAL = {"model.decoder": "spectral", "model.spectral_n_fft": 64, "model.spectral_hop": 16,
            "model.spectral_channels": 8, "model.spectral_layers": 2,
            "model.latent_norm": "frame"}
DECODER_OVERRIDES = {"wavenet": {}, "spectral": SPECTRAL}


@pytest.fixture(params=list(DECODER_OVERRIDES))
def decoder(request) -> dict:
    """Config overrides selecting each decoder kind in turn."""
    return DECODER_OVERRIDES[request.param]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return synthetic_domains()


def _params(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _model_param_names(cfg) -> list[str]:
    """Parameter names in the order of the encoder+decoders optimizer."""
    cfg = cfg.__class__.from_dict(cfg.to_dict())
    cfg.domains = DOMAINS
    m = build_model(cfg)
    return ([f"encoder.{n}" for n, _ in m.encoder.named_parameters()]
            + [f"decoders.{n}" for n, _ in m.decoders.named_parameters()])


def _initial_state(cfg) -> dict[str, torch.Tensor]:
    cfg = cfg.__class__.from_dict(cfg.to_dict())
    cfg.domains = DOMAINS
    return build_model(cfg).state_dict()


# --------------------------------------------------------------------------- what moves
def test_round_robin_step_moves_only_its_decoder(tmp_path, data, decoder):
    cfg = smoke(**decoder, **{"train.schedule": "round_robin"})
    init = _initial_state(cfg)
    names = _model_param_names(cfg)
    train(cfg, tmp_path, train_data=data, steps=1, progress=False)  # step 0 -> domain 0
    one = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert not _same(_params(one["model"], "decoders.0."), _params(init, "decoders.0."))
    for k in (1, 2):
        assert _same(_params(one["model"], f"decoders.{k}."), _params(init, f"decoders.{k}."))
    with_state = {names[i] for i in one["optimizers"]["model"]["state"]}
    assert any(n.startswith("decoders.0.") for n in with_state)
    assert not any(n.startswith(("decoders.1.", "decoders.2.")) for n in with_state)

    # Step 1 -> domain 1. Decoder 0 has Adam moments now, yet it must not move.
    train(cfg, tmp_path, train_data=data, steps=2, progress=False)
    two = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert not _same(_params(two["model"], "decoders.1."), _params(one["model"], "decoders.1."))
    for k in (0, 2):
        assert _same(_params(two["model"], f"decoders.{k}."), _params(one["model"], f"decoders.{k}."))
    assert not _same(_params(two["model"], "encoder."), _params(one["model"], "encoder."))


def test_default_schedule_moves_every_decoder(tmp_path, data, decoder):
    cfg = smoke(**decoder)
    init = _initial_state(cfg)
    train(cfg, tmp_path, train_data=data, steps=1, progress=False)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    for k in range(3):
        assert not _same(_params(state["model"], f"decoders.{k}."), _params(init, f"decoders.{k}."))
    assert not _same(_params(state["model"], "domain_classifier."),
                     _params(init, "domain_classifier."))


# --------------------------------------------------------------------------- learning
def _fixed_batch_losses(model, data) -> list[float]:
    sampler = SegmentSampler(data, model.config.train.segment_samples, seed=123)
    out = []
    with torch.no_grad():
        for d in range(len(data)):
            codes, _ = sampler.batch(d, range(4), 0, VALIDATION_STREAM)
            z = fw.fast_encode(model.encoder, codes)
            out.append(float(fw.recon_loss_sum(model.decoder(d), codes, z)) / codes.numel())
    return out


def test_training_lowers_every_domains_loss_and_decoders_differ(tmp_path, data):
    cfg = smoke()
    before_cfg = cfg.__class__.from_dict(cfg.to_dict())
    before_cfg.domains = DOMAINS
    before = _fixed_batch_losses(build_model(before_cfg).eval(), data)
    summary = train(cfg, tmp_path, train_data=data, steps=100, progress=False)
    assert summary["steps"] == 100 and summary["skipped"] == 0
    model = load_model(tmp_path / "checkpoints" / "last.pt")
    after = _fixed_batch_losses(model, data)
    assert all(a < b - 0.3 for a, b in zip(after, before)), (before, after)

    codes = SegmentSampler(data, 256, seed=5).batch(0, range(2), 0)[0]
    with torch.no_grad():
        z = model.encoder(codes)
        outs = [model.decoders[k](codes, z) for k in range(3)]
    for i in range(3):
        for j in range(i + 1, 3):
            assert (outs[i] - outs[j]).abs().max() > 1e-3


def test_shared_decoder_gives_identical_outputs(tmp_path, data):
    cfg = smoke(**{"model.shared_decoder": True})
    train(cfg, tmp_path, train_data=data, steps=3, progress=False)
    model = load_model(tmp_path / "checkpoints" / "last.pt")
    assert len(model.decoders) == 1
    codes = SegmentSampler(data, 256, seed=5).batch(0, range(2), 0)[0]
    with torch.no_grad():
        z = model.encoder(codes)
        outs = [model.decoder(k)(codes, z) for k in range(3)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])


def test_micro_batches_equal_the_whole_batch(tmp_path, data, exact_fp32):
    fp32 = {"train.precision": "fp32"}  # bf16 rounding depends on the split
    whole = train(smoke(**fp32), tmp_path / "whole", train_data=data, steps=2, progress=False)
    micro = train(smoke(**fp32, **{"train.micro_batch": 1}), tmp_path / "micro",
                  train_data=data, steps=2, progress=False)
    a = load_checkpoint(whole["last_checkpoint"])["model"]
    b = load_checkpoint(micro["last_checkpoint"])["model"]
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_loader_workers_give_the_same_training(tmp_path, data):
    inline = train(smoke(), tmp_path / "inline", train_data=data, steps=2, progress=False)
    workers = train(smoke(**{"train.num_workers": 1}), tmp_path / "workers", train_data=data,
                    steps=2, progress=False)
    assert _same(load_checkpoint(inline["last_checkpoint"])["model"],
                 load_checkpoint(workers["last_checkpoint"])["model"])


# --------------------------------------------------------------------------- resume
SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    from test_train import synthetic_domains
    from umt_core.config import preset
    from umt_core.train import train
    run_dir, steps, hang_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    overrides = json.loads(sys.argv[4])

    def on_event(e):
        if e["event"] == "step" and e["step"] == hang_at:
            open(os.path.join(run_dir, "hanging"), "w").close()
            time.sleep(600)  # killed here

    summary = train(preset("smoke", overrides), run_dir, train_data=synthetic_domains(),
                    steps=steps, progress=False, on_event=on_event)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
""")


def _script(tmp_path: Path) -> Path:
    path = tmp_path / "run_train.py"
    path.write_text(SCRIPT.format(tests=str(TESTS)))
    return path


def _env(device: str | None = None) -> dict[str, str]:
    # by default the device of the in-process runs they are compared with
    device = device or os.environ.get("UMT_DEVICE") or (
        "cuda" if torch.cuda.is_available() else "cpu")
    env = dict(os.environ, OMP_NUM_THREADS="1", UMT_DEVICE=device)
    env.pop("WORLD_SIZE", None)
    return env


def _comparable(events: list[dict]) -> list[dict]:
    """Events without wall-clock fields and without the start/resume bookkeeping."""
    return [{k: v for k, v in e.items() if k not in ("time", "samples_per_s")}
            for e in events if e["event"] not in ("start", "resume")]


def kill_and_resume(tmp_path: Path, run: Path, steps: int, kill_at: int, overrides: dict,
                    saved_step: int, device: str | None = None) -> str:
    """Train `run` in a subprocess, SIGKILL it while it logs step `kill_at` (its last
    checkpoint being at `saved_step`), then resume it to `steps`; the resume's stdout."""
    args = [sys.executable, str(_script(tmp_path)), str(run), str(steps)]
    proc = subprocess.Popen(args + [str(kill_at), json.dumps(overrides)], env=_env(device))
    deadline = time.time() + 120
    while not (run / "hanging").exists():
        assert proc.poll() is None, f"training exited before reaching step {kill_at}"
        assert time.time() < deadline, f"training did not reach step {kill_at}"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == saved_step
    assert max(e["step"] for e in read_metrics(run / "metrics.jsonl")) == kill_at
    return subprocess.run(args + ["0", json.dumps(overrides)], env=_env(device), check=True,
                          capture_output=True, text=True).stdout


def test_exact_resume_after_sigkill(tmp_path, data, decoder):
    overrides = {**decoder, "train.steps_per_epoch": 3}
    straight = tmp_path / "straight"
    train(smoke(**overrides), straight, train_data=data, steps=12, progress=False)

    run = tmp_path / "killed"
    out = kill_and_resume(tmp_path, run, 12, 7, overrides, saved_step=6)
    assert json.loads(out.strip().splitlines()[-1])["steps"] == 12

    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    assert _same(a["model"], b["model"])
    assert a["step"] == b["step"] == 12 and a["epoch"] == b["epoch"] == 4
    assert a["best_val"] == b["best_val"]
    events_b = read_metrics(run / "metrics.jsonl")
    assert [e["event"] for e in events_b if e["event"] in ("start", "resume")] == \
        ["start", "start", "resume"]
    resume = next(e for e in events_b if e["event"] == "resume")
    assert resume["step"] == 6 and resume["from"].endswith("last.pt")
    assert _comparable(read_metrics(straight / "metrics.jsonl")) == _comparable(events_b)


def test_resume_refuses_another_config_and_fresh_restarts(tmp_path, data):
    train(smoke(), tmp_path, train_data=data, steps=2, progress=False)
    with pytest.raises(ValueError, match="train.lr"):
        train(smoke(**{"train.lr": 1e-4}), tmp_path, train_data=data, steps=4, progress=False)
    # Fields that do not change the numbers may change.
    train(smoke(**{"train.checkpoint_every": 3}), tmp_path, train_data=data, steps=3,
          progress=False)
    assert (tmp_path / "checkpoints" / "step_3.pt").exists()
    summary = train(smoke(**{"train.lr": 1e-4}), tmp_path, train_data=data, steps=1,
                    fresh=True, progress=False)
    assert summary["steps"] == 1
    events = read_metrics(tmp_path / "metrics.jsonl")
    assert events[0]["event"] == "start" and events[0]["fresh"] is True
    assert not any(e["event"] == "resume" for e in events)
    assert not (tmp_path / "checkpoints" / "step_3.pt").exists()


# --------------------------------------------------------------------------- divergence guard
def test_nan_batch_and_spikes_are_skipped_and_persistent_divergence_rolls_back(
        tmp_path, data, monkeypatch, decoder):
    cfg = smoke(**decoder, **{"train.steps_per_epoch": 5, "train.max_bad_steps": 3})
    real_segment = SegmentSampler.segment

    def segment(self, domain, index, step, stream=0):
        clean, aug = real_segment(self, domain, index, step, stream)
        if stream == 0 and step == 3 and domain == 1 and index == 0:
            clean = np.full_like(clean, np.nan)
        return clean, aug

    real_loss = fw.recon_loss_sum
    current = {"step": 1}  # 1-based number of the step being computed

    def on_event(e):
        if e["event"] in ("step", "skip"):
            current["step"] = e["step"] + 1

    def spiked(loss):
        if torch.is_grad_enabled() and current["step"] in (10, 15, 16, 17):
            return loss * 100.0  # training only, not validation
        return loss

    def recon_loss_sum(decoder, codes, z, fast=True, inputs=None):
        return spiked(real_loss(decoder, codes, z, fast, inputs=inputs))

    real_spectral = spectral.spectral_loss_sum

    def spectral_loss_sum(decoder, codes, z, cfg, mu_law):
        return spiked(real_spectral(decoder, codes, z, cfg, mu_law))

    monkeypatch.setattr(SegmentSampler, "segment", segment)
    monkeypatch.setattr(fw, "recon_loss_sum", recon_loss_sum)
    monkeypatch.setattr(spectral, "spectral_loss_sum", spectral_loss_sum)
    summary = train(cfg, tmp_path, train_data=data, steps=20, progress=False,
                    on_event=on_event)
    events = read_metrics(tmp_path / "metrics.jsonl")
    skips = [(e["step"], e["reason"]) for e in events if e["event"] == "skip"]
    assert skips == [(4, "nonfinite"), (10, "spike"), (15, "spike"), (16, "spike"),
                     (17, "spike")]
    nan_skip = next(e for e in events if e["event"] == "skip")
    assert nan_skip["loss"] is None  # non-finite values are written as null
    spike = next(e for e in events if e["event"] == "skip" and e["reason"] == "spike")
    assert spike["loss"] > 10 * spike["median"]
    div = [e for e in events if e["event"] == "divergence"]
    assert len(div) == 1 and div[0]["step"] == 17 and div[0]["reason"].startswith("3 bad")
    assert div[0]["rolled_back_to_step"] in (5, 10, 15)
    assert math.isclose(div[0]["lr"], cfg.train.lr * cfg.train.rollback_lr_factor)
    assert summary["steps"] == 20 and summary["skipped"] == 5 and summary["rollbacks"] == 1
    steps_logged = [e["step"] for e in events if e["event"] == "step"]
    assert steps_logged == [s for s in range(1, 21) if s not in (4, 10, 15, 16, 17)]
    for path in (tmp_path / "checkpoints").glob("*.pt"):
        state = load_checkpoint(path)
        assert all(torch.isfinite(t).all() for t in state["model"].values()), path
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["optimizers"]["model"]["param_groups"][0]["lr"] == pytest.approx(
        cfg.train.lr * cfg.train.rollback_lr_factor)


def test_validation_back_at_uniform_output_rolls_back(tmp_path, data, monkeypatch):
    values = iter([3.0, 2.5, UNIFORM_LOSS - 0.01])  # learned, learned, then noise

    def validate(self):
        v = next(values)
        return {name: v for name in self.domains}, 0.5

    monkeypatch.setattr(Trainer, "validate", validate)
    cfg = smoke(**{"train.steps_per_epoch": 2})
    summary = train(cfg, tmp_path, train_data=data, steps=6, progress=False)
    events = read_metrics(tmp_path / "metrics.jsonl")
    div = [e for e in events if e["event"] == "divergence"]
    assert len(div) == 1 and div[0]["step"] == 6 and "ln 256" in div[0]["reason"]
    assert div[0]["rolled_back_to_step"] == 4
    assert summary["best_val"] == 2.5 and summary["rollbacks"] == 1
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert best["step"] == 4 and last["step"] == 6
    assert _same(best["model"], last["model"])  # the weights of step 4, kept going from step 6


def test_weights_broken_before_the_first_validation_roll_back_to_the_start(
        tmp_path, data, monkeypatch):
    """A learning rate that breaks the weights within the first epoch gives a first
    validation far worse than a uniform guess (the divergence search at lr 3e-2: 74 and
    130 nats). That is not a best checkpoint: the roll-back goes to the start, not to the
    broken weights, and a later validation that beats it becomes best.pt as usual."""
    values = iter([70.0, math.nan, 4.0])  # broken, still broken (non-finite), then learned

    def validate(self):
        v = next(values)
        return {name: v for name in self.domains}, 0.5

    monkeypatch.setattr(Trainer, "validate", validate)
    cfg = smoke(**{"train.steps_per_epoch": 2})
    summary = train(cfg, tmp_path / "run", train_data=data, steps=6, progress=False)
    div = [e for e in read_metrics(tmp_path / "run" / "metrics.jsonl")
           if e["event"] == "divergence"]
    assert len(div) == 1 and div[0]["step"] == 4 and div[0]["rolled_back_to_step"] == 0
    assert summary["best_val"] == 4.0  # the learned validation, not 70
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["step"] == 6

    # A run in which nothing beats the start keeps the start as best.pt.
    values = iter([70.0, math.nan])
    summary = train(cfg, tmp_path / "broken", train_data=data, steps=4, progress=False)
    best = load_checkpoint(tmp_path / "broken" / "checkpoints" / "best.pt")
    assert best["step"] == 0 and summary["best_val"] is None  # nothing beat the start


def test_without_the_guard_spikes_are_taken_and_uniform_output_is_only_logged(
        tmp_path, data, monkeypatch):
    """train.guard=False, the control of the batch experiment: no skip for a spike, no
    roll-back at ln 256, a `diverged` event instead; non-finite steps are still refused."""
    values = iter([3.0, 2.5, 2.4, UNIFORM_LOSS - 0.01])

    def validate(self):
        v = next(values)
        return {name: v for name in self.domains}, 0.5

    real_loss = fw.recon_loss_sum
    current = {"step": 1}  # 1-based number of the step being computed

    def on_event(e):
        if e["event"] in ("step", "skip"):
            current["step"] = e["step"] + 1

    def recon_loss_sum(decoder, codes, z, fast=True, inputs=None):
        loss = real_loss(decoder, codes, z, fast, inputs=inputs)
        return loss * 100.0 if torch.is_grad_enabled() and current["step"] == 7 else loss

    monkeypatch.setattr(Trainer, "validate", validate)
    monkeypatch.setattr(fw, "recon_loss_sum", recon_loss_sum)
    cfg = smoke(**{"train.steps_per_epoch": 2, "train.guard": False})
    summary = train(cfg, tmp_path, train_data=data, steps=8, progress=False, on_event=on_event)
    events = read_metrics(tmp_path / "metrics.jsonl")
    assert not [e for e in events if e["event"] in ("skip", "divergence")]
    diverged = [e for e in events if e["event"] == "diverged"]
    assert len(diverged) == 1 and "ln 256" in diverged[0]["reason"] and diverged[0]["step"] == 8
    assert summary["rollbacks"] == 0 and summary["steps"] == 8
    spiked = next(e for e in events if e["event"] == "step" and e["step"] == 7)
    assert sum(spiked["recon"].values()) > 100  # the spike was taken
    # the guard would have refused that step first (the ln 256 validation comes after it)
    assert replay_guard(tmp_path / "metrics.jsonl") == {
        "steps": 6, "first_step": 7, "reason": "spike", "stopped_at": None}


def _steps_of(run_dir: Path) -> list[tuple[int, dict]]:
    return [(e["step"], e["recon"]) for e in read_metrics(run_dir / "metrics.jsonl")
            if e["event"] == "step"]


def test_the_guard_changes_a_run_only_where_the_replay_says(tmp_path, data, monkeypatch):
    """Why the batch experiment's guard-on arm can be read off its guard-off twin: with no
    step the guard would refuse, guard on and off are the same run bit for bit; with a
    spike at step 7 they are the same up to it, and the guard-on run skips exactly the
    step that replay_guard names."""
    def run(name, guard, spike_at=None):
        real_loss = fw.recon_loss_sum
        current = {"step": 1}

        def on_event(e):
            if e["event"] in ("step", "skip"):
                current["step"] = e["step"] + 1

        def recon_loss_sum(decoder, codes, z, fast=True, inputs=None):
            loss = real_loss(decoder, codes, z, fast, inputs=inputs)
            return (loss * 100.0 if torch.is_grad_enabled() and current["step"] == spike_at
                    else loss)

        monkeypatch.setattr(fw, "recon_loss_sum", recon_loss_sum)
        cfg = smoke(**{"train.steps_per_epoch": 3, "train.guard": guard})
        train(cfg, tmp_path / name, train_data=data, steps=8, progress=False,
              on_event=on_event)
        monkeypatch.setattr(fw, "recon_loss_sum", real_loss)
        return tmp_path / name

    on, off = run("on", True), run("off", False)
    assert replay_guard(off / "metrics.jsonl") == {
        "steps": 8, "first_step": None, "reason": None, "stopped_at": None}
    assert _steps_of(on) == _steps_of(off)
    assert _same(load_checkpoint(on / "checkpoints" / "last.pt")["model"],
                 load_checkpoint(off / "checkpoints" / "last.pt")["model"])

    on, off = run("on-spike", True, spike_at=7), run("off-spike", False, spike_at=7)
    replay = replay_guard(off / "metrics.jsonl")
    assert (replay["first_step"], replay["reason"], replay["steps"]) == (7, "spike", 6)
    skips = [e["step"] for e in read_metrics(on / "metrics.jsonl") if e["event"] == "skip"]
    assert skips == [7]  # the guard needs 5 steps of history: no spike before step 6
    assert _steps_of(on)[:6] == _steps_of(off)[:6]
    assert _steps_of(on)[6] != _steps_of(off)[6]
    assert replay_guard(on / "metrics.jsonl") is None  # its own skip events say it


# --------------------------------------------------------------------------- distributed
def test_two_gloo_processes_equal_one_process(tmp_path, decoder):
    script = _script(tmp_path)
    overrides = json.dumps({**decoder, "train.steps_per_epoch": 2, "train.batch_per_domain": 3})
    single = tmp_path / "single"
    subprocess.run([sys.executable, str(script), str(single), "4", "0", overrides],
                   env=_env("cpu"), check=True, capture_output=True)
    double = tmp_path / "double"
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), str(double), "4", "0", overrides],
        env=_env("cpu"), capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    a = load_checkpoint(single / "checkpoints" / "last.pt")
    b = load_checkpoint(double / "checkpoints" / "last.pt")
    assert b["world_size"] == 2 and a["world_size"] == 1
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-5), key
    ea = [e for e in read_metrics(single / "metrics.jsonl") if e["event"] == "epoch"]
    eb = [e for e in read_metrics(double / "metrics.jsonl") if e["event"] == "epoch"]
    assert len(ea) == len(eb) == 2
    for x, y in zip(ea, eb):
        for name in DOMAINS:
            assert x["val_recon"][name] == pytest.approx(y["val_recon"][name], abs=1e-4)


def test_a_clip_of_zero_or_a_bad_learning_rate_is_refused_and_inf_switches_clipping_off(
        tmp_path, data):
    """train.grad_clip 0 would clip every gradient to 0 and train nothing, silently: it is
    refused by name, as a learning rate that is not a positive finite number. inf is the
    way to switch clipping off: such a run trains, is stored and resumes."""
    for key, value in (("train.grad_clip", 0.0), ("train.grad_clip", -1.0),
                       ("train.lr", 0.0), ("train.lr", math.inf)):
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            train(smoke(**{key: value}), tmp_path / "bad", train_data=data, steps=1,
                  progress=False)
    assert not (tmp_path / "bad" / "checkpoints").exists()
    cfg = smoke(**{"train.grad_clip": math.inf})
    first = train(cfg, tmp_path / "off", train_data=data, steps=1, progress=False)
    before = load_checkpoint(first["last_checkpoint"])
    assert before["config"]["train"]["grad_clip"] == math.inf
    after = load_checkpoint(train(cfg, tmp_path / "off", train_data=data, steps=2,
                                  progress=False)["last_checkpoint"])
    assert after["step"] == 2
    assert all(torch.isfinite(v).all() for v in after["model"].values() if v.is_floating_point())
    assert any(not torch.equal(after["model"][k], before["model"][k]) for k in before["model"])

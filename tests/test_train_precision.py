"""train.precision: bf16 autocast training on the CPU with fp32 master weights and
optimizer states, exact resume in bf16, and old configs (train.bf16) still loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_train import _same, kill_and_resume, smoke, synthetic_domains

from umt_core.checkpoint import load_checkpoint, save_checkpoint
from umt_core.config import Config, apply_overrides, legacy_precision
from umt_core.statistics import compare_figures, interval
from umt_core.train import Trainer, read_metrics, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return synthetic_domains()


def test_bf16_training_keeps_fp32_weights_and_optimizer_states(tmp_path, data):
    epoch = {"train.steps_per_epoch": 3}
    fp32 = train(smoke(**epoch), tmp_path / "fp32", train_data=data, steps=3, progress=False)
    bf16 = train(smoke(**epoch, **{"train.precision": "bf16"}), tmp_path / "bf16",
                 train_data=data, steps=3, progress=False)
    a = load_checkpoint(fp32["last_checkpoint"])
    b = load_checkpoint(bf16["last_checkpoint"])
    assert b["config"]["train"]["precision"] == "bf16"
    for k, v in b["model"].items():
        assert v.dtype == a["model"][k].dtype, k  # master weights as in fp32 training
    states = [t for opt in b["optimizers"].values() for s in opt["state"].values()
              for t in s.values() if torch.is_tensor(t) and t.is_floating_point()]
    assert states and all(t.dtype == torch.float32 for t in states)
    # bf16 products really ran: the weights differ from fp32 training, but only slightly
    moved = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert moved
    for k in moved:
        diff = (a["model"][k] - b["model"][k]).norm() / a["model"][k].norm().clamp_min(1e-12)
        assert diff < 0.05, (k, float(diff))
    va = [e["val_recon"] for e in read_metrics(tmp_path / "fp32" / "metrics.jsonl")
          if e["event"] == "epoch"]
    vb = [e["val_recon"] for e in read_metrics(tmp_path / "bf16" / "metrics.jsonl")
          if e["event"] == "epoch"]
    assert va and len(va) == len(vb)
    for x, y in zip(va, vb):
        for d in x:
            assert abs(x[d] - y[d]) < 0.01 * x[d]


def test_bf16_autocast_runs_the_training_products_in_bf16(data):
    """Every matrix product and convolution of the step's forward pass (the fast path
    `umt_core.train` uses) runs in bf16 under the trainer's autocast."""
    from pathlib import Path

    from torch.utils._python_dispatch import TorchDispatchMode

    from umt_core import forward as fw
    from umt_core.train import ProcessGroup, RunFiles

    products = {"mm", "addmm", "bmm", "baddbmm", "convolution", "_convolution", "matmul"}

    class Products(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.dtypes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket.__name__ in products:
                self.dtypes.append(out.dtype)
            return out

    cfg = smoke(**{"train.precision": "bf16"})
    cfg.domains = [d.name for d in data]
    files = RunFiles(Path("/nonexistent"), active=False, progress=False, on_event=None)
    trainer = Trainer(cfg, Path("/nonexistent"), data, data, None, ProcessGroup(), files)
    clean = torch.randint(0, 256, (2, 256), generator=torch.Generator().manual_seed(0))
    with Products() as seen, trainer._autocast():
        z = fw.fast_encode(trainer.model.encoder, clean)
        fw.recon_loss_sum(trainer.model.decoders[0], clean, z)
    assert len(seen.dtypes) > 10 and set(seen.dtypes) == {torch.bfloat16}, seen.dtypes


def test_exact_resume_after_sigkill_in_bf16(tmp_path, data):
    """As test_train.test_exact_resume_after_sigkill, with bf16 autocast."""
    overrides = {"train.steps_per_epoch": 3, "train.precision": "bf16"}
    straight = tmp_path / "straight"
    train(smoke(**overrides), straight, train_data=data, steps=9, progress=False)
    run = tmp_path / "killed"
    kill_and_resume(tmp_path, run, 9, 5, overrides, saved_step=3, device="cpu")
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 9
    assert _same(a["model"], b["model"])
    for name in ("model", "classifier"):
        sa, sb = a["optimizers"][name]["state"], b["optimizers"][name]["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            assert all(torch.equal(sa[i][k], sb[i][k]) for k in sa[i])


def test_old_bf16_flag_maps_to_precision():
    assert legacy_precision({"bf16": True})["precision"] == "bf16"
    assert legacy_precision({"bf16": False})["precision"] == "fp32"
    # the flag never applied on the CPU: a run trained there computed in fp32
    assert legacy_precision({"bf16": True}, trained_on="cpu")["precision"] == "fp32"
    old = smoke().to_dict()
    del old["train"]["precision"]
    old["train"]["bf16"] = True
    assert Config.from_dict(old).train.precision == "bf16"
    assert Config.from_dict(old, trained_on="cpu").train.precision == "fp32"
    assert apply_overrides(smoke(), {"train.bf16": "false"}).train.precision == "fp32"
    with pytest.raises(ValueError, match="train.bf16"):
        Config.from_dict({**old, "train": {**old["train"], "precision": "fp32"}})
    with pytest.raises(ValueError, match="train.bf16"):
        legacy_precision({"bf16": "yes"})


def test_unknown_precision_is_refused_by_name(tmp_path, data):
    with pytest.raises(ValueError, match="train.precision.*'fp16'"):
        train(smoke(**{"train.precision": "fp16"}), tmp_path, train_data=data, steps=1,
              progress=False)


def test_a_run_stored_with_the_old_flag_resumes_exactly_on_the_cpu(tmp_path, data):
    """A CPU run written before train.precision existed (train.bf16: true, which the CPU
    ignored) resumes with the default fp32 config and equals an uninterrupted run."""
    straight = train(smoke(), tmp_path / "straight", train_data=data, steps=4, progress=False)
    old = tmp_path / "old"
    first = train(smoke(), old, train_data=data, steps=2, progress=False)
    state = load_checkpoint(first["last_checkpoint"])
    del state["config"]["train"]["precision"]
    state["config"]["train"]["bf16"] = True
    save_checkpoint(state, first["last_checkpoint"])
    resumed = train(smoke(), old, train_data=data, steps=4, progress=False)
    assert resumed["steps"] == 4
    assert _same(load_checkpoint(straight["last_checkpoint"])["model"],
                 load_checkpoint(resumed["last_checkpoint"])["model"])


def test_parity_intervals_and_their_comparison():
    mean, lo, hi = interval(np.array([0, 0, 0, 0]), binary=True)
    assert mean == 0 and lo == pytest.approx(0, abs=1e-12) and 0.4 < hi < 0.6  # Wilson, n=4
    mean, lo, hi = interval(np.array([1.0, 2.0, 3.0, np.nan]), binary=False)
    assert mean == 2.0 and 1.0 <= lo < mean < hi <= 3.0  # bootstrap over the three values
    a = {"chroma": (0.5, 0.4, 0.6)}
    assert compare_figures(a, {"chroma": (0.65, 0.55, 0.75)}) == {"chroma": True}
    assert compare_figures(a, {"chroma": (0.8, 0.7, 0.9)}) == {"chroma": False}

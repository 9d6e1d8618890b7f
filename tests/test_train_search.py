"""Training options of the CPU translation search: a time budget, decoder-input
corruption, a confusion-weight ramp and training on a subset of the data's domains."""

from __future__ import annotations

import pytest
import torch
from test_train import DOMAINS, smoke, synthetic_domains

from umt_core import forward as fw
from umt_core.checkpoint import load_checkpoint, load_model
from umt_core.train import build_model, corrupt_codes, read_metrics, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return synthetic_domains()


def _codes(b: int = 4, t: int = 4000) -> torch.Tensor:
    return torch.randint(0, 256, (b, t), generator=torch.Generator().manual_seed(0))


def test_corruption_replaces_the_requested_share_and_only_that():
    codes = _codes()
    out = corrupt_codes(codes, 0.3, seed=1, step=5, domain=0, indices=range(4))
    changed = (out != codes).float().mean().item()
    # a replaced code equals the old one 1 time in 256
    assert 0.3 * 255 / 256 - 0.03 < changed < 0.3 * 255 / 256 + 0.03
    assert out.dtype == codes.dtype and out.min() >= 0 and out.max() <= 255
    assert corrupt_codes(codes, 0.0, 1, 5, 0, range(4)) is codes
    with pytest.raises(ValueError, match="input_corruption"):
        corrupt_codes(codes, 1.5, 1, 5, 0, range(4))


def test_corruption_depends_on_the_sample_not_on_the_batch_split():
    codes = _codes()
    whole = corrupt_codes(codes, 0.1, seed=1, step=3, domain=2, indices=range(4))
    halves = torch.cat([corrupt_codes(codes[:2], 0.1, 1, 3, 2, range(2)),
                        corrupt_codes(codes[2:], 0.1, 1, 3, 2, range(2, 4))])
    assert torch.equal(whole, halves)
    other_step = corrupt_codes(codes, 0.1, seed=1, step=4, domain=2, indices=range(4))
    assert not torch.equal(whole, other_step)


def test_corrupted_inputs_change_the_loss_but_not_the_targets(data):
    cfg = smoke()
    cfg.domains = DOMAINS
    model = build_model(cfg)
    codes = _codes(2, 512)
    z = fw.fast_encode(model.encoder, codes)
    clean = fw.recon_loss_sum(model.decoder(0), codes, z)
    same = fw.recon_loss_sum(model.decoder(0), codes, z, inputs=codes)
    noisy = fw.recon_loss_sum(model.decoder(0), codes, z,
                              inputs=corrupt_codes(codes, 0.5, 0, 0, 0, range(2)))
    assert torch.equal(clean, same) and not torch.allclose(clean, noisy)
    with pytest.raises(ValueError, match="shape"):
        fw.recon_loss_sum(model.decoder(0), codes, z, inputs=codes[:, :100])


def test_corruption_trains_and_resumes_exactly(tmp_path, data):
    cfg = smoke(**{"train.input_corruption": 0.2})
    train(cfg, tmp_path / "a", train_data=data, steps=4, progress=False)
    train(cfg, tmp_path / "b", train_data=data, steps=2, progress=False)
    train(cfg, tmp_path / "b", train_data=data, steps=4, progress=False)
    a = load_checkpoint(tmp_path / "a/checkpoints/last.pt")["model"]
    b = load_checkpoint(tmp_path / "b/checkpoints/last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = smoke()
    train(plain, tmp_path / "c", train_data=data, steps=4, progress=False)
    c = load_checkpoint(tmp_path / "c/checkpoints/last.pt")["model"]
    assert not torch.equal(a["decoders.0.logits.weight"], c["decoders.0.logits.weight"])


def test_time_budget_stops_training_and_a_larger_budget_resumes(tmp_path, data):
    run = tmp_path / "run"
    cfg = smoke(**{"train.max_minutes": 1e-6})  # spent by the first step
    summary = train(cfg, run, train_data=data, steps=50, progress=False)
    assert summary["steps"] == 1
    events = read_metrics(run / "metrics.jsonl")
    budget = [e for e in events if e["event"] == "budget"]
    assert len(budget) == 1 and budget[0]["train_seconds"] > 0
    spent = load_checkpoint(run / "checkpoints/last.pt")["train_seconds"]
    assert spent == pytest.approx(budget[0]["train_seconds"])
    # The same budget again: nothing more to do.
    assert train(cfg, run, train_data=data, steps=50, progress=False)["steps"] == 1
    # A larger budget is a resumable change: training continues where it stopped.
    more = smoke(**{"train.max_minutes": 60.0})
    summary = train(more, run, train_data=data, steps=5, progress=False)
    assert summary["steps"] == 5
    assert load_checkpoint(run / "checkpoints/last.pt")["train_seconds"] > spent
    assert any(e["event"] == "resume" for e in read_metrics(run / "metrics.jsonl"))


def test_confusion_ramp_rises_to_the_weight(tmp_path, data):
    cfg = smoke(**{"train.confusion_weight": 0.1, "train.confusion_ramp_steps": 4})
    train(cfg, tmp_path / "run", train_data=data, steps=6, progress=False)
    steps = [e for e in read_metrics(tmp_path / "run/metrics.jsonl") if e["event"] == "step"]
    assert [round(e["confusion_weight"], 6) for e in steps] == [0.025, 0.05, 0.075, 0.1, 0.1, 0.1]


def test_training_on_a_subset_of_the_domains(tmp_path, data):
    cfg = smoke()
    cfg.domains = ["flute", "piano"]
    summary = train(cfg, tmp_path / "run", train_data=data, steps=2, progress=False)
    assert summary["domains"] == ["flute", "piano"]
    model = load_model(tmp_path / "run/checkpoints/last.pt")
    assert model.domains == ["flute", "piano"] and len(model.decoders) == 2
    bad = smoke()
    bad.domains = ["piano", "violin"]
    with pytest.raises(ValueError, match="violin"):
        train(bad, tmp_path / "bad", train_data=data, steps=1, progress=False)

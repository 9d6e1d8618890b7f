"""Fine-tuning from a converted reference model: a new decoder, the encoder frozen."""

from __future__ import annotations

import numpy as np
import torch
from conftest import FIXTURES

from umt_core.checkpoint import load_checkpoint, load_model
from umt_core.config import preset
from umt_core.data.sampling import DomainAudio
from umt_core.reference import convert_reference
from umt_core.train import read_metrics, train


def _domain(name: str, freq: float, seed: int) -> DomainAudio:
    rng = np.random.default_rng(seed)
    t = np.arange(16000) / 16000
    clip = 0.3 * np.sign(np.sin(2 * np.pi * freq * t)) + 0.01 * rng.standard_normal(t.size)
    return DomainAudio(name, [clip.astype(np.float32)], [name])


def test_new_decoder_on_frozen_converted_encoder(tmp_path):
    converted = tmp_path / "reference.pt"
    convert_reference(FIXTURES / "reference_checkpoint", converted)
    source = load_model(converted)
    assert source.domains == ["domain_0", "domain_1", "domain_2"]

    cfg = preset("smoke", {"train.freeze_encoder": True, "train.segment_samples": 400})
    data = [_domain("domain_1", 220.0, 0), _domain("oboe", 330.0, 1)]
    summary = train(cfg, tmp_path / "run", train_data=data, steps=3, progress=False,
                    init_from=converted)
    assert summary["steps"] == 3

    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["config"]["mu_law"] == "reference"  # the model's own mu-law, not the preset's
    tuned = load_model(tmp_path / "run" / "checkpoints" / "last.pt")
    assert tuned.domains == ["domain_1", "oboe"]
    # the frozen encoder is the converted one, bit for bit
    for a, b in zip(tuned.encoder.state_dict().values(), source.encoder.state_dict().values()):
        assert torch.equal(a, b)
    # the known domain's decoder started from the converted decoder (3 small Adam steps)...
    for a, b in zip(tuned.decoder("domain_1").parameters(), source.decoder("domain_1").parameters()):
        assert (a - b).abs().max() < 0.01
    # ...and the new domain's decoder did not
    far = max((a - b).abs().max().item() for a, b in zip(
        tuned.decoder("oboe").parameters(), source.decoder("domain_0").parameters()))
    assert far > 0.05
    init = [e for e in read_metrics(tmp_path / "run" / "metrics.jsonl") if e["event"] == "init"]
    assert init and init[0]["new_domains"] == ["oboe"] and init[0]["freeze_encoder"] is True

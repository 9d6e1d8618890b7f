"""The spectral decoder ablation: decoder shapes, loss, Griffin-Lim, translation,
checkpoint round trip, the divergence guard's decoder-specific check, the evaluation and
notebooks on a spectral model (the goal check and the round-trip ceiling: test_goal.py)."""

from __future__ import annotations

import json

import numpy as np
import papermill
import pytest
import soundfile as sf
import torch
from conftest import REPO, scratch_root
from test_evaluate import write_smoke_study
from test_train import SPECTRAL, synthetic_domains
from test_train_notebook import _tiny_dataset

from umt_core import content, data, spectral
from umt_core.analysis import analyze
from umt_core.checkpoint import load_model
from umt_core.config import ModelConfig, preset
from umt_core.evaluate import latent_use_gap
from umt_core.generate import translate
from umt_core.generate.chunked import Chunking, translate_chunked
from umt_core.model import UMTN, UNIFORM_LOSS
from umt_core.train import Trainer, read_metrics, train

pytestmark = pytest.mark.usefixtures("one_thread")
SR = 8000


def _tone(freqs, seconds=1.0, sr=SR, harmonics=5):
    t = np.arange(int(seconds * sr)) / sr
    y = sum(np.sin(2 * np.pi * f * h * t) / h for f in freqs for h in range(1, harmonics + 1))
    return (0.5 * y / np.abs(y).max()).astype(np.float32)


def _cfg(**overrides):
    cfg = preset("smoke", {**SPECTRAL, **overrides})
    cfg.domains = ["piano", "cello", "flute"]
    return cfg


def test_unknown_decoder_kind_is_refused_by_name():
    cfg = preset("smoke", {"model.decoder": "vocoder"})
    cfg.domains = ["a", "b"]
    with pytest.raises(ValueError, match="model.decoder='vocoder'"):
        UMTN(cfg)


def test_cpu_spectral_preset_keeps_the_cpu_latent_classifier_and_confusion():
    a, b = preset("cpu").to_dict(), preset("cpu-spectral").to_dict()
    assert b["model"]["decoder"] == "spectral" and a["model"]["decoder"] == "wavenet"
    assert b["train"]["max_minutes"] == 30.0
    for key in ("encoder_blocks", "encoder_layers", "latent_channels",
                "pool", "classifier_layers", "classifier_channels"):
        assert a["model"][key] == b["model"][key], key
    assert a["train"]["confusion_weight"] == b["train"]["confusion_weight"]
    assert a["train"]["augment"] == b["train"]["augment"]


def test_decoder_maps_latent_to_frames_of_every_bin_and_depends_on_the_latent():
    cfg = _cfg()
    m = UMTN(cfg)
    codes = torch.randint(0, 256, (2, 256))
    z = m.encoder(codes)
    frames = spectral.frames_for(256, cfg.model)
    out = m.decoder(1)(z, frames)
    assert out.shape == (2, cfg.model.spectral_n_fft // 2 + 1, frames)
    assert not torch.allclose(out[0], out[1])  # different latents, different frames
    assert isinstance(m.decoders[0], spectral.SpectralDecoder) and len(m.decoders) == 3


def test_first_version_decoder_reads_latent_variations_not_offsets():
    """latent_norm=none (the first version): a latent of big constant offsets and small
    variations gives the same frames as its variations alone (and so a held chord's
    latent gives nothing: see the normalisation tests below)."""
    m = UMTN(_cfg(**{"model.latent_norm": "none"}))
    g = torch.Generator().manual_seed(0)
    wiggle = 0.02 * torch.randn(2, 4, 16, generator=g)
    offsets = torch.randn(1, 4, 1, generator=g)
    dec = m.decoder(0)
    a, b = dec(wiggle, 17), dec(offsets + 3.0 * wiggle, 17)
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, dec(wiggle.flip(-1), 17), atol=1e-3)


def test_loss_is_zero_for_the_true_spectrum_and_grows_with_error():
    cfg = ModelConfig(spectral_n_fft=256, spectral_hop=64)
    x = torch.from_numpy(_tone([220.0]))[None]
    mag = spectral.magnitude(x, cfg)
    exact = spectral.spectral_loss(spectral.log_magnitude(mag), mag)
    # only bins below the magnitude floor differ (they are predicted at the floor)
    assert float(exact) == pytest.approx(0.0, abs=1e-3)
    off = spectral.spectral_loss(spectral.log_magnitude(mag) + 0.5, mag)
    worse = spectral.spectral_loss(spectral.log_magnitude(mag) + 1.0, mag)
    assert 0.4 < float(off) < float(worse)


def test_a_huge_prediction_gives_a_bounded_loss():
    cfg = ModelConfig(spectral_n_fft=256, spectral_hop=64)
    mag = spectral.magnitude(torch.from_numpy(_tone([220.0]))[None], cfg)
    loss = spectral.spectral_loss(torch.full_like(mag, 50.0), mag)
    # L1 grows with the error (about 50 here); the convergence term is capped by the
    # largest magnitude audio can have (it was ~1e8 when exp() was unbounded)
    assert 40.0 < float(loss) < 1e4


def test_silent_segment_gives_a_finite_loss():
    cfg = ModelConfig(spectral_n_fft=64, spectral_hop=16)
    mag = spectral.magnitude(torch.zeros(1, 256), cfg)
    loss = spectral.spectral_loss(torch.zeros_like(mag), mag)
    assert torch.isfinite(loss).all()


def test_griffin_lim_round_trip_keeps_the_pitch():
    y = _tone([196.0, 247.0])  # G3 + B3
    back = spectral.round_trip(y, SR, "stft", n_fft=1024, hop=256, n_iter=32)
    assert back.shape == y.shape
    chroma = content.cqt_chroma(back, SR).mean(1)
    assert set(np.argsort(chroma)[-2:]) == {7, 11}  # G and B pitch classes dominate


def test_translate_returns_audio_of_the_input_length_per_target():
    cfg = _cfg()
    cfg.sample_rate = SR
    m = UMTN(cfg).eval()
    x = _tone([220.0], seconds=0.3)
    out = translate(m, x, SR, ["cello", "flute"])
    assert set(out) == {"cello", "flute"}
    assert all(v.shape == x.shape and np.isfinite(v).all() for v in out.values())
    assert not np.allclose(out["cello"], out["flute"])


def test_long_input_is_decoded_in_one_piece_not_in_chunks():
    """Chunks are for a sequential generation; a spectral model decodes a clip longer
    than a chunk whole (its decoder normalises the latent over the clip), the same with
    chunking on or off, and the chunked generator refuses it by name."""
    cfg = _cfg()
    cfg.sample_rate = SR
    m = UMTN(cfg).eval()
    x = _tone([220.0, 330.0], seconds=1.5)
    chunked = translate(m, x, SR, ["cello"], chunk_samples=2048)["cello"]
    whole = translate(m, x, SR, ["cello"], chunk_samples=0)["cello"]
    assert chunked.shape == x.shape and np.array_equal(chunked, whole)
    with pytest.raises(ValueError, match="chunked translation is for WaveNet"):
        translate_chunked(m, [x], [1], Chunking.for_model(cfg, 2048, None, None))


def test_training_run_loads_back_as_a_spectral_model_and_lowers_the_loss(tmp_path):
    cfg = preset("smoke", {**SPECTRAL, "train.steps_per_epoch": 15, "train.lr": 1e-2})
    data = synthetic_domains(sr=16000)
    train(cfg, tmp_path, train_data=data, steps=30, progress=False)
    model = load_model(tmp_path / "checkpoints" / "last.pt")
    assert isinstance(model.decoder("cello"), spectral.SpectralDecoder)
    epochs = [e for e in read_metrics(tmp_path / "metrics.jsonl") if e["event"] == "epoch"]
    first, last = epochs[0]["val_recon"], epochs[-1]["val_recon"]
    assert all(last[d] < first[d] for d in first)


def test_spectral_validation_near_ln256_is_not_taken_for_uniform_output(tmp_path, monkeypatch):
    values = iter([3.0, 2.5, UNIFORM_LOSS - 0.01])  # a spectral loss may well sit there

    def validate(self):
        v = next(values)
        return {name: v for name in self.domains}, 0.5

    monkeypatch.setattr(Trainer, "validate", validate)
    cfg = preset("smoke", {**SPECTRAL, "train.steps_per_epoch": 2})
    summary = train(cfg, tmp_path, train_data=synthetic_domains(), steps=6, progress=False)
    assert summary["rollbacks"] == 0
    # nor by the loss analysis (notebook 03), which knows the run's decoder
    result = analyze([tmp_path / "metrics.jsonl"])
    assert list(result.runs["decoder"]) == ["spectral"]
    assert result.divergence.empty


@pytest.mark.parametrize("kind", ["wavenet", "spectral"])
def test_latent_use_gap_measures_either_decoder(kind):
    cfg = _cfg() if kind == "spectral" else preset("smoke")
    cfg.domains = ["piano", "cello", "flute"]
    model = UMTN(cfg).eval()
    clips = {"cello": [_tone([110.0], seconds=0.2, sr=16000), _tone([147.0], 0.2, 16000)]}
    gap = latent_use_gap(model, clips)
    assert list(gap["domain"]) == ["cello"]
    assert np.isfinite(gap[["loss_true", "loss_shuffled"]].to_numpy()).all()




# ------------------------------------------------------------------- notebooks, evaluation
# cpu-spectral at smoke size: the preset's choices (spectral decoders, no input
# corruption, its lr) with a network and segments that train in seconds.
CPU_SPECTRAL_AT_SMOKE_SIZE = {
    "model.encoder_blocks": 1, "model.encoder_layers": 3, "model.encoder_channels": 8,
    "model.latent_channels": 4, "model.pool": 16, "model.classifier_layers": 2,
    "model.classifier_channels": 8, "model.spectral_n_fft": 64, "model.spectral_hop": 16,
    "model.spectral_channels": 8, "model.spectral_layers": 2, "train.batch_per_domain": 2,
    "train.segment_samples": 256, "train.steps_per_epoch": 5, "train.val_batches": 1,
    "train.augment": False,
}


def test_notebook_02_trains_the_cpu_spectral_preset(tmp_path_factory, monkeypatch):
    root = scratch_root(tmp_path_factory.mktemp("spectral02"))
    manifest = _tiny_dataset(root)
    data.prep(data.load_manifest(root / manifest), progress=False, log=lambda *a: None)
    monkeypatch.setenv("UMT_ROOT", str(root))
    papermill.execute_notebook(
        str(REPO / "notebooks" / "02_train.ipynb"), str(tmp_path_factory.mktemp("out") / "02.ipynb"),
        kernel_name="umt-study", cwd=str(root), progress_bar=False,
        parameters={"preset": "cpu-spectral", "manifest": manifest, "run_name": "spec",
                    "steps": 10, "overrides": CPU_SPECTRAL_AT_SMOKE_SIZE, "plot_every_s": 3.0,
                    "results_dir": "results/spec"})
    figures = json.loads((root / "results" / "spec" / "02_train.json").read_text())
    assert figures["steps"] == 10 and figures["skipped_steps"] == 0
    model = load_model(root / "runs" / "spec" / "checkpoints" / "best.pt")
    assert model.config.preset == "cpu-spectral"
    assert isinstance(model.decoder(0), spectral.SpectralDecoder)


def test_notebook_04_evaluates_a_spectral_model(tmp_path, monkeypatch):
    monkeypatch.delenv("UMT_ROOT", raising=False)
    cfg = preset("smoke", SPECTRAL)
    manifest, ckpt = write_smoke_study(tmp_path, cfg, ["piano", "flute"])
    results = tmp_path / "results"
    papermill.execute_notebook(
        str(REPO / "notebooks" / "04_listening_tests.ipynb"), str(tmp_path / "04.ipynb"),
        kernel_name="umt-study", cwd=str(REPO), progress_bar=False,
        parameters={"checkpoints": [str(ckpt)], "run_dir": "", "manifest": str(manifest),
                    "works": 2, "segments": 1, "seconds_per_clip": 0.5, "n_trials": 4,
                    "samples_to_show": 1, "results_dir": str(results),
                    "key_dir": str(tmp_path / "keys")})
    figures = json.loads((results / "04_listening_tests.json").read_text())
    assert "smoke-best_translation_success" in figures
    translations = sorted((results / "examples").glob("*_translation.wav"))
    assert translations
    audio, _ = sf.read(translations[0])
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0  # Griffin-Lim, not silence


# ------------------------------------------------------------ the latent's normalisation
def test_frame_normalisation_keeps_a_held_chord_that_time_normalisation_erases():
    """Two clips each holding one chord (a latent constant in time, different patterns):
    normalised over time both become nothing; normalised per frame they stay apart."""
    from umt_core.model import normalize_frames

    a = torch.tensor([1.0, 0.0, 2.0, 0.5])[None, :, None].expand(1, 4, 10)
    b = torch.tensor([0.0, 2.0, 0.5, 1.0])[None, :, None].expand(1, 4, 10)
    held = torch.cat([a, b])
    over_time = spectral.normalize_over_time(held)
    assert over_time.abs().max() < 1e-3  # both chords erased
    frames = normalize_frames(held)
    assert (frames[0] - frames[1]).abs().max() > 1.0
    assert torch.allclose(normalize_frames(held * 1e6), frames, atol=1e-4)  # scale-free


def test_a_frame_normalised_encoder_is_blind_to_its_scale_for_decoders_and_classifier():
    """latent_norm=frame: what every consumer of the latent sees does not change when
    the encoder's output is scaled, so no loss can drive the scale (the first version's
    runaway). Windowed encoding and the fast training path agree with the module."""
    from umt_core import forward as fw
    from umt_core.generate import encode

    cfg = _cfg(**{"model.latent_norm": "frame"})
    model = UMTN(cfg).eval()
    codes = torch.randint(0, 256, (2, 512))
    z = model.encoder(codes)
    assert torch.allclose(z.mean(dim=1), torch.zeros(2, z.shape[-1]), atol=1e-5)
    with torch.no_grad():
        model.encoder.conv_1x1.weight.mul_(1000.0)
        model.encoder.conv_1x1.bias.mul_(1000.0)
    assert torch.allclose(model.encoder(codes), z, atol=1e-3)
    assert torch.allclose(fw.fast_encode(model.encoder, codes), model.encoder(codes), atol=1e-4)
    assert torch.allclose(encode(model, codes, chunk_frames=4), model.encoder(codes), atol=1e-4)


def test_the_first_versions_checkpoints_still_normalise_over_time(tmp_path):
    """A stored spectral config without latent_norm (the first version) computes as it
    was trained: raw latent, normalised over time inside the decoder."""
    from umt_core.checkpoint import save_checkpoint
    from umt_core.config import Config

    cfg = _cfg()
    stored = cfg.to_dict()
    del stored["model"]["latent_norm"]
    assert Config.from_dict(stored).model.latent_norm == "none"
    model = UMTN(Config.from_dict(stored))
    save_checkpoint({"config": stored, "model": model.state_dict()}, tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt")
    assert loaded.encoder.latent_norm == "none" and loaded.decoders[0].over_time
    assert preset("cpu-spectral").model.latent_norm == "frame"
    assert preset("cpu").model.latent_norm == "none"  # the paper's encoder output


def test_the_latents_scale_is_logged_every_step(tmp_path):
    """`latent_rms` in each step event: 1 for a frame-normalised latent, the encoder's
    own scale otherwise."""
    data = synthetic_domains(["piano", "cello"], seconds=2.0)
    for norm in ("frame", "none"):
        cfg = preset("smoke", {**SPECTRAL, "model.latent_norm": norm, "train.steps_per_epoch": 3})
        cfg.domains = ["piano", "cello"]
        train(cfg, tmp_path / norm, train_data=data, steps=3, progress=False)
        rms = [e["latent_rms"] for e in read_metrics(tmp_path / norm / "metrics.jsonl")
               if e["event"] == "step"]
        assert len(rms) == 3 and all(np.isfinite(rms))
        if norm == "frame":
            assert rms == pytest.approx([1.0] * 3, abs=1e-3)
        else:
            assert all(abs(r - 1.0) > 0.05 for r in rms)


def test_a_decoder_predicting_below_the_floor_is_pulled_back_up():
    """A prediction far below the magnitude floor everywhere (a decoder knocked there by
    one large update) still gets a gradient that raises it; with the floor clamped into
    the prediction it got none, and the decoder stayed dead."""
    cfg = ModelConfig(spectral_n_fft=256, spectral_hop=64)
    mag = spectral.magnitude(torch.from_numpy(_tone([220.0]))[None], cfg)
    pred = torch.full(mag.shape, -30.0, requires_grad=True)
    spectral.spectral_loss(pred, mag).sum().backward()
    assert pred.grad is not None and float((-pred.grad).min()) > 1e-6  # descent raises it

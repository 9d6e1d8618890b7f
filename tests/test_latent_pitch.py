"""The pitch-class probe of the latent (umt_core.latent_pitch): on synthetic melodies
whose notes are known, an encoder that passes the spectrum on scores high, one that
passes nothing scores chance, and the calibration rows behave (the input's chroma high,
shuffled labels at chance)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_evaluate import SPLITS, data, melody

from umt_core.audio import mu_law_decode
from umt_core.config import preset
from umt_core.latent_pitch import frame_pitch_classes, latent_pitch
from umt_core.model import UMTN

pytestmark = pytest.mark.usefixtures("one_thread")
__all__ = ["data"]  # a module fixture of test_evaluate, used by name
POOL = 128


class _Notes:
    """The synthetic works' melodies as a dataset's score notes."""

    def events(self, work: str, domain: str) -> np.ndarray:
        w = int(work.removeprefix("work"))
        seconds = next(s for works, s in SPLITS.values() if w in works)
        return np.array([[0, midi, t, t + d] for t, d, midi in melody(w, seconds)], dtype=float)

    def check_rendering(self, work, domain, n_samples, sample_rate):
        pass


class _Spectrum(torch.nn.Module):
    """An encoder that passes the input's log-magnitude spectrum on, one frame per pool."""

    def forward(self, codes):
        audio = mu_law_decode(codes)
        spec = torch.stft(audio, n_fft=1024, hop_length=POOL, window=torch.hann_window(1024),
                          return_complex=True).abs()
        return torch.log1p(spec)[..., : codes.shape[-1] // POOL]


class _Nothing(torch.nn.Module):
    def forward(self, codes):
        return torch.zeros(codes.shape[0], 8, codes.shape[-1] // POOL)


def _model(encoder):
    cfg = preset("smoke", {"model.pool": POOL})
    cfg.domains = ["piano", "cello"]
    model = UMTN(cfg).eval()
    model.encoder = encoder
    return model


def _probe(data, encoder):
    scored = dataclasses.replace(data, notes=_Notes())
    return latent_pitch(_model(encoder), scored, split="test", segments=2, seconds=0.75)


def test_a_latent_that_carries_the_spectrum_reads_the_pitch_classes(data):
    r = _probe(data, _Spectrum())
    assert r["latent"]["auc"] > 0.9 and r["latent"]["classes"] >= 5
    assert r["input_chroma"]["auc"] > 0.9  # the calibration row that must pass
    assert abs(r["latent_shuffled_labels"]["auc"] - 0.5) < 0.08  # the one that must not
    assert r["works"] == 4 and r["frames"] == 4 * 2 * 2 * (12000 // POOL)
    assert 0.3 < r["untrained_latent"]["auc"] < 1.0  # the smoke encoder as initialised
    lat, un = r["latent"], r["untrained_latent"]
    assert lat["ci_low"] <= lat["auc"] <= lat["ci_high"]
    assert un["gain_over_it"] == pytest.approx(lat["auc"] - un["auc"])
    assert un["gain_ci_low"] > 0  # the spectrum beats a random encoder, by a clear margin


def test_a_latent_that_carries_nothing_scores_chance(data):
    r = _probe(data, _Nothing())
    assert r["latent"]["auc"] == pytest.approx(0.5, abs=0.02)
    assert r["input_chroma"]["auc"] > 0.9  # the notes were there to be read


def test_without_score_notes_the_probe_says_why(data):
    with pytest.raises(ValueError, match="needs the score's notes"):
        latent_pitch(_model(_Nothing()), data, split="test")


def test_the_auc_is_scikit_learns():
    from sklearn.metrics import roc_auc_score

    from umt_core.latent_pitch import macro_auc

    rng = np.random.default_rng(0)
    Y = rng.random((300, 12)) < 0.3
    prob = np.round(Y * 0.3 + rng.random((300, 12)), 1)  # ties on purpose
    expected = np.mean([roc_auc_score(Y[:, pc], prob[:, pc]) for pc in range(12)])
    assert macro_auc(Y, prob) == pytest.approx(expected, abs=1e-12)


def test_frame_labels_are_the_classes_sounding_at_each_frame_centre():
    ev = np.array([[0, 60, 0.0, 0.5], [0, 64, 0.25, 1.0], [0, 72, 0.9, 1.0]])
    y = frame_pitch_classes(ev, start_s=0.2, n_frames=4, frame_s=0.2)  # centres .3 .5 .7 .9
    assert y[:, 0].tolist() == [True, False, False, True]  # C: 60 until 0.5, 72 from 0.9
    assert y[:, 4].tolist() == [True, True, True, True]  # E: 0.25-1.0
    assert y.sum() == 6


def test_the_command_writes_each_checkpoints_figures_and_the_commit(data, tmp_path, monkeypatch):
    """`latent-pitch` on a checkpoint: the figures per checkpoint, with the git commit
    the figures came from (committed results must come from a clean tree)."""
    import json

    from umt_core import latent_pitch as lp
    from umt_core.__main__ import main

    scored = dataclasses.replace(data, notes=_Notes())
    monkeypatch.setattr(lp.EvalData, "from_manifest", classmethod(lambda cls, m: scored))
    monkeypatch.setattr("umt_core.checkpoint.load_model", lambda p: _model(_Spectrum()))
    out = tmp_path / "lp.json"
    assert main(["latent-pitch", "--checkpoint", "a.pt", "--split", "test", "--segments", "2",
                 "--seconds", "0.75", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["checkpoints"]["a.pt"]["latent"]["auc"] > 0.9
    assert set(got["git"]) == {"commit", "dirty"} and got["split"] == "test"

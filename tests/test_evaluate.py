"""Objective translation metrics on controlled cases.

A small paired dataset is synthesised here: four additive-synthesis "instruments"
(different harmonic spectra, envelopes and random harmonic phases) play the same
random melodies, so every test work has a true rendering in every instrument.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from umt_core import evaluate as ev
from umt_core.__main__ import main
from umt_core.checkpoint import save_checkpoint
from umt_core.model import UMTN

SR = 16000
SECONDS = 1.5
INSTRUMENTS = {
    # harmonic amplitudes, attack (s), exponential decay rate (1/s; 0 = sustained), vibrato
    "piano": ([1.0, 0.5, 0.3, 0.2, 0.12, 0.08], 0.005, 3.0, 0.0),
    "harpsichord": ([0.6, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3], 0.002, 6.0, 0.0),
    "cello": ([1.0, 0.8, 0.65, 0.5, 0.4, 0.3, 0.25, 0.2], 0.08, 0.0, 0.004),
    "flute": ([1.0, 0.15, 0.05], 0.05, 0.0, 0.0),
}
SCALE = [55, 57, 59, 60, 62, 64, 65, 67, 69, 71, 72, 74, 76, 77, 79]


def melody(work: int, seconds: float) -> list[tuple[float, float, int]]:
    """(onset, duration, midi) notes of a random C-major melody."""
    rng = np.random.default_rng(1000 + work)
    notes, t = [], 0.0
    while t < seconds:
        d = float(rng.choice([0.25, 0.375, 0.5]))
        notes.append((t, d, int(rng.choice(SCALE))))
        t += d
    return notes


def render(work: int, instrument: str, seconds: float) -> np.ndarray:
    harm, attack, decay, vibrato = INSTRUMENTS[instrument]
    rng = np.random.default_rng([list(INSTRUMENTS).index(instrument), work])
    n = int(seconds * SR)
    out = np.zeros(n)
    for onset, dur, midi in melody(work, seconds):
        # Each instrument plays a little out of tune (+-20 cents), as real ones do.
        f0 = 440.0 * 2 ** ((midi - 69 + rng.uniform(-0.2, 0.2)) / 12)
        i0 = int(onset * SR)
        length = min(int(dur * SR), n - i0)
        t = np.arange(length) / SR
        env = np.minimum(t / attack, 1.0)
        if decay:
            env = env * np.exp(-decay * t)
        env = env * np.minimum(1.0, (length - np.arange(length)) / (0.01 * SR))  # release
        freq = f0 * (1 + vibrato * np.sin(2 * np.pi * 5.5 * t))
        phase = 2 * np.pi * np.cumsum(freq) / SR
        note = np.zeros(length)
        for k, a in enumerate(harm, start=1):
            if k * f0 < 0.45 * SR:
                note += a * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
        out[i0:i0 + length] += env * note
    return (0.4 * out / np.abs(out).max()).astype(np.float32)


SPLITS = {"train": (range(8), 4.0), "val": (range(20, 22), 3.0), "test": (range(30, 34), 2.0)}


def write_dataset(root, domains=tuple(INSTRUMENTS)):
    for d in domains:
        for split, (works, seconds) in SPLITS.items():
            folder = root / d / split
            folder.mkdir(parents=True, exist_ok=True)
            for w in works:
                sf.write(folder / f"work{w:02d}.wav", render(w, d, seconds), SR, subtype="PCM_16")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = write_dataset(tmp_path_factory.mktemp("synth"))
    return ev.EvalData.from_folder(root, SR, list(INSTRUMENTS))


@pytest.fixture(scope="module")
def classifier(data):
    train = {d: [data.load(p) for p in data.split("train")[d]] for d in data.domains}
    val = {d: [data.load(p) for p in data.split("val")[d]] for d in data.domains}
    return ev.train_instrument_classifier(train, SR, heldout=val, seconds=SECONDS)


@pytest.fixture(scope="module")
def baselines(data, classifier):
    return ev.evaluate(None, data, sources=["piano", "cello"], targets=["cello", "flute"],
                       clips=2, seconds=SECONDS, classifier=classifier)


def rows(evaluation, condition):
    df = evaluation.clips
    return df[df.condition == condition]


def test_classifier_tells_instruments_apart_on_held_out_works(classifier):
    assert classifier.report["heldout_accuracy"] >= 0.95
    assert classifier.report["heldout_accuracy_noisy"] >= 0.9


def test_identity_is_the_source_instrument_with_perfect_pitch_agreement(baselines):
    ident = rows(baselines, "identity")
    assert len(ident) == 2 * 2 + 2 * 1  # piano->cello, piano->flute, cello->flute
    assert (ident.predicted == ident.source).all()
    assert np.allclose(ident.chroma, 1.0)
    assert ident.is_copy.all() and np.allclose(ident.wave_corr, 1.0)
    assert not ident.success.any()


def test_ground_truth_is_the_target_and_a_success(baselines):
    gt = rows(baselines, "ground_truth")
    assert gt.classified_as_target.mean() >= 0.9
    assert gt.success.mean() >= 0.8
    # The real rendering by another instrument is not a copy of the source.
    assert gt.wave_corr.abs().median() < 0.15 and not gt.is_copy.any()
    assert (gt.chroma > gt.control_chroma).all()


def test_unrelated_target_clip_sounds_right_but_is_not_a_success(baselines):
    un = rows(baselines, "unrelated")
    assert un.classified_as_target.all()
    assert not un.content_ok.any()
    assert not un.success.any()


def test_tables_have_every_reference_condition(baselines):
    summary = baselines.summary()
    assert list(summary.condition) == ["identity", "ground_truth", "unrelated"]
    assert summary.set_index("condition").loc["identity", "success"] == 0
    conf = baselines.confusion("identity")
    assert conf.loc["piano", "piano"] == 4 and conf.loc["cello", "cello"] == 2
    js = baselines.to_json()
    assert {"summary", "pairs", "confusion", "clips", "key_figures", "classifier"} <= set(js)


def _copy_translator(audio, source, stems, targets):
    return {t: [0.9 * a for a in audio] for t in targets}


def _oracle_translator(audio, source, stems, targets):
    return {t: [render(int(s[4:]), t, SECONDS) for s in stems] for t in targets}


def test_a_copying_model_is_caught(data, classifier):
    result = ev.evaluate(None, data, sources=["piano"], targets=["cello", "flute"], clips=2,
                         seconds=SECONDS, classifier=classifier, translator=_copy_translator)
    tr = rows(result, "translation")
    assert len(tr) == 4
    assert tr.is_copy.all() and not tr.success.any()
    assert (tr.chroma > 0.95).all()  # the notes are perfect: content alone would pass it
    assert (tr.dist_source < tr.dist_target).all()
    rec = rows(result, "reconstruction")
    assert len(rec) == 2 and (rec.predicted == "piano").all() and rec.success.isna().all()


def test_a_perfect_model_succeeds(data, classifier):
    result = ev.evaluate(None, data, sources=["flute"], targets=["piano", "harpsichord"],
                         clips=2, seconds=SECONDS, classifier=classifier,
                         translator=_oracle_translator)
    tr = rows(result, "translation")
    assert tr.success.mean() >= 0.75
    summary = result.summary().set_index("condition")
    assert summary.loc["translation", "success"] > summary.loc["unrelated", "success"]


def test_white_noise_is_flagged_and_music_is_not():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.3, SR).astype(np.float32)
    assert ev.is_noise(noise, SR)
    assert ev.spectral_flatness(noise, SR) > 0.4
    for inst in INSTRUMENTS:
        assert not ev.is_noise(render(0, inst, 1.0), SR)
    # Noise sounds like no instrument in particular, and has no notes.
    piano = render(8, "piano", 1.0)
    assert ev.chroma_agreement(piano, noise, SR) < 0.3


def test_generation_like_noise_keeps_the_instrument(classifier):
    rng = np.random.default_rng(3)
    clip = render(9, "cello", SECONDS)
    noisy = ev.degrade(clip, rng, code_noise=3.0)
    assert classifier.predict([noisy]) == ["cello"]
    assert 0.5 < ev.waveform_correlation(clip, noisy) < 1.0


def test_latent_probe_chance_on_random_and_perfect_on_domain_latents():
    rng = np.random.default_rng(0)
    labels = np.repeat(["piano", "cello", "flute"], 60)
    groups = np.tile([f"work{i}" for i in range(12)], 15)
    random = ev.latent_probe(rng.normal(size=(180, 16)), labels, groups)
    assert random["chance"] == pytest.approx(1 / 3)
    assert abs(random["accuracy"] - random["chance"]) < 0.12
    informative = rng.normal(size=(180, 16))
    informative[:, 0] += 8.0 * (labels == "cello")
    informative[:, 1] += 8.0 * (labels == "flute")
    assert ev.latent_probe(informative, labels, groups)["accuracy"] > 0.97


def test_model_signals_on_a_smoke_model(data, classifier, smoke_config):
    torch.manual_seed(0)
    smoke_config.domains = ["piano", "cello"]
    model = UMTN(smoke_config).eval()
    result = ev.evaluate(model, data, targets=["cello"], sources=["piano", "cello"], clips=1,
                         seconds=0.5, classifier=classifier, translator=_copy_translator,
                         probe_segments=6, probe_seconds=0.25, gap_segments=2, gap_seconds=0.1)
    assert result.latent_probe["n"] == 12 and result.latent_probe["chance"] == 0.5
    assert list(result.latent_use.domain) == ["piano", "cello"]
    assert np.isfinite(result.latent_use.gap).all()
    assert "latent_probe_accuracy" in result.key_figures()
    text = ev.format_tables(result)
    assert "Latent domain probe" in text and "translation" in text


def write_smoke_study(root, cfg, domains):
    """A tiny dataset in the data layout under `root`/data, its manifest (whose project
    folder is `root`) and an untrained smoke checkpoint at runs/smoke/checkpoints/best.pt."""
    import yaml

    write_dataset(root / "data" / "synth", domains)
    manifest = root / "synth.yaml"
    manifest.write_text(yaml.safe_dump({
        "dataset": "synth", "sample_rate": SR,
        "source": {"type": "scores", "soundfont": "unused.sf2", "alt_soundfont": "unused.sf2"},
        "split": {"test_works": 4, "minutes_per_domain": 1},
        "domains": [{"name": d, "instrument": d, "low": 36, "high": 96} for d in domains],
    }))
    torch.manual_seed(0)
    cfg.domains = list(domains)
    ckpt = root / "runs" / "smoke" / "checkpoints" / "best.pt"
    save_checkpoint({"config": cfg.to_dict(), "model": UMTN(cfg).state_dict()}, ckpt)
    return manifest, ckpt


def test_evaluate_command_end_to_end(tmp_path, smoke_config, monkeypatch, capsys):
    """`python -m umt_core evaluate` on a smoke model and a tiny dataset in the data layout."""
    import json

    monkeypatch.delenv("UMT_ROOT", raising=False)
    domains = ["piano", "cello"]
    manifest, ckpt = write_smoke_study(tmp_path, smoke_config, domains)
    out = tmp_path / "eval" / "metrics.json"
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--manifest", str(manifest), "--clips", "1",
               "--seconds", "0.5", "--temperature", "0", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    conditions = {r["condition"] for r in result["summary"]}
    assert conditions == {"translation", "identity", "ground_truth", "unrelated",
                          "reconstruction"}
    assert result["latent_probe"]["chance"] == 0.5
    assert {r["domain"] for r in result["latent_use"]} == set(domains)
    assert result["confusion"]["translation"].keys() == set(domains)
    assert "classifier_heldout_accuracy" in result["key_figures"]
    assert "Latent domain probe" in capsys.readouterr().out


def test_chunked_and_sequential_translation_give_the_same_figures(data, classifier,
                                                                  smoke_config):
    """The evaluation's figures of one model translating the same test clips in one
    piece and in cross-faded chunks agree within their 95% intervals."""
    from umt_core.bench.parity import compare_figures, evaluation_figures
    from umt_core.model import UMTN

    torch.manual_seed(0)
    smoke_config.domains = ["piano", "cello", "flute"]
    model = UMTN(smoke_config).eval()
    figures = {}
    for chunk in (0, 1024):
        translator = ev.model_translator(model, seed=3, chunk_samples=chunk,
                                         overlap_samples=128)
        result = ev.evaluate(model, data, sources=["piano", "cello"], targets=["flute"],
                             clips=2, seconds=SECONDS, classifier=classifier,
                             translator=translator, probe_segments=0)
        figures[chunk] = evaluation_figures(result.clips)
    assert figures[0].keys() == figures[1024].keys() and "chroma" in figures[0]
    assert all(compare_figures(figures[0], figures[1024]).values()), figures

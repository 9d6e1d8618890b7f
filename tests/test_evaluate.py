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

from umt_core import calibration
from umt_core import evaluate as ev
from umt_core.__main__ import main
from umt_core.checkpoint import save_checkpoint
from umt_core.model import UMTN
from umt_core.signals import degrade
from umt_core.statistics import wilson_interval

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
    """Over the test model's domains only."""
    return ev.dataset_classifier(data, ["piano", "cello"], seconds=SECONDS / 2)


def _cut_of(work: str, domain: str, start: int, n: int, split_seconds: float) -> np.ndarray:
    a = render(int(work[4:]), domain, split_seconds)
    return np.pad(a[start:start + n], (0, max(0, start + n - len(a))))


def _oracle(split_seconds):
    """A perfect model: the real rendering of the same notes by the target instrument."""
    def run(clips, source, targets):
        n = len(clips[0].source)
        return {t: [_cut_of(c.work, t, c.start, n, split_seconds) for c in clips] for t in targets}
    return run


def _copy_translator(clips, source, targets):
    return {t: [0.9 * c.source for c in clips] for t in targets}


def _noise_translator(clips, source, targets):
    """The ground truth at 5 dB SNR: what sampled output at about 4 nats sounds like."""
    rng = np.random.default_rng(5)
    oracle = _oracle(SPLITS["test"][1])(clips, source, targets)
    return {t: [a + rng.normal(0, np.sqrt(np.mean(a ** 2) / 10 ** 0.5), len(a)).astype(np.float32)
                for a in oracle[t]] for t in targets}


@pytest.fixture(scope="module")
def thresholds(data, classifier):
    """Chosen once on the validation works (as `evaluate` does when not given them)."""
    return ev.thresholds_on_val(data, classifier, [("piano", "cello")], segments=2,
                                seconds=SECONDS / 2)


def run(data, classifier, thresholds, translator, **kw):
    return ev.evaluate(None, data, sources=["piano"], targets=["cello"], segments=2,
                       seconds=SECONDS / 2, classifier=classifier, thresholds=thresholds,
                       translator=translator, **kw)


@pytest.fixture(scope="module")
def copied(data, classifier, thresholds):
    return run(data, classifier, thresholds, _copy_translator)


def rows(evaluation, condition):
    df = evaluation.clips
    return df[df.condition == condition]


def test_classifier_tells_instruments_apart_on_held_out_works(classifier):
    assert classifier.report["heldout_accuracy"] >= 0.95
    assert classifier.report["heldout_accuracy_noisy"] >= 0.9


def test_thresholds_are_chosen_on_validation_works(thresholds):
    assert thresholds["chosen_on"] == "val" and thresholds["clips"] == 2 * 2
    assert all(r["separates"] for r in thresholds["report"].values()), thresholds["report"]


def test_a_perfect_model_succeeds_like_the_ground_truth(data, classifier, thresholds):
    result = run(data, classifier, thresholds, _oracle(SPLITS["test"][1]))
    tr = rows(result, "translation")
    assert len(tr) == 4 * 2 and tr.work.nunique() == 4  # every test work, 2 segments each
    assert tr.success.mean() >= 0.75
    assert tr.notes_kept_truth.mean() > 0.9
    assert result.settings["split"] == "test" and result.thresholds is thresholds


def test_a_copying_model_fails_the_instrument_but_keeps_the_notes(copied):
    result = copied
    tr = rows(result, "translation")
    assert not tr.instrument.any() and not tr.success.any()
    assert tr.notes.all()  # the notes are perfect: content alone would pass it
    assert (tr.source_chroma > 0.95).all()  # the old measure calls a copy perfect content
    rec = rows(result, "reconstruction")
    assert len(rec) == 8 and (rec.predicted == "piano").all() and rec.success.isna().all()


def test_noisy_output_fails_clean_and_the_old_noise_flag_misses_it(data, classifier, thresholds):
    result = run(data, classifier, thresholds, _noise_translator)
    tr = rows(result, "translation")
    assert not tr.clean.any() and not tr.success.any()
    assert tr.old_not_noise.all()  # flatness 0.3 calls it music


def test_calibration_rows_pass_and_fail_as_they_must(copied):
    table = copied.calibration_table()
    assert table.loc["success", "ground_truth"] == 1
    assert table.loc["clean", "gt_snr5"] == 0 and table.loc["clean", "shaped_noise"] == 0
    assert table.loc["instrument", "source"] == 0 and table.loc["success", "source"] == 0
    # Thresholds come from other (validation) works: a random melody in the same key
    # can share enough notes with another to pass now and then, and the table shows it.
    assert table.loc["notes", "unrelated"] <= 0.25 and table.loc["success", "unrelated"] <= 0.25
    assert list(table.columns[:2]) == ["translation", "reconstruction"]


def test_rates_carry_wilson_and_means_bootstrap_intervals_over_works(copied):
    result = copied
    r = result.rates().set_index(["condition", "criterion"]).loc[("translation", "success")]
    assert r.k == 0 and r.n == 8 and r.ci_low == 0 and 0.2 < r.ci_high < 0.45
    m = result.means().set_index(["condition", "signal"]).loc[("translation", "notes_kept_truth")]
    assert m.works == 4 and m.ci_low <= m["mean"] <= m.ci_high
    figures = result.key_figures()
    assert figures["split"] == "test" and figures["thresholds_chosen_on"] == "val"
    assert "model_translation_success_ci_high" in figures


def test_the_split_needs_paired_works(data, classifier, thresholds):
    lonely = ev.EvalData(data.sample_rate, data.domains,
                         {**data.files, "val": {d: data.files["val"][d][:1] for d in data.domains}})
    with pytest.raises(ValueError, match="val split: 1 works .*val_works"):
        run(lonely, classifier, thresholds, None, split="val")
    with pytest.raises(ValueError, match="split must be one of"):
        run(data, classifier, thresholds, None, split="train")


def test_generation_like_noise_keeps_the_instrument(classifier):
    rng = np.random.default_rng(3)
    clip = render(9, "cello", SECONDS)
    noisy = degrade(clip, rng, code_noise=3.0)
    assert classifier.predict([noisy]) == ["cello"]
    assert 0.5 < np.corrcoef(clip, noisy)[0, 1] < 1.0
    assert classifier.report["chance"] == 0.5 and classifier.domains == ["piano", "cello"]


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


def test_model_signals_on_a_smoke_model(data, classifier, thresholds, smoke_config):
    torch.manual_seed(0)
    smoke_config.domains = ["piano", "cello"]
    model = UMTN(smoke_config).eval()
    result = ev.evaluate(model, data, targets=["cello"], sources=["piano", "cello"], works=2,
                         segments=1, seconds=0.5, classifier=classifier, translator=_copy_translator,
                         thresholds=thresholds, probe_segments=6, probe_seconds=0.25,
                         gap_segments=2, gap_seconds=0.1)
    assert result.latent_probe["n"] == 12 and result.latent_probe["chance"] == 0.5
    assert list(result.latent_use.domain) == ["piano", "cello"]
    assert np.isfinite(result.latent_use.gap).all()
    figures = result.key_figures()
    # the probe's accuracy is a rate over its 12 segments: it has its Wilson interval
    k = round(figures["latent_probe_accuracy"] * 12)
    assert figures["latent_probe_n"] == 12
    assert (figures["latent_probe_accuracy_ci_low"], figures["latent_probe_accuracy_ci_high"]) \
        == pytest.approx(wilson_interval(k, 12))
    assert figures["latent_probe_accuracy_ci_low"] <= figures["latent_probe_accuracy"] \
        <= figures["latent_probe_accuracy_ci_high"]
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
    small = ["--works", "2", "--segments", "1", "--seconds", "0.5"]
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--manifest", str(manifest), *small,
               "--temperature", "0", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    conditions = {r["condition"] for r in result["summary"]}
    assert conditions == {"translation", "reconstruction", *calibration.ROWS}
    assert result["settings"]["split"] == "test" and result["thresholds"]["chosen_on"] == "val"
    assert result["settings"]["temperature_from"] == "--temperature"
    assert result["classifier"]["chance"] == 0.5
    assert set(result["calibration"]["success"]) == {"translation", "reconstruction", *calibration.ROWS}
    assert {r["criterion"] for r in result["rates"]} >= {"instrument", "clean", "notes", "success"}
    assert all(r["ci_low"] <= r["rate"] <= r["ci_high"] for r in result["rates"])
    assert any(r["signal"] == "notes_kept_truth" for r in result["means"])
    assert result["latent_probe"]["chance"] == 0.5
    assert {r["domain"] for r in result["latent_use"]} == set(domains)
    assert result["confusion"]["translation"].keys() == set(domains)
    assert "classifier_heldout_accuracy" in result["key_figures"]
    assert "Latent domain probe" in capsys.readouterr().out


def test_temperature_sweep_chooses_on_val_and_becomes_the_runs_default(tmp_path, smoke_config,
                                                                        monkeypatch):
    """`evaluate --sweep-temperature` on a smoke model: one row per temperature, the choice
    recorded in the run, and a later evaluation without --temperature uses it."""
    import json

    monkeypatch.delenv("UMT_ROOT", raising=False)
    manifest, ckpt = write_smoke_study(tmp_path, smoke_config, ["piano", "cello"])
    small = ["--works", "2", "--segments", "1", "--seconds", "0.25"]
    sweep = tmp_path / "sweep.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--manifest", str(manifest), *small,
                 "--sweep-temperature", "--json", str(sweep)]) == 0
    result = json.loads(sweep.read_text())
    assert [r["temperature"] for r in result["sweep"]] == list(ev.TEMPERATURES)
    assert result["split"] == "val" and result["chosen"] in ev.TEMPERATURES
    recorded = json.loads((ckpt.parent.parent / ev.SAMPLING_FILE).read_text())
    assert recorded["temperature"] == result["chosen"] and recorded["chosen_on"] == "val"
    assert ev.run_temperature(ckpt)[0] == result["chosen"]
    assert ev.run_temperature(tmp_path / "elsewhere" / "checkpoints" / "best.pt")[0] == 1.0


def test_chunked_and_sequential_translation_give_the_same_figures(data, classifier, thresholds,
                                                                  smoke_config):
    """The evaluation's figures of one model translating the same test clips in one
    piece and in cross-faded chunks agree within their 95% intervals: the criteria's
    rates (Wilson) and the content figures (bootstrap over works)."""
    torch.manual_seed(0)
    smoke_config.domains = ["piano", "cello"]
    model = UMTN(smoke_config).eval()
    figures = {}
    for chunk in (0, 1024):
        translator = ev.model_translator(model, seed=3, chunk_samples=chunk,
                                         overlap_samples=128)
        result = ev.evaluate(model, data, sources=["piano"], targets=["cello"], works=4,
                             segments=1, seconds=SECONDS / 2, classifier=classifier,
                             thresholds=thresholds, translator=translator, probe_segments=0)
        rates = result.rates().query("condition == 'translation'").set_index("criterion")
        means = result.means().query("condition == 'translation' and signal in "
                                     "['notes_kept_score', 'notes_kept_truth', 'source_chroma']"
                                     ).set_index("signal")
        figures[chunk] = {**{k: (r["rate"], r.ci_low, r.ci_high) for k, r in rates.iterrows()},
                          **{k: (m["mean"], m.ci_low, m.ci_high) for k, m in means.iterrows()}}
    assert figures[0].keys() == figures[1024].keys() and "notes_kept_truth" in figures[0]
    apart = {k: (a, figures[1024][k]) for k, a in figures[0].items()
             if not (a[1] <= figures[1024][k][2] and figures[1024][k][1] <= a[2])}
    assert not apart, apart

"""Recordings with no paired rendering: MusicNet label files, pitch-estimated notes of a
monophonic recording, and the criteria on known cases (a perfect translation, a copy,
noise, the target instrument playing other notes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_evaluate import SR, classifier, data, melody, render, thresholds, write_smoke_study  # noqa: F401 - module fixtures

from umt_core import recordings as rc
from umt_core.__main__ import main
from umt_core.calibration import Thresholds
from umt_core.content import segment_starts
from umt_core.signals import cut

pytestmark = pytest.mark.usefixtures("one_thread")
SECONDS = 8.0


def _events(work: int, seconds: float = SECONDS) -> np.ndarray:
    return np.asarray([[0, m, t, t + d] for t, d, m in melody(work, seconds)], dtype=float)


def test_musicnet_labels_become_events_in_seconds(tmp_path):
    path = tmp_path / "1759.csv"
    path.write_text("start_time,end_time,instrument,note,start_beat,end_beat,note_value\n"
                    "9182,90078,43,53,4.0,1.5,Dotted Quarter\n"
                    "44100,88200,1,60,5.0,1.0,Quarter\n")
    ev = rc.musicnet_events(path)
    assert ev.shape == (2, 4) and ev[1].tolist() == [1, 60, 1.0, 2.0]
    assert ev[0, 2] == pytest.approx(9182 / 44100)
    for text, says in [("a,b\n1,2\n", "needs columns"),
                       ("start_time,end_time,instrument,note\n10,5,1,60\n", "ends"),
                       ("start_time,end_time,instrument,note\n1,x,1,60\n", "line 2")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=says):
            rc.musicnet_events(path)
    with pytest.raises(FileNotFoundError, match="no such label file"):
        rc.musicnet_events(tmp_path / "missing.csv")


def test_pitch_estimate_finds_the_pitch_classes_of_a_monophonic_melody():
    audio = render(40, "flute", SECONDS)
    found = rc.pitch_events(audio, SR)
    truth = _events(40)
    t = np.arange(0.1, SECONDS - 0.1, 0.01)

    def at(ev, x):
        hit = ev[(ev[:, 2] <= x) & (ev[:, 3] > x)]
        return int(hit[0, 1]) if len(hit) else None

    edges = np.concatenate([truth[:, 2], truth[:, 3]])
    t = t[np.abs(t[:, None] - edges[None]).min(axis=1) > 0.06]  # a frame's lag at note changes
    pairs = [(at(truth, x), at(found, x)) for x in t]
    voiced = [(a, b) for a, b in pairs if a is not None and b is not None]
    assert len(voiced) > 0.8 * len(t)
    # pitch classes, which notes kept measures (pYIN's rare octave errors do not count)
    assert np.mean([a % 12 == b % 12 for a, b in voiced]) > 0.9


def test_the_criteria_pass_a_perfect_translation_and_fail_copies_noise_and_other_notes(
        classifier, thresholds):  # noqa: F811 - pytest fixtures
    """A "real recording": a flute (not a domain of the model) playing a melody. The
    perfect translation is the cello playing the same melody."""
    rec = rc.Recording("flute40", render(40, "flute", SECONDS), _events(40))
    cello = [render(w, "cello", 2.0) for w in (30, 31)]

    starts = {}

    def remember(audio, target):  # the perfect translation, by the clip's known start
        return cut(render(40, target, SECONDS), starts[audio.tobytes()], len(audio))

    for s in segment_starts(rec.audio, SR, 1.5, 4):
        starts[cut(rec.audio, s, round(1.5 * SR)).tobytes()] = s
    df = rc.evaluate_recordings([rec], remember, targets=["cello"], classifier=classifier,
                                thresholds=Thresholds(**thresholds["values"]),
                                target_clips={"cello": cello}, sample_rate=SR, segments=4,
                                seconds=1.5)
    summary = rc.summarize(df)
    assert set(summary) == set(rc.CONDITIONS)
    ours = summary["translation"]
    assert ours["instrument"]["rate"] == 1.0 and ours["notes"]["rate"] >= 0.75, ours
    assert ours["notes_kept"]["mean"] > 0.6
    assert summary["source"]["instrument"]["rate"] == 0.0  # a copy of the flute
    assert summary["source"]["notes"]["rate"] >= 0.75  # carries its own notes
    assert summary["source_snr5"]["clean"]["rate"] == 0.0
    assert summary["target_unrelated"]["notes"]["rate"] <= 0.25  # other notes
    assert summary["target_unrelated"]["instrument"]["rate"] == 1.0
    assert "dist_target" not in df.columns  # no target rendering to be close to


def test_a_recording_too_short_or_without_notes_is_refused():
    with pytest.raises(ValueError, match="no notes"):
        rc.recording_clips(rc.Recording("x", np.ones(SR, np.float32), np.zeros((0, 4))), SR,
                           [np.zeros(SR, np.float32)])
    with pytest.raises(ValueError, match="fewer than two clips"):
        rc.recording_clips(rc.Recording("x", render(40, "flute", 2.0), _events(40, 2.0)), SR,
                           [np.zeros(SR, np.float32)], seconds=2.0)


def test_evaluate_recording_command_with_a_pitch_estimate(tmp_path, smoke_config, monkeypatch):
    import soundfile as sf

    monkeypatch.delenv("UMT_ROOT", raising=False)
    manifest, ckpt = write_smoke_study(tmp_path, smoke_config, ["piano", "cello"])
    wav = tmp_path / "melody.wav"
    sf.write(wav, render(41, "flute", 4.0), SR)
    out = tmp_path / "rec.json"
    assert main(["evaluate-recording", "--checkpoint", str(ckpt), "--manifest", str(manifest),
                 "--audio", str(wav), "--pitch", "--segments", "2", "--seconds", "0.5",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["notes_from"] == "pYIN pitch estimate"
    assert result["thresholds"]["chosen_on"] == "val"
    assert set(result["summary"]) == set(rc.CONDITIONS)
    assert {c["target"] for c in result["clips"]} == {"piano", "cello"}
    assert main(["evaluate-recording", "--checkpoint", str(ckpt), "--manifest", str(manifest),
                 "--audio", str(wav), "--labels", "a.csv", "b.csv", "--json", str(out)]) == 2


def test_generalisation_command_judges_each_seed_on_both_unheard_inputs(tmp_path, smoke_config,
                                                                       monkeypatch):
    """Two "seeds" (the same untrained model twice) on the other soundfont's test works and
    on music21's real recording: the tables, the spread column and the players."""
    import shutil

    import soundfile as sf

    monkeypatch.delenv("UMT_ROOT", raising=False)
    manifest, ckpt = write_smoke_study(tmp_path, smoke_config, ["piano", "cello"])
    for d in ("piano", "cello"):
        alt = tmp_path / "data" / "synth" / d / "test_alt"
        alt.mkdir()
        for w in sorted((tmp_path / "data" / "synth" / d / "test").glob("*.wav")):
            a, sr = sf.read(w, dtype="float32")
            sf.write(alt / w.name, np.tanh(3 * a) / 3, sr)  # another "synthesiser"
    second = tmp_path / "runs" / "seed2" / "checkpoints"
    second.mkdir(parents=True)
    shutil.copy(ckpt, second / "best.pt")
    out = tmp_path / "gen"
    assert main(["generalisation", "--checkpoints", str(ckpt), str(second / "best.pt"),
                 "--manifest", str(manifest), "--segments", "2", "--seconds", "0.5",
                 "--out", str(out)]) == 0
    result = json.loads((out / "generalisation.json").read_text())
    assert result["recording"] == "test_audio.wav" and len(result["results"]) == 2
    one = next(iter(result["results"].values()))
    assert set(one["other_soundfont"]) >= {"translation", "ground_truth", "source"}
    assert set(one["recording"]) == set(rc.CONDITIONS)
    md = (out / "README.md").read_text()
    assert "TimGM6mb" in md and "test_audio.wav" in md and " ± " in md
    assert sorted(p.name for p in (out / "examples" / "seed2").glob("*.wav")) == [
        "test_audio_source.wav", "test_audio_to_cello.wav", "test_audio_to_piano.wav"]
    assert (out / "index.html").read_text().count("<audio") == 6

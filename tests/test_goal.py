"""The study's CPU goal and the round-trip ceiling, both readings of the calibrated
evaluation: on the synthetic paired dataset of test_evaluate, a perfect model meets every
bar, a copy of the source and noisy output do not, an evaluation of the wrong split is
refused, and a representation that keeps pitch scores above one that does not."""

from __future__ import annotations

import json

import pytest
from test_evaluate import (
    SECONDS,
    SPLITS,
    _copy_translator,
    _noise_translator,
    _oracle,
    classifier,
    data,
    thresholds,
    write_smoke_study,
)

from umt_core import evaluate as ev
from umt_core.__main__ import main
from umt_core.study.goal import GOAL, goal_check
from umt_core.study.round_trip import Representation, ceiling_table, round_trip_ceiling

pytestmark = pytest.mark.usefixtures("one_thread")
__all__ = ["classifier", "data", "thresholds"]  # module fixtures, used by name

FAST = {"seconds_of_audio": 10.0, "wall": 2.5, "cpu": 0.6, "threads": 1}


def _evaluate(data, classifier, thresholds, translator, split="test"):
    return ev.evaluate(None, data, split=split, sources=["piano"], targets=["cello"],
                       segments=2, seconds=SECONDS / 2, classifier=classifier,
                       thresholds=thresholds, translator=translator)


def test_a_perfect_model_meets_every_bar(data, classifier, thresholds):
    result = goal_check(_evaluate(data, classifier, thresholds, _oracle(SPLITS["test"][1])), FAST)
    assert all(result[c]["passed"] for c in GOAL), {c: result[c]["value"] for c in GOAL}
    assert result["notes_kept"]["against"] == "ground truth"  # a folder dataset has no score
    assert result["notes_kept"]["value"] > 0.9
    assert result["translate_10s"]["passed"] and not result["translate_10s"]["passed_wall"]
    assert result["clips"] == 4 * 2 and result["works"] == 4
    assert result["split"] == "test" and result["thresholds"]["chosen_on"] == "val"
    assert set(result["calibration"]["clean"]) >= {"translation", "ground_truth", "shaped_noise"}


def test_a_copy_of_the_source_and_noisy_output_fail_their_criteria(data, classifier, thresholds):
    copy = goal_check(_evaluate(data, classifier, thresholds, _copy_translator))
    assert copy["notes_kept"]["passed"] and copy["clean"]["passed"]  # its notes are right
    assert copy["instrument"]["value"] == 0.0 and copy["closer_to_target"]["value"] == 0.0
    assert not copy["success"]["passed"] and 0 < copy["instrument"]["ci_high"] < 0.6
    noise = goal_check(_evaluate(data, classifier, thresholds, _noise_translator))
    assert not noise["clean"]["passed"] and not noise["success"]["passed"]
    assert noise["instrument"]["passed"]  # the classifier alone would be fooled


def test_the_goal_is_judged_on_test_works_only(data, classifier, thresholds):
    val = _evaluate(data, classifier, thresholds, _copy_translator, split="val")
    with pytest.raises(ValueError, match="judged on the test works"):
        goal_check(val)
    calibration_only = ev.evaluate(None, data, sources=["piano"], targets=["cello"], segments=1,
                                   seconds=SECONDS / 2, classifier=classifier,
                                   thresholds=thresholds)
    with pytest.raises(ValueError, match="no translation rows"):
        goal_check(calibration_only)


def test_goal_command_on_a_spectral_model(tmp_path, monkeypatch, capsys):
    """`python -m umt_core goal` evaluates a (untrained) spectral model on the test works
    with val thresholds and writes every criterion with its bar."""
    from umt_core.config import preset

    monkeypatch.delenv("UMT_ROOT", raising=False)
    cfg = preset("smoke", {"model.decoder": "spectral", "model.spectral_n_fft": 256,
                           "model.spectral_hop": 64, "model.spectral_griffin_lim_iters": 4})
    manifest, ckpt = write_smoke_study(tmp_path, cfg, ["piano", "cello"])
    out = tmp_path / "goal.json"
    assert main(["goal", "--checkpoint", str(ckpt), "--manifest", str(manifest),
                 "--segments", "1", "--seconds", "0.5", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["decoder"] == "spectral" and result["split"] == "test"
    assert result["thresholds"]["chosen_on"] == "val"
    assert result["clips"] == 2 * 4  # both directions, 4 test works, one clip each
    for crit, bar in GOAL.items():
        assert result[crit]["bar"] == bar and result[crit]["ci_low"] <= result[crit]["value"]
    assert not result["success"]["passed"]  # an untrained model does not translate
    assert "notes_kept" in capsys.readouterr().out


# ------------------------------------------------------------------ round-trip ceiling
def test_representations_parse_and_bad_ones_are_named():
    assert Representation.parse("stft:512:128") == Representation("stft", 512, 128)
    assert Representation.parse("mel:1024:256:32").n_mels == 32
    assert Representation.parse("stft").n_fft == 1024
    for bad, says in [("cqt:1024", "write stft"), ("stft:1024:x", "whole numbers"),
                      ("stft:256:512", "exceeds n_fft"), ("mel:0:1:2", "positive")]:
        with pytest.raises(ValueError, match=says):
            Representation.parse(bad)


def test_the_ceiling_separates_a_pitch_keeping_representation_from_coarse_bands(data):
    """A fine STFT round trip keeps the notes and sounds like the target; 8 mel bands
    lose the pitch: the ceiling is a measure that can fail."""
    fine, coarse = Representation("stft", 1024, 256), Representation("mel", 1024, 256, 8)
    evaluations = round_trip_ceiling(data, [fine, coarse], domains=["piano", "cello"],
                                     segments=1, seconds=SECONDS / 2, works=4, n_iter=16)
    rows = {r["representation"]: r for r in ceiling_table(evaluations)}
    f, c = rows[fine.name], rows[coarse.name]
    assert f["notes_kept"]["against"] == "ground truth"  # a folder dataset has no score
    assert f["notes_kept"]["mean"] > 0.8, f
    assert f["notes_kept"]["mean"] - c["notes_kept"]["mean"] > 0.3, (f, c)
    assert f["instrument"]["rate"] >= 0.75 and f["instrument"]["n"] == 8


def test_round_trip_command_writes_the_table(tmp_path, monkeypatch, capsys):
    from umt_core.config import preset

    monkeypatch.delenv("UMT_ROOT", raising=False)
    manifest, _ = write_smoke_study(tmp_path, preset("smoke"), ["piano", "cello"])
    out = tmp_path / "rt.json"
    assert main(["round-trip", "--manifest", str(manifest), "--representation", "stft:512:128",
                 "--works", "2", "--segments", "1", "--seconds", "0.5", "--iterations", "8",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["representation"] for r in result["ceiling"]] == ["stft n_fft 512, hop 128"]
    assert result["thresholds"]["chosen_on"] == "val"
    assert "notes kept" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["round-trip", "--manifest", str(manifest), "--representation", "cqt",
              "--json", str(out)])


# ------------------------------------------------------------------ generalisation split
def test_the_other_soundfonts_test_works_are_judged_with_val_thresholds(tmp_path):
    """Split test_alt: the test works rendered by another synthesiser (here: the same
    notes an octave's worth of harmonics brighter), each with its own paired truth."""
    import numpy as np
    import soundfile as sf
    from test_evaluate import SR, render, write_dataset

    root = write_dataset(tmp_path, ("piano", "cello"))
    for d in ("piano", "cello"):
        (root / d / "test_alt").mkdir()
        for w in SPLITS["test"][0]:
            a = render(w, d, SPLITS["test"][1])
            bright = np.clip(a + 0.3 * np.sign(a) * a ** 2, -1, 1).astype(np.float32)
            sf.write(root / d / "test_alt" / f"work{w:02d}.wav", bright, SR, subtype="PCM_16")
    data = ev.EvalData.from_folder(root, SR, ["piano", "cello"])
    assert len(data.split("test_alt")["cello"]) == 4
    result = ev.evaluate(None, data, split="test_alt", sources=["piano"], targets=["cello"],
                         segments=1, seconds=SECONDS / 2, translator=_copy_translator)
    assert result.settings["split"] == "test_alt" and result.thresholds["chosen_on"] == "val"
    copied = result.clips[result.clips.condition == "translation"]
    assert len(copied) == 4 and not copied.instrument.any()  # a copy of piano is not cello
    with pytest.raises(ValueError, match="split must be one of"):
        ev.evaluate(None, data, split="train", translator=_copy_translator)

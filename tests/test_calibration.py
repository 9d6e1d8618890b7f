"""Calibration rows: every criterion shown passing and failing on cases whose answer is
known, with two synthetic instruments playing known note lists."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_content import SR, chorale, synth

from umt_core import calibration as cb
from umt_core.audio import save_audio
from umt_core.evaluate import EvalData

# Two instruments with energy up to Nyquist, as real ones have: a bright, fast-decaying
# "source" and a dull, sustained "target".
BRIGHT = {"harmonics": tuple(1 / h for h in range(1, 25)), "decay": 4.0}
DULL = {"harmonics": tuple(1 / h ** 2.5 for h in range(1, 25)), "decay": 0.3}


@pytest.fixture(scope="module")
def classifier():
    train = {"bright": [synth(chorale(100 + i), **BRIGHT) for i in range(4)],
             "dull": [synth(chorale(200 + i), **DULL) for i in range(4)]}
    return cb.domain_classifier(train, SR, ["bright", "dull"], windows_per_domain=40)


@pytest.fixture(scope="module")
def signals(classifier):
    rng = np.random.default_rng(0)
    spectrum = cb.average_spectrum([synth(chorale(300 + i), **DULL) for i in range(3)])
    works = {w: chorale(10 + w) for w in range(4)}
    records = []
    for w, events in works.items():
        gt, src = synth(events, **DULL)[:2 * SR], synth(events, **BRIGHT)[:2 * SR]
        others = [works[(w + k) % 4] for k in (1, 2)]
        unrelated = [synth(o, **DULL)[:2 * SR] for o in others]
        rows = cb.calibration_rows(gt, src, unrelated[0], target_spectrum=spectrum, rng=rng)
        assert set(rows) == set(cb.ROWS) and all(len(a) == len(gt) for a in rows.values())
        for name, cand in rows.items():
            sig = cb.clip_signals(cand, SR, classifier=classifier, target="dull", source=src,
                                  ground_truth=gt, start=0.0, events=events,
                                  wrong_events=others, unrelated=unrelated)
            records.append({"row": name, "work": f"w{w}", **sig})
    return pd.DataFrame(records)


def test_white_noise_has_the_asked_snr():
    rng = np.random.default_rng(1)
    clean = synth(chorale(5))
    noisy = cb.white_noise_at_snr(clean, 5.0, rng)
    snr = 10 * np.log10(np.mean(clean.astype(float) ** 2) / np.mean((noisy - clean).astype(float) ** 2))
    assert snr == pytest.approx(5.0, abs=0.2)
    with pytest.raises(ValueError, match="silent"):
        cb.white_noise_at_snr(np.zeros(100), 5.0, rng)


def test_envelope_rows_follow_the_source_loudness():
    rng = np.random.default_rng(2)
    gt = synth(chorale(6), **DULL)[:2 * SR]
    src = np.zeros_like(gt)
    src[:SR // 2] = 0.5 * np.sin(np.arange(SR // 2) * 0.2)  # loud only in the first 0.5 s
    spectrum = cb.average_spectrum([gt])
    for audio in (cb.with_envelope(gt, src), cb.shaped_noise(spectrum, src, rng)):
        env = cb.loudness_envelope(audio)
        assert env[SR:].max() < 0.1 * env[:SR // 2].max()


def test_classifier_knows_only_the_models_domains_and_says_its_chance(classifier):
    assert classifier.domains == ["bright", "dull"]
    assert classifier.report["chance"] == 0.5
    with pytest.raises(ValueError, match="no training audio"):
        cb.domain_classifier({"bright": [np.zeros(SR)]}, SR, ["bright", "dull"])


def test_chosen_thresholds_pass_and_fail_the_right_rows(signals):
    th, report = cb.choose_thresholds(signals)
    assert all(r["separates"] for r in report.values()), {k: r["separates"] for k, r in report.items()}
    table = cb.pass_table(cb.pass_rates(signals, th))
    for row in ("ground_truth", "gt_snr20"):
        assert table.loc["instrument", row] == 1 and table.loc["clean", row] == 1
        assert table.loc["notes", row] == 1
    for row in ("gt_snr5", "shaped_noise"):
        assert table.loc["clean", row] == 0 and table.loc["success", row] == 0
    assert table.loc["instrument", "source"] == 0 and table.loc["success", "source"] == 0
    assert table.loc["notes", "unrelated"] == 0 and table.loc["success", "unrelated"] == 0
    assert table.loc["notes", "source"] == 1  # a copy keeps the notes: target fails it
    assert table.loc["success", "ground_truth"] == 1
    # The old noise flag (flatness above 0.3) calls 5 dB noise music: it never fires.
    assert table.loc["old_not_noise", "gt_snr5"] == 1


def test_rates_carry_wilson_intervals(signals):
    rates = cb.pass_rates(signals, cb.Thresholds())
    gt = rates[(rates.row == "ground_truth") & (rates.criterion == "notes")].iloc[0]
    assert gt.n == 4 and gt.ci_low < gt.rate <= gt.ci_high


def test_thresholds_that_cannot_separate_say_so(signals):
    broken = signals.copy()
    broken.loc[broken.row == "source", "target_prob"] = 1.0  # a classifier fooled by the copy
    _th, report = cb.choose_thresholds(broken)
    assert report["target_prob"]["separates"] is False
    with pytest.raises(ValueError, match="gt_snr5"):
        cb.choose_thresholds(signals[signals.row != "gt_snr5"])


def test_a_tolerance_keeps_one_odd_clip_from_setting_the_threshold(signals):
    odd = signals.copy()
    first_unrelated = odd.index[odd.row == "unrelated"][0]
    odd.loc[first_unrelated, "notes_kept_score"] = 0.97  # another work that shares the chords
    strict, report = cb.choose_thresholds(odd)
    assert strict.notes_kept > 0.97 and report["notes_kept"]["separates"]
    tolerant, _ = cb.choose_thresholds(odd, tolerance=0.25)  # 1 of 4 unrelated clips
    assert tolerant.notes_kept < 0.8
    with pytest.raises(ValueError, match="tolerance"):
        cb.choose_thresholds(odd, tolerance=0.5)


def test_calibration_signals_spread_segments_over_paired_works(tmp_path, classifier):
    for w in range(3):
        events = chorale(40 + w, seconds=8.0)
        for domain, timbre, split in (("bright", BRIGHT, "test"), ("dull", DULL, "test")):
            save_audio(tmp_path / domain / split / f"work{w}.wav", synth(events, 8.0, **timbre), SR)
        save_audio(tmp_path / "dull" / "train" / f"train{w}.wav",
                   synth(chorale(60 + w, 8.0), 8.0, **DULL), SR)
    data = EvalData.from_folder(tmp_path, SR, ["bright", "dull"])
    calls = []

    def copy_source(clip):  # a "model" that returns its input: scored as the source row
        calls.append(len(clip))
        return clip

    df = cb.calibration_signals(data, "bright", "dull", classifier, segments=3, seconds=1.0,
                                translate=copy_source)
    assert len(df) == 3 * 3 * (len(cb.ROWS) + 1) and calls == [SR] * 9
    signals = ["target_prob", "noise_flatness", "dist_source", "notes_kept_truth"]
    pd.testing.assert_frame_equal(df[df.row == "translation"][signals].reset_index(drop=True),
                                  df[df.row == "source"][signals].reset_index(drop=True))
    starts = df[df.row == "ground_truth"].groupby("work").start.apply(sorted)
    assert all(s[-1] - s[0] > 4.0 for s in starts)  # not only the start of a work
    assert df.notes_kept_score.isna().all() and df.notes_kept_truth.notna().all()
    with pytest.raises(ValueError, match="'nothing' is not a domain"):
        cb.calibration_signals(data, "bright", "nothing", classifier)

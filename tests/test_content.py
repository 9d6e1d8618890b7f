"""Notes kept: CQT chroma against the score and the ground truth, on audio whose notes
are known (harmonic tones synthesised from note lists)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from umt_core import content as ct

SR = 8000


def chorale(seed: int, seconds: float = 4.0, step: float = 0.5) -> np.ndarray:
    """A random four-voice note list: (N, 4) [channel, pitch, start, end]."""
    rng = np.random.default_rng(seed)
    rows = []
    for voice, (lo, hi) in enumerate([(40, 52), (50, 60), (57, 67), (62, 74)]):
        for k in range(int(seconds / step)):
            rows.append([voice, rng.integers(lo, hi), k * step, (k + 1) * step])
    return np.array(rows, dtype=float)


def synth(events: np.ndarray, seconds: float = 4.0, harmonics=(1.0, 0.5, 0.3, 0.2),
          decay: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    out = np.zeros_like(t)
    for _, pitch, start, end in events:
        f0 = 440.0 * 2 ** ((pitch - 69) / 12)
        on = (t >= start) & (t < end)
        env = np.exp(-decay * (t - start)) * on
        for h, w in enumerate(harmonics, 1):
            if h * f0 < SR / 2:
                out += w * env * np.sin(2 * np.pi * h * f0 * t)
    return (0.7 * out / np.abs(out).max()).astype(np.float32)


def test_score_chroma_marks_the_sounding_pitch_classes():
    events = np.array([[0, 60, 0.0, 0.5], [1, 64, 0.25, 1.0], [2, 72, 0.5, 1.0]])  # C4, E4, C5
    S = ct.score_chroma(events, start=0.0, n_frames=31, sample_rate=SR)
    t = np.arange(31) * ct.CQT_HOP / SR
    assert S.shape == (12, 31)
    assert (S[0] == (t < 1.0)).all()  # C sounds throughout (C4, then C5)
    assert (S[4] == ((t >= 0.25) & (t < 1.0))).all()
    assert S[[1, 2, 3, 5, 6, 7, 8, 9, 10, 11]].sum() == 0
    # A clip starting later sees the same notes shifted.
    later = ct.score_chroma(events, start=0.512, n_frames=10, sample_rate=SR)
    assert (later[4] == 1).all() and (later[0] == 1).all()


def test_notes_kept_separates_right_notes_wrong_notes_and_noise():
    right, wrong1, wrong2 = chorale(1), chorale(2), chorale(3)
    truth = synth(right)  # the "real rendering"
    other_timbre = synth(right, harmonics=(1.0, 0.1), decay=0.5)  # same notes, another sound
    wrong_audio = synth(wrong1)
    noise = np.random.default_rng(0).normal(0, 0.2, len(truth)).astype(np.float32)
    kw = {"start": 0.0, "events": right, "wrong_events": [wrong1, wrong2],
          "ground_truth": truth, "unrelated": [synth(wrong2)]}
    gt = ct.content_signals(truth, SR, **kw)
    assert gt["notes_kept_score"] == pytest.approx(1.0) and gt["notes_kept_truth"] == pytest.approx(1.0)
    assert gt["score_truth"] > 0.6 and gt["score_wrong_notes"] < 0.4
    same = ct.content_signals(other_timbre, SR, **kw)
    assert same["notes_kept_score"] > 0.7 and same["notes_kept_truth"] > 0.5
    bad = ct.content_signals(wrong_audio, SR, **kw)
    assert abs(bad["notes_kept_score"]) < 0.35 and bad["notes_kept_truth"] < 0.35
    hiss = ct.content_signals(noise, SR, **kw)
    assert hiss["notes_kept_score"] < 0.25
    assert same["notes_kept_score"] > bad["notes_kept_score"] + 0.5


def test_notes_kept_formula_and_degenerate_anchors():
    assert ct.notes_kept(0.5, 0.8, 0.2) == pytest.approx(0.5)
    assert ct.notes_kept(0.1, 0.8, 0.2) < 0  # worse than wrong notes
    assert np.isnan(ct.notes_kept(0.5, 0.2, 0.2))  # anchors do not separate
    assert np.isnan(ct.notes_kept(float("nan"), 0.8, 0.2))


def test_segments_spread_over_the_whole_work():
    audio = np.zeros(30 * SR, dtype=np.float32)
    audio[3 * SR:27 * SR] = 0.5 * np.sin(np.arange(24 * SR) * 0.3)  # music from 3 s to 27 s
    starts = ct.segment_starts(audio, SR, 2.0, 4)
    assert len(starts) == 4
    assert starts[0] == pytest.approx(3 * SR, abs=2)
    assert starts[-1] + 2 * SR == pytest.approx(27 * SR, abs=2)
    assert all(b - a >= 2 * SR for a, b in itertools.pairwise(starts))  # no overlap
    short = ct.segment_starts(audio[:int(4.5 * SR)], SR, 2.0, 4)  # room for one
    assert len(short) == 1 and short[0] == pytest.approx(3 * SR, abs=2)
    with pytest.raises(ValueError, match="count"):
        ct.segment_starts(audio, SR, 2.0, 0)


def test_score_notes_follow_the_lock_and_refuse_a_mismatched_rendering(tmp_path):
    notes = {"parts": [[[60, 0.0, 1.0], [62, 1.0, 1.0]], [[48, 0.0, 2.0]]], "quarters": 2.0,
             "repeats_expanded": True}
    (tmp_path / "bwv1.json").write_text(json.dumps(notes))
    params = {"source": {"tempo_qpm": 60.0, "min_note_seconds": 0.02, "excerpt_seconds": None,
                         "tail_seconds": 1.0},
              "domains": [{"name": "cello", "low": 36, "high": 81, "program": 42}]}
    sn = ct.ScoreNotes(params, tmp_path)
    ev = sn.events("bwv1", "cello")
    assert sorted(ev[:, 1].astype(int) % 12) == [0, 0, 2]
    assert ev[:, 3].max() == pytest.approx(2.0)  # 2 quarters at 60 qpm
    sn.check_rendering("bwv1", "cello", 3 * SR, SR)  # 2 s of notes + 1 s tail
    with pytest.raises(ValueError, match="bwv1 .*samples"):
        sn.check_rendering("bwv1", "cello", 5 * SR, SR)
    with pytest.raises(ValueError, match="domain 'flute'"):
        sn.events("bwv1", "flute")

"""The blinded listening test: stimuli, interface, answers on disk, analysis."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from umt_core import listening as ls

SR = 8000
SYSTEMS = ["model_alpha", "ground_truth", "pretrained_beta"]
TARGETS = ["cello", "flute"]


def tone(freq: float, seconds: float = 0.2) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_stimuli(folder, systems=SYSTEMS, n_trials=None):
    stimuli = [
        ls.Stimulus(system=s, source="piano", target=tgt, clip=clip,
                    audio=tone(220 * (1 + i) + 50 * j + 10 * k))
        for i, s in enumerate(systems) for j, tgt in enumerate(TARGETS)
        for k, clip in enumerate(["work01", "work02"])
    ]
    return ls.build_stimuli(stimuli, folder, SR, key_dir=Path(folder).parent / "keys",
                            instruments=["piano", "cello", "flute"], n_trials=n_trials, seed=1)


def keys(folder):
    return Path(folder).parent / "keys"


def widget_text(widget) -> str:
    """Every piece of text a widget tree can show."""
    parts = []
    stack = [widget]
    while stack:
        w = stack.pop()
        for attr in ("description", "value", "tooltip", "placeholder", "button_style"):
            v = getattr(w, attr, None)
            if isinstance(v, str):
                parts.append(v)
        for attr in ("options", "_options_labels"):
            v = getattr(w, attr, None)
            if v:
                parts.append(repr(v))
        stack.extend(getattr(w, "children", ()) or ())
    return "\n".join(parts)


def test_stimuli_are_blinded(tmp_path):
    folder = make_stimuli(tmp_path / "stim")
    public = (folder / "trials.json").read_text()
    key = ls.load_key(folder, keys(folder))
    assert {v["system"] for v in key.values()} == set(SYSTEMS)
    for name in SYSTEMS:
        assert name not in public
        assert not any(name in p.name for p in (folder / "audio").iterdir())
    trials = json.loads(public)["trials"]
    # 3 systems x 2 targets x 2 clips: every stimulus is clip A once and clip B once.
    assert len(trials) == 12
    assert sorted(t["clip_a"] for t in trials) == sorted(key)
    assert sorted(t["clip_b"] for t in trials) == sorted(key)
    for t in trials:
        a, b = key[t["clip_a"]], key[t["clip_b"]]
        assert a["system"] != b["system"]
        assert (a["clip"], a["target"]) == (b["clip"], b["target"])


def test_interface_never_shows_condition_names(tmp_path):
    folder = make_stimuli(tmp_path / "stim")
    test = ls.ListeningTest(folder, tmp_path / "answers.csv", "p1")
    for _ in range(3):
        text = widget_text(test.widget)
        assert "Trial" in text and "Clip A" in text
        for name in SYSTEMS + ["ground", "alpha", "beta", "system"]:
            assert name not in text
        test.submit("cello", 3, "A")


def test_order_is_per_participant_and_reproducible(tmp_path):
    folder = make_stimuli(tmp_path / "stim")
    a = ls.ListeningTest(folder, tmp_path / "answers.csv", "anna")
    b = ls.ListeningTest(folder, tmp_path / "answers.csv", "ben")
    a2 = ls.ListeningTest(folder, tmp_path / "answers.csv", "anna")
    ids = [[t["trial"] for t in x.trials] for x in (a, b, a2)]
    assert ids[0] == ids[2] and ids[0] != ids[1]
    assert sorted(ids[0]) == sorted(ids[1])


def test_answers_are_on_disk_at_once_and_survive_a_restart(tmp_path):
    folder = make_stimuli(tmp_path / "stim", n_trials=6)  # whole groups of 3 comparisons
    answers = tmp_path / "answers.csv"
    test = ls.ListeningTest(folder, answers, "p7")
    first, second = test.trials[0]["trial"], test.trials[1]["trial"]
    test.submit("flute", 4, "B")
    assert ls.load_answers(answers).trial.tolist() == [first]
    test.submit("cello", 2, "A")
    del test  # the kernel dies
    again = ls.ListeningTest(folder, answers, "p7")
    assert again.position == 2
    assert again.current["trial"] == again.trials[2]["trial"]
    assert "Trial 3 of 6" in again.header.value
    df = ls.load_answers(answers)
    assert df.trial.tolist() == [first, second]
    assert (df.participant == "p7").all() and df.time.notna().all()
    assert df.mos.tolist() == [4, 2]
    # Another participant starts from the beginning, in the same file.
    assert ls.ListeningTest(folder, answers, "p8").position == 0


def test_the_submit_button_records_the_widgets_answers(tmp_path):
    folder = make_stimuli(tmp_path / "stim", n_trials=2)  # one group: 3 comparisons
    answers = tmp_path / "answers.csv"
    test = ls.ListeningTest(folder, answers, "p1")
    test.instrument.value = "cello"
    test.button.click()  # rating and preference missing
    assert not answers.exists() and "Please answer" in test.status.value
    test.mos.value = 5
    test.preference.value = "B"
    test.button.click()
    row = ls.load_answers(answers).iloc[0]
    assert (row.instrument, row.mos, row.preferred) == ("cello", 5, test.trials[0]["clip_b"])
    assert test.position == 1 and test.instrument.value is None  # the next trial is fresh
    for _ in range(2):
        test.instrument.value, test.mos.value, test.preference.value = "flute", 1, "A"
        test.button.click()
    assert test.finished and "Thank you" in test.header.value
    assert len(ls.load_answers(answers)) == 3


def _hand_made_study(tmp_path):
    """Two systems, X and Y; every trial compares them on one target (cello)."""
    folder = tmp_path / "stim"
    folder.mkdir()
    key = {"x1": {"system": "X", "source": "piano", "target": "cello", "clip": "c1"},
           "y1": {"system": "Y", "source": "piano", "target": "cello", "clip": "c1"}}
    trials = [{"trial": f"t{i}", "clip_a": "x1" if i < 4 else "y1",
               "clip_b": "y1" if i < 4 else "x1"} for i in range(6)]
    public = {"instruments": ["piano", "cello", "flute", "harpsichord"], "sample_rate": SR,
              "trials": trials}
    public["stimuli_sha256"] = digest = ls._stimuli_hash(folder, public)
    (folder / "trials.json").write_text(json.dumps(public))
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / f"{digest}.json").write_text(json.dumps({"seed": 0, "stimuli": key}))
    # X is clip A in t0-t3 (3 of 4 identified, ratings 4 5 3 4), Y in t4-t5 (0 of 2,
    # ratings 2 2). X is preferred in 5 of the 6 comparisons.
    rows = [("t0", "cello", 4, "x1"), ("t1", "cello", 5, "x1"), ("t2", "piano", 3, "y1"),
            ("t3", "cello", 4, "x1"), ("t4", "piano", 2, "x1"), ("t5", "flute", 2, "x1")]
    answers = tmp_path / "answers.csv"
    for trial, inst, mos, pref in rows:
        t = next(x for x in trials if x["trial"] == trial)
        ls.append_answer(answers, {"participant": "p1", "stimuli": digest, "trial": trial,
                                   "position": 0,
                                   "clip_a": t["clip_a"], "clip_b": t["clip_b"],
                                   "instrument": inst, "mos": mos, "preferred": pref,
                                   "time": "2024-01-01T00:00:00+00:00"})
    return folder, answers


def wilson(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_statistics_match_hand_computed_values(tmp_path):
    folder, answers = _hand_made_study(tmp_path)
    res = ls.analyse(answers, folder, keys(folder))
    ident = res.identification.set_index("system")
    assert ident.loc["X", "n"] == 4 and ident.loc["X", "correct"] == 3
    assert ident.loc["X", "accuracy"] == 0.75 and ident.loc["Y", "accuracy"] == 0.0
    lo, hi = wilson(3, 4)
    assert ident.loc["X", "ci_low"] == pytest.approx(lo) and ident.loc["X", "ci_high"] == pytest.approx(hi)
    assert ident.loc["Y", "ci_low"] == pytest.approx(0.0, abs=1e-12)
    assert ident.loc["Y", "ci_high"] == pytest.approx(wilson(0, 2)[1])
    assert ident.loc["X", "chance"] == 0.25

    mos = res.mos.set_index("system")
    assert mos.loc["X", "mean"] == 4.0 and mos.loc["Y", "mean"] == 2.0
    sd = math.sqrt(2 / 3)
    half = 3.182446305284263 * sd / 2  # t(0.975, 3) * sd / sqrt(4)
    assert mos.loc["X", "std"] == pytest.approx(sd)
    assert (mos.loc["X", "ci_low"], mos.loc["X", "ci_high"]) == pytest.approx((4 - half, 4 + half))
    assert math.isnan(mos.loc["Y", "ci_low"]) is False  # two equal ratings: a zero-width CI
    assert mos.loc["Y", "ci_low"] == pytest.approx(2.0)

    pref = res.preference.iloc[0]
    assert (pref.system_1, pref.system_2, pref.n, pref.wins_1) == ("X", "Y", 6, 5)
    assert pref.p_value == pytest.approx(2 * (6 + 1) / 64)  # two-sided sign test
    by = res.preference_by_system.set_index("system")
    assert by.loc["X", "wins"] == 5 and by.loc["Y", "wins"] == 1
    assert not res.demo


def test_a_repeated_answer_counts_once(tmp_path):
    _folder, answers = _hand_made_study(tmp_path)
    ls.append_answer(answers, {"participant": "p1", "trial": "t0", "position": 0,
                               "clip_a": "x1", "clip_b": "y1", "instrument": "piano",
                               "mos": 1, "preferred": "y1", "time": "2024-01-01T00:01:00+00:00"})
    df = ls.load_answers(answers)
    assert len(df) == 6 and df.set_index("trial").loc["t0", "mos"] == 1


def test_demo_answers_are_labelled_and_analysable(tmp_path):
    folder = make_stimuli(tmp_path / "stim")
    path = ls.demo_answers(folder, tmp_path / "demo_answers.csv", keys(folder), participants=3,
                           quality={"model_alpha": 0.3})
    df = ls.load_answers(path)
    assert len(df) == 3 * 12 and df.participant.str.startswith("DEMO").all()
    res = ls.analyse(path, folder, keys(folder))
    assert res.demo
    assert set(res.identification.system) == set(SYSTEMS)
    figures = res.key_figures()
    assert figures["listening_demo"] is True
    assert all(k.startswith("demo_") for k in figures if k != "listening_demo")
    ident = res.identification.set_index("system")
    assert ident.loc["ground_truth", "accuracy"] > ident.loc["model_alpha", "accuracy"]


def test_a_foreign_csv_is_refused(tmp_path):
    bad = tmp_path / "answers.csv"
    pd.DataFrame({"a": [1]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="not a listening-test answers file"):
        ls.append_answer(bad, {"participant": "p"})


def test_ids_are_random_per_build_and_no_key_lies_beside_the_stimuli(tmp_path):
    a = make_stimuli(tmp_path / "a" / "stim")
    b = make_stimuli(tmp_path / "b" / "stim")  # same stimuli, same seed
    ids = lambda f: {p.stem for p in (f / "audio").iterdir()}
    assert not ids(a) & ids(b)
    assert not list(a.rglob("key*")) and "system" not in (a / "trials.json").read_text()
    assert len(ls.load_key(a, keys(a))) == 12


def test_every_comparison_is_heard_in_both_orders(tmp_path):
    folder = make_stimuli(tmp_path / "stim", n_trials=5)
    key = ls.load_key(folder, keys(folder))
    trials = ls.load_trials(folder)["trials"]
    pairs = [(key[t["clip_a"]]["system"], key[t["clip_b"]]["system"], key[t["clip_a"]]["clip"],
              key[t["clip_a"]]["target"]) for t in trials]
    assert 0 < len(trials) <= 5
    for a, b, clip, tgt in pairs:
        assert sum(1 for p in pairs if p[2:] == (clip, tgt) and p[0] == a) == 1
    firsts = [p[0] for p in pairs]
    assert len({firsts.count(s) for s in set(firsts)}) == 1  # each system clip A equally often


def test_answers_are_never_attributed_to_rebuilt_stimuli(tmp_path):
    folder = make_stimuli(tmp_path / "stim")
    answers = tmp_path / "answers.csv"
    test = ls.ListeningTest(folder, answers, "p1")
    test.submit("cello", 4, "A")
    rated = ls.load_trials(folder)
    # A rebuild beside those answers refuses, naming them...
    with pytest.raises(ValueError, match="already rated .*1 answers in"):
        ls.build_stimuli([ls.Stimulus("other", "piano", "cello", "w", tone(300))], folder, SR,
                         key_dir=keys(folder), answers_files=[answers])
    # ... or keeps the rated stimuli untouched.
    kept = ls.build_stimuli([ls.Stimulus("other", "piano", "cello", "w", tone(300))], folder, SR,
                            key_dir=keys(folder), answers_files=[answers], keep_rated=True)
    assert ls.load_trials(kept) == rated
    assert len(ls.analyse(answers, folder, keys(folder)).answers) == 1
    # Stimuli rebuilt without being told about the answers: the analysis refuses them.
    make_stimuli(folder)
    with pytest.raises(ValueError, match="rated other stimuli"):
        ls.analyse(answers, folder, keys(folder))

"""The default study's side-by-side run: the presets' studies start at the same time
with the cores shared out, their output is forwarded under their names, a failed one is
named (and the page still written), and the page shows both models' figures and the
same clips' audio and spectrograms."""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from umt_core.__main__ import main
from umt_core.study import side_by_side as sbs

FIGURES = {
    "cpu": {"cpu-best_translation_notes_kept_score": 0.12,
            "cpu-best_translation_notes_kept_score_ci_low": 0.05,
            "cpu-best_translation_notes_kept_score_ci_high": 0.2,
            "cpu-best_translation_success": 0.0, "cpu-best_translation_success_ci_low": 0.0,
            "cpu-best_translation_success_ci_high": 0.06, "latent_use_gap": 0.31},
    "cpu-spectral": {"cpu-spectral-best_translation_notes_kept_score": -0.17,
                     "cpu-spectral-best_translation_success": 0.0, "latent_use_gap": 0.01},
}


def _fake_results(root, preset, clips=("bwv1.6@2.0s_piano-to-cello",)):
    out = root / "results" / preset
    (out / "examples").mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({
        "02_train": {"steps": 100, "train_minutes": 1.0},
        "04_listening_tests": FIGURES.get(preset, {})}))
    (out / "provenance.json").write_text(json.dumps({"git": {"commit": "abc123", "dirty": False},
                                                     "status": "ok"}))
    t = np.arange(8000) / 8000
    for i, clip in enumerate(clips):
        for role, f in (("source", 220), ("translation", 330), ("ground_truth", 440)):
            sf.write(out / "examples" / f"{i}_{clip}_{role}.wav",
                     0.3 * np.sin(2 * np.pi * f * t), 8000)


def test_threads_are_shared_out_and_never_zero():
    assert sbs.threads_per_child(2, cores=2) == 1
    assert sbs.threads_per_child(2, cores=16) == 8
    assert sbs.threads_per_child(3, cores=2) == 1


def test_children_run_at_the_same_time_and_a_failure_is_named(tmp_path, monkeypatch):
    """Each child records when it ran and the threads it was given; "bad" exits 3."""
    script = (
        "import json, os, sys, time, pathlib\n"
        "p = sys.argv[1]; out = pathlib.Path('results') / p; out.mkdir(parents=True, exist_ok=True)\n"
        "t0 = time.time(); time.sleep(1.0)\n"
        "(out / 'ran.json').write_text(json.dumps([t0, time.time(), os.environ['OMP_NUM_THREADS']]))\n"
        "print(f'trained {p}', flush=True)\n"
        "sys.exit(3 if p.startswith('bad') else 0)\n")
    monkeypatch.setattr(sbs, "child_command", lambda preset, manifest, params, name:
                        [sys.executable, "-c", script, sbs.run_name(preset, name)])
    lines, prepared = [], []
    lock = threading.Lock()

    def log(line):
        with lock:
            lines.append(line)

    with pytest.raises(sbs.SideBySideFailed, match=r"\['bad'\].*results/bad-s2/"):
        sbs.run_side_by_side(["good", "bad"], root=tmp_path, log=log,
                             prepare=lambda: prepared.append(time.time()), cores=4, name="s2")
    ran = {p: json.loads((tmp_path / "results" / p / "ran.json").read_text())
           for p in ("good-s2", "bad-s2")}
    assert ran["good-s2"][2] == ran["bad-s2"][2] == "2"  # 4 cores, 2 children
    assert max(r[0] for r in ran.values()) < min(r[1] for r in ran.values())  # overlapped
    assert prepared and prepared[0] < min(r[0] for r in ran.values())  # data first, once
    assert "[good] trained good-s2" in lines and "[bad] trained bad-s2" in lines
    assert (tmp_path / "results" / "index-s2.html").is_file()  # written despite the failure


def test_one_preset_is_not_a_comparison(tmp_path):
    with pytest.raises(ValueError, match="two presets or more"):
        sbs.run_side_by_side(["cpu", "cpu"], root=tmp_path)


def test_the_page_shows_both_models_figures_and_the_same_clips(tmp_path):
    for p in sbs.DEFAULT_PRESETS:
        _fake_results(tmp_path, p)
    _fake_results(tmp_path, "cpu", clips=("bwv1.6@2.0s_piano-to-cello", "only@0.0s_cello-to-piano"))
    page = sbs.side_by_side_html(tmp_path, list(sbs.DEFAULT_PRESETS), wall_minutes=70.2)
    assert "0.120 [0.050, 0.200]" in page and "-0.170" in page  # notes kept, both columns
    assert "0.00 [0.00, 0.06]" in page  # a rate with its Wilson interval
    assert "not the paper's model" in page and "70.2 min" in page
    assert page.count("<audio") == 4  # one shared clip: source, truth, two translations
    assert page.count("data:image/png;base64,") == 4
    assert "only@0.0s" not in page  # a clip one model lacks is not compared
    assert '<a href="cpu-spectral/index.html">' in page


def test_the_page_says_whether_its_runs_shared_the_machine(tmp_path):
    """The budgets are minutes: the page must not call two runs made hours apart a
    side-by-side comparison. Their starts (provenance) decide; a missing run is named."""
    def started(preset, when):
        f = tmp_path / "results" / preset / "provenance.json"
        f.write_text(json.dumps({**json.loads(f.read_text()), "started": when}))

    for p in sbs.DEFAULT_PRESETS:
        _fake_results(tmp_path, p)
    started("cpu", "2026-11-30T20:54:49+00:00")
    started("cpu-spectral", "2026-11-30T20:54:52+00:00")
    page = sbs.side_by_side_html(tmp_path, list(sbs.DEFAULT_PRESETS))
    assert "trained at the same time" in page and "separate runs" not in page
    started("cpu-spectral", "2026-12-01T09:00:00+00:00")
    page = sbs.side_by_side_html(tmp_path, list(sbs.DEFAULT_PRESETS))
    assert "separate runs" in page and "trained at the same time" not in page
    assert "2026-12-01T09:00:00+00:00" in page  # each column's start is shown
    (tmp_path / "results" / "cpu-spectral" / "provenance.json").unlink()
    page = sbs.side_by_side_html(tmp_path, list(sbs.DEFAULT_PRESETS))
    assert "a preset still to run" in page and "trained at the same time" not in page


def test_the_page_says_when_there_is_nothing_to_compare(tmp_path):
    page = sbs.side_by_side_html(tmp_path, ["cpu", "cpu-spectral"])
    assert "No example clip is shared" in page and "missing" in page


def test_several_presets_refuse_options_that_name_one_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["study", "--preset", "cpu", "--preset", "cpu-spectral", "--notebooks", "04"]) == 2
    assert "drop --notebooks" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()  # refused before any work


def test_make_study_runs_the_default_presets_side_by_side():
    from conftest import REPO

    line = next(x for x in (REPO / "Makefile").read_text().splitlines() if x.startswith("PRESET ?="))
    assert tuple(line.split("=", 1)[1].split()) == sbs.DEFAULT_PRESETS


def test_summarize_rebuilds_the_page_from_results_already_there(tmp_path, monkeypatch):
    monkeypatch.delenv("UMT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    for p in sbs.DEFAULT_PRESETS:
        _fake_results(tmp_path, p)
    assert main(["study", "--preset", "cpu", "--preset", "cpu-spectral", "--summarize"]) == 0
    page = (tmp_path / "results" / "index.html").read_text()
    assert page.count("<audio") == 4 and "Wall time" not in page  # not a measured run


# ------------------------------------------------------------------ the spread over seeds
def test_seed_spread_tables_each_seed_with_its_interval_and_the_spread(tmp_path, monkeypatch):
    from umt_core.study.seeds import seed_rows

    for name, kept in (("a", 0.1), ("b", 0.3)):
        _fake_results(tmp_path, name)
        m = json.loads((tmp_path / "results" / name / "metrics.json").read_text())
        m["04_listening_tests"] = {**FIGURES["cpu"], "cpu-best_translation_notes_kept_score": kept}
        (tmp_path / "results" / name / "metrics.json").write_text(json.dumps(m))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UMT_ROOT", raising=False)
    assert main(["seeds", "results/a", "results/b", "--out", "results/ab"]) == 0
    table = json.loads((tmp_path / "results" / "ab" / "seeds.json").read_text())
    kept = table["rows"][0]
    assert kept["runs"]["results/a"]["ci_low"] == 0.05
    assert kept["spread"]["mean"] == pytest.approx(0.2) and kept["spread"]["sd"] == pytest.approx(0.1414, abs=1e-3)
    md = (tmp_path / "results" / "ab" / "README.md").read_text()
    assert "0.100 [0.050, 0.200]" in md and "0.2 ± 0.14 (0.1 to 0.3)" in md
    with pytest.raises(ValueError, match="two runs or more"):
        seed_rows([tmp_path / "results" / "a"])
    (tmp_path / "results" / "b" / "metrics.json").write_text("{}")
    assert main(["seeds", "results/a", "results/b", "--out", "results/ab"]) == 2  # no notebook 04


def test_a_named_side_by_side_runs_and_pages_under_its_name(tmp_path, monkeypatch):
    assert sbs.child_command("cpu", None, ["train.seed=3"], "seed3")[-4:] == [
        "--run", "cpu-seed3", "-p", "train.seed=3"]
    monkeypatch.delenv("UMT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    for p in sbs.DEFAULT_PRESETS:
        _fake_results(tmp_path, f"{p}-seed3")
    assert main(["study", "--preset", "cpu", "--preset", "cpu-spectral", "--run", "seed3",
                 "--summarize"]) == 0
    page = (tmp_path / "results" / "index-seed3.html").read_text()
    assert '<a href="cpu-spectral-seed3/index.html">' in page and page.count("<audio") == 4
    assert not (tmp_path / "results" / "index.html").exists()

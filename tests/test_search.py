"""The CPU translation search (experiment cpu-bottleneck): its points, how the pipeline
runs a subset of them, and the summary (table, goal, figure) built from results."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import REPO
from test_pipeline import standin_root  # noqa: F401 - fixture

from umt_core import config, data
from umt_core.__main__ import main
from umt_core.study import cpu_experiment, pipeline


def test_every_point_plans_against_the_real_notebooks_and_resolves_to_a_config():
    for name, params in cpu_experiment.variants().items():
        params = {**cpu_experiment.BASE, **params}
        manifest = params.pop("manifest")
        assert (REPO / manifest).is_file(), manifest
        plan = pipeline.plan_study("cpu", f"{cpu_experiment.NAME}/{name}", manifest, params,
                                   notebooks_dir=REPO / "notebooks",
                                   stems=("02_train", "04_listening_tests"))
        train_nb, eval_nb = plan
        cfg = config.preset("cpu", train_nb.parameters["overrides"])
        point = cpu_experiment.POINTS[name]
        assert cfg.model.latent_channels * point.sample_rate / cfg.model.pool == \
            point.numbers_per_second
        assert cfg.model.receptive_field == point.receptive_field
        assert cfg.train.max_minutes == cpu_experiment.BUDGET_MINUTES
        assert cfg.domains == list(point.domains)
        assert eval_nb.parameters["checkpoints"] == \
            [f"runs/{cpu_experiment.NAME}/{name}/checkpoints/last.pt"]
        assert data.load_manifest(REPO / manifest).sample_rate == point.sample_rate


def test_the_cpu_preset_is_the_chosen_point_of_the_search():
    """`make study` (preset cpu, its default manifest) trains exactly the setting the
    search chose, on the same data; only the time budget is the preset's own."""
    assert cpu_experiment.CHOSEN in cpu_experiment.POINTS
    params = {**cpu_experiment.BASE, **cpu_experiment.variants()[cpu_experiment.CHOSEN]}
    manifest = params.pop("manifest")
    assert pipeline.default_manifest("cpu") == manifest
    assert pipeline.default_manifest("paper") == pipeline.DEFAULT_MANIFEST
    stems = ("02_train", "04_listening_tests")
    chosen = pipeline.plan_study("cpu", "x", manifest, params,
                                 notebooks_dir=REPO / "notebooks", stems=stems)
    study = pipeline.plan_study("cpu", "cpu", pipeline.default_manifest("cpu"), {},
                                notebooks_dir=REPO / "notebooks", stems=stems)
    a = config.preset("cpu", chosen[0].parameters["overrides"]).to_dict()
    b = config.preset("cpu", study[0].parameters["overrides"]).to_dict()
    for cfg in (a, b):  # the budget and the epoch count (the budget ends training)
        cfg["train"].pop("max_minutes"), cfg["train"].pop("epochs")
    assert a == b
    assert b["domains"] == ["piano", "cello"] and b["model"]["pool"] == 64
    assert 20 <= config.preset("cpu").train.max_minutes <= 60
    assert "steps" not in study[0].parameters  # the budget, not a step count, ends it
    # the study evaluates on the same clips as the search
    for key in ("source_domains", "target_domains", "works", "segments", "seconds_per_clip"):
        assert study[1].parameters[key] == chosen[1].parameters[key]


def test_the_sweep_covers_every_knob_the_search_needs():
    pts = list(cpu_experiment.POINTS.values())
    sizes = {p.numbers_per_second for p in pts}
    assert min(sizes) <= 500 and max(sizes) >= 4000
    base = cpu_experiment.POINTS["b2000"]
    varied = {k for p in pts for k in ("confusion", "ramp_steps", "augment", "receptive_field",
                                       "corruption", "sample_rate", "domains", "seed")
              if getattr(p, k) != getattr(base, k)}
    assert varied == {"confusion", "ramp_steps", "augment", "receptive_field", "corruption",
                      "sample_rate", "domains", "seed"}
    assert set(cpu_experiment.ALL_DOMAINS) == set(data.load_manifest(REPO / cpu_experiment.MANIFEST_8K).domains)


def _fake_point(root: Path, name: str, *, chroma, target, wave=0.05, closer=0.9, success=None):
    out = root / "results" / cpu_experiment.NAME / name
    out.mkdir(parents=True)
    p = f"{name}-last"
    ev = {f"{p}_translation_chroma": chroma, f"{p}_translation_classified_as_target": target,
          f"{p}_translation_wave_corr": wave, f"{p}_translation_closer_to_target": closer,
          f"{p}_translation_success": target if success is None else success,
          f"{p}_identity_chroma": 1.0, f"{p}_identity_classified_as_target": 0.0,
          f"{p}_unrelated_chroma": 0.05, f"{p}_unrelated_classified_as_target": 1.0,
          f"{p}_ground_truth_chroma": 0.8, f"{p}_ground_truth_classified_as_target": 1.0,
          "latent_probe_accuracy": 0.6, "latent_probe_chance": 0.5, "latent_use_gap": 0.3}
    (out / "04_listening_tests.json").write_text(json.dumps(ev))
    (out / "02_train.json").write_text(json.dumps({"steps": 700, "train_minutes": 20.0}))


def test_summary_tables_every_run_found_and_marks_the_goal(tmp_path):
    _fake_point(tmp_path, "b1000", chroma=0.7, target=0.8, success=0.6)
    _fake_point(tmp_path, "b4000", chroma=0.95, target=0.1, wave=0.8)  # a copy
    _fake_point(tmp_path, "b2000", chroma=0.65, target=0.9, closer=0.5)  # wrong direction
    _fake_point(tmp_path, "b500", chroma=0.55, target=0.9)  # under 75% of the truth's 0.8
    _fake_point(tmp_path, "b1000@12min", chroma=0.1, target=0.3)  # an earlier budget
    (tmp_path / "results" / cpu_experiment.NAME / "b2000-16k").mkdir()  # not evaluated: left out
    rows = cpu_experiment.write_summary(tmp_path)
    assert [r["run"] for r in rows] == ["b500", "b1000", "b1000@12min", "b2000", "b4000"]
    assert [r["meets_goal"] for r in rows] == [False, True, False, False, False]
    assert rows[2]["numbers_per_s"] == 1000
    rows = [r for r in rows if r["run"] != "b1000@12min"]
    assert rows[1]["chroma_vs_gt"] == pytest.approx(0.7 / 0.8)
    out = tmp_path / "results" / cpu_experiment.NAME
    table = list(csv.DictReader((out / "runs.csv").read_text().splitlines()))
    assert table[1]["numbers_per_s"] == "1000" and table[1]["meets_goal"] == "True"
    assert float(table[4]["wave_corr"]) == 0.8
    md = (out / "summary.md").read_text()
    assert "Runs meeting the goal: b1000." in md and "ground truth: chroma 0.800" in md
    assert (out / "frontier.png").stat().st_size > 10_000
    page = (out / "index.html").read_text()
    assert 'href="b4000/"' in page and 'src="frontier.png"' in page


def _fake_calibrated_point(root: Path, name: str, *, notes, target, closer, clean, success):
    out = root / "results" / cpu_experiment.NAME / name
    out.mkdir(parents=True)
    p = f"{name}-last"
    ev = {f"{p}_translation_notes_kept_score": notes,
          f"{p}_translation_notes_kept_score_ci_low": notes - 0.1,
          f"{p}_translation_notes_kept_score_ci_high": notes + 0.1,
          f"{p}_translation_instrument": target, f"{p}_translation_closer_to_target": closer,
          f"{p}_translation_clean": clean, f"{p}_translation_success": success,
          "latent_probe_accuracy": 0.8, "latent_probe_chance": 0.5, "latent_use_gap": 0.5}
    (out / "04_listening_tests.json").write_text(json.dumps(ev))
    (out / "02_train.json").write_text(json.dumps({"steps": 900, "train_minutes": 20.0}))
    (out / "provenance.json").write_text(json.dumps({"git": {"commit": "4e8bd261e0", "dirty": False}}))


def test_summary_tables_calibrated_runs_apart_against_the_study_goal(tmp_path):
    """A point re-run under the calibrated evaluation has no chroma: it gets its own
    table, judged by the study's goal, and the first evaluation's rows keep their caveat."""
    _fake_point(tmp_path, "b4000", chroma=0.7, target=0.8, success=0.6)
    (tmp_path / "results" / cpu_experiment.NAME / "b4000" / "provenance.json").write_text(
        json.dumps({"git": {"commit": "34ef8ba64d", "dirty": True}}))
    _fake_calibrated_point(tmp_path, "b1000", notes=-0.04, target=0.8, closer=0.4, clean=0.0,
                           success=0.0)
    _fake_calibrated_point(tmp_path, "b2000", notes=0.7, target=0.9, closer=0.8, clean=0.95,
                           success=0.6)
    rows = cpu_experiment.write_summary(tmp_path)
    by = {r["run"]: r for r in rows}
    assert by["b1000"]["evaluation"] == "calibrated" and by["b4000"]["evaluation"] == "first"
    assert (by["b1000"]["meets_goal"], by["b2000"]["meets_goal"], by["b4000"]["meets_goal"]) \
        == (False, True, True)
    md = (tmp_path / "results" / cpu_experiment.NAME / "summary.md").read_text()
    calibrated, first = md.split("## First evaluation")
    assert "## Calibrated evaluation" in calibrated and "Runs meeting the goal: b2000." in calibrated
    assert "| b1000 |" in calibrated and "-0.04 [-0.14, 0.06]" in calibrated
    assert "| b1000 |" not in first and "Read with care" in first and "| b4000 |" in first
    # the tree each run was trained from: a dirty one is marked, it cannot be reproduced
    assert "| 4e8bd26 |" in calibrated and "| 34ef8ba+ |" in first
    page = (tmp_path / "results" / cpu_experiment.NAME / "index.html").read_text()
    assert "Calibrated evaluation" in page and 'href="b1000/"' in page


def test_summary_without_results_says_so(tmp_path):
    assert cpu_experiment.write_summary(tmp_path) == []
    assert "No run has results yet." in (tmp_path / "results" / cpu_experiment.NAME / "summary.md").read_text()


def test_experiment_runs_a_subset_with_its_base_and_prepares_each_manifest(
        standin_root, monkeypatch):  # noqa: F811
    prepared, summarized = [], []
    monkeypatch.setattr(data, "prep", lambda m, **kw: prepared.append(Path(m).name))
    exp = pipeline.Experiment(
        "demo", {"a": {"steps": 2, "manifest": "m8.yaml"}, "b": {"steps": 3},
                 "c": {"steps": 4, "manifest": "m8.yaml"}},
        notebooks=("02_train",), base={"steps": 1, "preset": "paper"},
        summarize=lambda root: summarized.append(root), prepare=True)
    monkeypatch.setitem(pipeline.EXPERIMENTS, "demo", exp)
    reports = pipeline.run_experiment("demo", "smoke", "m16.yaml", {"steps": 7},
                                      root=standin_root, only=["c", "b"], log=lambda *a: None)
    assert list(reports) == ["b", "c"] and prepared == ["m16.yaml", "m8.yaml"]
    out = standin_root / "results" / "demo"
    steps = {v: json.loads((out / v / "02_train.json").read_text())["steps"] for v in "bc"}
    assert steps == {"b": 3, "c": 4}  # the variant's value beats the command line's
    assert not (out / "a").exists() and summarized == [standin_root.resolve()]
    with pytest.raises(ValueError, match="no variant"):
        pipeline.run_experiment("demo", "smoke", root=standin_root, only=["zzz"])


def test_cli_dry_run_and_summarize(capsys, monkeypatch, tmp_path):
    assert main(["study", "--experiment", cpu_experiment.NAME, "--variants", "b500,b2000-16k",
                 "-p", "train.max_minutes=3", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert '"manifest": "data_manifests/scores.yaml"' in lines[2]  # the 16 kHz point
    assert '"train.max_minutes": 3' in lines[0]
    monkeypatch.setattr(pipeline, "project_root", lambda: tmp_path)
    _fake_point(tmp_path, "b1000", chroma=0.3, target=0.5)
    assert main(["study", "--experiment", cpu_experiment.NAME, "--summarize"]) == 0
    assert (tmp_path / "results" / cpu_experiment.NAME / "runs.csv").is_file()
    capsys.readouterr()
    assert main(["study", "--variants", "b500"]) != 0
    assert "--variants and --summarize go with --experiment" in capsys.readouterr().err

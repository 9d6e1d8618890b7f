"""The page of a seeded experiment (umt_core.study.experiment_summary): built from every
variant found on disk, seeds grouped per setting with their spread, borrowed settings
read from the experiment that trained them."""

import json
from pathlib import Path

import pytest

from umt_core.study import experiment_summary
from umt_core.study.pipeline import EXPERIMENTS


def _variant(root: Path, experiment: str, variant: str, *, notes: float, target: float,
             steps: int = 600, evaluated: bool = True) -> None:
    out = root / "results" / experiment / variant
    out.mkdir(parents=True)
    m = {"02_train": {"steps": steps, "train_minutes": 10.0, "best_val_recon": 2.0,
                      "samples_per_s": 50.0, "skipped_steps": 1, "rollbacks": 0},
         "03_loss_analysis": {"this_run_spikes": 2, "this_run_divergent_runs": 0}}
    if evaluated:
        m["04_listening_tests"] = {
            "m_translation_notes_kept_score": notes,
            "m_translation_notes_kept_score_ci_low": notes - 0.1,
            "m_translation_notes_kept_score_ci_high": notes + 0.1,
            "m_translation_instrument": target, "m_translation_instrument_ci_low": 0.0,
            "m_translation_instrument_ci_high": 1.0,
            "latent_probe_accuracy": 0.8, "latent_probe_accuracy_ci_low": 0.6,
            "latent_probe_accuracy_ci_high": 0.9, "latent_probe_chance": 0.5,
            "latent_use_gap": 0.2}
    (out / "metrics.json").write_text(json.dumps(m))


def test_settings_group_seeds_and_keep_the_variants_order():
    got = experiment_summary.settings_of(["b8-seed1", "b8-seed2", "b32-seed1", "plain"])
    assert got == {"b8": [(1, "b8-seed1"), (2, "b8-seed2")], "b32": [(1, "b32-seed1")],
                   "plain": [(0, "plain")]}


def test_summary_spreads_each_settings_seeds_and_skips_unevaluated_ones(tmp_path):
    variants = ["a-seed1", "a-seed2", "a-seed3", "b-seed1", "b-seed2", "c-seed1"]
    for seed, notes in ((1, 0.1), (2, 0.2), (3, 0.6)):
        _variant(tmp_path, "exp", f"a-seed{seed}", notes=notes, target=0.5)
    _variant(tmp_path, "exp", "b-seed1", notes=0.4, target=0.9, steps=1200)
    _variant(tmp_path, "exp", "b-seed2", notes=0.4, target=0.9, evaluated=False)  # still training
    settings = experiment_summary.write_summary(tmp_path, "exp", "A test.", variants)
    assert [s["setting"] for s in settings] == ["a", "b"]  # c never ran
    assert settings[1]["runs"] == ["exp/b-seed1"]
    notes = next(r for r in settings[0]["rows"] if r["key"] == "translation_notes_kept_score")
    assert notes["spread"]["n"] == 3 and notes["spread"]["mean"] == pytest.approx(0.3)
    assert notes["spread"]["min"] == 0.1 and notes["spread"]["max"] == 0.6
    speed = next(r for r in settings[1]["rows"] if r["key"] == "steps_per_s")
    assert speed["runs"]["exp/b-seed1"]["value"] == pytest.approx(2.0)  # 1,200 in 10 min
    out = tmp_path / "results" / "exp"
    md = (out / "README.md").read_text()
    assert "0.3 ± 0.26 (0.1 to 0.6), n=3" in md  # the spread, not one seed
    assert "0.400 [0.300, 0.500], n=1" in md  # one seed: its interval, and it says n=1
    assert json.loads((out / "summary.json").read_text())["settings"][0]["setting"] == "a"
    assert (out / "figure.png").stat().st_size > 5_000
    assert "0.80 [0.60, 0.90], n=1" in md  # the probe's rate keeps its interval (b-seed1)
    page = (out / "index.html").read_text()
    assert 'href="../exp/a-seed3/index.html"' in page and 'src="figure.png"' in page
    # The variants still to run are named, with the one command that runs them.
    command = "python -m umt_core study --experiment exp --variants b-seed2,c-seed1"
    assert "b (seed 2); c (seed 1)" in md and f"`{command}`" in md
    assert f"<code>{command}</code>" in page and "a (seed" not in page


def test_what_a_translation_is_closest_to_is_read_beside_its_calibration_rows(tmp_path):
    # The closer-to-target rate means little alone: the source itself scores 0 and noise
    # shaped like the target about 0.5 ("neither"). The page puts both beside it.
    _variant(tmp_path, "exp", "a-seed1", notes=0.0, target=0.5)
    path = tmp_path / "results" / "exp" / "a-seed1" / "metrics.json"
    m = json.loads(path.read_text())
    m["04_listening_tests"].update({
        "m_translation_closer_to_target": 0.45, "m_source_closer_to_target": 0.0,
        "m_gt_source_envelope_closer_to_target": 0.9,  # another row ending in "source..."
        "m_shaped_noise_closer_to_target": 0.53, "m_reconstruction_instrument": 0.97,
        "m_translation_source_chroma": 0.24})
    path.write_text(json.dumps(m))
    [setting] = experiment_summary.write_summary(tmp_path, "exp", "A test.", ["a-seed1"])
    value = {r["key"]: (r["runs"]["exp/a-seed1"] or {}).get("value") for r in setting["rows"]}
    assert value["translation_closer_to_target"] == 0.45
    assert value["source_closer_to_target"] == 0.0
    assert value["shaped_noise_closer_to_target"] == 0.53
    assert value["reconstruction_instrument"] == 0.97
    assert value["translation_source_chroma"] == 0.24
    md = (tmp_path / "results" / "exp" / "README.md").read_text()
    assert "what 'neither' scores" in md and "| 0.53, n=1 |" in md


def test_borrowed_settings_come_from_the_experiment_that_trained_them(tmp_path):
    for seed in (1, 2, 3):
        _variant(tmp_path, "decoders", f"spectral-seed{seed}", notes=0.3, target=0.9)
        _variant(tmp_path, "shared-decoder", f"spectral-shared-seed{seed}", notes=0.0, target=0.5)
    EXPERIMENTS["shared-decoder"].summarize(tmp_path)
    summary = json.loads((tmp_path / "results" / "shared-decoder" / "summary.json").read_text())
    by = {s["setting"]: s for s in summary["settings"]}
    assert set(by) == {"spectral-shared", "spectral-per-domain"}
    assert by["spectral-per-domain"]["from"] == "decoders"
    assert by["spectral-per-domain"]["runs"] == [f"decoders/spectral-seed{s}" for s in (1, 2, 3)]
    md = (tmp_path / "results" / "shared-decoder" / "README.md").read_text()
    assert "`spectral-per-domain` = results/decoders/" in md


def test_summary_without_results_says_so(tmp_path):
    assert experiment_summary.write_summary(tmp_path, "exp", "A test.", ["a-seed1"]) == []
    assert "No variant has been evaluated yet." in (tmp_path / "results" / "exp" / "README.md").read_text()


def test_a_corrupt_metrics_file_is_named(tmp_path):
    (tmp_path / "results" / "exp" / "a-seed1").mkdir(parents=True)
    (tmp_path / "results" / "exp" / "a-seed1" / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"a-seed1/metrics.json: not valid JSON"):
        experiment_summary.write_summary(tmp_path, "exp", "A test.", ["a-seed1"])


def test_the_default_studys_page_lists_each_experiment_or_how_to_run_it(tmp_path):
    from umt_core.study.side_by_side import side_by_side_html

    for seed in (1, 2):
        _variant(tmp_path, "decoders", f"spectral-seed{seed}", notes=0.1 * seed, target=0.9)
    EXPERIMENTS["decoders"].summarize(tmp_path)
    page = side_by_side_html(tmp_path, ["cpu", "cpu-spectral"])
    findings = page.split("Findings: the controlled experiments")[1]
    assert "0.15 ± 0.071 (0.1 to 0.2), n=2" in findings  # the decoders' spread over seeds
    assert 'href="decoders/index.html"' in findings
    assert "python -m umt_core study --experiment batch</code>" in findings  # not run yet
    assert "<strong>" not in findings  # no README: no answers in words, and no failure


def test_the_default_studys_page_carries_the_findings_in_words(tmp_path):
    """The answers are written once, in results/README.md's Findings section; the default
    study's page shows that section (rendered) and nothing of the sections around it."""
    from umt_core.study.side_by_side import side_by_side_html

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "README.md").write_text(
        "# Rendered studies\n\nThe folders.\n\n## Findings: the four questions\n\n"
        "**1. Is the shared decoder the cause?** Yes: `python -m umt_core study`.\n\n"
        "### A subsection\n\nStill a finding.\n\n## `cpu/`: a run\n\nNot a finding.\n")
    findings = side_by_side_html(tmp_path, ["cpu", "cpu-spectral"]).split(
        "Findings: the controlled experiments")[1]
    assert "<strong>1. Is the shared decoder the cause?</strong>" in findings
    assert "<code>python -m umt_core study</code>" in findings and "Still a finding." in findings
    assert "Not a finding." not in findings and "The folders." not in findings


def test_the_confusion_page_draws_its_trade_off_seed_by_seed(tmp_path):
    """The confusion experiment's page plots the leakage probe against the translation
    figures, one point per seed paired by run (a seed without a figure is left out);
    another experiment's page has no trade-off figure."""
    for setting, probe in (("conf0", 0.95), ("conf1e-1", 0.7)):
        for seed, notes in ((1, 0.1), (2, 0.3)):
            _variant(tmp_path, "confusion", f"{setting}-seed{seed}", notes=notes, target=0.8)
            path = tmp_path / "results" / "confusion" / f"{setting}-seed{seed}" / "metrics.json"
            m = json.loads(path.read_text())
            m["04_listening_tests"]["latent_probe_accuracy"] = probe + 0.01 * seed
            if setting == "conf1e-1" and seed == 2:
                del m["04_listening_tests"]["m_translation_notes_kept_score"]
            path.write_text(json.dumps(m))
    settings = experiment_summary.write_summary(
        tmp_path, "confusion", "A test.", ["conf0-seed1", "conf0-seed2", "conf1e-1-seed1",
                                           "conf1e-1-seed2"])
    points = experiment_summary.trade_off_points(settings, "latent_probe_accuracy",
                                                 "translation_notes_kept_score")
    assert points == [[(0.96, 0.1), (0.97, 0.3)], [(0.71, 0.1)]]
    out = tmp_path / "results" / "confusion"
    assert (out / "trade_off.png").stat().st_size > 5_000
    assert 'src="trade_off.png"' in (out / "index.html").read_text()
    for seed in (1, 2):
        _variant(tmp_path, "other", f"a-seed{seed}", notes=0.1, target=0.5)
    experiment_summary.write_summary(tmp_path, "other", "A test.", ["a-seed1", "a-seed2"])
    assert not (tmp_path / "results" / "other" / "trade_off.png").exists()
    assert "trade_off.png" not in (tmp_path / "results" / "other" / "index.html").read_text()

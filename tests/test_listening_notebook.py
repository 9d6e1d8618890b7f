"""Notebook 04 executes under papermill on a smoke model and a tiny synthesised dataset."""

from __future__ import annotations

import json

import nbformat
import pytest
from conftest import REPO
from test_evaluate import write_smoke_study

from umt_core import listening

NOTEBOOK = REPO / "notebooks" / "04_listening_tests.ipynb"


def test_notebook_is_stored_without_outputs_and_has_one_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in ("checkpoints", "manifest", "split", "works", "segments", "target_domains",
                 "seconds_per_clip",
                 "n_trials", "answers_file", "participant", "interactive", "temperature",
                 'results_dir = "results/interactive"'):
        assert name in tagged[0].source
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_papermill_reads_every_parameter():
    import ast

    import papermill

    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assigned = {t.id for node in ast.parse(cell.source).body for t in node.targets}
    assert set(papermill.inspect_notebook(str(NOTEBOOK))) == assigned


@pytest.fixture
def smoke_study(tmp_path, smoke_config, monkeypatch):
    monkeypatch.delenv("UMT_ROOT", raising=False)
    manifest, ckpt = write_smoke_study(tmp_path, smoke_config, ["piano", "flute"])
    return tmp_path, manifest, ckpt


def test_notebook_runs_under_papermill_with_demo_answers(smoke_study):
    import papermill

    tmp_path, manifest, ckpt = smoke_study
    results = tmp_path / "results"
    papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "out.ipynb"), kernel_name="umt-study", cwd=str(REPO),
        progress_bar=False,
        parameters={"checkpoints": [str(ckpt)], "run_dir": "", "manifest": str(manifest),
                    "works": 2, "segments": 1, "seconds_per_clip": 0.5, "n_trials": 4,
                    "samples_to_show": 1, "results_dir": str(results),
                    "key_dir": str(tmp_path / "keys")},
    )
    figures = json.loads((results / "04_listening_tests.json").read_text())
    assert figures["listening_demo"] is True
    assert figures["listening_answers_file"].endswith("DEMO_answers.csv")
    assert "smoke-best_translation_success" in figures
    assert "smoke-best_ground_truth_success" in figures
    assert "classifier_heldout_accuracy" in figures and "latent_probe_accuracy" in figures
    assert figures["classifier_chance"] == 0.5 and figures["thresholds_chosen_on"] == "val"
    assert "smoke-best_translation_notes_kept_truth_ci_high" in figures
    assert "smoke-best_translation_clean_ci_low" in figures
    assert (results / "figures" / "04_success.png").is_file()
    # the examples shown, also as WAV files: source, translation and paired ground truth
    wavs = sorted(p.name for p in (results / "examples").glob("*.wav"))
    assert wavs and {w.rsplit("_", 1)[-1] for w in wavs} >= {"source.wav", "translation.wav"}
    assert any(w.endswith("_ground_truth.wav") for w in wavs)
    # The condition key stays outside the shareable results, found by the stimuli's hash.
    assert not [p for p in results.rglob("*") if "key" in p.name]
    key = listening.load_key(results / "listening" / "stimuli", tmp_path / "keys")
    assert {v["system"] for v in key.values()} == {"smoke-best", "ground_truth"}
    assert any(k.startswith("demo_listening_") for k in figures)
    assert not any(k.startswith("listening_") for k in figures
                   if k not in ("listening_demo", "listening_answers_file"))
    out = (tmp_path / "out.ipynb").read_text()
    assert "DEMO ANSWERS" in out and "<audio" in out

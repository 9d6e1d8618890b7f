"""Notebook 02 trains on a prepared dataset under papermill and records its figures.

It needs `umt_core.data` (prep, training_data): the dataset here is a tiny
MusicNet-shaped folder of synthetic recordings, prepared by the real `prep`.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import soundfile as sf
from conftest import REPO, scratch_root

NOTEBOOK = REPO / "notebooks" / "02_train.ipynb"

MANIFEST = """
dataset: tiny
sample_rate: 16000
seed: 0
source: {{type: musicnet, path: {src}, expect_sample_rate: 16000, expect_channels: 1}}
split: {{rule: by_file, train: 0.34, val: 0.33, test: 0.33}}
domains:
  - {{name: cello, composer: Bach, ensemble: Solo Cello}}
  - {{name: piano, composer: Mozart, ensemble: Solo Piano}}
"""


def _tiny_dataset(root: Path) -> str:
    from test_train import synthetic_domains

    src = root / "source" / "musicnet"
    (src / "train_data").mkdir(parents=True)
    rows = ["id,composer,ensemble"]
    domains = synthetic_domains(["cello", "piano"], clips=3, seconds=1.0)
    for k, ((composer, ensemble), dom) in enumerate(
            zip([("Bach", "Solo Cello"), ("Mozart", "Solo Piano")], domains)):
        for j, clip in enumerate(dom.clips):
            i = 1000 + 10 * k + j
            rows.append(f"{i},{composer},{ensemble}")
            sf.write(src / "train_data" / f"{i}.wav", clip, 16000, subtype="PCM_16")
    (src / "musicnet_metadata.csv").write_text("\n".join(rows) + "\n")
    (root / "tiny.yaml").write_text(MANIFEST.format(src=src))
    return "tiny.yaml"


def test_notebook_is_stored_clean_with_one_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in ("preset", "manifest", "run_name", "steps", "epochs", "overrides", "fresh",
                 "results_dir"):
        assert f"\n{name} = " in "\n" + tagged[0].source, name
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in nb.cells if c.cell_type == "code")


def test_notebook_trains_under_papermill(tmp_path, monkeypatch):
    data = pytest.importorskip("umt_core.data", reason="notebook 02 needs prepared data")
    papermill = pytest.importorskip("papermill")
    root = scratch_root(tmp_path)
    monkeypatch.setenv("UMT_ROOT", str(root))
    manifest = _tiny_dataset(root)
    data.prep(data.load_manifest(root / manifest), progress=False, log=lambda *a: None)

    out = tmp_path / "executed.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(out), kernel_name="umt-study", cwd=str(root), progress_bar=False,
        parameters={"preset": "smoke", "manifest": manifest, "run_name": "nb", "steps": 12,
                    "overrides": {"train.steps_per_epoch": 5}, "plot_every_s": 3.0,
                    "results_dir": "results/nb"})
    figures = json.loads((root / "results" / "nb" / "02_train.json").read_text())
    assert figures["steps"] == 12 and figures["epochs"] == 2
    assert figures["domains"] == "cello,piano"
    assert 0 < figures["best_val_recon"] < 6 and figures["skipped_steps"] == 0
    assert {"final_val_recon_cello", "final_val_recon_piano", "samples_per_s"} <= set(figures)
    assert (root / "results" / "nb" / "figures" / "02_train_loss.png").is_file()
    assert (root / "runs" / "nb" / "checkpoints" / "best.pt").is_file()

"""Notebook 02 trains on a prepared dataset under papermill and records its figures.

It needs `umt_core.data` (prep, training_data): the dataset here is a tiny
MusicNet-shaped folder of synthetic recordings, prepared by the real `prep`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
import soundfile as sf
from conftest import REPO, scratch_root

from umt_core import data

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


@pytest.fixture(scope="module")
def prepared_root(tmp_path_factory):
    """A scratch project root holding a prepared tiny dataset (manifest tiny.yaml)."""
    root = scratch_root(tmp_path_factory.mktemp("prepared"))
    manifest = _tiny_dataset(root)
    data.prep(data.load_manifest(root / manifest), progress=False, log=lambda *a: None)
    return root


def test_notebook_trains_under_papermill(prepared_root, tmp_path, monkeypatch):
    root = prepared_root
    monkeypatch.setenv("UMT_ROOT", str(root))
    out = tmp_path / "executed.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(out), kernel_name="umt-study", cwd=str(root), progress_bar=False,
        parameters={"preset": "smoke", "manifest": "tiny.yaml", "run_name": "nb", "steps": 12,
                    "overrides": {"train.steps_per_epoch": 5}, "plot_every_s": 3.0,
                    "results_dir": "results/nb"})
    figures = json.loads((root / "results" / "nb" / "02_train.json").read_text())
    assert figures["steps"] == 12 and figures["epochs"] == 2
    assert figures["domains"] == "cello,piano"
    assert 0 < figures["best_val_recon"] < 6 and figures["skipped_steps"] == 0
    assert {"final_val_recon_cello", "final_val_recon_piano", "samples_per_s"} <= set(figures)
    assert (root / "results" / "nb" / "figures" / "02_train_loss.png").is_file()
    assert (root / "runs" / "nb" / "checkpoints" / "best.pt").is_file()


def test_cli_trains_resumes_and_refuses_another_config(prepared_root):
    root = prepared_root
    env = dict(os.environ, UMT_ROOT=str(root), OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "umt_core", "train", "--preset", "smoke", "--manifest",
            "tiny.yaml", "--run-dir", "runs/cli", "--no-progress"]

    def run(*extra):
        return subprocess.run(base + list(extra), cwd=root, env=env, capture_output=True,
                              text=True, check=False)

    first = run("--steps", "3")
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads(first.stdout)
    assert summary["steps"] == 3 and summary["domains"] == ["cello", "piano"]
    assert Path(summary["last_checkpoint"]) == root / "runs" / "cli" / "checkpoints" / "last.pt"

    refused = run("--steps", "4", "-o", "train.lr=0.5")
    assert refused.returncode == 2
    assert "train.lr" in refused.stderr and "--fresh" in refused.stderr
    assert "Traceback" not in refused.stderr

    resumed = run("--steps", "4")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout)["steps"] == 4
    events = [json.loads(line) for line in
              (root / "runs" / "cli" / "metrics.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("resume") == 1
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4]

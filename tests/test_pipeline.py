"""The study pipeline: papermill over notebooks 01-04, HTML, metrics.json, index.html.

Fast tests drive the pipeline over small stand-in notebooks written in the test; the
`pipeline` test runs the real notebooks on the `smoke` preset in a scratch project root.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import nbformat
import pytest
from conftest import REPO, scratch_root
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from umt_core.__main__ import main
from umt_core.data import load_manifest
from umt_core.study import pipeline

# An inline figure as nbconvert writes it: <img alt=... class=... src="data:image/png;base64,...
FIGURE = re.compile(r'<img[^>]*src="data:image/png;base64,')

STANDIN_BODY = """
import json, pathlib
import numpy as np
import matplotlib
import matplotlib.pyplot as plt
from IPython.display import Audio, display
out = pathlib.Path(results_dir)
(out / "figures").mkdir(parents=True, exist_ok=True)
fig, ax = plt.subplots(figsize=(3, 2))
ax.plot(np.arange(10) * steps)
fig.savefig(out / "figures" / f"{stem}.png")
plt.show()
t = np.arange(1600) / 16000
display(Audio(np.sin(2 * np.pi * 440 * t), rate=16000))
"""


def write_standin(path: Path, *, fail: bool = False, extra_params: str = "") -> None:
    """A notebook that follows the conventions: parameters cell, a figure, an audio
    player, and a last cell writing <results_dir>/<stem>.json."""
    stem = path.stem
    params = new_code_cell(
        f'preset = "cpu"  # model preset\n'
        f'results_dir = "results/interactive"  # where key figures go\n'
        f'run_dir = "runs/interactive"  # training run\n'
        f"steps = 1  # a knob\n{extra_params}",
        metadata={"tags": ["parameters"]},
    )
    cells = [new_markdown_cell(f"# {stem}"), params,
             new_code_cell(f"stem = {stem!r}\n" + STANDIN_BODY)]
    if fail:
        cells.append(new_code_cell('raise RuntimeError("stand-in failure " + run_dir)'))
    cells.append(new_code_cell(
        "(out / f'{stem}.json').write_text(json.dumps("
        "{'steps': steps, 'loss': 1.5, 'preset': preset, 'run_dir': run_dir}))"
    ))
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "umt-study", "display_name": "UMT study",
                                 "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


@pytest.fixture
def standin_root(tmp_path):
    for stem in pipeline.NOTEBOOKS:
        write_standin(tmp_path / "notebooks" / f"{stem}.ipynb",
                      extra_params='seconds = 1.0  # clip length (0 = none; "x" = y)\n'
                      if stem.startswith("04") else "")
    return tmp_path


def test_plan_routes_parameters_only_to_notebooks_that_declare_them(standin_root):
    plan = pipeline.plan_study("smoke", "r1", "m.yaml", {"seconds": 0.25, "steps": 3},
                               notebooks_dir=standin_root / "notebooks")
    by_stem = {nb.stem: nb.parameters for nb in plan}
    assert by_stem["01_data_prep"] == {"preset": "smoke", "run_dir": "runs/r1",
                                       "results_dir": "results/r1", "steps": 3}
    assert by_stem["04_listening_tests"]["seconds"] == 0.25
    assert "seconds" not in by_stem["02_train"]
    with pytest.raises(ValueError, match="no notebook .* takes the parameter"):
        pipeline.plan_study("smoke", "r1", "m.yaml", {"secnds": 1},
                            notebooks_dir=standin_root / "notebooks")
    with pytest.raises(ValueError, match="unknown preset"):
        pipeline.plan_study("huge", "r1", "m.yaml", notebooks_dir=standin_root / "notebooks")


def test_dotted_keys_go_to_the_overrides_parameter(standin_root):
    write_standin(standin_root / "notebooks" / "02_train.ipynb",
                  extra_params="overrides = {}  # dotted config overrides\n")
    plan = pipeline.plan_study("smoke", "r", "m.yaml", {"train.lr": 1e-4, "steps": 2},
                               notebooks_dir=standin_root / "notebooks")
    by_stem = {nb.stem: nb.parameters for nb in plan}
    assert by_stem["02_train"]["overrides"] == {"train.lr": 1e-4}
    assert "overrides" not in by_stem["03_loss_analysis"]
    with pytest.raises(ValueError, match="takes the parameter"):
        pipeline.plan_study("smoke", "r", "m.yaml", {"train.lr": 1e-4},
                            notebooks_dir=standin_root / "notebooks", stems=("01_data_prep",))


def test_provenance_is_strict_json_and_keeps_an_infinite_parameter(standin_root):
    """train.grad_clip=inf (no clipping) is recorded as "inf", which -p reads back, so
    that provenance.json parses with a strict JSON reader (no Infinity)."""
    write_standin(standin_root / "notebooks" / "02_train.ipynb",
                  extra_params="overrides = {}  # dotted config overrides\n")
    pipeline.run_study("smoke", "inf", root=standin_root, log=lambda *a: None,
                       overrides={"train.grad_clip": math.inf},
                       stems=("02_train",))

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    text = (standin_root / "results" / "inf" / "provenance.json").read_text()
    prov = json.loads(text, parse_constant=refuse)
    recorded = prov["parameters"]["02_train"]["overrides"]["train.grad_clip"]
    assert recorded == "inf"
    assert pipeline.parse_values([f"train.grad_clip={recorded}"]) == {
        "train.grad_clip": math.inf}


def test_smoke_data_is_prepared_beside_the_full_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("UMT_ROOT", str(tmp_path))
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "umt_core"\n')
    (tmp_path / "data_manifests").mkdir()
    (tmp_path / "data_manifests" / "scores.yaml").write_text(
        (REPO / "data_manifests" / "scores.yaml").read_text())
    assert pipeline.preset_manifest(tmp_path, "data_manifests/scores.yaml", "cpu") == (
        "data_manifests/scores.yaml")
    derived = pipeline.preset_manifest(tmp_path, "data_manifests/scores.yaml", "smoke")
    assert derived == "data/manifests/scores-smoke.yaml"
    full = load_manifest(tmp_path / "data_manifests" / "scores.yaml")
    small = load_manifest(tmp_path / derived)
    assert small.data_dir == tmp_path / "data" / "scores-smoke" != full.data_dir
    assert small.domains == full.domains and small.sample_rate == full.sample_rate


def test_parse_values_reads_yaml_scalars():
    got = pipeline.parse_values(["steps=20", "seconds=0.5", "manifest=data_manifests/a.yaml",
                                 "fresh=true", "x=null", "train.grad_clip=inf"])
    assert got == {"steps": 20, "seconds": 0.5, "manifest": "data_manifests/a.yaml",
                   "fresh": True, "x": None, "train.grad_clip": math.inf}
    assert math.isnan(pipeline.parse_values(["y=nan"])["y"])  # as provenance writes NaN
    with pytest.raises(ValueError):
        pipeline.parse_values(["steps"])


def test_notebook_without_parameters_cell_is_refused(tmp_path):
    nb = new_notebook(cells=[new_code_cell("x = 1")])
    nbformat.write(nb, tmp_path / "01_data_prep.ipynb")
    with pytest.raises(ValueError, match="exactly one cell tagged 'parameters'"):
        pipeline.declared_parameters(tmp_path / "01_data_prep.ipynb")


def test_study_on_standins_writes_report(standin_root):
    report = pipeline.run_study("smoke", "demo", root=standin_root, log=lambda *a: None,
                                overrides={"steps": 7})
    out = standin_root / "results" / "demo"
    assert report.ok
    for stem in pipeline.NOTEBOOKS:
        executed = nbformat.read(out / f"{stem}.ipynb", as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
        page = (out / f"{stem}.html").read_text()
        assert FIGURE.search(page)
        assert "<audio" in page and "data:audio/wav;base64" in page
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == list(pipeline.NOTEBOOKS)
    assert metrics["02_train"] == {"steps": 7, "loss": 1.5, "preset": "smoke",
                                   "run_dir": "runs/demo"}
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["preset"] == "smoke" and prov["status"] == "ok"
    assert set(prov["wall_time_s"]) == set(pipeline.NOTEBOOKS)
    assert prov["packages"]["torch"] and prov["packages"]["papermill"]
    index = (out / "index.html").read_text()
    for stem in pipeline.NOTEBOOKS:
        assert f'href="{stem}.html"' in index
    assert "git commit" in index and "wall time" in index

    # re-running some notebooks keeps the others' figures, times and parameters, and
    # the first run's provenance with the re-run appended
    first = prov
    again = pipeline.run_study("smoke", "demo", root=standin_root, log=lambda *a: None,
                               stems=("04_listening_tests",), keep_earlier=True,
                               command="rerun 04")
    assert again.ok and [nb.stem for nb in again.notebooks] == list(pipeline.NOTEBOOKS)
    again_metrics = json.loads((out / "metrics.json").read_text())
    assert list(again_metrics) == list(pipeline.NOTEBOOKS)
    assert {k: v for k, v in again_metrics.items() if k != "04_listening_tests"} == \
        {k: v for k, v in metrics.items() if k != "04_listening_tests"}
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["started"] == first["started"] and prov["git"] == first["git"]
    assert {k: v for k, v in prov["wall_time_s"].items() if k != "04_listening_tests"} == \
        {k: v for k, v in first["wall_time_s"].items() if k != "04_listening_tests"}
    (rerun,) = prov["reruns"]
    assert rerun["notebooks"] == ["04_listening_tests"] and rerun["command"] == "rerun 04"
    assert set(rerun["wall_time_s"]) == {"04_listening_tests"}
    assert prov["parameters"]["02_train"]["steps"] == 7  # kept from the first run
    index = (out / "index.html").read_text()
    for stem in pipeline.NOTEBOOKS:
        assert f'href="{stem}.html"' in index
    # without keep_earlier (a whole study, or an experiment's runs) the report is new
    pipeline.run_study("smoke", "demo", root=standin_root, log=lambda *a: None,
                       stems=("04_listening_tests",))
    assert list(json.loads((out / "metrics.json").read_text())) == ["04_listening_tests"]
    assert "reruns" not in json.loads((out / "provenance.json").read_text())


def test_failing_notebook_stops_study_and_keeps_outputs(standin_root, capsys, monkeypatch):
    write_standin(standin_root / "notebooks" / "02_train.ipynb", fail=True)
    monkeypatch.setenv("UMT_ROOT", str(standin_root))  # the CLI's project root
    code = main(["study", "--preset", "smoke", "--run", "broken"])
    assert code != 0
    err = capsys.readouterr().err
    assert "02_train failed in cell" in err
    assert 'raise RuntimeError("stand-in failure " + run_dir)' in err
    assert "RuntimeError: stand-in failure runs/broken" in err
    out = standin_root / "results" / "broken"
    assert (out / "01_data_prep.html").is_file()  # what ran before is kept
    assert (out / "02_train.ipynb").is_file() and (out / "02_train.html").is_file()
    assert not (out / "03_loss_analysis.ipynb").exists()  # nothing after the failure ran
    assert list(json.loads((out / "metrics.json").read_text())) == ["01_data_prep"]
    index = (out / "index.html").read_text()
    assert "failed" in index and "stand-in failure" in index


# ------------------------------------------------------------------- the real notebooks

REAL = [REPO / "notebooks" / f"{stem}.ipynb" for stem in pipeline.NOTEBOOKS]


def test_experiment_runs_each_variant_and_compares(standin_root, monkeypatch):
    exp = pipeline.Experiment("steps compared", {"few": {"steps": 2}, "many": {"steps": 9}},
                              notebooks=("02_train",))
    monkeypatch.setitem(pipeline.EXPERIMENTS, "steps-demo", exp)
    reports = pipeline.run_experiment("steps-demo", "smoke", root=standin_root,
                                      log=lambda *a: None)
    assert all(r.ok for r in reports.values())
    out = standin_root / "results" / "steps-demo"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["few"]["02_train"]["steps"] == 2 and metrics["many"]["02_train"]["steps"] == 9
    assert metrics["many"]["02_train"]["run_dir"] == "runs/steps-demo/many"
    page = (out / "index.html").read_text()
    assert 'href="few/index.html"' in page and 'href="many/index.html"' in page
    assert (out / "many" / "02_train.html").is_file()


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.stem)
def test_notebook_follows_conventions(path):
    nb = nbformat.read(path, as_version=4)
    declared = pipeline.declared_parameters(path)  # one parameters cell, results_dir
    assert declared["results_dir"].startswith('results_dir = "results/interactive"')
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "stored with outputs"


@pytest.mark.pipeline
def test_smoke_study_runs_every_real_notebook(tmp_path, monkeypatch):
    root = scratch_root(tmp_path)
    monkeypatch.setenv("UMT_ROOT", str(root))
    try:
        pipeline.run_study("smoke", "smoke", root=root, log=lambda *a: None)
    except pipeline.StudyFailed as e:
        pytest.fail(e.details, pytrace=False)
    out = root / "results" / "smoke"
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == list(pipeline.NOTEBOOKS)
    for stem, figures in metrics.items():
        assert figures, f"{stem} recorded no figures"
        for key, value in figures.items():
            assert isinstance(value, (int, float, str, bool)), f"{stem}.{key} = {value!r}"
            if isinstance(value, float):
                assert math.isfinite(value), f"{stem}.{key} = {value}"
    pages = {stem: (out / f"{stem}.html").read_text() for stem in pipeline.NOTEBOOKS}
    for stem, page in pages.items():
        assert FIGURE.search(page), f"{stem}.html has no figure"
    for stem in ("01_data_prep", "04_listening_tests"):
        assert re.search(r"<audio[^>]*>", pages[stem]), f"{stem}.html has no audio player"
        assert "data:audio/wav;base64" in pages[stem]
    assert (out / "index.html").is_file()
    assert os.path.getsize(out / "index.html") < 200_000


@pytest.mark.pipeline
def test_notebooks_01_to_04_with_their_defaults_find_the_checkpoint(tmp_path, monkeypatch):
    """JupyterLab's path: 01 -> 04 run one after the other with each notebook's own
    run and results folders (only the smoke preset's sizes are set); 02 trains
    runs/interactive, 03 analyses it and 04 finds its checkpoint."""
    import papermill

    root = scratch_root(tmp_path)
    monkeypatch.setenv("UMT_ROOT", str(root))
    pipeline.ensure_kernel()
    manifest = pipeline.preset_manifest(root, pipeline.default_manifest("smoke"), "smoke")
    for stem in pipeline.NOTEBOOKS:
        path = root / "notebooks" / f"{stem}.ipynb"
        wanted = {"preset": "smoke", "manifest": manifest,
                  **pipeline.NOTEBOOK_PARAMETERS["smoke"][stem]}
        params = {k: v for k, v in wanted.items() if k in pipeline.declared_parameters(path)}
        assert not {"run_name", "run_dir", "results_dir", "checkpoints"} & set(params)
        papermill.execute_notebook(str(path), str(tmp_path / f"{stem}.ipynb"), parameters=params,
                                   kernel_name=pipeline.KERNEL, cwd=str(root),
                                   progress_bar=False)
    assert (root / "runs" / "interactive" / "checkpoints" / "best.pt").is_file()
    results = root / "results" / "interactive"
    analysis = json.loads((results / "03_loss_analysis.json").read_text())
    assert analysis["runs"] >= 2  # runs/interactive besides the reference log excerpt
    figures = json.loads((results / "04_listening_tests.json").read_text())
    assert figures["n_evaluated_models"] == 1
    assert "interactive-best_translation_success" in figures


def test_index_folds_intervals_into_their_figures_and_keeps_demo_names():
    from umt_core.study import report

    figures = {"04_listening_tests": {
        "m_translation_success": 0.25, "m_translation_success_ci_low": 0.1,
        "m_translation_success_ci_high": 0.5, "m_translation_source_chroma": 0.4,
        "demo_listening_ground_truth_accuracy": 0.9, "listening_demo": True}}
    rows = report._figure_rows(report.headline_figures(figures))
    assert [r[1] for r in rows] == ["m_translation_success", "m_translation_source_chroma",
                                    "demo_listening_ground_truth_accuracy", "listening_demo"]
    assert rows[0][2].startswith("0.25") and "[0.1" in rows[0][2] and "0.5]" in rows[0][2]


def test_every_comparison_trains_each_setting_with_three_seeds_and_valid_overrides():
    """The findings' experiments: each setting of shared-decoder, decoders, batch and
    confusion runs with seeds 1-3, and every variant's overrides make a valid config
    (a misspelt key would fail only after an hour of the others' training)."""
    import re

    from umt_core.config import preset as config_preset
    from umt_core.study.pipeline import EXPERIMENTS, SEEDS

    assert SEEDS == (1, 2, 3)
    for name in ("shared-decoder", "decoders", "batch", "confusion", "divergence"):
        exp = EXPERIMENTS[name]
        settings = {}
        for variant, params in exp.variants.items():
            m = re.fullmatch(r"(.+)-seed(\d)", variant)
            assert m, f"{name}/{variant}: not named <setting>-seed<n>"
            settings.setdefault(m.group(1), set()).add(params["train.seed"])
            dotted = {k: v for k, v in {**exp.base, **params}.items() if "." in k}
            config_preset("cpu", dotted)  # raises on an unknown key or a bad value
        assert len(settings) >= 2 and all(s == set(SEEDS) for s in settings.values()), name
    for name in ("shared-decoder", "decoders"):  # the spectral decoder as cpu-spectral has it
        spectral = [p for v, p in EXPERIMENTS[name].variants.items() if v.startswith("spectral")]
        assert spectral and all(p["model.latent_norm"] == "frame" for p in spectral)
    # A borrowed setting is the other experiment's configuration: the shared arm differs
    # from it only by the shared decoder, under the same budget.
    shared = EXPERIMENTS["shared-decoder"]
    for setting, (other, other_setting) in shared.borrow.items():
        kind = setting.split("-")[0]
        own = dict(shared.variants[f"{kind}-shared-seed1"])
        assert own.pop("model.shared_decoder") is True
        assert own == EXPERIMENTS[other].variants[f"{other_setting}-seed1"]
        assert shared.base == EXPERIMENTS[other].base
    batch = EXPERIMENTS["batch"].variants
    seen = {v: p["train.batch_per_domain"] * p["train.epochs"] * p["train.steps_per_epoch"]
            for v, p in batch.items()}
    assert len(set(seen.values())) == 1  # the same samples seen by every batch size
    # The confusion runs train a fixed number of steps, whatever the machine's load, and
    # the ramp reaches its weight within them.
    confusion = EXPERIMENTS["confusion"]
    for variant, params in confusion.variants.items():
        cfg = config_preset("cpu", {k: v for k, v in {**confusion.base, **params}.items()
                                    if "." in k})
        assert cfg.train.max_minutes == 0 and cfg.train.epochs * cfg.train.steps_per_epoch > 0
        assert cfg.train.confusion_ramp_steps < cfg.train.epochs * cfg.train.steps_per_epoch
    weights = {p["train.confusion_weight"] for p in confusion.variants.values()}
    assert {0.0, 1e-2} <= weights  # no confusion term, and the paper's weight
    # The divergence search: every change is one step from the report's setting (lr 1e-3,
    # clip 1, guard off), at batch 8 and 32 with the same samples seen; the guarded arm
    # differs from its guard-off twin by the guard alone.
    divergence = EXPERIMENTS["divergence"].variants
    seen = set()
    for variant, params in divergence.items():
        cfg = config_preset("cpu", {k: v for k, v in params.items() if "." in k})
        assert cfg.train.max_minutes == 0
        if "-guard-" in variant:
            assert cfg.train.guard is True
            assert divergence[variant.replace("-guard", "")] == {**params, "train.guard": False}
            continue
        assert cfg.train.guard is False
        assert (cfg.train.lr == 1e-3) != (cfg.train.grad_clip == 1.0), variant
        seen.add(cfg.train.batch_per_domain * cfg.train.epochs * cfg.train.steps_per_epoch)
    assert len(seen) == 1
    assert {p["train.batch_per_domain"] for p in divergence.values()} == {8, 32}
    assert {v for v in divergence if "-guard-" in v} == {
        f"b{b}-lr3e-2-guard-seed{s}" for b in (8, 32) for s in SEEDS}
    assert batch["b8-guard-off-seed1"]["train.guard"] is False
    assert "train.guard" not in batch["b8-seed1"]


def test_a_busy_machine_does_not_fail_a_notebook_on_late_output(tmp_path, monkeypatch):
    """papermill fails a cell whose output messages arrive more than nbclient's 4 s after
    it finished, which happens when every core is busy; the study waits longer."""
    import papermill as pm

    seen = {}

    def execute_notebook(src, out, **kw):
        seen.update(kw)

    monkeypatch.setattr(pm, "execute_notebook", execute_notebook)
    nb = pipeline.NotebookRun("04_listening_tests", {})
    assert pipeline._execute(nb, tmp_path, tmp_path, tmp_path, progress=False) is None
    assert seen["iopub_timeout"] == pipeline.IOPUB_TIMEOUT_S >= 60

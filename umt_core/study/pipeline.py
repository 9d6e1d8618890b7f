"""The study pipeline: run notebooks 01-04 with papermill, publish a report in results/<run>/.

`python -m umt_core study --preset cpu` executes each notebook in order (cwd = project
root, kernel `umt-study`) with the preset's parameters, then writes into results/<run>/:

    <stem>.ipynb      the executed notebook (also when it failed: the partial output)
    <stem>.html       the same, self-contained: figures and audio players embedded
    <stem>.json       written by the notebook itself: its key figures
    metrics.json      {stem: key figures} gathered from every notebook that ran
    provenance.json   git commit, preset, manifest lock hash, versions, device, wall times
    index.html        summary table, links to each notebook, provenance

Data and checkpoints live outside results/ (data/<dataset>/, runs/<run>/), under names
that do not change between runs, so a re-run reuses whatever is still valid: prep is a
no-op when its lock matches and training resumes from last.pt.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jupyter_client.kernelspec import KernelSpecManager

from .. import data
from ..config import parse_value
from ..config import preset as config_preset
from ..paths import json_safe, project_root, resolve
from . import cpu_experiment, experiment_summary
from .report import (
    NotebookRun,
    StudyReport,
    experiment_html,
    gather_metrics,
    index_html,
    lock_info,
    render_html,
    start_context,
)

NOTEBOOKS = ("01_data_prep", "02_train", "03_loss_analysis", "04_listening_tests")
KERNEL = "umt-study"
DEFAULT_MANIFEST = "data_manifests/scores.yaml"
# The cpu study is the CPU translation search's chosen point: its data, domains and
# evaluation clips (its model and training are the cpu config preset).
_CHOSEN = cpu_experiment.POINTS[cpu_experiment.CHOSEN].parameters()
# The dataset a preset's study uses when none is given.
PRESET_MANIFESTS = {"cpu": _CHOSEN["manifest"], "cpu-spectral": _CHOSEN["manifest"]}
# Presets whose (smaller) dataset is prepared under its own name: see `preset_manifest`.
SEPARATE_DATA = {"smoke"}
# The notebook parameter holding dotted config overrides, e.g. {"train.lr": 1e-4}.
CONFIG_OVERRIDES = "overrides"
# Top-level config fields that are overrides too, though their names have no dot.
CONFIG_FIELDS = {"domains", "mu_law"}

# Every preset's notebook parameters, in one place. Besides these, each notebook gets the
# common ones (see `common_parameters`). A notebook receives only the parameters its
# `parameters` cell declares, so a key a notebook does not have is simply not sent to it.
NOTEBOOK_PARAMETERS: dict[str, dict[str, dict[str, Any]]] = {
    # A couple of minutes for the whole chain: the pipeline test.
    "smoke": {
        "01_data_prep": {"minutes_per_domain": 0.1, "test_works": 2, "example_seconds": 1.0},
        "02_train": {"steps": 20},
        "03_loss_analysis": {},
        "04_listening_tests": {"source_domains": ["piano"], "target_domains": ["cello"],
                               "works": 2, "segments": 1, "seconds_per_clip": 0.5,
                               "samples_to_show": 1, "n_trials": 4},
    },
    # The default: the CPU translation search's closest setting (the cpu config preset) on
    # piano and cello of the 8 kHz scores. Training stops at the preset's time budget
    # (train.max_minutes); the evaluation takes every paired test work (8) of both
    # domains, as the search did. Clips stay short so that the rendered pages (audio is
    # embedded) keep the report within a few megabytes.
    "cpu": {
        "01_data_prep": {"example_seconds": 2.0},
        "02_train": {"overrides": {"domains": _CHOSEN["domains"]}},
        "03_loss_analysis": {},
        "04_listening_tests": {
            **{k: _CHOSEN[k] for k in ("source_domains", "target_domains", "works",
                                       "segments", "seconds_per_clip")},
            "samples_to_show": 2, "n_trials": 8},
    },
    # The paper's model on GPUs (notebook 02 launches torchrun when several are visible).
    "paper": {
        "01_data_prep": {"example_seconds": 6.0},
        "02_train": {},
        "03_loss_analysis": {},
        "04_listening_tests": {"segments": 4, "seconds_per_clip": 4.0, "samples_to_show": 4,
                               "n_trials": 16},
    },
}
# The spectral decoder ablation (the cpu-spectral config preset) is studied on the cpu
# study's data, domains and evaluation clips.
NOTEBOOK_PARAMETERS["cpu-spectral"] = NOTEBOOK_PARAMETERS["cpu"]


# Seconds to wait for a cell's last output messages after it finished. papermill fails
# the cell when they are late, and nbclient's default (4 s) is too short on a machine
# whose cores are all busy: a study's notebook 04 failed that way beside two trainings.
IOPUB_TIMEOUT_S = 300


class StudyFailed(RuntimeError):
    """A notebook failed. `details` shows the failing cell and its error; what was
    produced before (and the failed notebook's partial output) is kept."""

    def __init__(self, stem: str, details: str, report: StudyReport):
        super().__init__(f"notebook {stem} failed")
        self.stem = stem
        self.details = details
        self.report = report


# ---------------------------------------------------------------------------- parameters


def default_manifest(preset: str) -> str:
    """The manifest a preset's study uses when none is given."""
    return PRESET_MANIFESTS.get(preset, DEFAULT_MANIFEST)


def common_parameters(preset: str, run: str, manifest: str) -> dict[str, Any]:
    """What every notebook gets when it declares it: paths relative to the project root."""
    return {
        "preset": preset,
        "manifest": manifest,
        "run_name": run,
        "run_dir": f"runs/{run}",
        "results_dir": f"results/{run}",
    }


def parse_values(items: list[str] | None) -> dict[str, Any]:
    """`key=value` strings from the command line; values read as YAML scalars
    (so `steps=20` is an int, `seconds=0.5` a float, `x=null` None) and numbers as
    numbers (`train.lr=5e-4`; see `umt_core.config.parse_value`)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"parameter {item!r} must look like key=value")
        out[key.strip()] = parse_value(value.strip()) if value.strip() else ""
    return out


def declared_parameters(path: Path) -> dict[str, str]:
    """The parameters a notebook declares (name -> the line that declares it), after
    checking it has exactly one `parameters` cell and that it defines `results_dir`.

    Read with Python's own parser: every top-level assignment of the cell counts, whatever
    its comment says (papermill's line matcher gives up on some comments)."""
    import nbformat  # on use: seconds to import (measured); every CLI command imports this

    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{path}: needs exactly one cell tagged 'parameters', found {len(tagged)}")
    source = tagged[0].source
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ValueError(f"{path}: its parameters cell is not valid Python ({e})") from e
    lines = source.splitlines()
    declared = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        for target in targets:
            if isinstance(target, ast.Name):
                declared[target.id] = lines[node.lineno - 1].strip()
    if "results_dir" not in declared:
        raise ValueError(f"{path}: its parameters cell must define results_dir")
    return declared


def plan_study(
    preset: str,
    run: str,
    manifest: str,
    overrides: dict[str, Any] | None = None,
    *,
    notebooks_dir: Path,
    stems: tuple[str, ...] = NOTEBOOKS,
) -> list[NotebookRun]:
    """Each notebook's parameters: the common ones, the preset's, then the overrides,
    each kept only where the notebook declares it. Dotted keys (`train.lr=1e-4`) are
    config overrides: they go into the `overrides` dict of the notebooks that declare
    one. An override no notebook takes is an error (a typo must not pass silently)."""
    if preset not in NOTEBOOK_PARAMETERS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(NOTEBOOK_PARAMETERS)}")
    overrides = dict(overrides or {})
    config = {k: v for k, v in overrides.items() if "." in k or k in CONFIG_FIELDS}
    plain = {k: v for k, v in overrides.items() if k not in config}
    config_preset(preset, config)  # a bad override fails here, before any notebook runs
    plan, used = [], set()
    for stem in stems:
        path = notebooks_dir / f"{stem}.ipynb"
        if not path.is_file():
            raise FileNotFoundError(f"notebook {path} not found")
        declared = declared_parameters(path)
        wanted = {**common_parameters(preset, run, manifest), **NOTEBOOK_PARAMETERS[preset].get(stem, {}),
                  **plain}
        params = {k: v for k, v in wanted.items() if k in declared}
        if config and CONFIG_OVERRIDES in declared:
            params[CONFIG_OVERRIDES] = {**(params.get(CONFIG_OVERRIDES) or {}), **config}
            used |= set(config)
        used |= set(params)
        plan.append(NotebookRun(stem, params))
    unknown = sorted(set(overrides) - used)
    if unknown:
        raise ValueError(f"no notebook among {list(stems)} takes the parameter(s) {unknown}")
    return plan


def preset_manifest(root: Path, manifest: str, preset: str, *, write: bool = True) -> str:
    """The manifest a preset's study uses. A preset with SEPARATE_DATA prepares its cut-down
    dataset under its own name (`<dataset>-<preset>`), beside the full one, so that running
    one preset never rebuilds the other's data: a copy of the manifest with that name is
    written to data/manifests/. Other presets use the manifest as it is."""
    source = resolve(manifest, root)
    if preset not in SEPARATE_DATA or not source.is_file():
        return manifest  # a missing manifest is notebook 01's to report
    derived = root / "data" / "manifests" / f"{source.stem}-{preset}.yaml"
    if write:
        raw = yaml.safe_load(source.read_text())
        raw["dataset"] = f"{raw['dataset']}-{preset}"
        text = (f"# {manifest} with its own dataset name for the {preset} preset; written by "
                f"`python -m umt_core study`\n" + yaml.safe_dump(raw, sort_keys=False))
        derived.parent.mkdir(parents=True, exist_ok=True)
        if not derived.is_file() or derived.read_text() != text:
            derived.write_text(text)
    return str(derived.relative_to(root))


# ----------------------------------------------------------------------------- execution


def ensure_kernel(name: str = KERNEL) -> None:
    """Register the study's Jupyter kernel (this Python) if it is missing."""
    if name in KernelSpecManager().find_kernel_specs():
        return
    subprocess.run(
        [sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", name,
         "--display-name", "UMT study (umt_core)"],
        check=True, stdout=subprocess.DEVNULL,
    )


def run_study(
    preset: str = "cpu",
    run: str | None = None,
    manifest: str | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    root: str | Path | None = None,
    stems: tuple[str, ...] = NOTEBOOKS,
    notebooks_dir: str | Path | None = None,
    progress: bool = False,
    command: str | None = None,
    keep_earlier: bool = False,
    log=print,
) -> StudyReport:
    """Execute the notebooks in order into results/<run>/ and write the report.

    With `keep_earlier` (a re-run of some notebooks, `study --notebooks`), the report
    keeps the notebooks of the earlier run of the same preset and manifest that are not
    re-run: their figures, wall times and parameters, and the earlier provenance, with
    this run appended to its `reruns`.

    Raises `StudyFailed` (after writing everything produced so far, index.html included)
    when a notebook fails; later notebooks are not run.
    """
    root = Path(root or project_root()).resolve()
    run = run or preset
    manifest = preset_manifest(root, manifest or default_manifest(preset), preset)
    nb_dir = Path(notebooks_dir) if notebooks_dir else root / "notebooks"
    plan = plan_study(preset, run, manifest, overrides, notebooks_dir=nb_dir, stems=stems)
    out_dir = root / "results" / run
    out_dir.mkdir(parents=True, exist_ok=True)
    earlier = _earlier_run(out_dir, preset, manifest, stems) if keep_earlier else None
    for name in ("metrics.json", "provenance.json", "index.html"):
        (out_dir / name).unlink(missing_ok=True)
    kept = [] if earlier is None else [
        NotebookRun(stem, earlier.get("parameters", {}).get(stem, {}), "ok",
                    earlier["wall_time_s"][stem])
        for stem in NOTEBOOKS if stem not in stems and stem in earlier["wall_time_s"]
        and (out_dir / f"{stem}.json").is_file()]
    order = {stem: i for i, stem in enumerate(NOTEBOOKS)}
    report = StudyReport(run, preset, out_dir,
                         sorted([*kept, *plan], key=lambda nb: order.get(nb.stem, len(order))),
                         earlier=earlier, rerun=[nb.stem for nb in plan])
    started = time.time()
    # Recorded before anything runs: the commit and tree state the study started from.
    context = start_context(preset, run, manifest, command, root)
    ensure_kernel()

    old_root = os.environ.get("UMT_ROOT")
    os.environ["UMT_ROOT"] = str(root)  # the kernel resolves paths against this root
    try:
        for i, nb in enumerate(plan, 1):
            log(f"[{i}/{len(plan)}] {nb.stem} {_short(nb.parameters)}")
            failure = _execute(nb, nb_dir, out_dir, root, progress)
            render_html(out_dir / f"{nb.stem}.ipynb", out_dir / f"{nb.stem}.html")
            if failure is None and not (out_dir / f"{nb.stem}.json").is_file():
                nb.status = "failed"
                failure = (
                    f"notebook {nb.stem} ran but did not write {out_dir / nb.stem}.json "
                    "(its last cell must write its key figures there)"
                )
            if failure is not None:
                nb.error = failure
                _finish(report, root, manifest, started, context)
                kept = [p for p in (out_dir / f"{nb.stem}.ipynb", out_dir / f"{nb.stem}.html")
                        if p.exists()]
                details = failure + "\nKept: " + ", ".join(
                    str(p.relative_to(root)) for p in [*kept, out_dir / "index.html"])
                raise StudyFailed(nb.stem, details, report)
            log(f"      done in {nb.seconds:.1f} s")
    finally:
        if old_root is None:
            os.environ.pop("UMT_ROOT", None)
        else:
            os.environ["UMT_ROOT"] = old_root
    _finish(report, root, manifest, started, context)
    log(f"Report: {out_dir / 'index.html'}")
    return report


def _execute(nb: NotebookRun, nb_dir: Path, out_dir: Path, root: Path, progress: bool):
    """Run one notebook; returns None, or a description of the failure."""
    # On use: papermill takes seconds to import (measured); every CLI command imports this.
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out = out_dir / f"{nb.stem}.ipynb"
    for stale in (out, out_dir / f"{nb.stem}.html", out_dir / f"{nb.stem}.json"):
        stale.unlink(missing_ok=True)
    # papermill's own reading of the parameters cell warns about comments it cannot parse;
    # the parameters were already read (`declared_parameters`), so keep the log for errors.
    logging.getLogger("papermill.translators").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(nb_dir / f"{nb.stem}.ipynb"), str(out), parameters=nb.parameters,
            kernel_name=KERNEL, cwd=str(root), progress_bar=progress,
            iopub_timeout=IOPUB_TIMEOUT_S,
        )
    except PapermillExecutionError as e:
        nb.status, nb.seconds = "failed", time.perf_counter() - t0
        return describe_failure(nb.stem, e)
    except Exception as e:  # noqa: BLE001 - the kernel died, a timeout, a bad notebook
        nb.status, nb.seconds = "failed", time.perf_counter() - t0
        return f"notebook {nb.stem} failed: {type(e).__name__}: {e}"
    nb.status, nb.seconds = "ok", time.perf_counter() - t0
    return None


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def describe_failure(stem: str, e) -> str:
    """The failing cell's source and its error, readable in a terminal log."""
    source = "\n".join("    " + line for line in (e.source or "").splitlines())
    tb = _ANSI.sub("", "\n".join(e.traceback or []))
    return (
        f"notebook {stem} failed in cell {e.cell_index} (execution count {e.exec_count}):\n"
        f"{source}\n{e.ename}: {e.evalue}\n{tb}"
    )


def _short(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items() if k not in ("results_dir",))


# --------------------------------------------------------------------------- experiments


@dataclass(frozen=True)
class Experiment:
    """Study runs that differ in a few parameters, compared side by side.

    Each variant is a set of overrides (notebook parameters, or dotted config keys) and
    runs as its own study into results/<experiment>/<variant>/ (training in
    runs/<experiment>/<variant>/); results/<experiment>/ gets a comparison table."""

    description: str
    variants: dict[str, dict[str, Any]]
    notebooks: tuple[str, ...] = NOTEBOOKS
    # Parameters of every variant, under the command line's and the variant's own.
    base: dict[str, Any] = field(default_factory=dict)
    # Writes the experiment's own summary into results/<name>/ from every variant found
    # there (instead of the generic comparison of the variants this invocation ran).
    summarize: Callable[[Path], Any] | None = None
    # Prepare each variant's manifest before the variants run (for experiments that do
    # not run notebook 01).
    prepare: bool = False
    # Settings trained by another experiment in exactly this configuration, shown on this
    # one's page from that one's results: {setting: (experiment, its setting)}.
    borrow: dict[str, tuple[str, str]] = field(default_factory=dict)


def _search_experiment() -> Experiment:
    return Experiment(cpu_experiment.DESCRIPTION, cpu_experiment.variants(),
                      notebooks=("02_train", "04_listening_tests"), base=dict(cpu_experiment.BASE),
                      summarize=cpu_experiment.write_summary, prepare=True)


def _seeded_summary(name: str) -> Callable[[Path], Any]:
    """The summary of a seeded experiment: every setting's seeds found under
    results/<name>/ (and its borrowed settings), side by side with the spread."""
    def summarize(root: Path):
        exp = EXPERIMENTS[name]
        borrowed = {}
        for setting, (other, other_setting) in exp.borrow.items():
            seeds = experiment_summary.settings_of(list(EXPERIMENTS[other].variants))
            borrowed[setting] = (other, [v for _, v in seeds.get(other_setting, [])])
        return experiment_summary.write_summary(root, name, exp.description,
                                                list(exp.variants), borrowed)
    return summarize


SEEDS = (1, 2, 3)  # every setting that is compared is trained with these


def _seeded(settings: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each setting once per seed of SEEDS, as variants "<setting>-seed<n>"."""
    return {f"{name}-seed{seed}": {**o, "train.seed": seed}
            for name, o in settings.items() for seed in SEEDS}


# The two decoder kinds on the cpu preset's data, domains, encoder and classifier.
WAVENET = {"model.decoder": "wavenet"}
SPECTRAL = {"model.decoder": "spectral", "model.latent_norm": "frame",
            "train.input_corruption": 0.0}
THIRTY_MINUTES = {"train.max_minutes": 30.0}


def _decoders_experiment() -> Experiment:
    # The decoder ablation (umt_core.spectral): the same 30-minute budget, three seeds each.
    return Experiment(
        "The decoder ablation: the paper's WaveNet decoders against one non-autoregressive "
        "spectral decoder per domain (log-magnitude STFT frames, Griffin-Lim), with the same "
        "encoder, confusion loss, data, domains and 30-minute training budget.",
        variants=_seeded({"wavenet": WAVENET, "spectral": SPECTRAL}),
        base=dict(THIRTY_MINUTES), summarize=_seeded_summary("decoders"))


def _shared_decoder_experiment() -> Experiment:
    # The report's code trained one decoder for every domain. Both decoder kinds, since
    # the spectral one is what trains far enough on a CPU to tell them apart. One decoder
    # per domain is the decoder ablation's configuration: its runs are borrowed.
    return Experiment(
        "One decoder per domain (this project) against the reference implementation's bug: "
        "a single decoder shared by every domain, for the WaveNet and the spectral decoders, "
        "on the same data, domains and 30-minute budget (the per-domain arms are the "
        "decoder ablation's runs).",
        variants=_seeded({
            "wavenet-shared": {**WAVENET, "model.shared_decoder": True},
            "spectral-shared": {**SPECTRAL, "model.shared_decoder": True},
        }),
        base=dict(THIRTY_MINUTES), summarize=_seeded_summary("shared-decoder"),
        borrow={"wavenet-per-domain": ("decoders", "wavenet"),
                "spectral-per-domain": ("decoders", "spectral")})


# The divergence guard switched off (train.guard): spikes are taken and a validation loss
# back at ln 256 is only logged (non-finite steps are still refused: they cannot be taken).
GUARD_OFF = {"train.guard": False}


# Training budgets counted in steps (train.max_minutes off), so that the result of a run
# does not depend on what else the machine is doing: runs can share the cores.
def _steps(n: int, per_epoch: int = 100) -> dict[str, Any]:
    return {"train.max_minutes": 0.0, "train.steps_per_epoch": per_epoch,
            "train.epochs": n // per_epoch}


def _batch_experiment() -> Experiment:
    # The report cut the batch from 32 to 8 to fit two GPUs, at the reference's learning
    # rate (1e-3). Same samples seen: 8 x 1,600 steps = 32 x 400 per domain. Step budgets,
    # not minutes, so that the two batches see the same data whatever the machine.
    batches = {8: 1600, 32: 400}
    settings = {}
    for batch, steps in batches.items():
        common = {"train.batch_per_domain": batch, "train.lr": 1e-3, **_steps(steps)}
        settings[f"b{batch}"] = common
        settings[f"b{batch}-guard-off"] = {**common, **GUARD_OFF}
    return Experiment(
        "Effective batch per domain 8 (the report's) against 32 (the paper's) at the "
        "reference's learning rate and the same samples seen: loss spikes, the guard's "
        "skips and roll-backs, and, with the guard off, divergence.",
        variants=_seeded(settings), summarize=_seeded_summary("batch"))


def _divergence_experiment() -> Experiment:
    # The batch experiment's runs at the reference's learning rate did not diverge: the
    # search for the smallest change that makes them, from the report's setting (batch 8,
    # lr 1e-3, clip 1, guard off) by a higher learning rate or no gradient clipping, at
    # both batches with the same samples seen (3,200 segments per domain; four
    # validations each, where divergence is read).
    settings = {}
    for batch, steps in {8: 400, 32: 100}.items():
        common = {"train.batch_per_domain": batch, **_steps(steps, steps // 4), **GUARD_OFF}
        for lr in ("3e-3", "1e-2", "3e-2"):
            settings[f"b{batch}-lr{lr}"] = {**common, "train.lr": float(lr)}
        settings[f"b{batch}-noclip"] = {**common, "train.lr": 1e-3, "train.grad_clip": math.inf}
        # The breaking point with the guard on: does refusing spikes and rolling back
        # rescue what the guard-off runs lost? Each differs from its guard-off twin only
        # there, and parts from it where `replay_guard` says the guard would act.
        guarded = {k: v for k, v in settings[f"b{batch}-lr3e-2"].items() if k != "train.guard"}
        settings[f"b{batch}-lr3e-2-guard"] = guarded
    return Experiment(
        "The smallest change that makes training diverge, from the report's setting (batch "
        "8 per domain, learning rate 1e-3, gradient values clipped at 1) with the guard "
        "off: a learning rate 3, 10 or 30 times higher, or no clipping; at batch 8 and 32 "
        "with the same samples seen (3,200 segments per domain); and the learning rate 30 times "
        "higher with the guard on, to see whether it rescues what breaks. Divergence: the "
        "validation loss back at ln 256 after learning, the log analysis's criterion; a run "
        "that never got below it 'never learned'.",
        variants=_seeded(settings), summarize=_seeded_summary("divergence"))


CONFUSION_STEPS = 1000


def _confusion_experiment() -> Experiment:
    # 1,000 steps: about 15 minutes of one core each, so that the 15 runs fit a
    # working day on two cores; half of what the 30-minute WaveNet runs reach.
    weights = {"conf0": 0.0, "conf1e-3": 1e-3, "conf1e-2": 1e-2, "conf1e-1": 1e-1}
    settings = {k: {"train.confusion_weight": w} for k, w in weights.items()}
    # The paper's weight, reached by a linear ramp over the first half of training.
    settings["conf1e-2-ramp"] = {"train.confusion_weight": 1e-2,
                                 "train.confusion_ramp_steps": CONFUSION_STEPS // 2}
    return Experiment(
        "The domain-confusion weight: 0, 1e-3, 1e-2 (the paper's), 1e-1 (the cpu preset's) "
        "and a linear ramp to 1e-2 over the first 500 steps, each trained for "
        f"{CONFUSION_STEPS:,} steps on the cpu preset (WaveNet decoders): the leakage probe "
        "against notes kept and the target rate (the trade-off). On the CPU budget no "
        "encoder learns the notes (results/latent-pitch/), so there these runs measure how "
        "the weight moves the leakage and the target rate, not whether a weight makes the "
        "model translate.",
        variants=_seeded(settings), base=_steps(CONFUSION_STEPS),
        summarize=_seeded_summary("confusion"))


EXPERIMENTS: dict[str, Experiment] = {
    "shared-decoder": _shared_decoder_experiment(),
    "cpu-bottleneck": _search_experiment(),
    "decoders": _decoders_experiment(),
    "batch": _batch_experiment(),
    "confusion": _confusion_experiment(),
    "divergence": _divergence_experiment(),
}


def run_experiment(
    name: str,
    preset: str = "cpu",
    manifest: str | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    root: str | Path | None = None,
    progress: bool = False,
    command: str | None = None,
    log=print,
    only: list[str] | None = None,
) -> dict[str, StudyReport]:
    """Run every variant of an experiment (or those named in `only`; a failed variant
    does not stop the others), then write results/<name>/{metrics.json,index.html} (or
    the experiment's own summary). Raises `StudyFailed` at the end if any variant
    failed. A variant may name its own `manifest`; with `Experiment.prepare` each
    manifest is prepared first."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {sorted(EXPERIMENTS)}")
    exp = EXPERIMENTS[name]
    root = Path(root or project_root()).resolve()
    runs = experiment_runs(name, manifest, overrides, only)
    if exp.prepare:
        for m in dict.fromkeys(m or default_manifest(preset) for m, _ in runs.values()):
            data.prep(resolve(m, root), progress=progress, log=log)
    reports, failures = {}, []
    for variant, (variant_manifest, params) in runs.items():
        log(f"== {name}/{variant}")
        try:
            reports[variant] = run_study(
                preset, f"{name}/{variant}", variant_manifest, params,
                root=root, stems=exp.notebooks, progress=progress, command=command, log=log)
        except StudyFailed as e:
            reports[variant] = e.report
            failures.append(e)
            log(f"error: {e.details}")
    out = root / "results" / name
    out.mkdir(parents=True, exist_ok=True)
    if exp.summarize is not None:
        exp.summarize(root)
        log(f"Summary: {out / 'index.html'}")
    else:
        metrics = {v: r.metrics for v, r in reports.items()}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
        page = experiment_html(name, exp.description, exp.variants, reports)
        (out / "index.html").write_text(page, encoding="utf-8")
        log(f"Comparison: {out / 'index.html'}")
    if failures:
        failed = ", ".join(f"{name}/{f.report.run.split('/')[-1]} ({f.stem})" for f in failures)
        raise StudyFailed(failures[0].stem, f"variants failed: {failed}", failures[0].report)
    return reports


def _earlier_run(out_dir: Path, preset: str, manifest: str, stems) -> dict | None:
    """The provenance of the run in `out_dir` when it is of the same preset and manifest
    and some of its notebooks are not among `stems` (None otherwise)."""
    try:
        prov = json.loads((out_dir / "provenance.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(prov, dict) or prov.get("preset") != preset \
            or prov.get("manifest") != manifest \
            or not isinstance(prov.get("wall_time_s"), dict) \
            or not set(prov["wall_time_s"]) - set(stems):
        return None
    return prov


def _finish(report: StudyReport, root: Path, manifest: str, started: float, context: dict):
    """Write metrics.json, provenance.json and index.html for what has run so far."""
    out = report.results_dir
    report.metrics, problems = gather_metrics(out, [nb.stem for nb in report.notebooks])
    this = {nb.stem: _round(nb.seconds) for nb in report.notebooks}
    status = "ok" if report.ok else "failed"
    earlier = report.earlier
    if earlier is None:
        report.provenance = {
            **context,
            "manifest_lock": lock_info(root, manifest),
            "wall_time_s": this,
            "total_wall_time_s": _round(time.time() - started),
            "status": status,
            "problems": problems,
        }
    else:  # a re-run of some notebooks: the earlier run's record, and this one appended
        rerun = {"notebooks": list(report.rerun),
                 **{k: context.get(k) for k in ("command", "git", "started")},
                 "wall_time_s": {k: v for k, v in this.items() if k in report.rerun},
                 "status": status}
        report.provenance = {
            **earlier,
            "manifest_lock": lock_info(root, manifest),
            "wall_time_s": this,
            "status": status,
            "problems": problems,
            "reruns": [*earlier.get("reruns", []), rerun],
        }
    report.provenance["parameters"] = {nb.stem: nb.parameters for nb in report.notebooks}
    (out / "metrics.json").write_text(json.dumps(report.metrics, indent=2, allow_nan=False) + "\n")
    (out / "provenance.json").write_text(
        json.dumps(json_safe(report.provenance, str), indent=2, allow_nan=False) + "\n")
    (out / "index.html").write_text(index_html(report), encoding="utf-8")


def experiment_runs(name: str, manifest: str | None, overrides: dict[str, Any] | None,
                    only: list[str] | None = None) -> dict[str, tuple[str | None, dict]]:
    """{variant: (manifest, parameters)}: the experiment's base parameters, then the
    command line's, then the variant's own (its `manifest` replaces the run's)."""
    exp = EXPERIMENTS[name]
    runs = {}
    for variant in experiment_variants(name, only):
        params = {**exp.base, **(overrides or {}), **exp.variants[variant]}
        runs[variant] = (params.pop("manifest", None) or manifest, params)
    return runs


def experiment_variants(name: str, only: list[str] | None = None) -> list[str]:
    """The variants of experiment `name` to run: all, or those in `only` (checked)."""
    variants = list(EXPERIMENTS[name].variants)
    if not only:
        return variants
    unknown = [v for v in only if v not in variants]
    if unknown:
        raise ValueError(f"experiment {name} has no variant(s) {unknown}; choose from {variants}")
    return [v for v in variants if v in only]


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


# ------------------------------------------------------------------------------------ CLI


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help="run notebooks 01-04 with papermill and publish results/<run>/",
        description="Execute the study's notebooks in order with a preset's parameters and "
        "write executed notebooks, HTML, metrics.json and index.html to results/<run>/.",
    )
    p.add_argument("--preset", action="append", default=None, choices=sorted(NOTEBOOK_PARAMETERS),
                   help="smoke: the whole chain on a tiny model, in minutes (its figures are "
                        "meaningless); cpu: about an hour on 2 cores; cpu-spectral: the "
                        "spectral decoder ablation; paper: the paper's model, for GPUs. "
                        "Given twice or more, the presets' studies run at the same time, "
                        "the cores shared out, and results/index.html shows them side by "
                        "side (make study: cpu and cpu-spectral) (None: cpu)")
    p.add_argument("--run", default=None, help="run name (None: the preset's name); with "
                   "several --preset, each run is <preset>-RUN and the page results/index-RUN.html")
    p.add_argument("--manifest", default=None,
                   help=f"dataset manifest (None: {PRESET_MANIFESTS['cpu']} for the cpu "
                   f"preset, {DEFAULT_MANIFEST} for the others; smoke prepares a small copy "
                   "under its own name)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="notebook parameter, sent to every notebook that declares it")
    p.add_argument("--notebooks", default=None,
                   help="comma-separated subset to run, by stem or number, e.g. 03,04 (None: all four)")
    p.add_argument("--experiment", default=None, choices=sorted(EXPERIMENTS),
                   help="run every variant of a named comparison into results/<experiment>/ (None: a single study)")
    p.add_argument("--variants", default=None,
                   help="with --experiment: comma-separated subset of its variants to run (None: all)")
    p.add_argument("--summarize", action="store_true",
                   help="with --experiment: only rebuild results/<experiment>/ from the "
                        "variants' results already there; with several --preset: only "
                        "rebuild results/index.html from theirs")
    p.add_argument("--dry-run", action="store_true",
                   help="print each notebook's parameters and stop")
    p.set_defaults(func=_cli_study)


def _select(spec: str | None) -> tuple[str, ...]:
    if not spec:
        return NOTEBOOKS
    chosen = []
    for part in (s.strip() for s in spec.split(",") if s.strip()):
        match = [s for s in NOTEBOOKS if s == part or s.split("_", 1)[0] == part.zfill(2)]
        if not match:
            raise ValueError(f"unknown notebook {part!r}; choose from {list(NOTEBOOKS)}")
        chosen += match
    return tuple(s for s in NOTEBOOKS if s in chosen)


def _cli_study(args: argparse.Namespace) -> int:
    from ..outputs import output_dir

    presets = args.preset or ["cpu"]
    if len(set(presets)) > 1:
        return _cli_side_by_side(args, list(dict.fromkeys(presets)))
    args.preset = presets[0]
    overrides = parse_values(args.param)
    stems = _select(args.notebooks)
    command = " ".join(["python -m umt_core", *sys.argv[1:]])
    if args.experiment and (args.run or args.notebooks):
        raise ValueError("--experiment names its own runs and notebooks; drop --run/--notebooks")
    if (args.variants or args.summarize) and not args.experiment and len(presets) < 2:
        raise ValueError("--variants and --summarize go with --experiment")
    only = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    if args.summarize:
        exp = EXPERIMENTS[args.experiment]
        root = project_root()
        if exp.summarize is None:
            raise ValueError(f"experiment {args.experiment} has no summary of its own")
        exp.summarize(root)
        print(f"Summary: {root / 'results' / args.experiment / 'index.html'}")
        return 0
    if args.dry_run:
        root = project_root()
        runs = {args.run or args.preset: (args.manifest, overrides)}
        if args.experiment:
            stems = EXPERIMENTS[args.experiment].notebooks
            runs = {f"{args.experiment}/{v}": run for v, run in
                    experiment_runs(args.experiment, args.manifest, overrides, only).items()}
        for run, (run_manifest, params) in runs.items():
            manifest = preset_manifest(root, run_manifest or default_manifest(args.preset),
                                       args.preset,
                                       write=False)
            for nb in plan_study(args.preset, run, manifest, params,
                                 notebooks_dir=root / "notebooks", stems=stems):
                print(f"{run} {nb.stem}: {json.dumps(nb.parameters)}")
        return 0
    root = project_root()
    for folder in ("runs", "data", "results"):  # before any notebook runs
        output_dir(root / folder, f"{folder}/ folder")
    if not args.experiment:
        output_dir(root / "results" / (args.run or args.preset), "results folder")
    try:
        if args.experiment:
            run_experiment(args.experiment, args.preset, args.manifest, overrides,
                           progress=sys.stderr.isatty(), command=command, only=only)
        else:
            run_study(args.preset, args.run, args.manifest, overrides, stems=stems,
                      progress=sys.stderr.isatty(), command=command,
                      keep_earlier=bool(args.notebooks))
    except StudyFailed as e:
        print(f"error: {e.details}", file=sys.stderr)
        return 1
    return 0


def _cli_side_by_side(args: argparse.Namespace, presets: list[str]) -> int:
    from ..outputs import output_dir
    from .side_by_side import run_side_by_side, write_side_by_side

    if args.notebooks or args.experiment or args.variants or args.dry_run:
        raise ValueError("several --preset run each preset's whole study (--run NAME: as "
                         "<preset>-NAME); drop --notebooks, --experiment, --variants and "
                         "--dry-run (or give one --preset)")
    parse_values(args.param)  # a malformed -p fails here, not in every child
    root = project_root()
    if args.summarize:  # the page only, from the presets' results already there
        page = write_side_by_side(root, presets, name=args.run)
        print(f"Side-by-side report: {page}")
        return 0
    for folder in ("runs", "data", "results"):
        output_dir(root / folder, f"{folder}/ folder")
    manifests = {preset_manifest(root, args.manifest or default_manifest(p), p, write=False)
                 for p in presets}
    if len(manifests) > 1:
        raise ValueError(f"the presets {presets} train on different datasets {sorted(manifests)}; "
                         "a side-by-side study compares them on one (give --manifest)")
    manifest = manifests.pop()

    def prepare():
        data.prep(resolve(manifest, root), progress=sys.stderr.isatty())

    run_side_by_side(presets, root=root, manifest=args.manifest, params=args.param,
                     prepare=prepare, name=args.run)  # SideBySideFailed: exit code 1, the failed ones named
    return 0

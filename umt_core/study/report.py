"""The study's report: notebooks rendered to self-contained HTML, key figures gathered,
provenance recorded, and the index pages of results/<run>/ and results/<experiment>/."""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import html
import importlib.metadata
import json
import math
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import load_manifest
from ..device import cpu_name
from .verdict import is_reference_figure, verdict_html

# Package versions recorded in the provenance.
PACKAGES = (
    "umt_core", "torch", "torchaudio", "numpy", "librosa", "soundfile", "music21",
    "pyfluidsynth", "scikit-learn", "pandas", "matplotlib", "papermill", "nbconvert",
    "nbclient", "ipykernel",
)


@dataclass
class NotebookRun:
    """One notebook of a study run: what it was given and how it went."""

    stem: str
    parameters: dict[str, Any]
    status: str = "not run"  # "ok" | "failed" | "not run"
    seconds: float | None = None
    error: str | None = None


@dataclass
class StudyReport:
    """A study run: its notebooks, gathered key figures and provenance."""

    run: str
    preset: str
    results_dir: Path
    notebooks: list[NotebookRun]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    # a re-run of some notebooks (study --notebooks): the earlier run's provenance, and
    # the notebooks run now
    earlier: dict[str, Any] | None = None
    rerun: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(nb.status == "ok" for nb in self.notebooks)


# ----------------------------------------------------------------------------- rendering


def render_html(ipynb: Path, html_path: Path) -> Path | None:
    """A self-contained HTML page of an executed notebook: figures are inline PNGs,
    audio players carry their WAV as base64, so the page plays offline in a browser."""
    if not ipynb.is_file():
        return None
    # On use: nbformat and nbconvert take seconds to import (measured), and every CLI
    # command imports this module.
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(ipynb, as_version=4)
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    body, _ = exporter.from_notebook_node(
        nb, resources={"metadata": {"name": ipynb.stem, "path": str(ipynb.parent)}}
    )
    html_path.write_text(body, encoding="utf-8")
    return html_path


def gather_metrics(out_dir: Path, stems) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """{stem: key figures} from each `<stem>.json`; non-finite numbers become null and
    are listed as problems (metrics.json stays valid JSON)."""
    metrics, problems = {}, []
    for stem in stems:
        path = out_dir / f"{stem}.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            problems.append(f"{path.name}: not a JSON object")
            continue
        for key, value in data.items():
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"{stem}.{key} = {value}")
                data[key] = None
        metrics[stem] = data
    return metrics, problems


# ---------------------------------------------------------------------------- provenance


def start_context(preset: str, run: str, manifest: str, command: str | None,
                  root: Path) -> dict[str, Any]:
    """Provenance known before anything runs: the commit and tree state the study started
    from, the software and the machine."""
    return {
        "run": run,
        "preset": preset,
        "manifest": manifest,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "git": git_info(root),
        "packages": package_versions(),
        "device": device_info(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def git_info(root: Path) -> dict[str, Any]:
    """Commit and whether the tree differs from it (results/ excluded: the report itself)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], check=False,
                              capture_output=True, text=True, timeout=30)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--", ".", ":(exclude)results")
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def lock_info(root: Path, manifest: str) -> dict[str, Any]:
    """The data lock file written by prep and its sha256 (None when there is none yet)."""
    path = _lock_path(root, manifest)
    if path is None or not path.is_file():
        return {"path": None, "sha256": None}
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    shown = path.relative_to(root) if path.is_relative_to(root) else path
    return {"path": str(shown), "sha256": digest}


def _lock_path(root: Path, manifest: str) -> Path | None:
    try:
        return load_manifest(Path(manifest) if Path(manifest).is_absolute()
                             else root / manifest).lock_path
    except (ValueError, OSError):  # a broken manifest is notebook 01's to report
        return None


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "gpus": []}
    try:
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except (ImportError, RuntimeError) as e:
        info["gpus"] = [f"unknown ({e})"]
    return info


# ------------------------------------------------------------------------------ index.html

_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 980px; margin: 2em auto; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 1.6em; font-size: 1.2em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { padding: .25em .8em;
  border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #1a7f37; } .failed { color: #c62828; font-weight: bold; } .muted { color: #777; }
pre { background: #f6f6f6; padding: .7em; overflow-x: auto; font-size: 13px; }
code { font-size: 13px; } summary { cursor: pointer; color: #555; }
"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    head = "<tr>" + "".join(f"<th>{h}</th>" for h in headers) + "</tr>" if headers else ""
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table>{head}{body}</table>"


# What each notebook is, for the index page.
NOTEBOOK_TITLES = {
    "01_data_prep": "the dataset: durations, spectrograms, every instrument playing the same notes",
    "02_train": "training: loss curves, validation, the divergence guard's events",
    "03_loss_analysis": "loss analysis: spikes, restarts, divergence, best epoch",
    "04_listening_tests": "translations to listen to, objective metrics, listening test",
}

# The figures the index page shows first (patterns, per notebook); every figure follows
# in a folded table. 04's figures are prefixed by the model's name.
HEADLINES = {
    "01_data_prep": ("dataset", "domains", "total_minutes", "prep_seconds"),
    "02_train": ("steps", "epochs", "wall_seconds", "best_val_recon", "final_val_classifier_acc",
                 "skipped_steps", "rollbacks"),
    "03_loss_analysis": ("runs", "spikes", "divergent_runs", "restarted_runs", "this_run_*"),
    "04_listening_tests": ("split", "temperature", "*_translation_success*",
                           "*_translation_instrument*", "*_translation_clean*",
                           "*_translation_notes_kept_score*", "*_translation_notes_kept_truth*",
                           "*_translation_source_chroma", "*_ground_truth_success",
                           "*_gt_snr5_clean", "*_shaped_noise_clean", "*_source_instrument",
                           "*_unrelated_notes", "threshold_*", "classifier_chance",
                           "latent_probe_accuracy", "latent_probe_chance", "latent_use_gap",
                           "listening_demo", "demo_listening_*"),
}


def headline_figures(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The key figures that match HEADLINES, in the notebook's own order."""
    out = {}
    for stem, figures in metrics.items():
        patterns = HEADLINES.get(stem, ())
        chosen = {k: v for k, v in figures.items()
                  if any(fnmatch.fnmatchcase(k, pat) for pat in patterns)}
        if chosen:
            out[stem] = chosen
    return out


def _with_intervals(figures: dict[str, Any]) -> dict[str, str]:
    """Figures as text, each `<name>_ci_low` and `<name>_ci_high` pair folded into its
    figure's row as "value [low, high]"."""
    out = {}
    for key, value in figures.items():
        base = key.removesuffix("_ci_low").removesuffix("_ci_high")
        if base != key and base in figures:
            continue
        text = _fmt(value)
        if f"{key}_ci_low" in figures and f"{key}_ci_high" in figures:
            text += f" [{_fmt(figures[f'{key}_ci_low'])}, {_fmt(figures[f'{key}_ci_high'])}]"
        out[key] = text
    return out


def _figure_rows(metrics: dict[str, dict[str, Any]], mark=None) -> list[list[str]]:
    """Rows (notebook, figure, value [interval]); `mark(stem, key)` true adds a dagger to
    the figure."""
    e = html.escape
    return [
        [e(stem) if i == 0 else "", e(key) + (" &dagger;" if mark and mark(stem, key) else ""),
         e(text)]
        for stem, figures in metrics.items()
        for i, (key, text) in enumerate(_with_intervals(figures).items())
    ]


def index_html(report: StudyReport) -> str:
    """The report's front page: notebooks, summary table, provenance."""
    e = html.escape
    p = report.provenance
    status = "ok" if report.ok else "failed"

    nb_rows = []
    for nb in report.notebooks:
        out = report.results_dir
        links = " · ".join(
            f'<a href="{e(nb.stem)}{ext}">{label}</a>'
            for ext, label in ((".html", "report"), (".ipynb", "notebook"))
            if (out / f"{nb.stem}{ext}").exists()
        ) or '<span class="muted">-</span>'
        secs = "" if nb.seconds is None else f"{nb.seconds:.1f}"
        nb_rows.append([e(nb.stem), e(NOTEBOOK_TITLES.get(nb.stem, "")),
                        f'<span class="{nb.status.replace(" ", "-")}">{nb.status}</span>',
                        secs, links])

    opening = verdict_html(report.preset, report.metrics, report.results_dir)
    mark = is_reference_figure if "&dagger;" in opening else None
    headline = headline_figures(report.metrics)
    fig_rows = _figure_rows(headline or report.metrics, mark)
    all_rows = _figure_rows(report.metrics, mark) if headline else []
    git = p.get("git", {})
    commit = git.get("commit") or "not a git checkout"
    if git.get("dirty"):
        commit += " + uncommitted changes"
    lock = p.get("manifest_lock", {})
    dev = p.get("device", {})
    details = "" if not all_rows else (
        "<details><summary>Every key figure</summary>"
        + _table(["notebook", "figure", "value"], all_rows, numeric={2}) + "</details>")
    prov_rows = [
        ["git commit", e(commit)],
        ["preset", e(report.preset)],
        ["manifest", e(str(p.get("manifest")))],
        ["data lock", e(f"{lock['path']} (sha256 {lock['sha256']})" if lock.get("sha256")
                        else "none found")],
        ["device", e(f"{dev.get('cpu')} ({dev.get('cpu_count')} cores)"
                     + (f"; GPUs: {', '.join(dev['gpus'])}" if dev.get("gpus") else "; no GPU"))],
        ["python", e(f"{p.get('python')} on {p.get('platform')}")],
        ["packages", e(", ".join(f"{k} {v}" for k, v in p.get("packages", {}).items() if v))],
        ["started (UTC)", e(str(p.get("started")))],
        ["total wall time", e(f"{p.get('total_wall_time_s')} s")],
    ]
    if p.get("command"):
        prov_rows.insert(0, ["command", f"<code>{e(p['command'])}</code>"])

    failures = "".join(
        f"<h2>{e(nb.stem)} failed</h2><pre>{e(nb.error)}</pre>"
        for nb in report.notebooks if nb.error
    )
    problems = "".join(f"<li>{e(x)}</li>" for x in p.get("problems", []))
    params = "".join(
        f"<tr><td>{e(nb.stem)}</td><td><code>{e(json.dumps(nb.parameters))}</code></td></tr>"
        for nb in report.notebooks
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>UMT study: {e(report.run)}</title><style>{_CSS}</style></head><body>
<h1>Universal Music Translation Network: a reproducible study</h1>
<p>Run <b>{e(report.run)}</b>, preset <b>{e(report.preset)}</b> —
status <span class="{status}">{status}</span>.
Each notebook below was executed by papermill; its page embeds its figures and audio.</p>
{opening}
<h2>Notebooks</h2>
{_table(["notebook", "", "status", "wall time (s)", "open"], nb_rows, numeric={3})}
{failures}
<h2>Summary</h2>
{_table(["notebook", "figure", "value"], fig_rows, numeric={2}) if fig_rows
 else '<p class="muted">No figures recorded.</p>'}
{details}
{f"<p>Problems:</p><ul>{problems}</ul>" if problems else ""}
<h2>Provenance</h2>
{_table([], prov_rows)}
<h2>Parameters</h2>
<table>{params}</table>
<p class="muted">Machine-readable: <a href="metrics.json">metrics.json</a>,
<a href="provenance.json">provenance.json</a>.</p>
</body></html>
"""


def experiment_html(name: str, description: str, variants: dict[str, dict[str, Any]],
                    reports: dict[str, StudyReport]) -> str:
    """One row per key figure, one column per variant, links to each variant's report:
    first the headline figures, then (folded) every figure whose value differs."""
    e = html.escape
    names = list(reports)

    # Notebook 04 names the figures of a model after its run ("<run>-best_..."); the
    # variants' runs are named after the variants, so align those figures as "<run>-...".
    def generic(metrics: dict[str, dict[str, Any]], variant: str) -> dict[tuple, Any]:
        return {(stem, "<run>-" + key[len(variant) + 1:] if key.startswith(variant + "-")
                 else key): value
                for stem, figs in metrics.items() for key, value in figs.items()}

    def rows(metrics_of, only_differing: bool) -> list[list[str]]:
        table = {v: generic(metrics_of(reports[v]), v) for v in names}
        everything = {v: generic(reports[v].metrics, v) for v in names}
        out = []
        for stem, key in dict.fromkeys(k for v in names for k in table[v]):
            values = [everything[v].get((stem, key), "") for v in names]
            if only_differing and len({_fmt(x) for x in values}) < 2:
                continue
            out.append([e(f"{stem}: {key}")] + [e(_fmt(x)) for x in values])
        return out

    heads = ["figure"] + [
        f'<a href="{e(v)}/index.html">{e(v)}</a>'
        + ("" if reports[v].ok else ' <span class="failed">failed</span>')
        for v in names
    ]
    numeric = set(range(1, len(heads)))
    headline = rows(lambda r: headline_figures(r.metrics), only_differing=False)
    differing = rows(lambda r: r.metrics, only_differing=len(names) > 1)
    settings = "".join(
        f"<tr><td>{e(v)}</td><td><code>{e(json.dumps(variants[v]))}</code></td></tr>"
        for v in names
    )
    folded = "" if not differing else (
        "<details><summary>Every key figure that differs between variants</summary>"
        + _table(heads, differing, numeric) + "</details>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>UMT study experiment: {e(name)}</title><style>{_CSS}</style></head><body>
<h1>Experiment {e(name)}</h1>
<p>{e(description)}</p>
<h2>Variants</h2><table>{settings}</table>
<h2>Key figures</h2>
{_table(heads, headline or differing, numeric)}
{folded if headline else ""}
<p class="muted">Machine-readable: <a href="metrics.json">metrics.json</a>.</p>
</body></html>
"""

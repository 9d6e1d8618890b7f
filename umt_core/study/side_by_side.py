"""The default study: the paper's WaveNet decoder (the `cpu` preset) and the spectral
decoder ablation (`cpu-spectral`) trained at the same time, one core each, and reported
side by side on the same test clips.

`run_side_by_side` prepares the dataset once, then runs one `python -m umt_core study
--preset P` child per preset with the machine's cores shared out (each child's notebooks
see ``OMP_NUM_THREADS``), prefixes and forwards their output, and writes
``results/index.html``: the metric table of both models (with intervals), and for each
example clip the source, the ground truth and each model's translation as audio players
and spectrograms. Each preset's own report stays in ``results/<preset>/``.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..child_processes import die_with_parent
from ..errors import Failure
from ..paths import write_text_atomic
from .experiment_summary import findings_html
from .figures import LATENT_ROWS, ROWS, TRAIN_ROWS, format_figure, model_figure
from .report import _CSS, _table

# The default study, in the order of the page's columns.
DEFAULT_PRESETS = ("cpu", "cpu-spectral")
PAGE = "index.html"  # in results/
DESCRIPTIONS = {
    "cpu": "WaveNet decoders (the paper's model, scaled to the CPU)",
    "cpu-spectral": "spectral decoders (an ablation: log-magnitude STFT frames and "
                    "Griffin-Lim instead of WaveNet; not the paper's model)",
}
class SideBySideFailed(Failure):
    """One study or more failed (exit code 1); the page is written all the same."""


def threads_per_child(n_children: int, cores: int | None = None) -> int:
    """The cores shared out between children that run at the same time (at least one)."""
    return max(1, (cores or os.cpu_count() or 1) // max(n_children, 1))


def run_name(preset: str, name: str | None = None) -> str:
    """A preset's run in a side-by-side study: the preset's name, or "<preset>-<name>"
    for a named one (e.g. another seed: --run seed3 -p train.seed=3)."""
    return f"{preset}-{name}" if name else preset


def page_name(name: str | None = None) -> str:
    """results/index.html for the default study, results/index-<name>.html for a named one."""
    return f"index-{name}.html" if name else PAGE


def child_command(preset: str, manifest: str | None, params: list[str],
                  name: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "umt_core", "study", "--preset", preset]
    if name:
        cmd += ["--run", run_name(preset, name)]
    if manifest:
        cmd += ["--manifest", manifest]
    for p in params:
        cmd += ["-p", p]
    return cmd


def _forward(stream, prefix: str, log: Callable[[str], Any]) -> None:
    for line in iter(stream.readline, ""):
        log(f"[{prefix}] {line.rstrip()}")
    stream.close()


def run_side_by_side(presets: tuple[str, ...] | list[str] = DEFAULT_PRESETS, *,
                     root: Path, manifest: str | None = None, params: list[str] | None = None,
                     log: Callable[[str], Any] = print, prepare: Callable[[], Any] | None = None,
                     cores: int | None = None, name: str | None = None) -> Path:
    """Run the presets' studies at the same time and write results/index.html (with a
    `name`: runs "<preset>-<name>" and results/index-<name>.html).

    `prepare` (the dataset's prep) runs once first, so that the children only verify it.
    Raises `SideBySideFailed` naming each preset whose study failed (after writing the
    page from what the others produced)."""
    presets = list(dict.fromkeys(presets))
    if len(presets) < 2:
        raise ValueError(f"a side-by-side study needs two presets or more, got {presets}")
    if prepare is not None:
        prepare()
    threads = threads_per_child(len(presets), cores)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log(f"Side by side: {', '.join(presets)}, {threads} thread(s) each")
    children, readers, started = {}, [], time.perf_counter()
    try:
        # Every child is spawned before the first reader thread starts, so `preexec_fn`
        # (a child killed with its parent: no orphan keeps training) never runs beside a
        # thread of this process.
        for p in presets:
            children[p] = subprocess.Popen(
                child_command(p, manifest, params or [], name), cwd=root, env=env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1,
                preexec_fn=functools.partial(die_with_parent, os.getpid()))  # noqa: PLW1509
        for p, child in children.items():
            t = threading.Thread(target=_forward, args=(child.stdout, p, log), daemon=True)
            t.start()
            readers.append(t)
        codes = {p: c.wait() for p, c in children.items()}
    finally:
        for c in children.values():
            if c.poll() is None:
                c.terminate()
        for c in children.values():
            try:
                c.wait(timeout=30)
            except subprocess.TimeoutExpired:
                c.kill()
    for t in readers:
        t.join(timeout=5)
    minutes = (time.perf_counter() - started) / 60
    page = write_side_by_side(root, presets, wall_minutes=minutes, name=name)
    log(f"Side-by-side report: {page} ({minutes:.1f} min)")
    failed = [p for p, code in codes.items() if code != 0]
    if failed:
        raise SideBySideFailed(f"the studies of {failed} failed (their reports are in "
                               + ", ".join(f"results/{run_name(p, name)}/" for p in failed) + ")")
    return page


# --------------------------------------------------------------------------- the page
def write_side_by_side(root: Path, presets: list[str], wall_minutes: float | None = None,
                       name: str | None = None) -> Path:
    """results/index.html (or index-<name>.html) from the presets' runs' results
    (metrics, examples)."""
    page = root / "results" / page_name(name)
    write_text_atomic(page, side_by_side_html(root, presets, wall_minutes=wall_minutes,
                                              name=name))
    return page


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _figure(figures: dict[str, Any], suffix: str, kind: str) -> str:
    return format_figure(model_figure(figures, suffix), kind)


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else html.escape(str(value))


_EXAMPLE = re.compile(r"^(\d+)_(.+)_(source|translation|ground_truth)\.wav$")


def examples(results_dir: Path) -> dict[str, dict[str, Path]]:
    """{clip key ("<work>@<start>_<src>-to-<tgt>"): {role: wav}} of a run's examples."""
    out: dict[str, dict[str, Path]] = {}
    for wav in sorted((results_dir / "examples").glob("*.wav")):
        m = _EXAMPLE.match(wav.name)
        if m:
            out.setdefault(m.group(2), {})[m.group(3)] = wav
    return out


def audio_tag(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<audio controls preload="none" src="data:audio/wav;base64,{data}"></audio>'


def _spectrogram_tag(path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..audio import read_audio
    from ..signals import DB_FLOOR, N_MELS, logmel

    audio, sr = read_audio(path)
    audio = audio.mean(axis=1) if audio.ndim == 2 else audio
    fig, ax = plt.subplots(figsize=(3.2, 1.9))
    ax.imshow(logmel(np.asarray(audio, dtype=np.float32), sr), origin="lower", aspect="auto",
              cmap="magma", vmin=DB_FLOOR, vmax=0, extent=[0, len(audio) / sr, 0, N_MELS])
    ax.set_xlabel("seconds", fontsize=7)
    ax.set_ylabel("mel band", fontsize=7)
    ax.tick_params(labelsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return f'<img alt="log-mel spectrogram" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


# Runs whose starts lie this close were trained together (one side-by-side study).
TOGETHER_S = 600


def how_trained(provenance: dict[str, dict[str, Any]]) -> str:
    """Whether the page's runs shared the machine, read from their provenance (a
    side-by-side study starts its children within seconds of each other): the runs'
    budgets are minutes, so their figures depend on the cores each one had."""
    starts = {}
    for preset, prov in provenance.items():
        try:
            starts[preset] = datetime.fromisoformat(str(prov["started"])).timestamp()
        except (KeyError, ValueError):
            return ("Not every run has been made (or its provenance.json is missing): a "
                    "column without figures is a preset still to run.")
    if max(starts.values()) - min(starts.values()) <= TOGETHER_S:
        return ("The models were trained at the same time on the same data, domains and "
                "machine, its cores shared out.")
    return ("The models were trained in separate runs (each column's start and command "
            "are below): the same data and domains, but not side by side, so a budget in "
            "minutes bought each run what the machine gave it then.")


def side_by_side_html(root: Path, presets: list[str], wall_minutes: float | None = None,
                      name: str | None = None) -> str:
    e = html.escape
    results = root / "results"
    runs = {p: run_name(p, name) for p in presets}
    metrics = {p: _read_json(results / runs[p] / "metrics.json") for p in presets}
    prov = {p: _read_json(results / runs[p] / "provenance.json") for p in presets}
    heads = ["", *[f'<a href="{e(runs[p])}/index.html">{e(runs[p])}</a>' for p in presets]]
    rows = [[e(label), *[_figure(metrics[p].get("04_listening_tests", {}), suffix, kind)
                         for p in presets]] for label, suffix, kind in ROWS]
    rows += [[e(label), *[_plain(metrics[p].get("04_listening_tests", {}).get(key))
                          for p in presets]] for label, key in LATENT_ROWS]
    rows += [[e(label), *[_plain(metrics[p].get("02_train", {}).get(key)) for p in presets]]
             for label, key in TRAIN_ROWS]
    rows += [["git commit", *[e(str(prov[p].get("git", {}).get("commit", "-"))[:10]
                                + (" + uncommitted" if prov[p].get("git", {}).get("dirty") else ""))
                              for p in presets]],
             ["started", *[e(str(prov[p].get("started", "-"))) for p in presets]],
             ["status", *[e(str(prov[p].get("status", "missing"))) for p in presets]]]
    numeric = set(range(1, len(heads)))

    ex = {p: examples(results / runs[p]) for p in presets}
    shared = [k for k in ex[presets[0]] if all(k in ex[p] for p in presets)]
    clip_html = []
    for key in shared:
        first = ex[presets[0]][key]
        panels = [("source", first.get("source")), ("ground truth", first.get("ground_truth"))]
        panels += [(f"{runs[p]}: translation", ex[p][key].get("translation")) for p in presets]
        cells = "".join(
            f"<td><b>{e(label)}</b><br>{audio_tag(wav)}<br>{_spectrogram_tag(wav)}</td>"
            for label, wav in panels if wav is not None)
        clip_html.append(f"<h3>{e(key.replace('_', ' '))}</h3><table><tr>{cells}</tr></table>")
    clips = "".join(clip_html) or (
        '<p class="muted">No example clip is shared by every run (each run writes its '
        "examples in notebook 04).</p>")
    described = "".join(f"<li><b>{e(runs[p])}</b>: {e(DESCRIPTIONS.get(p, p), quote=False)}</li>"
                        for p in presets)
    commands = {str(prov[p].get("command")) for p in presets if prov[p].get("command")}
    command = "".join(f"<p>Command: <code>{e(c)}</code></p>" for c in sorted(commands))
    wall = "" if wall_minutes is None else f"<p>Wall time of the side-by-side run: {wall_minutes:.1f} min.</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>UMT study: side by side</title><style>{_CSS}</style></head><body>
<h1>Universal Music Translation Network: the default study</h1>
<p>{e(how_trained(prov), quote=False)} Every column is evaluated on the same paired test clips
with the same calibrated criteria (thresholds chosen on the validation works; Wilson
intervals on rates, a bootstrap over works on means):</p>
<ul>{described}</ul>
{wall}
{command}
<h2>Metrics</h2>
{_table(heads, rows, numeric=numeric)}
<p class="muted">Each column's full report, with every figure, the calibration table and
its provenance: the link in its heading. What the figures mean and where each run stands
against the paper: results/README.md.</p>
<h2>The same test clips</h2>
{clips}
<h2>Findings: the controlled experiments</h2>
<p>The report's questions answered in words (as in results/README.md), then each
experiment's headline figures: every setting of an experiment trained on the same data
and budget; each cell the mean ± sd over its seeds (range) and n, the number of seeds (a
setting with one seed is a search point, not a comparison).</p>
{findings_html(results)}
</body></html>
"""

"""The opening of a study's index.html: what was trained, on what, for how long, what
the headline translation figures say, and one translation to hear and see.

Built from the key figures the notebooks recorded (`metrics.json`), so it says only
what the run measured. Figures that come from bundled reference material (the
reference implementation's log excerpt analysed beside the run by notebook 03) are
named as such.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

# Bundled reference material notebook 03 analyses besides the run (its `sources`).
REFERENCE_EXCERPT = "tests/fixtures/reference_log_excerpt.log"

SMOKE_WARNING = (
    "This is the <b>smoke</b> preset: a model of some twenty thousand weights trained for a few "
    "steps on seconds of audio, to show that every step of the chain runs. Its figures say "
    "nothing about the method. <code>make study</code> (the cpu preset, about an hour on "
    "2 cores) gives figures worth reading.")

_CSS = """
.verdict { background: #f7f9fc; border-left: 4px solid #4a6fa5; padding: .6em 1em; }
.warning { background: #fff4e5; border-left: 4px solid #e08a00; padding: .6em 1em; }
.reference { color: #8a5a00; font-size: .9em; }
figure { margin: .5em 0; } figure img { max-width: 100%; }
"""


def _pct(x: Any) -> str:
    return f"{100 * float(x):.0f}%" if isinstance(x, (int, float)) else "n/a"


def _num(x: Any, digits: int = 2) -> str:
    return f"{float(x):.{digits}f}" if isinstance(x, (int, float)) else "n/a"


def _models(figures: dict[str, Any]) -> list[str]:
    """Models notebook 04 evaluated (its figures are named <model>_translation_success)."""
    suffix = "_translation_success"
    return [k[: -len(suffix)] for k in figures if k.endswith(suffix)]


def training_sentence(preset: str, metrics: dict[str, dict[str, Any]]) -> str:
    e = html.escape
    data, train = metrics.get("01_data_prep", {}), metrics.get("02_train", {})
    parts = [f"Preset <b>{e(preset)}</b>"]
    if train:
        minutes = train.get("train_minutes")
        time_text = (f"{float(minutes):.1f} minutes of training" if isinstance(minutes, (int, float))
                     and minutes else f"{_num(train.get('wall_seconds'), 0)} s")
        parts.append(
            f"trained one encoder and a decoder for each of "
            f"<b>{e(str(train.get('domains', '?')).replace(',', ', '))}</b> for {time_text} "
            f"({train.get('steps', '?')} steps, {train.get('epochs', '?')} epochs, "
            f"{train.get('devices', 1)} device(s))")
    if data:
        parts.append(
            f"on the dataset <b>{e(str(data.get('dataset', '?')))}</b> "
            f"({data.get('sample_rate', '?')} Hz, {_num(data.get('total_minutes'), 1)} minutes "
            f"of audio in {data.get('files', '?')} files)")
    if train.get("best_val_recon") is not None:
        parts.append(f"best validation loss {_num(train['best_val_recon'], 3)} nats per sample "
                     "(ln 256 = 5.55 is a model that learned nothing)")
    return ", ".join(parts[:2]) + (" " + ", ".join(parts[2:]) if len(parts) > 2 else "") + "."


def _meaning(success: Any, ceiling: Any) -> str:
    if not isinstance(success, (int, float)) or not isinstance(ceiling, (int, float)):
        return ""
    if ceiling and success >= 0.5 * ceiling:
        return "So the model translates a good share of the clips; listen below."
    if success > 0:
        return ("So most outputs are not yet translations: they take on the target's sound "
                "but lose the notes (listen below).")
    return "So no output is a translation yet."


def translation_sentences(metrics: dict[str, dict[str, Any]]) -> list[str]:
    figures = metrics.get("04_listening_tests", {})
    out = []
    for model in _models(figures):
        def f(key: str, model: str = model) -> Any:
            return figures.get(f"{model}_{key}")

        kept = f("translation_notes_kept_score")
        kept = f("translation_notes_kept_truth") if kept is None else kept
        out.append(
            f"<b>{html.escape(model)}</b>: {_pct(f('translation_success'))} of translations "
            f"succeed (95% interval {_pct(f('translation_success_ci_low'))} to "
            f"{_pct(f('translation_success_ci_high'))}: the instrument classifier hears the "
            f"target instrument, the output is clean, the notes are kept and it is closer to "
            f"the target than to the source); {_pct(f('translation_instrument'))} sound like "
            f"the target instrument, {_pct(f('translation_clean'))} are clean, and they keep "
            f"{_num(kept)} of the notes (0 = another work's notes, 1 = the real rendering of "
            f"the same notes by the target instrument, which succeeds "
            f"{_pct(f('ground_truth_success'))} of the time: the measure's ceiling). "
            + _meaning(f("translation_success"), f("ground_truth_success")))
    if "latent_probe_accuracy" in figures:
        out.append(
            f"A probe tells the source instrument from the latent code "
            f"{_pct(figures['latent_probe_accuracy'])} of the time (chance "
            f"{_pct(figures.get('latent_probe_chance'))}): the closer to chance, the less the "
            f"code leaks the instrument.")
    return out


def reference_note(metrics: dict[str, dict[str, Any]], results_dir: Path) -> str:
    """Which of notebook 03's figures come from the bundled reference log excerpt."""
    figures = metrics.get("03_loss_analysis", {})
    if not figures:
        return ""
    bundled = figures.get("bundled_reference")
    if bundled is None:  # recorded before notebook 03 named it: look at what it was given
        nb = results_dir / "03_loss_analysis.ipynb"
        bundled = REFERENCE_EXCERPT if nb.is_file() and "reference_log_excerpt" in \
            nb.read_text(errors="replace") else ""
    if not bundled:
        return ""
    own = ", ".join(f"{k.removeprefix('this_run_').replace('_', ' ')} {figures[k]}"
                    for k in ("this_run_spikes", "this_run_divergent_runs",
                              "this_run_never_learned", "this_run_restarted_runs")
                    if k in figures)
    return (f'<p class="reference">The loss analysis (03) also reads bundled reference '
            f"material, <code>{html.escape(str(bundled))}</code>: an excerpt of the reference "
            f"implementation's training log. Its runs, restarts, spikes and divergent run are "
            f"counted in 03's runs, restarted_runs, spikes and divergent_runs (marked "
            f"&dagger; below); they describe that log, not this run."
            + (f" This run alone: {html.escape(own)}." if own else "") + "</p>")


def example_html(results_dir: Path) -> str:
    """The first translation notebook 04 saved: players for source, translation and
    ground truth, and its spectrograms (files beside index.html)."""
    examples = results_dir / "examples"
    translations = sorted(examples.glob("0_*_translation.wav")) if examples.is_dir() else []
    if not translations:
        return ""
    stem = translations[0].name.removesuffix("_translation.wav")
    cells = []
    for role in ("source", "translation", "ground_truth"):
        wav = examples / f"{stem}_{role}.wav"
        if wav.is_file():
            cells.append(f"<td><b>{role.replace('_', ' ')}</b><br><audio controls "
                         f'preload="none" src="examples/{html.escape(wav.name)}"></audio></td>')
    clip = stem.split("_", 1)[1] if "_" in stem else stem
    figure = results_dir / "figures" / "04_sample_0.png"
    image = (f'<figure><img src="figures/{figure.name}" alt="log-mel spectrograms of the '
             f'source, the translation and the ground truth"></figure>'
             if figure.is_file() else "")
    return (f"<h2>One translation</h2><p>Clip <code>{html.escape(clip)}</code> (more in "
            f'<a href="04_listening_tests.html">04</a>):</p>'
            f"<table><tr>{''.join(cells)}</tr></table>{image}")


def verdict_html(preset: str, metrics: dict[str, dict[str, Any]], results_dir: Path) -> str:
    """The verdict block that opens index.html."""
    lines = [training_sentence(preset, metrics), *translation_sentences(metrics)]
    warning = f'<p class="warning">{SMOKE_WARNING}</p>' if preset == "smoke" else ""
    body = "".join(f"<p>{line}</p>" for line in lines if line)
    return (f"<style>{_CSS}</style>{warning}<div class=\"verdict\"><h2>In short</h2>{body}</div>"
            f"{reference_note(metrics, results_dir)}{example_html(results_dir)}")


def is_reference_figure(stem: str, key: str) -> bool:
    """Figures of notebook 03 that count the bundled reference log with the run."""
    return stem == "03_loss_analysis" and key in (
        "sources", "runs", "restarted_runs", "resumed_runs", "spikes", "divergent_runs",
        "divergence_onsets", "never_learned_runs", "best_by_run", "skipped_lines")

"""The page of an experiment whose settings are each trained with several seeds
(`decoders`, `shared-decoder`, `batch`, `confusion`).

An experiment's variants are named ``<setting>-seed<n>``. Its variants run one at a time
or in parallel invocations (``--variants``), so the summary is built from every variant
found under ``results/<experiment>/``, not from the invocation that ran last. A setting
may be *borrowed* from another experiment that trains exactly the same configuration
(the shared-decoder experiment's per-domain arms are the decoder experiment's runs):
its seeds are read from that experiment's folder and the page says so.

Written to ``results/<experiment>/``:

    summary.json  every figure of every setting: each seed's value (with its interval)
                  and the spread between seeds
    README.md     the settings side by side (mean ± sd and range over seeds), then each
                  setting's seeds with their intervals
    figure.png    the headline figures, one dot per seed and the mean per setting
    index.html    the same, linking each seed's own report
"""

from __future__ import annotations

import html
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

from ..paths import write_text_atomic
from .report import _CSS, _table
from .seeds import SPECS, figure_rows, run_cell, spread_text

SEED_VARIANT = re.compile(r"^(?P<setting>.+)-seed(?P<seed>\d+)$")

# Figures every seeded experiment shows beyond the seed table's. First, what a
# translation is closest to: the closer-to-target criterion on two of the calibration
# rows scored with it (the source itself: what "the source" scores; noise shaped like
# the target: what "neither" scores; the ground truth scores 1), the reconstruction's
# instrument and the translation's chroma agreement with its source. Then how fast it
# trained and what the divergence guard and the log analysis saw.
CLOSEST_SPECS = [
    ("closer to target, calibration: the source itself (what 'the source' scores)",
     "04_listening_tests", "source_closer_to_target", "rate"),
    ("closer to target, calibration: noise shaped like the target (what 'neither' scores)",
     "04_listening_tests", "shaped_noise_closer_to_target", "rate"),
    ("reconstruction classified as its own (the source's) instrument", "04_listening_tests",
     "reconstruction_instrument", "rate"),
    ("the translation's chroma agreement with its source (the source itself: 1)",
     "04_listening_tests", "translation_source_chroma", "mean"),
]
EXTRA_SPECS = CLOSEST_SPECS + [
    ("training steps per second", "02_train", "steps_per_s", None),
    ("training samples per second (median of the last 50 steps)", "02_train",
     "samples_per_s", None),
    ("skipped steps (guard)", "02_train", "skipped_steps", None),
    ("roll-backs (guard)", "02_train", "rollbacks", None),
    ("loss spikes in the log", "03_loss_analysis", "this_run_spikes", None),
    ("diverged (validation loss back at ln 256)", "03_loss_analysis",
     "this_run_divergent_runs", None),
    ("never learned (validation loss never below ln 256 - 0.5)", "03_loss_analysis",
     "this_run_never_learned", None),
    ("guard-off runs the guard would have changed (replay of its rule)", "03_loss_analysis",
     "this_run_guard_would_act", None),
]
# The figure's panels: (label, key of a row in the tables).
PANELS = [("notes kept (score)", "translation_notes_kept_score"),
          ("classified as target", "translation_instrument"),
          ("closer to target", "translation_closer_to_target"),
          ("latent probe accuracy", "latent_probe_accuracy"),
          ("best validation loss", "best_val_recon")]


def settings_of(variants: list[str]) -> dict[str, list[tuple[int, str]]]:
    """{setting: [(seed, variant), ...]} in the variants' order; a name without a seed
    suffix is a setting of its own (seed 0)."""
    out: dict[str, list[tuple[int, str]]] = {}
    for v in variants:
        m = SEED_VARIANT.match(v)
        setting, seed = (m["setting"], int(m["seed"])) if m else (v, 0)
        out.setdefault(setting, []).append((seed, v))
    return out


def _load(path: Path) -> dict[str, Any] | None:
    """A variant's metrics.json with derived figures, or None when it has not been
    evaluated (no notebook 04 figures)."""
    try:
        m = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); re-run that variant") from None
    if not isinstance(m, dict) or not m.get("04_listening_tests"):
        return None
    train = m.get("02_train") or {}
    steps, minutes = train.get("steps"), train.get("train_minutes")
    if isinstance(steps, int | float) and isinstance(minutes, int | float) and minutes > 0:
        m["02_train"] = {**train, "steps_per_s": steps / (60.0 * minutes)}
    return m


def collect(root: Path, name: str, variants: list[str],
            borrowed: dict[str, tuple[str, list[str]]] | None = None) -> list[dict[str, Any]]:
    """One entry per setting that has at least one evaluated seed: its seeds' runs (as
    paths relative to results/), where they come from, and its figure rows. `borrowed`:
    {setting: (the experiment that trains it, that setting's variants there)}."""
    results = root / "results"
    found = []
    plan = [(setting, name, seeds) for setting, seeds in settings_of(variants).items()]
    for setting, (other, other_variants) in (borrowed or {}).items():
        plan.append((setting, other, [(0, v) for v in other_variants]))
    for setting, exp, seeds in plan:
        metrics = {}
        for seed, variant in seeds:
            m = _load(results / exp / variant / "metrics.json")
            if m is not None:
                metrics[f"{exp}/{variant}"] = m
        if not metrics:
            continue
        found.append({"setting": setting, "from": exp, "runs": list(metrics),
                      "rows": figure_rows(metrics, SPECS + EXTRA_SPECS)})
    return found


def not_run(name: str, variants: list[str], settings: list[dict[str, Any]]) -> list[str]:
    """The experiment's own variants that `collect` found no evaluated run of, in the
    experiment's order."""
    evaluated = {run for s in settings for run in s["runs"]}
    return [v for v in variants if f"{name}/{v}" not in evaluated]


def not_run_text(name: str, missing: list[str]) -> str:
    """What a page says of the variants still to run: each setting's missing seeds and
    the one command that runs them all."""
    if not missing:
        return ""
    per_setting = "; ".join(f"{setting} (seed {', '.join(str(s) for s, _ in seeds)})"
                            for setting, seeds in settings_of(missing).items())
    return (f"Not run yet, so not in the tables: {per_setting}. Run them with "
            f"`python -m umt_core study --experiment {name} --variants {','.join(missing)}`, "
            f"then `--summarize`.")


def _cell(row: dict[str, Any]) -> str:
    """A setting's figure in the side-by-side table: mean ± sd (range) over seeds, or the
    one seed's value with its interval."""
    if row["spread"] is not None:
        return f"{spread_text(row['spread'])}, n={row['spread']['n']}"
    runs = [n for n, v in row["runs"].items() if v is not None]
    return run_cell(row, runs[0]) + ", n=1" if runs else "-"


def side_by_side_rows(settings: list[dict[str, Any]]) -> list[list[str]]:
    """[figure, cell per setting] for every figure."""
    if not settings:
        return []
    labels = [r["figure"] for r in settings[0]["rows"]]
    return [[label] + [_cell(s["rows"][i]) for s in settings] for i, label in enumerate(labels)]


def markdown(name: str, description: str, settings: list[dict[str, Any]],
             missing: list[str] | None = None) -> str:
    lines = [f"# Experiment {name}", "", description, ""]
    if missing:
        lines += [not_run_text(name, missing), ""]
    if not settings:
        return "\n".join(lines + ["No variant has been evaluated yet.", ""])
    borrowed = [s for s in settings if s["from"] != name]
    lines += [("Thresholds chosen on the validation works, figures on the paired test works. "
              "Each cell: mean ± sample standard deviation over seeds (range), n = seeds "
              "evaluated; with one seed, its value and 95% interval (Wilson for rates, "
              "bootstrap over works for means)."), ""]
    if borrowed:
        lines += ["Borrowed settings (the same configuration, trained once): " + "; ".join(
            f"`{s['setting']}` = results/{s['from']}/" for s in borrowed) + ".", ""]
    head = ["figure"] + [s["setting"] for s in settings]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in side_by_side_rows(settings)]
    for s in settings:
        lines += ["", f"## {s['setting']}", "",
                  "| figure | " + " | ".join(s["runs"]) + " |",
                  "|" + "---|" * (len(s["runs"]) + 1)]
        lines += [f"| {r['figure']} | " + " | ".join(run_cell(r, run) for run in s["runs"])
                  + " |" for r in s["rows"]]
    return "\n".join(lines) + "\n"


def _seed_values(setting: dict[str, Any], key: str) -> dict[str, float]:
    """{run: value} of one figure of a setting, the runs that have a finite value."""
    row = next((r for r in setting["rows"] if r["key"] == key), None)
    return {} if row is None else {
        run: v["value"] for run, v in row["runs"].items()
        if v is not None and isinstance(v["value"], int | float) and math.isfinite(v["value"])}


def figure(settings: list[dict[str, Any]], path: Path, title: str) -> bool:
    """One panel per headline figure: a dot per seed, a bar at the mean per setting.
    False (and nothing written) when there is nothing to draw."""
    import matplotlib  # on use: seconds to import, only the figure needs it

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    panels = [(label, per) for label, key in PANELS
              if any(per := [list(_seed_values(s, key).values()) for s in settings])]
    if not panels:
        return False
    names = [s["setting"] for s in settings]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (label, per) in zip(axes[0], panels, strict=True):
        for i, vals in enumerate(per):
            if vals:
                ax.hlines(sum(vals) / len(vals), i - 0.3, i + 0.3, color="black")
                ax.scatter([i] * len(vals), vals, color="tab:blue", s=18, zorder=3)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def trade_off_points(settings: list[dict[str, Any]], x_key: str, y_key: str
                     ) -> list[list[tuple[float, float]]]:
    """Per setting, the (x, y) of each seed that has both figures."""
    out = []
    for s in settings:
        xs, ys = _seed_values(s, x_key), _seed_values(s, y_key)
        out.append([(xs[run], ys[run]) for run in xs if run in ys])
    return out


def trade_off_figure(settings: list[dict[str, Any]], path: Path, x: tuple[str, str, str | None],
                     ys: list[tuple[str, str]], title: str) -> bool:
    """One panel per (label, key) of `ys` against the figure `x` (label, key, and the key
    of a reference value of x drawn as a dashed line, or None): a point per seed,
    coloured by setting, and each setting's mean with ± one standard deviation across
    its seeds on both axes. False (nothing written) without a seed that has both."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x_label, x_key, reference_key = x
    panels = [(y_label, per) for y_label, y_key in ys
              if any(per := trade_off_points(settings, x_key, y_key))]
    if not panels:
        return False
    reference = [v for s in settings for v in _seed_values(s, reference_key).values()
                 ] if reference_key else []

    def sd(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else 0.0

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, (y_label, per) in zip(axes[0], panels, strict=True):
        for i, pts in enumerate(per):
            if not pts:
                continue
            c = colours(i % 10)
            px, py = [p[0] for p in pts], [p[1] for p in pts]
            ax.scatter(px, py, color=c, s=16, alpha=0.6)
            ax.errorbar(statistics.fmean(px), statistics.fmean(py), xerr=sd(px), yerr=sd(py),
                        color=c, marker="o", markersize=7, capsize=3,
                        label=f"{settings[i]['setting']} (n={len(pts)})")
        if reference:
            ax.axvline(statistics.fmean(reference), color="grey", ls="--", lw=1)
            ax.text(statistics.fmean(reference), ax.get_ylim()[1], " chance", color="grey",
                    fontsize=7, va="top")
        ax.set_xlabel(x_label, fontsize=8)
        ax.set_ylabel(y_label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def page(name: str, description: str, settings: list[dict[str, Any]], has_figure: bool,
         has_trade_off: bool = False, missing: list[str] | None = None) -> str:
    e = html.escape
    parts = [f"<h1>Experiment {e(name)}</h1>", f"<p>{e(description)}</p>"]
    if missing:
        import mistune  # on use: only a page with runs still to make needs it

        parts.append(mistune.html(not_run_text(name, missing)))
    if not settings:
        parts.append("<p>No variant has been evaluated yet.</p>")
    else:
        parts.append("<p>Thresholds chosen on the validation works, figures on the paired "
                     "test works. Each cell: mean ± sample standard deviation over seeds "
                     "(range), n = seeds evaluated; with one seed, its value and 95% "
                     "interval.</p>")
        if has_figure:
            parts.append('<p><img src="figure.png" alt="headline figures per seed" '
                         'style="max-width:100%"></p>')
        if has_trade_off:
            parts.append('<p>The trade-off: each seed a small point, each setting its mean '
                         '± one standard deviation across seeds (large point, bars); the '
                         'dashed line is the probe\'s chance.</p><p><img src="trade_off.png" '
                         'alt="the trade-off, one point per seed" style="max-width:100%"></p>')
        head = ["figure"] + [e(s["setting"]) + ("" if s["from"] == name else
                                                 f" <small>(results/{e(s['from'])}/)</small>")
                             for s in settings]
        parts.append(_table(head, [[e(c) for c in r] for r in side_by_side_rows(settings)]))
        for s in settings:
            links = ", ".join(f'<a href="../{e(run)}/index.html">{e(run)}</a>'
                              for run in s["runs"])
            parts.append(f"<h2>{e(s['setting'])}</h2><p>Seeds: {links}</p>")
            parts.append(_table(["figure"] + [e(r) for r in s["runs"]],
                                [[e(r["figure"])] + [e(run_cell(r, run)) for run in s["runs"]]
                                 for r in s["rows"]]))
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>UMT study: {e(name)}</title><style>{_CSS}</style></head><body>\n"
            f"{body}\n<p>Machine-readable: <a href=\"summary.json\">summary.json</a>; the same "
            f'tables: <a href="README.md">README.md</a>.</p>\n</body></html>\n')


# The trade-off figure of an experiment that has one: x (label, key, key of its chance
# level), then the y of each panel.
TRADE_OFFS = {
    "confusion": (("leakage: latent probe accuracy (source instrument)", "latent_probe_accuracy",
                   "latent_probe_chance"),
                  [("notes kept (score)", "translation_notes_kept_score"),
                   ("classified as the target", "translation_instrument"),
                   ("closer to the target", "translation_closer_to_target")]),
}


def write_summary(root: Path, name: str, description: str, variants: list[str],
                  borrowed: dict[str, tuple[str, list[str]]] | None = None
                  ) -> list[dict[str, Any]]:
    """summary.json, README.md, figure.png and index.html under results/<name>/ (and
    trade_off.png for an experiment of TRADE_OFFS)."""
    settings = collect(root, name, variants, borrowed)
    missing = not_run(name, variants, settings)
    out = root / "results" / name
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "summary.json", json.dumps(
        {"experiment": name, "settings": settings}, indent=1, allow_nan=False) + "\n")
    write_text_atomic(out / "README.md", markdown(name, description, settings, missing))
    drawn = bool(settings) and figure(settings, out / "figure.png", f"Experiment {name}")
    traded = bool(settings) and name in TRADE_OFFS and trade_off_figure(
        settings, out / "trade_off.png", *TRADE_OFFS[name], f"Experiment {name}: the trade-off")
    write_text_atomic(out / "index.html", page(name, description, settings, drawn, traded, missing))
    return settings


# ------------------------------------------------------------------ the findings' index
# The controlled experiments the default study's page lists, with the rows it shows of
# each (by the key of a row of the summary).
FINDINGS = [
    ("decoders", "Does the shared latent translate when the decoder is cheap?",
     ["translation_notes_kept_score", "translation_instrument", "translation_clean",
      "latent_use_gap", "steps_per_s"]),
    ("shared-decoder", "Is one decoder for every domain why 'to cello' sounded like piano?",
     ["translation_instrument", "translation_closer_to_target",
      "source_closer_to_target", "shaped_noise_closer_to_target",
      "translation_source_chroma", "translation_notes_kept_score", "latent_probe_accuracy"]),
    ("batch", "Does a smaller batch make spikes and divergence more likely?",
     ["this_run_spikes", "skipped_steps", "rollbacks", "this_run_guard_would_act",
      "this_run_divergent_runs", "this_run_never_learned", "best_val_recon"]),
    ("divergence", "What is the smallest change that makes training diverge?",
     ["this_run_divergent_runs", "this_run_never_learned", "this_run_spikes",
      "skipped_steps", "rollbacks", "this_run_guard_would_act", "best_val_recon"]),
    ("confusion", "Where is the trade-off of the domain-confusion weight?",
     ["latent_probe_accuracy", "translation_notes_kept_score", "translation_instrument"]),
]


# results/README.md's section of answers: from its heading to the next level-2 heading.
FINDINGS_SECTION = re.compile(r"^## Findings[^\n]*\n(.*?)(?=^## |\Z)", re.MULTILINE | re.DOTALL)


def findings_words_html(results: Path) -> str:
    """The Findings section of results/README.md (the questions answered in words, with
    their figures, intervals and commands) as HTML, or "" when there is none: the page
    shows the committed answers, written once."""
    import mistune  # on use: only the default study's page needs it

    try:
        text = (results / "README.md").read_text(encoding="utf-8")
    except OSError:
        return ""
    m = FINDINGS_SECTION.search(text)
    section = m.group(1) if m else ""
    return mistune.html(section) if section.strip() else ""


def findings_html(results: Path) -> str:
    """The findings in words (results/README.md), then one short table per controlled
    experiment that has a summary (its headline rows, each setting's mean ± sd over
    seeds), or the command that runs it; then the generalisation page. For the default
    study's page."""
    e = html.escape
    words = findings_words_html(results)
    parts = [words] if words else []
    for name, question, keys in FINDINGS:
        try:
            settings = json.loads((results / name / "summary.json").read_text())["settings"]
        except (OSError, ValueError, KeyError, TypeError):
            settings = []
        parts.append(f"<h3>{e(question)} <small>({e(name)})</small></h3>")
        if not settings:
            parts.append(f'<p class="muted">Not run yet: <code>python -m umt_core study '
                         f"--experiment {e(name)}</code>.</p>")
            continue
        labels = {r["key"]: r["figure"] for r in settings[0]["rows"]}
        rows = []
        for key in keys:
            cells = [_cell(next((r for r in s["rows"] if r["key"] == key), None) or
                           {"spread": None, "runs": {}, "kind": "value"}) for s in settings]
            rows.append([e(labels.get(key, key))] + [e(c) for c in cells])
        parts.append(_table(["figure"] + [e(s["setting"]) for s in settings], rows))
        parts.append(f'<p><a href="{e(name)}/index.html">Every figure, seed by seed</a></p>')
    if (results / "generalisation" / "index.html").is_file():
        parts.append('<h3>Does it translate recordings it never heard? <small>(generalisation)'
                     '</small></h3><p><a href="generalisation/index.html">The page, with audio '
                     "players</a></p>")
    return "\n".join(parts)

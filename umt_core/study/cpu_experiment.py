"""The CPU translation search (`python -m umt_core study --experiment cpu-bottleneck`).

Where, on 2 CPU cores and a fixed time budget, does the network start to translate:
keep the notes of the source and change its instrument? Each point of the sweep trains
a model with notebook 02 under `train.max_minutes` and evaluates its last checkpoint
with notebook 04 on the paired held-out clips. The knobs are the bottleneck (latent
channels x frames per second, in numbers per second), the confusion weight (and a
ramp), pitch-shift augmentation, the decoders' receptive field, decoder-input
corruption and the sample rate; two domains (piano, cello) first, then all four.

`summarize` reads every point found under results/cpu-bottleneck/ (also points run by
an earlier or a parallel invocation) and writes there:

    runs.csv      one row per run: its setting, steps, minutes and every metric
    summary.md    the same as a table, with the goal and the baselines
    frontier.png  content kept (chroma agreement with the source) against instrument
                  changed (classifier says target), one point per run, labelled by
                  bottleneck size, with the identity, unrelated-clip and
                  ground-truth reference points
    index.html    the figure and the table, linking each run's report
"""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import preset
from .bars import GOAL as STUDY_GOAL

NAME = "cpu-bottleneck"
MANIFEST_16K = "data_manifests/scores.yaml"
MANIFEST_8K = "data_manifests/scores-8k.yaml"
TWO_DOMAINS = ["piano", "cello"]
ALL_DOMAINS = ["piano", "harpsichord", "cello", "flute"]
# The chosen point: the cpu config preset, the one definition of its model and training.
# Every run of the sweep starts from that preset (encoder, classifier, batch, segments);
# a point changes only the knobs it names.
CHOSEN = "b2000-rf65-c0.3-conf0.1"
_CPU = preset("cpu")
BUDGET_MINUTES = 20.0  # training time of every run (override: -p train.max_minutes=N)

# The goal of the search, on the paired held-out clips. Content is judged against the
# true rendering of the same notes in the target instrument: the goal's "chroma >= 0.6
# where the true rendering gets about 0.8" is 75% of the ground truth's agreement. Our
# chroma agreement (per-frame correlation of 12-bin chroma vectors, unrelated clips ~0)
# gives the ground truth about 0.46 at 8 kHz and 0.61 at 16 kHz, so an absolute 0.6
# would ask more than the real rendering reaches.
GOAL = {"chroma_vs_gt": 0.75, "wave_corr": 0.2, "closer_to_target": 0.75,
        "classified_as_target": 0.75, "success": 0.5}


@dataclass(frozen=True)
class Point:
    """One setting of the sweep; `changes` are the knobs that differ from the base."""

    name: str
    latent: int
    pool: int
    sample_rate: int = 8000
    confusion: float = 1e-2
    ramp_steps: int = 0
    augment: bool = True
    decoder_blocks: int = 2
    decoder_layers: int = 6
    corruption: float = 0.1
    domains: tuple[str, ...] = tuple(TWO_DOMAINS)
    seed: int = 1
    changes: str = ""

    @property
    def numbers_per_second(self) -> float:
        return self.latent * self.sample_rate / self.pool

    @property
    def receptive_field(self) -> int:
        return dataclasses.replace(_CPU.model, decoder_blocks=self.decoder_blocks,
                                   decoder_layers=self.decoder_layers).receptive_field

    def setting(self) -> dict[str, Any]:
        return {
            "sample_rate": self.sample_rate, "latent": self.latent, "pool": self.pool,
            "numbers_per_s": round(self.numbers_per_second),
            "confusion": self.confusion, "ramp_steps": self.ramp_steps,
            "augment": self.augment, "receptive_field": self.receptive_field,
            "receptive_ms": round(1000 * self.receptive_field / self.sample_rate, 1),
            "corruption": self.corruption, "domains": "+".join(self.domains),
            "seed": self.seed, "changes": self.changes or "base",
        }

    def parameters(self) -> dict[str, Any]:
        """The study parameters of this point (notebook parameters and config keys)."""
        run = f"{NAME}/{self.name}"
        two = len(self.domains) == 2
        return {
            "manifest": MANIFEST_8K if self.sample_rate == 8000 else MANIFEST_16K,
            "steps": 10**9,  # the time budget ends training
            "domains": list(self.domains),
            "model.latent_channels": self.latent,
            "model.pool": self.pool,
            "model.decoder_blocks": self.decoder_blocks,
            "model.decoder_layers": self.decoder_layers,
            "model.residual_channels": _CPU.model.residual_channels,
            "model.skip_channels": _CPU.model.skip_channels,
            "train.confusion_weight": self.confusion,
            "train.confusion_ramp_steps": self.ramp_steps,
            "train.augment": self.augment,
            "train.input_corruption": self.corruption,
            "train.seed": self.seed,
            # short segments, small batches: many steps in the budget (the same
            # seconds of audio per step at either sample rate)
            "train.batch_per_domain": _CPU.train.batch_per_domain,
            "train.segment_samples": _CPU.train.segment_samples * self.sample_rate // 8000,
            "train.steps_per_epoch": _CPU.train.steps_per_epoch,
            "train.lr_decay": _CPU.train.lr_decay,
            # evaluation: every paired work (8) with two domains, 4 clips spread over each
            "checkpoints": [f"runs/{run}/checkpoints/last.pt"],
            "source_domains": list(self.domains),
            "target_domains": list(self.domains),
            "works": None if two else 4,
            "segments": 4,
            "seconds_per_clip": 2.0,
            "samples_to_show": 2,
            "n_trials": 4,
        }


def _points() -> list[Point]:
    base = {"latent": 16, "pool": 64}  # 2,000 numbers per second at 8 kHz
    chosen = {"latent": _CPU.model.latent_channels, "pool": _CPU.model.pool,
              "decoder_blocks": _CPU.model.decoder_blocks,
              "decoder_layers": _CPU.model.decoder_layers,
              "corruption": _CPU.train.input_corruption, "confusion": _CPU.train.confusion_weight}
    pts = [
        # the bottleneck: latent channels x frames per second (pool 64 at 8 kHz = 125/s)
        Point("b500", latent=4, pool=64, changes="bottleneck 500/s"),
        Point("b1000", latent=8, pool=64, changes="bottleneck 1,000/s"),
        Point("b2000", **base),
        Point("b4000", latent=32, pool=64, changes="bottleneck 4,000/s"),
        Point("b2000-pool32", latent=8, pool=32, changes="2,000/s as 8 channels x 250/s"),
        # the confusion weight and a schedule
        Point("b2000-conf0.1", **base, confusion=0.1, changes="confusion 0.1"),
        Point("b2000-ramp0.1", **base, confusion=0.1, ramp_steps=500,
              changes="confusion 0 -> 0.1 over 500 steps"),
        # augmentation, receptive field, input corruption
        Point("b2000-noaug", **base, augment=False, changes="no pitch-shift augmentation"),
        Point("b2000-rf511", **base, decoder_layers=8, changes="decoder RF 511 (2x8)"),
        Point("b2000-rf65", **base, decoder_blocks=1, changes="decoder RF 65 (1x6)"),
        Point("b2000-clean", **base, corruption=0.0, changes="no input corruption"),
        Point("b2000-corrupt0.3", **base, corruption=0.3, changes="input corruption 0.3"),
        # the two knobs that made the decoders use the latent most, together
        Point("b2000-rf65-c0.3", **base, decoder_blocks=1, corruption=0.3,
              changes="decoder RF 65 and input corruption 0.3"),
        Point("b2000-c0.3-conf0.1", **base, corruption=0.3, confusion=0.1,
              changes="input corruption 0.3 and confusion 0.1"),
        Point("b2000-rf65-c0.3-conf0.1", **chosen,
              changes="decoder RF 65, input corruption 0.3, confusion 0.1"),
        # the sample rate: 16 kHz at the same bottleneck size
        Point("b2000-16k", latent=16, pool=128, sample_rate=16000,
              changes="16 kHz (pool 128)"),
        # the chosen point (the three knobs together): a second seed, a longer budget
        # (raise train.max_minutes on it: the run resumes), then every default domain
        Point("b2000-rf65-c0.3-conf0.1-seed2", **chosen, seed=2,
              changes="decoder RF 65, input corruption 0.3, confusion 0.1; seed 2"),
        Point("b2000-rf65-c0.3-conf0.1-4dom", **chosen, domains=tuple(ALL_DOMAINS),
              changes="decoder RF 65, input corruption 0.3, confusion 0.1; all four domains"),
        Point("b2000-seed2", **base, seed=2, changes="seed 2"),
        # the closest point with a stronger pull against the instrument in the latent
        Point("b2000-rf65-c0.3-conf0.3", **{**chosen, "confusion": 0.3},
              changes="decoder RF 65, input corruption 0.3, confusion 0.3"),
    ]
    names = [p.name for p in pts]
    assert len(set(names)) == len(names), names
    return pts


POINTS: dict[str, Point] = {p.name: p for p in _points()}


def variants() -> dict[str, dict[str, Any]]:
    return {name: p.parameters() for name, p in POINTS.items()}


BASE = {"train.max_minutes": BUDGET_MINUTES}

DESCRIPTION = (
    "The CPU translation search: models trained for a fixed time on 2 CPU cores with "
    "different bottlenecks, confusion weights, augmentation, receptive fields, input "
    "corruption and sample rates, each evaluated on the paired held-out clips "
    "(content kept, copy, direction, instrument changed, latent probe and use).")


# ------------------------------------------------------------------------- summary
def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def run_row(root: Path, name: str) -> dict[str, Any] | None:
    """The setting and figures of one point, from its results directory (None when the
    point has not run or its evaluation is missing)."""
    out = root / "results" / NAME / name
    ev = _load(out / "04_listening_tests.json")
    tr = _load(out / "02_train.json")
    if not ev:
        return None
    point = POINTS.get(name.split("@")[0])  # "<point>@<n>min": a copy of an earlier budget
    prefix = next((k[: -len("_translation_success")] for k in ev
                   if k.endswith("_translation_success")), None)
    if prefix is None:
        return None

    def fig(condition: str, signal: str) -> float:
        return float(ev.get(f"{prefix}_{condition}_{signal}", math.nan))

    row: dict[str, Any] = {"run": name, **(point.setting() if point else {})}
    git = _load(out / "provenance.json").get("git") or {}
    # The commit trained from; "+" marks a tree with uncommitted changes (not reproducible
    # from the commit alone).
    row["tree"] = "" if not git.get("commit") else \
        str(git["commit"])[:7] + ("+" if git.get("dirty") else "")
    # The calibrated evaluation (notebook 04 since the calibration rows) writes a clean
    # criterion and notes kept against the score; the first one wrote chroma against
    # the source. A row says which measured it, and the two are tabled apart.
    calibrated = f"{prefix}_translation_clean" in ev
    row["evaluation"] = "calibrated" if calibrated else "first"
    row.update({
        "notes_kept": fig("translation", "notes_kept_score"),
        "notes_kept_ci_low": fig("translation", "notes_kept_score_ci_low"),
        "notes_kept_ci_high": fig("translation", "notes_kept_score_ci_high"),
        "instrument": fig("translation", "instrument"),
        "clean": fig("translation", "clean"),
        "success_ci_high": fig("translation", "success_ci_high"),
    })
    row.update({
        "steps": tr.get("steps"),
        "train_minutes": tr.get("train_minutes"),
        "val_recon": tr.get("best_val_recon"),
        "chroma": fig("translation", "chroma"),
        "wave_corr": fig("translation", "wave_corr"),
        "closer_to_target": fig("translation", "closer_to_target"),
        "classified_as_target": fig("translation", "classified_as_target"),
        "success": fig("translation", "success"),
        "recon_chroma": fig("reconstruction", "chroma"),
        "recon_classified_ok": fig("reconstruction", "classified_as_target"),
        "latent_probe": float(ev.get("latent_probe_accuracy", math.nan)),
        "probe_chance": float(ev.get("latent_probe_chance", math.nan)),
        "latent_use_gap": float(ev.get("latent_use_gap", math.nan)),
        "gt_chroma": fig("ground_truth", "chroma"),
        "unrelated_chroma": fig("unrelated", "chroma"),
        "identity_chroma": fig("identity", "chroma"),
        "gt_classified_as_target": fig("ground_truth", "classified_as_target"),
        "unrelated_classified_as_target": fig("unrelated", "classified_as_target"),
        "identity_classified_as_target": fig("identity", "classified_as_target"),
    })
    gt = row["gt_chroma"]
    row["chroma_vs_gt"] = row["chroma"] / gt if gt > 0 else math.nan
    row["meets_goal"] = meets_calibrated_goal(row) if calibrated else meets_goal(row)
    return row


def meets_calibrated_goal(row: dict[str, Any]) -> bool:
    """The study's goal (`umt_core.study.goal.GOAL`) on a calibrated evaluation's row."""
    def value(key: str) -> float:
        v = row.get(key)
        return math.nan if v is None else float(v)

    return all(value(key) >= bar for key, bar in STUDY_GOAL.items())


def meets_goal(row: dict[str, Any]) -> bool:
    def ok(key, above=True):
        v = row.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return False
        return v >= GOAL[key] if above else v <= GOAL[key]

    return (ok("chroma_vs_gt") and ok("wave_corr", above=False) and ok("closer_to_target")
            and ok("classified_as_target") and ok("success"))


def collect(root: Path) -> list[dict[str, Any]]:
    """Rows of every point that has results, in the sweep's order (unknown names last)."""
    base = root / "results" / NAME
    found = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    order = [n for p in POINTS for n in found if n.split("@")[0] == p]
    order += [n for n in found if n not in order]
    return [r for r in (run_row(root, n) for n in order) if r is not None]


COLUMNS = ["run", "changes", "sample_rate", "numbers_per_s", "latent", "pool", "confusion",
           "augment", "receptive_field", "corruption", "domains", "seed", "steps",
           "train_minutes", "val_recon", "chroma", "chroma_vs_gt", "wave_corr",
           "closer_to_target",
           "classified_as_target", "success", "recon_chroma", "recon_classified_ok",
           "latent_probe",
           "probe_chance", "latent_use_gap", "gt_chroma", "unrelated_chroma", "evaluation",
           "notes_kept", "notes_kept_ci_low", "notes_kept_ci_high", "instrument", "clean",
           "tree", "meets_goal"]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.3g}" if abs(v) >= 100 else f"{v:.3f}"
    return "" if v is None else str(v)


def write_summary(root: Path) -> list[dict[str, Any]]:
    """runs.csv, summary.md, frontier.png and index.html under results/cpu-bottleneck/."""
    rows = collect(root)
    out = root / "results" / NAME
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k)) for k in COLUMNS})
    (out / "summary.md").write_text(summary_markdown(rows))
    first = [r for r in rows if r.get("evaluation") != "calibrated"]
    if first:  # the figure's axes are the first evaluation's
        frontier_figure(first, out / "frontier.png")
    (out / "index.html").write_text(summary_html(rows), encoding="utf-8")
    return rows


def _baselines(rows: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Mean (instrument changed, content kept) of each reference condition."""
    def mean(key):
        vals = [r[key] for r in rows if isinstance(r.get(key), float) and not math.isnan(r[key])]
        return sum(vals) / len(vals) if vals else math.nan

    return {name: (mean(f"{key}_classified_as_target"), mean(f"{key}_chroma"))
            for name, key in (("identity (copy)", "identity"), ("unrelated clip", "unrelated"),
                              ("ground truth", "gt"))}


MD_COLUMNS = [("run", "run"), ("changes", "setting"), ("numbers_per_s", "numbers/s"),
              ("train_minutes", "min"), ("steps", "steps"), ("chroma", "chroma"),
              ("chroma_vs_gt", "chroma / ground truth's"),
              ("wave_corr", "wave corr"), ("closer_to_target", "closer to target"),
              ("classified_as_target", "classified target"), ("success", "success"),
              ("latent_probe", "latent probe"), ("latent_use_gap", "latent-use gap"),
              ("tree", "commit")]


CALIBRATED_COLUMNS = [("run", "run"), ("changes", "setting"), ("numbers_per_s", "numbers/s"),
                      ("train_minutes", "min"), ("steps", "steps"),
                      ("notes_kept", "notes kept (score)"), ("instrument", "target"),
                      ("closer_to_target", "closer to target"), ("clean", "clean"),
                      ("success", "success"), ("latent_probe", "latent probe"),
                      ("latent_use_gap", "latent-use gap"), ("tree", "commit")]

# What a reader must know before reading the first evaluation's table.
FIRST_EVALUATION_CAVEAT = (
    "**Read with care.** These runs were measured with the first evaluation (STFT chroma "
    "against the source, no clean criterion), and the search's points were chosen on the "
    "same 8 test works they are reported on. Their checkpoints are not kept, so they "
    "cannot be re-evaluated; re-running a point (`--variants NAME`) measures it with the "
    "calibrated evaluation and moves it to the table above. A commit marked + was "
    "trained from a tree with uncommitted changes: that run cannot be reproduced from "
    "the commit alone.")


def _calibrated_cell(r: dict[str, Any], key: str) -> str:
    if key == "notes_kept" and not math.isnan(r.get("notes_kept", math.nan)):
        return (f"{r['notes_kept']:.2f} [{r['notes_kept_ci_low']:.2f}, "
                f"{r['notes_kept_ci_high']:.2f}]")
    return _fmt(r.get(key))


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [f"# {NAME}: the CPU translation search", "",
             ("Every run trains for a fixed time on 2 CPU cores and is evaluated (its last "
             "checkpoint) on the paired held-out clips."), ""]
    if not rows:
        return "\n".join(lines + ["No run has results yet.", ""])
    calibrated = [r for r in rows if r.get("evaluation") == "calibrated"]
    first = [r for r in rows if r.get("evaluation") != "calibrated"]
    if calibrated:
        lines += ["## Calibrated evaluation", "",
                  "Thresholds chosen on the validation works; figures on the 8 paired test "
                  "works x 4 clips x both directions; notes kept = (agreement with the "
                  "score - wrong-notes baseline) / (the real rendering's - baseline), with "
                  "a bootstrap interval over works. Goal: " + ", ".join(
                      f"{k.replace('_', ' ')} >= {v:g}" for k, v in STUDY_GOAL.items()) + ".",
                  "",
                  "| " + " | ".join(h for _, h in CALIBRATED_COLUMNS) + " |",
                  "|" + "---|" * len(CALIBRATED_COLUMNS)]
        lines += ["| " + " | ".join(_calibrated_cell(r, k) for k, _ in CALIBRATED_COLUMNS)
                  + " |" for r in calibrated]
        met = [r["run"] for r in calibrated if r["meets_goal"]]
        lines += ["", f"Runs meeting the goal: {', '.join(met) if met else 'none'}.", ""]
    if first:
        lines += ["## First evaluation", "", FIRST_EVALUATION_CAVEAT, "",
                  ("Goal of the search: chroma agreement with the source "
                  f">= {GOAL['chroma_vs_gt']:.0%} of the ground truth's (the true rendering "
                  f"in the target instrument), waveform correlation <= {GOAL['wave_corr']}, "
                  f"closer to the target >= {GOAL['closer_to_target']:.0%}, classified as "
                  f"the target >= {GOAL['classified_as_target']:.0%}, success >= "
                  f"{GOAL['success']:.0%}."), ""]
        base = _baselines(first)
        lines += ["Reference points (mean over runs): " + "; ".join(
            f"{k}: chroma {v[1]:.3f}, classified as target {v[0]:.2f}" for k, v in base.items()),
            ""]
        lines.append("| " + " | ".join(h for _, h in MD_COLUMNS) + " |")
        lines.append("|" + "---|" * len(MD_COLUMNS))
        for r in first:
            lines.append("| " + " | ".join(_fmt(r.get(k)) for k, _ in MD_COLUMNS) + " |")
        met = [r["run"] for r in first if r["meets_goal"]]
        lines += ["", f"Runs meeting the goal: {', '.join(met) if met else 'none'}.", ""]
    return "\n".join(lines)


def frontier_figure(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib  # on use: seconds to import (measured), only this figure needs it

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    gt = _baselines(rows)["ground truth"][1]
    floor = GOAL["chroma_vs_gt"] * gt if not math.isnan(gt) else 0.6
    ax.add_patch(plt.Rectangle((GOAL["classified_as_target"], floor),
                               1.05 - GOAL["classified_as_target"], 1.05 - floor,
                               color="tab:green", alpha=0.12, lw=0,
                               label=f"goal (chroma >= {GOAL['chroma_vs_gt']:.0%} of ground truth)"))
    markers = {8000: "o", 16000: "s"}
    for r in rows:
        x, y = r["classified_as_target"], r["chroma"]
        if math.isnan(x) or math.isnan(y):
            continue
        color = "tab:red" if r.get("wave_corr", 0) > GOAL["wave_corr"] else "tab:blue"
        ax.scatter(x, y, marker=markers.get(r.get("sample_rate"), "^"), color=color, s=40,
                   zorder=3)
        # the run's name starts with its bottleneck size (b2000 = 2,000 numbers/s)
        label = str(r["run"]).split("@")[0]
        if r.get("train_minutes") is not None:
            label += f", {float(r['train_minutes']):.0f} min"
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=6.5)
    for (name, (x, y)), mk in zip(_baselines(rows).items(), ("X", "D", "*")):
        if not (math.isnan(x) or math.isnan(y)):
            ax.scatter(x, y, marker=mk, color="black", s=80, zorder=4)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(-6, -12), fontsize=8,
                        ha="right" if x > 0.5 else "left")
    for rate, mk in markers.items():
        if any(r.get("sample_rate") == rate for r in rows):
            ax.scatter([], [], marker=mk, color="tab:blue", label=f"run, {rate // 1000} kHz")
    ax.scatter([], [], marker="o", color="tab:red", label=f"copies (wave corr > {GOAL['wave_corr']})")
    ax.set(xlim=(-0.05, 1.05), ylim=(min(-0.1, min(r["chroma"] for r in rows) - 0.05), 1.05),
           xlabel="instrument changed: translations classified as the target",
           ylabel="content kept: chroma agreement with the source",
           title="CPU translation search: every run (name = bottleneck b<numbers/s> and knobs)")
    ax.legend(fontsize=8, loc="center left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _html_table(rows: list[dict[str, Any]], columns, cell) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for _, h in columns)
    body = ""
    for r in rows:
        cells = []
        for k, _ in columns:
            v = cell(r, k)
            cells.append(f'<td><a href="{e(r["run"])}/">{e(v)}</a></td>' if k == "run"
                         else f"<td>{e(v)}</td>")
        mark = ' class="goal"' if r["meets_goal"] else ""
        body += f"<tr{mark}>{''.join(cells)}</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def summary_html(rows: list[dict[str, Any]]) -> str:
    e = html.escape
    calibrated = [r for r in rows if r.get("evaluation") == "calibrated"]
    first = [r for r in rows if r.get("evaluation") != "calibrated"]
    parts = []
    if not rows:
        parts.append("<p>No run has results yet.</p>")
    if calibrated:
        parts.append("<h2>Calibrated evaluation</h2><p>Thresholds chosen on the validation "
                     "works, figures on the test works; notes kept against the score with a "
                     "bootstrap interval over works.</p>"
                     + _html_table(calibrated, CALIBRATED_COLUMNS, _calibrated_cell))
    if first:
        caveat = FIRST_EVALUATION_CAVEAT.replace("**Read with care.**",
                                                 "<strong>Read with care.</strong>")
        caveat = caveat.replace("`--variants NAME`", "<code>--variants NAME</code>")
        parts.append(f"<h2>First evaluation</h2><p>{caveat}</p>"
                     '<p><img src="frontier.png" alt="content kept against instrument changed"></p>'
                     + _html_table(first, MD_COLUMNS, lambda r, k: _fmt(r.get(k))))
    body = "\n".join(parts)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>UMT study: {e(NAME)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto}}
table{{border-collapse:collapse;font-size:90%}}td,th{{border:1px solid #ccc;padding:2px 6px}}
tr.goal{{background:#dfd}}</style></head><body>
<h1>Experiment {e(NAME)}</h1><p>{e(DESCRIPTION)}</p>
{body}
<p>Each run's folder holds its key figures and, where it ran, its full report
(<code>index.html</code>). Machine-readable: <a href="runs.csv">runs.csv</a>; the same
tables with the goals and the reference points: <a href="summary.md">summary.md</a>.</p>
</body></html>
"""

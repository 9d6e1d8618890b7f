"""``python -m umt_core bench parity``: does bf16 training learn what fp32 training learns?

Two runs of one preset from the same seed, on the same data and for the same number of
steps, one per ``train.precision``; then, per run, the validation reconstruction loss of
each epoch and the evaluation (`umt_core.evaluate`) of its last checkpoint on the same
test clips. Parity holds when the last validation loss of bf16 is within `tolerance`
(relative) of fp32's and the 95% intervals of every headline figure of the two
evaluations overlap (`umt_core.statistics`: Wilson intervals of the yes/no figures,
bootstrap intervals over the works of the others).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PRECISIONS, PRESETS, parse_overrides, preset
from ..options import positive_int
from ..paths import resolve
from ..statistics import compare_figures, interval

# Figures compared, per condition "translation": the evaluation's criteria and signals.
BINARY = ("instrument", "clean", "notes", "closer_to_target", "success")
FIGURES = (*BINARY, "notes_kept_score", "notes_kept_truth", "source_chroma")


def evaluation_figures(clips) -> dict[str, tuple[float, float, float]]:
    """Intervals of `FIGURES` over the translated clips of an `Evaluation.clips` table
    (means bootstrapped over works: clips of one work share their notes)."""
    df = clips[clips.condition == "translation"]
    groups = df["work"].astype(str).to_numpy()
    out = {}
    for f in FIGURES:
        if f in df:
            values = np.asarray(df[f].astype("Float64").to_numpy(dtype=float, na_value=np.nan))
            out[f] = interval(values, f in BINARY, groups)
    return out


def run_parity(preset_name: str, manifest: str, run_root: str | Path, steps: int, *,
               overrides: dict[str, Any] | None = None, works: int = 8, seconds: float = 2.0,
               tolerance: float = 0.01, progress: bool = True) -> dict[str, Any]:
    """Train `steps` steps per precision (resuming runs already there), evaluate both."""
    from ..checkpoint import load_model
    from ..evaluate import EvalData, dataset_classifier, evaluate
    from ..metrics import read_metrics
    from ..train import train

    root = resolve(run_root)
    data = EvalData.from_manifest(resolve(manifest))
    result: dict[str, Any] = {"preset": preset_name, "steps": steps, "manifest": manifest,
                              "overrides": overrides or {}, "runs": {}}
    classifier, thresholds = None, None
    for precision in PRECISIONS:
        cfg = preset(preset_name, {**(overrides or {}), "train.precision": precision})
        cfg.train.max_minutes = 0.0  # equal steps, not equal time
        run_dir = root / precision
        summary = train(cfg, run_dir, manifest=resolve(manifest), steps=steps,
                        progress=progress)
        epochs = [e for e in read_metrics(run_dir / "metrics.jsonl") if e["event"] == "epoch"]
        val = [float(np.mean(list(e["val_recon"].values()))) for e in epochs]
        model = load_model(summary["last_checkpoint"])
        if classifier is None:
            classifier = dataset_classifier(data, model.domains, mu_law=model.config.mu_law,
                                            seconds=seconds)
        ev = evaluate(model, data, sources=model.domains, targets=model.domains, works=works,
                      seconds=seconds, system=precision, classifier=classifier,
                      thresholds=thresholds, progress=progress)
        thresholds = ev.thresholds  # chosen on val once, the same for both runs
        result["runs"][precision] = {
            "run_dir": str(run_dir), "val_loss_per_epoch": val,
            "last_val_loss": val[-1] if val else math.nan,
            "train_minutes": summary["train_minutes"],
            "figures": evaluation_figures(ev.clips),
        }
    a, b = result["runs"]["fp32"], result["runs"]["bf16"]
    rel = abs(b["last_val_loss"] - a["last_val_loss"]) / a["last_val_loss"]
    within = compare_figures(a["figures"], b["figures"])
    result.update(val_loss_rel_diff=rel, val_loss_ok=rel <= tolerance, figures_within=within,
                  parity=rel <= tolerance and all(within.values()))
    return result


def format_parity(r: dict[str, Any]) -> str:
    a, b = r["runs"]["fp32"], r["runs"]["bf16"]
    per_epoch = {p: [round(v, 4) for v in x["val_loss_per_epoch"]] for p, x in r["runs"].items()}
    verdict = "within" if r["val_loss_ok"] else "NOT within"
    lines = [f"precision parity: preset {r['preset']}, {r['steps']} steps each, same seed",
             f"validation loss per epoch: fp32 {per_epoch['fp32']}, bf16 {per_epoch['bf16']}",
             (f"last validation loss: fp32 {a['last_val_loss']:.4f}, bf16 "
              f"{b['last_val_loss']:.4f} ({100 * r['val_loss_rel_diff']:.2f}% apart: "
              f"{verdict} the tolerance)"),
             f"training minutes: fp32 {a['train_minutes']}, bf16 {b['train_minutes']}",
             (f"{'figure (translation)':<22} {'fp32 [95% interval]':>26} "
              f"{'bf16 [95% interval]':>26}  agree")]
    for k, ok in r["figures_within"].items():
        (ma, la, ha), (mb, lb, hb) = a["figures"][k], b["figures"][k]
        lines.append(f"{k:<22} {ma:>8.3f} [{la:>6.3f}, {ha:>6.3f}] "
                     f"{mb:>8.3f} [{lb:>6.3f}, {hb:>6.3f}]  {'yes' if ok else 'NO'}")
    lines.append(f"parity: {'holds' if r['parity'] else 'does NOT hold'}")
    return "\n".join(lines)


def register(which: argparse._SubParsersAction) -> None:
    p = which.add_parser("parity", help="fp32 vs bf16 training from the same seed: validation "
                                        "loss and evaluation figures")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                   help="config preset trained in both precisions")
    p.add_argument("--manifest", default="data_manifests/scores-8k.yaml",
                   help="dataset manifest, prepared with `prep`")
    p.add_argument("--domains", nargs="+", default=["piano", "cello"], help="domains trained")
    p.add_argument("--steps", type=positive_int, default=300, help="training steps of each run")
    p.add_argument("--run-root", default="runs/precision-parity",
                   help="runs <root>/fp32 and <root>/bf16 (resumed when there)")
    p.add_argument("--works", type=positive_int, default=8, help="paired test works judged")
    p.add_argument("-o", "--override", action="append", default=[],
                   metavar="SECTION.FIELD=VALUE", help="config override (repeatable)")
    p.add_argument("--json", default=None,
                   help="also write the result to this JSON file (None: print only)")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {"domains": args.domains, **parse_overrides(args.override)}
    r = run_parity(args.preset, args.manifest, args.run_root, args.steps,
                   overrides=overrides, works=args.works)
    print(format_parity(r))
    if args.json:
        out = resolve(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(r, indent=1) + "\n")
    return 0

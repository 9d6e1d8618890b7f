"""The study's CPU goal, checked for one trained model (set for the `decoders`
experiment's spectral ablation). It is a reading of the calibrated evaluation
(`umt_core.evaluate.evaluate`) on the paired **test** works, with every threshold chosen
on the validation works, and adds only the bars:

- notes kept (against the score) >= 0.6 on average,
- classified as the target instrument in >= 75% of the clips,
- closer to the target's rendering than to the source in >= 75%,
- clean in >= 90%, and all four criteria at once (success) in >= 50%,
- a 10 s clip translated in under 2 s (one core).

Notes kept gets a bootstrap interval over works, the rates Wilson intervals (both as the
evaluation computes them). The sampling temperature is the run's chosen one (on val).

    python -m umt_core goal --checkpoint runs/x/checkpoints/last.pt \\
        --manifest data_manifests/scores-8k.yaml --json goal.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_model
from ..evaluate import THRESHOLD_SPLIT, EvalData, Evaluation, evaluate, run_temperature
from ..generate import translate
from ..options import positive_float, positive_int
from ..paths import resolve, write_text_atomic
from .bars import GOAL, GOAL_SPLIT, TRANSLATE_10S_SECONDS

__all__ = ["GOAL", "GOAL_SPLIT", "TRANSLATE_10S_SECONDS", "goal_check"]


def translation_seconds(model, seconds: float = 10.0, repeats: int = 3) -> dict[str, float]:
    """Best of `repeats` wall and CPU (this process) seconds to translate `seconds` of
    audio into the last domain, after a warm-up. On a shared machine the CPU time is what
    a dedicated core would take; the wall time includes waiting for one."""
    rate, target = model.config.sample_rate, model.domains[-1]
    x = (0.1 * np.random.default_rng(0).standard_normal(round(seconds * rate))).astype(np.float32)
    translate(model, x[:rate], rate, [target])
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        translate(model, x, rate, [target])
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"seconds_of_audio": seconds, "wall": min(wall), "cpu": min(cpu),
            "threads": torch.get_num_threads()}


def goal_check(ev: Evaluation, timing: dict[str, float] | None = None) -> dict[str, Any]:
    """Each criterion of GOAL for the translations of an evaluation of the test works
    (value, interval, bar, pass), with the thresholds it used (chosen on val)."""
    if ev.settings["split"] != GOAL_SPLIT:
        raise ValueError(f"the goal is judged on the {GOAL_SPLIT} works; this evaluation is "
                         f"of {ev.settings['split']!r}: run evaluate(..., split='{GOAL_SPLIT}')")
    if ev.thresholds.get("chosen_on") != THRESHOLD_SPLIT:
        raise ValueError(f"the evaluation's thresholds were chosen on "
                         f"{ev.thresholds.get('chosen_on')!r}, not on {THRESHOLD_SPLIT!r}")
    ours = ev.clips[ev.clips.condition == "translation"]
    if ours.empty:
        raise ValueError("goal_check: the evaluation has no translation rows")
    out: dict[str, Any] = {"split": GOAL_SPLIT, "thresholds": ev.thresholds,
                           "clips": len(ours), "works": int(ours["work"].nunique())}
    figures = ev.condition_figures("translation")
    kept = figures["notes_kept"]
    out["notes_kept"] = {"value": kept["mean"], "ci_low": kept["ci_low"],
                         "ci_high": kept["ci_high"], "against": kept["against"]}
    for crit in ("instrument", "closer_to_target", "clean", "success"):
        r = figures[crit]
        out[crit] = {"value": float(r["rate"]), "ci_low": float(r["ci_low"]),
                     "ci_high": float(r["ci_high"]), "k": int(r["k"]), "n": int(r["n"])}
    for crit, bar in GOAL.items():
        out[crit].update(bar=bar, passed=bool(out[crit]["value"] >= bar))
    if timing is not None:
        out["translate_10s"] = {**timing, "bar": TRANSLATE_10S_SECONDS,
                                "passed": bool(timing["cpu"] < TRANSLATE_10S_SECONDS),
                                "passed_wall": bool(timing["wall"] < TRANSLATE_10S_SECONDS)}
    out["calibration"] = ev.to_json()["calibration"]
    return out


def format_goal(result: dict[str, Any]) -> str:
    lines = []
    for crit in (*GOAL, "translate_10s"):
        if crit not in result:
            continue
        r = result[crit]
        value = f"{r['cpu']:.2f} s CPU ({r['wall']:.2f} s wall)" if crit == "translate_10s" \
            else f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        lines.append(f"{crit:18s} {value}  bar {r['bar']}  {'pass' if r['passed'] else 'FAIL'}")
    return "\n".join(lines)


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("goal", help="check a trained model against the study's CPU goal",
                       description="Evaluate a model on the paired test works (thresholds "
                       "chosen on val, the run's sampling temperature) and compare each "
                       "criterion with the goal's bar.")
    p.add_argument("--checkpoint", required=True, help="umt_core checkpoint (.pt)")
    p.add_argument("--manifest", default="data_manifests/scores-8k.yaml",
                   help="a scores dataset with paired val and test works (default: %(default)s)")
    p.add_argument("--segments", type=positive_int, default=4, help="clips per test work")
    p.add_argument("--seconds", type=positive_float, default=2.0, help="seconds per clip")
    p.add_argument("--json", help="write the result here")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)  # the goal's translation time is for one core
    checkpoint = resolve(args.checkpoint)
    model = load_model(checkpoint).eval()
    data = EvalData.from_manifest(resolve(args.manifest))
    temperature, origin = run_temperature(checkpoint)
    ev = evaluate(model, data, split=GOAL_SPLIT, segments=args.segments, seconds=args.seconds,
                  temperature=temperature, system=Path(args.checkpoint).stem)
    result = {"checkpoint": str(args.checkpoint), "manifest": str(args.manifest),
              "decoder": model.config.model.decoder, "temperature": temperature,
              "temperature_from": origin, "classifier": ev.classifier,
              "key_figures": ev.key_figures(),
              **goal_check(ev, translation_seconds(model))}
    text = json.dumps(result, indent=1, default=float)
    if args.json:
        write_text_atomic(Path(args.json), text + "\n")
    print(format_goal(result))
    return 0

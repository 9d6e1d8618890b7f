"""Does a model trained on one rendering of its instruments translate other sounds?

For each checkpoint (one per seed), two inputs it never heard:

- **another soundfont**: the paired test works rendered with the dataset's other
  soundfont (TimGM6mb, GPL-2, Debian's `timgm6mb-soundfont`; the model trained on
  FluidR3_GM, MIT), split `test_alt`, judged exactly as the test works are
  (`umt_core.evaluate`, thresholds chosen on the validation works), with calibration
  rows built from that soundfont's own renderings;
- **a real recording**: the only one shipped with the installed packages,
  `music21/audioSearch/test_audio.wav` (music21, BSD-3-Clause; 20 s of a monophonic
  melody), judged by `umt_core.recordings` against its pYIN pitch estimate.

    python -m umt_core generalisation --checkpoints runs/cpu/checkpoints/best.pt \\
        runs/cpu-seed2/checkpoints/best.pt runs/cpu-seed3/checkpoints/best.pt \\
        --out results/generalisation

writes `generalisation.json`, `README.md` (a table per input, each seed with its
intervals and the spread between seeds) and `index.html` (the recording's
translations as audio players) into `--out`.
"""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import load_audio, save_audio
from ..calibration import Thresholds
from ..paths import resolve, write_text_atomic
from .report import _CSS
from .seeds import spread_of, spread_text

CRITERIA = ("instrument", "clean", "notes", "success")


def real_recording() -> Path:
    """music21's test recording (a monophonic melody), where the package installed it."""
    import music21

    path = Path(music21.__file__).parent / "audioSearch" / "test_audio.wav"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: music21's test recording is missing; reinstall "
                                "music21 (make setup)")
    return path


def other_soundfont(model, data, temperature: float, classifier, thresholds: dict, *,
                    segments: int, seconds: float) -> dict:
    """`Evaluation.condition_figures` of the translations, the ground truth and the
    source in an evaluation of test_alt (with the given classifier and val thresholds)."""
    from ..evaluate import evaluate

    ev = evaluate(model, data, split="test_alt", segments=segments, seconds=seconds,
                  temperature=temperature, classifier=classifier, thresholds=thresholds)
    out = {cond: ev.condition_figures(cond) for cond in ("translation", "ground_truth", "source")}
    out["thresholds"] = ev.thresholds["values"]
    return out


def recording(model, rec, temperature: float, classifier, thresholds: dict,
              target_clips: dict, *, segments: int, seconds: float,
              examples: Path | None = None) -> dict:
    """`recordings.summarize` of the model's translations of `rec` into each domain of
    the classifier; each target's first translated clip into `examples`."""
    from ..generate import translate
    from ..recordings import evaluate_recordings, summarize

    sr = model.config.sample_rate
    produced = []

    def run(clip, target):
        out = translate(model, clip, sr, [target], temperature=temperature)[target]
        produced.append((target, clip, out))
        return out

    df = evaluate_recordings([rec], run, targets=list(classifier.domains), classifier=classifier,
                             thresholds=Thresholds(**thresholds), target_clips=target_clips,
                             sample_rate=sr, segments=segments, seconds=seconds)
    if examples is not None:
        examples.mkdir(parents=True, exist_ok=True)
        first = {}
        for target, clip, out in produced:  # each target's first clip
            first.setdefault(target, (clip, out))
        for target, (clip, out) in first.items():
            save_audio(examples / f"{rec.name}_source.wav", clip, sr)
            save_audio(examples / f"{rec.name}_to_{target}.wav", np.asarray(out), sr)
    return summarize(df)


def markdown(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    intro = ("Each column one seed's model (its best checkpoint on validation loss); rates "
             "with Wilson 95% intervals, notes kept with a bootstrap interval (over works for "
             "the soundfont, over 2-s clips for the one recording); the last column the spread "
             "between seeds.")
    lines = ["# Generalisation: inputs the model never heard", "", intro, ""]
    for part, title, conds in (
            ("other_soundfont", "Test works rendered with TimGM6mb (trained on FluidR3_GM)",
             ("translation", "ground_truth", "source")),
            ("recording", "A real recording (music21's test_audio.wav, notes by pYIN)",
             ("translation", "source", "source_snr5", "target_unrelated"))):
        lines += [f"## {title}", "", "| row | figure | " + " | ".join(names) + " | seeds |",
                  "|" + "---|" * (len(names) + 3)]
        for cond in conds:
            for fig in ("notes_kept", *CRITERIA):
                cells, values = [], []
                for n in names:
                    e = results[n].get(part, {}).get(cond, {}).get(fig)
                    if e is None:
                        cells.append("-")
                        values.append(None)
                        continue
                    v = e.get("mean", e.get("rate"))
                    values.append(v)
                    cells.append(f"{v:.2f} [{e['ci_low']:.2f}, {e['ci_high']:.2f}]")
                lines.append(f"| {cond} | {fig} | " + " | ".join(cells)
                             + f" | {spread_text(spread_of(values))} |")
        lines.append("")
    return "\n".join(lines)


def page(results: dict[str, dict[str, Any]], examples: Path) -> str:
    from .side_by_side import audio_tag

    e = html.escape
    players = []
    for name in results:
        folder = examples / Path(name).parent.parent.name
        cells = "".join(f"<td><b>{e(w.stem)}</b><br>{audio_tag(w)}</td>"
                        for w in sorted(folder.glob("*.wav")))
        players.append(f"<h3>{e(name)}</h3><table><tr>{cells}</tr></table>")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Generalisation"
            f"</title><style>{_CSS}</style></head><body><h1>Generalisation</h1>"
            "<p>The tables with intervals: README.md beside this page. Below, the real "
            "recording's first clip and each seed's translations of it.</p>"
            + "".join(players) + "</body></html>\n")


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generalisation", help="the models on another soundfont and on a real "
                       "recording (inputs they never heard)")
    p.add_argument("--checkpoints", nargs="+", required=True,
                   help="one checkpoint per seed, e.g. runs/cpu/checkpoints/best.pt ...")
    p.add_argument("--manifest", default="data_manifests/scores-8k.yaml",
                   help="the scores dataset the models trained on (default: %(default)s)")
    p.add_argument("--segments", type=int, default=4, help="clips per work / recording")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per clip")
    p.add_argument("--out", required=True, help="folder for the results")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from ..checkpoint import load_model
    from ..evaluate import EvalData, run_temperature
    from ..recordings import Recording, judging_context, pitch_events

    out = resolve(args.out)
    data = EvalData.from_manifest(resolve(args.manifest))
    path = real_recording()
    contexts, recs, results = {}, {}, {}
    for ckpt in args.checkpoints:
        checkpoint = resolve(ckpt)
        model = load_model(checkpoint).eval()
        temperature, origin = run_temperature(checkpoint)
        sr = model.config.sample_rate
        domains = tuple(model.domains)
        if domains not in contexts:  # the seeds of one setting share it: built once
            contexts[domains] = judging_context(data, list(domains), segments=args.segments,
                                                seconds=args.seconds)
        if sr not in recs:
            audio = load_audio(path, sr, allow_silent=False)[0]
            recs[sr] = Recording(path.stem, audio, pitch_events(audio, sr))
        classifier, thresholds, target_clips = contexts[domains]
        options = {"segments": args.segments, "seconds": args.seconds}
        results[ckpt] = {
            "temperature": temperature, "temperature_from": origin,
            "other_soundfont": other_soundfont(model, data, temperature, classifier,
                                               thresholds, **options),
            "recording": recording(model, recs[sr], temperature, classifier,
                                   thresholds["values"], target_clips, **options,
                                   examples=out / "examples" / checkpoint.parent.parent.name),
        }
        print(f"{ckpt}: done")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "generalisation.json",
                      json.dumps({"manifest": args.manifest, "recording": path.name,
                                  "results": results}, indent=1, default=float) + "\n")
    text = markdown(results)
    write_text_atomic(out / "README.md", text)
    write_text_atomic(out / "index.html", page(results, out / "examples"))
    print(text)
    return 0

"""The round-trip ceiling of a spectral decoder: what a decoder that predicted its
representation perfectly would score under the study's evaluation.

Each test clip's ground truth (the target instrument's rendering of the same notes) goes
through the representation (an STFT magnitude, or mel bands of it) and back by
Griffin-Lim, and the result is judged exactly as a model's translation is
(`umt_core.evaluate.evaluate`, thresholds chosen on the validation works). The report
puts these figures next to what the trained decoder reaches.

    python -m umt_core round-trip --manifest data_manifests/scores-8k.yaml \\
        --representation stft:1024:256 --representation mel:1024:256:64 --json rt.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import load_manifest
from ..evaluate import SPLITS, EvalData, Evaluation, evaluate, thresholds_on_val
from ..options import positive_float, positive_int
from ..paths import resolve, write_text_atomic
from ..spectral import round_trip


@dataclass(frozen=True)
class Representation:
    kind: str  # "stft" or "mel"
    n_fft: int = 1024
    hop: int = 256
    n_mels: int = 64

    @property
    def name(self) -> str:
        base = f"stft n_fft {self.n_fft}, hop {self.hop}"
        return f"{self.n_mels}-band mel of the {base}" if self.kind == "mel" else base

    @classmethod
    def parse(cls, text: str) -> Representation:
        """"stft:N_FFT:HOP" or "mel:N_FFT:HOP:N_MELS" (later fields optional)."""
        parts = text.split(":")
        kind, numbers = parts[0], parts[1:]
        if kind not in ("stft", "mel") or len(numbers) > (3 if kind == "mel" else 2):
            raise ValueError(f"representation {text!r}: write stft:N_FFT:HOP or "
                             f"mel:N_FFT:HOP:N_MELS, e.g. stft:1024:256")
        try:
            values = [int(v) for v in numbers]
        except ValueError:
            raise ValueError(f"representation {text!r}: its sizes must be whole numbers") from None
        if any(v <= 0 for v in values):
            raise ValueError(f"representation {text!r}: its sizes must be positive")
        rep = cls(kind, *values)
        if rep.hop > rep.n_fft:
            raise ValueError(f"representation {text!r}: the hop ({rep.hop}) exceeds n_fft ({rep.n_fft})")
        return rep


def round_trip_translator(rep: Representation, sample_rate: int, n_iter: int = 64):
    """A `Translator` that returns each clip's ground truth after the round trip."""
    def run(clips, source, targets):
        return {t: [round_trip(c.ground_truth, sample_rate, rep.kind, n_fft=rep.n_fft,
                               hop=rep.hop, n_mels=rep.n_mels, n_iter=n_iter) for c in clips]
                for t in targets}
    return run


def round_trip_ceiling(data: EvalData, reps: list[Representation], *, domains: list[str],
                       split: str = "test", segments: int = 4, seconds: float = 2.0,
                       works: int | None = None, n_iter: int = 64,
                       seed: int = 0) -> dict[str, Evaluation]:
    """One evaluation per representation, every direction between `domains`, with one
    classifier and one set of thresholds (chosen on val) shared by all."""
    if not reps:
        raise ValueError("round_trip_ceiling: no representation given")
    from ..evaluate import dataset_classifier

    classifier = dataset_classifier(data, domains, seconds=seconds, seed=seed)
    pairs = [(s, t) for s in domains for t in domains if s != t]
    thresholds = thresholds_on_val(data, classifier, pairs, seed=seed, segments=segments, seconds=seconds, works=works)
    out = {}
    for rep in reps:
        out[rep.name] = evaluate(
            None, data, split=split, sources=domains, targets=domains, works=works,
            segments=segments, seconds=seconds, seed=seed, system=rep.name,
            translator=round_trip_translator(rep, data.sample_rate, n_iter),
            classifier=classifier, thresholds=thresholds)
    return out


def ceiling_table(evaluations: dict[str, Evaluation]) -> list[dict[str, Any]]:
    """One row per representation: `Evaluation.condition_figures` of the round-tripped
    clips (every criterion's rate and notes kept, with intervals)."""
    return [{"representation": name, **ev.condition_figures("translation")}
            for name, ev in evaluations.items()]


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("round-trip", help="the ceiling of a spectral decoder: ground truth "
                       "-> representation -> Griffin-Lim, evaluated as a translation")
    p.add_argument("--manifest", default="data_manifests/scores-8k.yaml",
                   help="a prepared dataset with paired works (default: %(default)s)")
    p.add_argument("--representation", action="append", type=Representation.parse,
                   help="stft:N_FFT:HOP or mel:N_FFT:HOP:N_MELS; repeat to compare "
                        "(None: stft:1024:256 and mel:1024:256:64)")
    p.add_argument("--domains", nargs="+", default=["piano", "cello"],
                   help="domains translated between (default: %(default)s)")
    p.add_argument("--split", choices=SPLITS, default="test", help="works judged")
    p.add_argument("--works", type=positive_int, default=None, help="paired works (None: all)")
    p.add_argument("--segments", type=positive_int, default=4, help="clips per work")
    p.add_argument("--seconds", type=positive_float, default=2.0, help="seconds per clip")
    p.add_argument("--iterations", type=positive_int, default=64, help="Griffin-Lim iterations")
    p.add_argument("--json", required=True, help="write the table here")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    reps = args.representation or [Representation("stft"), Representation("mel")]
    manifest = load_manifest(resolve(args.manifest))
    data = EvalData.from_manifest(manifest)
    missing = [d for d in args.domains if d not in data.domains]
    if missing:
        raise ValueError(f"--domains {missing} are not in {args.manifest} ({data.domains})")
    evaluations = round_trip_ceiling(data, reps, domains=args.domains, split=args.split,
                                     segments=args.segments, seconds=args.seconds,
                                     works=args.works, n_iter=args.iterations)
    table = ceiling_table(evaluations)
    first = next(iter(evaluations.values()))
    payload = {"manifest": str(args.manifest), "split": args.split, "domains": args.domains,
               "segments": args.segments, "seconds": args.seconds,
               "griffin_lim_iterations": args.iterations,
               "thresholds": first.thresholds, "ceiling": table}
    write_text_atomic(Path(resolve(args.json)), json.dumps(payload, indent=1, default=float) + "\n")
    for row in table:
        kept = row["notes_kept"]
        rates = "  ".join(f"{c} {row[c]['rate']:.2f}" for c in
                          ("instrument", "clean", "closer_to_target", "success") if c in row)
        print(f"{row['representation']:40s} notes kept {kept['mean']:.3f} "
              f"[{kept['ci_low']:.3f}, {kept['ci_high']:.3f}]  {rates}")
    print(f"wrote {args.json}")
    return 0

"""One setting trained with several seeds: each seed's figures with their intervals,
and the spread between seeds (mean, standard deviation, range), so that a reader sees
how much of a difference between two settings one seed could make on its own.

    python -m umt_core seeds results/cpu results/cpu-seed2 results/cpu-seed3 \\
        --out results/cpu-seeds

reads each run's metrics.json (notebooks 02 and 04) and writes ``seeds.json`` and
``README.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from ..paths import resolve, write_text_atomic
from .figures import LATENT_ROWS, ROWS, TRAIN_ROWS, format_figure, model_figure


def spread_of(values: list[Any]) -> dict[str, float] | None:
    """Mean, sample standard deviation and range of the seeds' values (None and
    non-finite ones left out); None with fewer than two."""
    values = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if len(values) < 2:
        return None
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values),
            "min": min(values), "max": max(values), "n": len(values)}


def spread_text(spread: dict[str, float] | None) -> str:
    """"mean ± sd (min to max)", or "-" without a spread."""
    if spread is None:
        return "-"
    return (f"{spread['mean']:.3g} ± {spread['sd']:.2g} "
            f"({spread['min']:.3g} to {spread['max']:.3g})")


def read_study_metrics(run: Path) -> dict[str, Any]:
    path = run / "metrics.json"
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no metrics.json; run the study into {run} first") from None
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); re-run the study into {run}") from None
    if not isinstance(value, dict) or "04_listening_tests" not in value:
        raise ValueError(f"{path}: no notebook 04 figures; run notebook 04 for {run} "
                         "(python -m umt_core study --run NAME --notebooks 04)")
    return value


# (label, notebook, key, kind): the figures of a seed table. kind "rate"/"mean" is one of
# notebook 04's model figures (with an interval); None a plain figure.
SPECS = ([(label, "04_listening_tests", suffix, kind) for label, suffix, kind in ROWS]
         + [(label, "04_listening_tests", key, None) for label, key in LATENT_ROWS]
         + [(label, "02_train", key, None) for label, key in TRAIN_ROWS])


def figure_rows(metrics: dict[str, dict[str, Any]], specs=SPECS) -> list[dict[str, Any]]:
    """One row per figure of `specs`: each run's value (and interval) and the spread
    between the runs (None with fewer than two). `metrics`: {run: its metrics.json}."""
    rows = []
    for label, stem, key, kind in specs:
        per_run = {}
        for name, m in metrics.items():
            figures = m.get(stem, {})
            per_run[name] = model_figure(figures, key) if kind else (
                (figures[key], figures.get(f"{key}_ci_low"), figures.get(f"{key}_ci_high"))
                if key in figures else None)
        spread = spread_of([v[0] for v in per_run.values() if v is not None])
        rows.append({"figure": label, "notebook": stem, "key": key, "kind": kind or "value",
                     "runs": {n: (None if v is None else {"value": v[0], "ci_low": v[1],
                                                          "ci_high": v[2]})
                              for n, v in per_run.items()},
                     "spread": spread})
    return rows


def seed_rows(runs: list[Path]) -> list[dict[str, Any]]:
    """One row per figure: each run's value (and interval) and the spread between runs."""
    if len(runs) < 2:
        raise ValueError(f"a seed spread needs two runs or more, got {[str(r) for r in runs]}")
    return figure_rows({str(r): read_study_metrics(r) for r in runs})


def run_cell(row: dict[str, Any], run: str) -> str:
    """One run's value of a figure row: with its interval for rates and means, plain for
    the rest (steps, minutes, a loss); "-" where the run has none."""
    v = row["runs"].get(run)
    if v is None:
        return "-"
    if row["kind"] in ("rate", "mean"):
        return format_figure((v["value"], v["ci_low"], v["ci_high"]), row["kind"])
    if v.get("ci_low") is not None and v.get("ci_high") is not None:  # a plain rate's interval
        return format_figure((v["value"], v["ci_low"], v["ci_high"]), "rate")
    return f"{v['value']:.4g}" if isinstance(v["value"], int | float) else str(v["value"])


def seeds_markdown(rows: list[dict[str, Any]], title: str) -> str:
    runs = list(rows[0]["runs"])
    head = "| figure | " + " | ".join(runs) + " | mean ± sd (range) |"
    lines = [f"# {title}", "", head, "|" + "---|" * (len(runs) + 2)]
    for r in rows:
        cells = [run_cell(r, n) for n in runs]
        lines.append(f"| {r['figure']} | " + " | ".join(cells) + f" | {spread_text(r['spread'])} |")
    note = ("Each seed's interval: Wilson 95% for rates, a bootstrap over works for means "
            "(as notebook 04 computes them). The last column is the spread between seeds: "
            "the sample standard deviation and the range of the seeds' values.")
    lines += ["", note]
    return "\n".join(lines) + "\n"


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("seeds", help="the spread of one setting's figures over seeds",
                       description="Read the metrics.json of study runs of one setting "
                       "trained with different seeds; write each seed's figures with their "
                       "intervals and the spread between seeds.")
    p.add_argument("runs", nargs="+", help="results folders, e.g. results/cpu results/cpu-seed2")
    p.add_argument("--out", required=True, help="folder for seeds.json and README.md")
    p.add_argument("--title", default=None, help="the table's title (None: the runs' names)")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    runs = [resolve(r) for r in args.runs]
    rows = seed_rows(runs)
    # Names as given (relative to the project), not the absolute paths of this machine.
    names = dict(zip((str(r) for r in runs), args.runs, strict=True))
    for r in rows:
        r["runs"] = {names[k]: v for k, v in r["runs"].items()}
    out = resolve(args.out)
    out.mkdir(parents=True, exist_ok=True)
    title = args.title or f"Seeds: {', '.join(args.runs)}"
    write_text_atomic(out / "seeds.json", json.dumps({"runs": args.runs, "rows": rows},
                                                     indent=1) + "\n")
    text = seeds_markdown(rows, title)
    write_text_atomic(out / "README.md", text)
    print(text)
    return 0

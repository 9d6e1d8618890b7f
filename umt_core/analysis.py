"""Loss analysis: training curves from this project's runs and from reference logs.

Two formats are read into one tidy table (one row per logged value):

- this project's ``runs/<run>/metrics.jsonl`` (one JSON event per line), and
- the reference implementation's ``main_<rank>.log``::

      LEVEL - %x %X - <elapsed, e.g. 0:19:49 or 5 days, 0:00:27> - message
      ... - Epoch N Rank R - Train loss: (a, ..., 0.0000), Test loss (a, ..., acc)

  where the train tuple ends with a meter the reference never fills (always 0.0000)
  and the test tuple ends with the domain classifier's accuracy - neither is a domain.

From the table the module finds, without fixed loss thresholds: the runs (a new one at
each ``Namespace(`` line, ``start``/``resume`` event, or epoch counter going back) and
whether training silently restarted from epoch 0; loss spikes (robust z-score of the log
loss against a rolling median, scaled by the median absolute deviation); divergence
(losses staying near ln 256, the cross-entropy of a uniform guess over 256 mu-law codes,
until the end, usually with the classifier's accuracy stuck at one value); and each
run's best epoch (lowest mean held-out reconstruction loss).

A ``main_<R>.log`` belongs to rank R: lines that name another rank (files concatenated
or shared by several processes) are skipped and counted as ``other_rank_lines``; read
each rank's own file to study it. Unknown, multi-line (numpy dumps) and truncated lines
are skipped and counted, never fatal; a file that is not a log raises `LogFormatError`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from .metrics import parse_lines, read_lines
from .model import UNIFORM_LOSS
from .options import positive_float, positive_int
from .outputs import output_file

TABLE_COLUMNS = {
    "source": "the file the value was read from",
    "kind": "'reference' (a main_<rank>.log) or 'metrics' (this project's metrics.jsonl)",
    "run": "run index over all sources, in reading order",
    "lineage": "index of the first run of a chain of resumes (a resumed run continues it)",
    "rank": "process rank whose meters the value comes from",
    "level": "'epoch' (one value per epoch) or 'step' (one per logged optimizer step)",
    "epoch": "0-based epoch index as the log counts it",
    "step": "optimizer steps done (reference: (epoch + 1) * epoch_len when epoch_len is known)",
    "split": "'train', 'test' (reference held-out set) or 'val' (this project's held-out set)",
    "domain": "domain name of a per-domain value; missing for whole-model values",
    "metric": "'recon' (reconstruction cross-entropy in nats, 5.545 = uniform guess), "
              "'classifier_acc' (domain classifier accuracy), 'classifier_loss', "
              "'grad_norm', 'lr', 'samples_per_s', 'skipped_loss' (a step the trainer skipped)",
    "value": "the number",
    "time": "wall-clock unix seconds (reference: its local date and time read as UTC)",
    "elapsed": "seconds since the run started",
    "line": "1-based line number in the source",
}
_TABLE_ORDER = list(TABLE_COLUMNS)

RUN_COLUMNS = ["index", "source", "kind", "rank", "lineage", "boundary", "resumed",
               "resume_requested", "first_epoch", "last_epoch", "epochs", "first_step",
               "last_step", "counter_went_back", "restarted_from_zero", "domains", "n_domains",
               "start_time", "elapsed_s", "best_checkpoint_epoch", "skipped_steps", "decoder"]

SKIP_COUNTS = ("continuation_lines", "truncated_lines", "other_rank_lines", "malformed_lines",
               "unrecognized_lines", "ignored_messages", "empty_meter_values")


class LogFormatError(ValueError):
    """A source that is not a training log this module reads (the message names it)."""


# ----------------------------------------------------------------------------- small parsers

_PREFIX = re.compile(
    r"^(?P<level>[A-Z]+) - (?P<stamp>.*?) - "
    r"(?P<elapsed>(?:\d+ days?, )?\d+:\d\d:\d\d(?:\.\d+)?) - (?P<msg>.*)$"
)
_ELAPSED = re.compile(r"(?:(\d+) days?, )?(\d+):(\d\d):(\d\d(?:\.\d+)?)")
_EPOCH_HEAD = re.compile(r"^Epoch (?P<epoch>\d+)(?: Rank (?P<rank>\d+))?\s*-\s*Train loss")
_RANK_IN_MSG = re.compile(r"\bRank (\d+)\b")
_NUMBER = re.compile(r"[-+]?(?:nan|inf|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)",
                     re.IGNORECASE)


def parse_elapsed(text: str) -> float:
    """Seconds in a timedelta string: '0:19:49', '5 days, 0:00:27', '1 day, 2:03:04.5'."""
    m = _ELAPSED.fullmatch(text.strip())
    if not m:
        raise ValueError(f"not an elapsed time: {text!r}")
    days, h, mnt, s = m.groups()
    return int(days or 0) * 86400 + int(h) * 3600 + int(mnt) * 60 + float(s)


def _parse_stamp(text: str) -> float:
    # The reference logs `%x %X`, which in the C locale is 02/29/20 06:54:47.
    for fmt in ("%m/%d/%y %H:%M:%S", "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(text.strip(), fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            pass
    return math.nan


def parse_namespace(message: str) -> dict[str, Any]:
    """What the analysis needs from a reference `Namespace(...)` line: domain names (the
    basenames of `data=[PosixPath('.../Bach_Solo_Cello'), ...]`), n_datasets, epoch_len,
    rank and checkpoint (non-empty: the run was asked to resume)."""
    out: dict[str, Any] = {}
    data = re.search(r"\bdata=\[(.*?)\]", message)
    if data:
        paths = re.findall(r"'([^']*)'", data.group(1))
        out["domains"] = [PurePosixPath(p.replace("\\", "/").rstrip("/")).name or p for p in paths]
    for key in ("n_datasets", "epoch_len", "rank"):
        m = re.search(rf"\b{key}=(\d+)", message)
        if m:
            out[key] = int(m.group(1))
    m = re.search(r"\bcheckpoint='([^']*)'", message)
    if m:
        out["checkpoint"] = m.group(1)
    return out


def _tuple_after(text: str, label: str) -> tuple[list[float] | None, bool]:
    """The numbers in the parenthesis after `label`, and whether it was cut off."""
    i = text.find(label)
    if i < 0:
        return None, False
    j = text.find("(", i)
    k = text.find(")", j + 1) if j >= 0 else -1
    if j < 0 or k < 0:
        return None, True
    values = []
    for item in text[j + 1:k].split(","):
        if not item.strip():
            continue
        m = _NUMBER.search(item)
        if not m:
            raise ValueError(f"not a number: {item.strip()!r}")
        values.append(float(m.group(0)))
    return values, False


def _default_domains(n: int) -> list[str]:
    return [f"domain_{k}" for k in range(n)]


# ----------------------------------------------------------------------------- reading


@dataclass
class _Run:
    boundary: str  # what opened it: file_start, namespace, start, resume, epoch_reset
    domains: list[str] = field(default_factory=list)
    resumed: bool = False
    resume_requested: bool = False
    epoch_len: int | None = None
    start_time: float = math.nan
    best_checkpoint_epoch: int | None = None
    last_epoch: int | None = None
    n_rows: int = 0
    skipped_steps: int = 0
    may_go_back: bool = False  # after a rollback the counters may legitimately go back
    # model.decoder of the run's config: "wavenet" (reference logs too), whose loss is a
    # cross-entropy with ln 256 as its uniform level, or "spectral", whose loss is not
    decoder: str = "wavenet"


@dataclass
class _Source:
    path: str
    kind: str
    rank: int
    rows: list[tuple] = field(default_factory=list)
    runs: list[_Run] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    columns: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)

    def new_run(self, boundary: str, **kw) -> _Run:
        prev = self.runs[-1] if self.runs else None
        run = _Run(boundary, **kw)
        if prev is not None and boundary in ("epoch_reset", "resume"):
            run.domains, run.epoch_len = list(prev.domains), prev.epoch_len
            run.decoder = prev.decoder
            run.start_time = prev.start_time if boundary == "epoch_reset" else run.start_time
        self.runs.append(run)
        return run

    def add(self, run: _Run, level: str, epoch, step, split: str, domain, metric: str,
            value: float, time: float, elapsed: float, line: int) -> None:
        run.n_rows += 1
        self.rows.append((len(self.runs) - 1, self.rank, level, epoch, step, split, domain,
                          metric, value, time, elapsed, line))


def read_reference_log(path: str | Path, domain_names: Sequence[str] | None = None) -> _Source:
    """Parse one reference `main_<rank>.log` (see the module docstring for the rules)."""
    path = Path(path)
    lines, cut = read_lines(path)
    reader = _ReferenceLogReader(path, domain_names)
    for number, line in enumerate(lines, 1):
        reader.read_line(number, line, last_cut=cut and number == len(lines))
    return reader.finish(lines)


class _ReferenceLogReader:
    """The state of reading one reference log, line by line: the rank it follows, the
    current run and the domain names the last Namespace line gave."""

    def __init__(self, path: Path, domain_names: Sequence[str] | None):
        self.path = path
        m = re.fullmatch(r"main_(\d+)\.log", path.name)
        self.rank: int | None = int(m.group(1)) if m else None
        self.src = _Source(str(path), "reference", self.rank if self.rank is not None else 0)
        self.counts = self.src.counts
        self.run: _Run | None = None
        self.seen_prefix = False
        self.given = list(domain_names or [])
        self.ns_domains: list[str] = []

    def names(self, n: int, ns_domains: list[str]) -> list[str]:
        """Names for `n` domains: the Namespace line's, else the caller's, else defaults."""
        for candidate in (ns_domains, self.given):
            if len(candidate) == n:
                return list(candidate)
        if self.given:
            self.src.warnings.append(f"{self.path}: {len(self.given)} domain names given for "
                                     f"{n} domains; using domain_0..domain_{n - 1}")
        return _default_domains(n)

    def read_line(self, number: int, line: str, last_cut: bool) -> None:
        self.counts["lines"] += 1
        pm = _PREFIX.match(line)
        if not pm:
            self._count_unprefixed(line, last_cut)
            return
        self.seen_prefix = True
        if pm["level"] == "DEBUG":
            self.counts["debug_lines"] += 1
        msg = pm["msg"]
        t, elapsed = _parse_stamp(pm["stamp"]), parse_elapsed(pm["elapsed"])
        if msg.startswith("Namespace("):
            self._namespace(msg, t - elapsed, last_cut)
            return
        em = _EPOCH_HEAD.match(msg)
        if self._other_rank(msg, em):
            self.counts["other_rank_lines"] += 1
            return
        if em is None:
            self._count_message(msg, last_cut)
            return
        self._epoch_line(msg, int(em["epoch"]), t, elapsed, number, last_cut)

    def _count_unprefixed(self, line: str, last_cut: bool) -> None:
        if not line.strip():
            self.counts["blank_lines"] += 1
        elif last_cut:
            self.counts["truncated_lines"] += 1
        elif self.seen_prefix:  # the rest of a multi-line message (e.g. a numpy array dump)
            self.counts["continuation_lines"] += 1
        else:
            self.counts["unrecognized_lines"] += 1

    def _namespace(self, msg: str, start_time: float, last_cut: bool) -> None:
        """A Namespace(...) line: the start of a run, with its arguments."""
        ns = parse_namespace(msg)
        if self.rank is None:
            self.rank = self.src.rank = ns.get("rank", 0)
        elif ns.get("rank", self.rank) != self.rank:
            self.counts["other_rank_lines"] += 1
            return
        self.counts["namespace_lines"] += 1
        self.counts["truncated_lines"] += last_cut
        self.ns_domains = ns.get("domains", [])
        if not self.ns_domains and ns.get("n_datasets"):
            self.ns_domains = self.names(ns["n_datasets"], [])
        self.run = self.src.new_run("namespace", domains=list(self.ns_domains),
                                    epoch_len=ns.get("epoch_len"),
                                    resume_requested=bool(ns.get("checkpoint")),
                                    start_time=start_time)

    def _other_rank(self, msg: str, em: re.Match | None) -> bool:
        """Whether the line names another rank than the one this log follows (the first
        rank named is followed)."""
        line_rank = int(em["rank"]) if em and em["rank"] else None
        if em is None and msg.startswith("Starting epoch"):
            rm = _RANK_IN_MSG.search(msg)
            line_rank = int(rm.group(1)) if rm else None
        if line_rank is None:
            return False
        if self.rank is None:
            self.rank = self.src.rank = line_rank
        return line_rank != self.rank

    def _count_message(self, msg: str, last_cut: bool) -> None:
        """A message that is not an epoch's losses: counted by kind."""
        if last_cut:
            self.counts["truncated_lines"] += 1
        elif msg.startswith("Saved model to"):
            self.counts["checkpoint_lines"] += 1
            if self.run is not None and "bestmodel" in msg:
                self.run.best_checkpoint_epoch = self.run.last_epoch
        elif msg.startswith(("Starting epoch", "Ended epoch")):
            self.counts["epoch_marker_lines"] += 1
        else:
            self.counts["ignored_messages"] += 1

    def _epoch_line(self, msg: str, epoch: int, t: float, elapsed: float, number: int,
                    last_cut: bool) -> None:
        """An epoch's train and test loss tuples."""
        counts = self.counts
        try:
            train, train_cut = _tuple_after(msg, "Train loss")
            test, test_cut = _tuple_after(msg, "Test loss")
        except ValueError:
            counts["malformed_lines"] += 1
            return
        if train_cut or test_cut or (last_cut and test is None):
            counts["truncated_lines"] += 1
        if train is not None and test is not None and len(train) != len(test):
            counts["malformed_lines"] += 1
            return
        n = len(train if train is not None else test or []) - 1
        if n < 1:  # nothing usable (a cut line is already counted)
            counts["malformed_lines"] += not (train_cut or test_cut)
            return
        counts["epoch_lines"] += 1
        run = self._run_of_epoch(epoch, t - elapsed, n)
        step = (epoch + 1) * run.epoch_len if run.epoch_len else math.nan
        where = {"time": t, "elapsed": elapsed, "line": number}
        for split, values in (("train", train), ("test", test)):
            if values is None:
                continue
            for name, value in zip(run.domains, values[:n]):
                if value == 0.0:  # an empty meter prints 0.0000: no batches, not a loss
                    counts["empty_meter_values"] += 1
                    continue
                self.src.add(run, "epoch", epoch, step, split, name, "recon", value, **where)
        if train is not None and train[-1] != 0.0:
            counts["nonzero_unused_column"] += 1
        if test is not None:
            self.src.add(run, "epoch", epoch, step, "test", None, "classifier_acc", test[-1],
                         **where)
        run.last_epoch = epoch

    def _run_of_epoch(self, epoch: int, start_time: float, n_domains: int) -> _Run:
        """The run an epoch line belongs to: a new one at the file's start or where the
        counter goes back without a Namespace line."""
        run = self.run
        if run is None:
            run = self.src.new_run("file_start", start_time=start_time)
        elif run.last_epoch is not None and epoch < run.last_epoch:
            run = self.src.new_run("epoch_reset")
        if run.last_epoch is None and run.resume_requested and epoch > 0:
            run.resumed = True  # asked to load a checkpoint, and the counter continued
        if not run.domains or len(run.domains) != n_domains:
            run.domains = self.names(n_domains, self.ns_domains)
        self.run = run
        return run

    def finish(self, lines: list[str]) -> _Source:
        src, path, counts = self.src, self.path, self.counts
        if not self.seen_prefix:
            if not lines:
                src.warnings.append(f"{path}: empty file")
            else:
                raise LogFormatError(
                    f"{path}: not a training log: no line looks like a reference "
                    "main_<rank>.log line ('LEVEL - date time - elapsed - message') and the "
                    "file does not start with a JSON object (this project's metrics.jsonl)")
        if counts["nonzero_unused_column"]:
            src.warnings.append(f"{path}: the train tuple's last column, unused by the "
                                f"reference, is not 0 on {counts['nonzero_unused_column']} lines")
        doms = next((r.domains for r in src.runs if r.domains), [])
        src.columns = {
            "train_tuple": [f"{d}: reconstruction loss on training batches" for d in doms]
            + ["unused meter the reference never fills (always 0.0000): dropped"],
            "test_tuple": [f"{d}: reconstruction loss on test batches" for d in doms]
            + ["domain classifier accuracy on test batches (metric classifier_acc, not a "
               + f"domain; chance = 1/{len(doms) or 'n'})"],
            "zero_values": "a per-domain 0.0000 is an empty meter (no batches that epoch): "
                           "dropped",
        }
        return src


def read_metrics_jsonl(path: str | Path) -> _Source:
    """Parse this project's metrics.jsonl (events as in the shared contract)."""
    path = Path(path)
    lines, cut = read_lines(path)
    src = _Source(str(path), "metrics", 0)
    run, seen = None, False
    for number, ev in parse_lines(lines, cut):
        src.counts["lines"] += 1
        if isinstance(ev, str):  # not an event: counted by what is wrong with it
            src.counts[ev] += 1
            continue
        seen = True
        src.counts[f"{ev['event']}_events"] += 1
        run = _read_event(src, run, ev, number)
    if not seen and any(line.strip() for line in lines):
        raise LogFormatError(f"{path}: not a metrics.jsonl: no line is a JSON object with an "
                             "'event' key")
    if not lines:
        src.warnings.append(f"{path}: empty file")
    src.columns = {
        "step_event": "per-step training values: recon per domain, classifier_loss, "
                      "classifier_acc, grad_norm, lr, samples_per_s (level 'step', split train)",
        "epoch_event": "train_recon and val_recon per domain, val_classifier_acc (split val), "
                       "lr (level 'epoch')",
        "skip_event": "a step the trainer skipped: its loss as metric skipped_loss",
    }
    return src


def _read_event(src: _Source, run: _Run | None, ev: dict[str, Any], number: int) -> _Run | None:
    """Add one event to `src`; returns the run that later events belong to."""
    kind, t = ev["event"], _num(ev.get("time"))
    epoch, step = _int_or_none(ev.get("epoch")), _num(ev.get("step"))
    if kind == "start":
        config = ev.get("config") or {}
        domains = list(config.get("domains") or []) if isinstance(config, dict) else []
        model = config.get("model") if isinstance(config, dict) else None
        decoder = str((model or {}).get("decoder", "wavenet"))
        return src.new_run("start", domains=domains, start_time=t, decoder=decoder)
    if kind == "resume":
        if run is not None and run.n_rows == 0 and run.boundary == "start":
            run.resumed = True  # `start` then `resume`: one boundary
            return run
        return src.new_run("resume", resumed=True, start_time=t)
    if kind == "divergence":
        src.events.append({"run": len(src.runs) - 1, "event": "rollback", "epoch": epoch,
                           "step": step, "reason": ev.get("reason"),
                           "rolled_back_to_step": ev.get("rolled_back_to_step"),
                           "lr": ev.get("lr")})
        if run is not None:
            run.may_go_back = True
        return run
    if kind not in ("step", "epoch", "skip"):
        return run  # evaluation and future events: counted, not curves
    run = _run_of_curve_event(src, run, epoch, t)
    where = {"time": t, "elapsed": t - run.start_time, "line": number}
    if kind == "step":
        _read_step(src, run, ev, epoch, step, where)
    elif kind == "epoch":
        _read_epoch(src, run, ev, epoch, step, where)
    else:  # skip: the trainer refused a step (non-finite or spiking loss)
        run.skipped_steps += 1
        src.add(run, "step", epoch, step, "train", None, "skipped_loss", _num(ev.get("loss")),
                **where)
    return run


def _run_of_curve_event(src: _Source, run: _Run | None, epoch: int | None, t: float) -> _Run:
    """The run a step, epoch or skip event belongs to: a new one at the file's start or
    where the epoch goes back without a rollback to explain it."""
    if run is None:
        run = src.new_run("file_start", start_time=t)
    if epoch is not None and run.last_epoch is not None and epoch < run.last_epoch:
        if run.may_go_back:
            run.may_go_back = False
        else:
            run = src.new_run("epoch_reset")
    if epoch is not None:
        run.last_epoch = epoch
    return run


def _read_step(src: _Source, run: _Run, ev: dict[str, Any], epoch, step, where) -> None:
    for name, value in (ev.get("recon") or {}).items():
        src.add(run, "step", epoch, step, "train", name, "recon", _num(value), **where)
        _remember_domain(run, name)
    for metric in ("classifier_loss", "classifier_acc", "grad_norm", "lr", "samples_per_s"):
        if metric in ev:
            src.add(run, "step", epoch, step, "train", None, metric, _num(ev[metric]), **where)


def _read_epoch(src: _Source, run: _Run, ev: dict[str, Any], epoch, step, where) -> None:
    for key, split in (("train_recon", "train"), ("val_recon", "val")):
        for name, value in (ev.get(key) or {}).items():
            src.add(run, "epoch", epoch, step, split, name, "recon", _num(value), **where)
            _remember_domain(run, name)
    if "val_classifier_acc" in ev:
        src.add(run, "epoch", epoch, step, "val", None, "classifier_acc",
                _num(ev["val_classifier_acc"]), **where)
    if "lr" in ev:
        src.add(run, "epoch", epoch, step, "train", None, "lr", _num(ev["lr"]), **where)


def _remember_domain(run: _Run, name: str) -> None:
    if name not in run.domains:
        run.domains.append(name)


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _int_or_none(value: Any) -> int | None:
    v = _num(value)
    return int(v) if math.isfinite(v) else None


def expand_sources(sources: Sequence[str | Path] | str | Path) -> list[Path]:
    """Files to read: logs and metrics.jsonl as given; a run directory gives its
    metrics.jsonl, else its lowest-rank main_<rank>.log; a folder of run directories
    gives each run's metrics.jsonl."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    out: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            ranked = sorted(p.glob("main_*.log"),
                            key=lambda q: int(re.sub(r"\D", "", q.stem) or 0))
            if (p / "metrics.jsonl").is_file():
                out.append(p / "metrics.jsonl")
            elif ranked:
                out.append(ranked[0])
            elif found := sorted(p.glob("*/metrics.jsonl")):
                out.extend(found)
            else:
                raise LogFormatError(f"{p}: no metrics.jsonl or main_<rank>.log in this folder")
        else:
            raise FileNotFoundError(f"{p}: no such log, metrics.jsonl or run directory")
    return list(dict.fromkeys(out))  # each file once


def _is_jsonl(path: Path) -> bool:
    if path.suffix == ".jsonl":
        return True
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    return head.startswith(b"{")


@dataclass
class LossLog:
    """Everything read from the sources: the tidy table and one row per run."""

    table: pd.DataFrame
    runs: pd.DataFrame
    columns: dict[str, Any]
    lines: dict[str, dict[str, int]]  # per source: counts of lines by what they were
    warnings: list[str]
    events: list[dict]

    @property
    def skipped(self) -> dict[str, int]:
        """Lines and values skipped, summed over the sources."""
        return {k: int(sum(c.get(k, 0) for c in self.lines.values())) for k in SKIP_COUNTS}


def load(sources: Sequence[str | Path] | str | Path,
         domain_names: Sequence[str] | None = None) -> LossLog:
    """Read logs, metrics.jsonl files and run directories into one `LossLog`.
    `domain_names` name the domains of reference logs whose Namespace line lists no data."""
    frames, run_rows, lines, columns, warnings, events = [], [], {}, {}, [], []
    for path in expand_sources(sources):
        src = read_metrics_jsonl(path) if _is_jsonl(path) else read_reference_log(path, domain_names)
        offset = len(run_rows)
        table = pd.DataFrame(src.rows, columns=["run", "rank", "level", "epoch", "step", "split",
                                                "domain", "metric", "value", "time", "elapsed",
                                                "line"])
        table["run"] += offset
        table["source"], table["kind"] = src.path, src.kind
        lineage: list[int] = []
        for k, r in enumerate(src.runs):
            lineage.append(lineage[k - 1] if r.resumed and k else offset + k)
        table["lineage"] = [lineage[r - offset] for r in table["run"]]
        frames.append(table)
        run_rows.extend(_run_rows(src, table, offset, lineage))
        lines[src.path] = dict(src.counts)
        columns[src.path] = src.columns
        warnings.extend(src.warnings)
        events.extend({**e, "run": e["run"] + offset, "source": src.path} for e in src.events)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_TABLE_ORDER)
    table = table[_TABLE_ORDER]
    for col in ("epoch", "step", "value", "time", "elapsed"):
        table[col] = table[col].astype(float)
    runs = pd.DataFrame(run_rows, columns=RUN_COLUMNS)
    warnings = list(dict.fromkeys(warnings))
    for r in runs.itertuples():
        if r.resumed and r.counter_went_back:
            warnings.append(f"run {r.index}: resumed, but its epoch counter went back to "
                            f"{r.first_epoch}")
    return LossLog(table, runs, {"table": TABLE_COLUMNS, "sources": columns}, lines, warnings,
                   events)


def _run_rows(src: _Source, table: pd.DataFrame, offset: int, lineage: list[int]) -> list[dict]:
    rows, prev = [], None
    for k, r in enumerate(src.runs):
        t = table[table["run"] == offset + k]
        epochs = t["epoch"].dropna()
        steps = t["step"].dropna()
        first_epoch = int(epochs.iloc[0]) if len(epochs) else None
        first_step = float(steps.iloc[0]) if len(steps) else math.nan
        went_back = False
        if prev is not None and first_epoch is not None and prev["last_epoch"] is not None:
            went_back = first_epoch < prev["last_epoch"] or (
                first_epoch == prev["last_epoch"] == 0 and first_step < prev["last_step"])
        row = {
            "index": offset + k, "source": src.path, "kind": src.kind, "rank": src.rank,
            "lineage": lineage[k], "boundary": r.boundary, "resumed": r.resumed,
            "resume_requested": r.resume_requested or r.resumed,
            "first_epoch": first_epoch,
            "last_epoch": int(epochs.iloc[-1]) if len(epochs) else None,
            "epochs": int(epochs.nunique()),
            "first_step": first_step,
            "last_step": float(steps.iloc[-1]) if len(steps) else math.nan,
            "counter_went_back": went_back,
            # The epoch counter went back to 0 and training did not resume: from scratch.
            "restarted_from_zero": bool(went_back and first_epoch == 0 and not r.resumed),
            "domains": list(r.domains), "n_domains": len(r.domains),
            "start_time": r.start_time,
            "elapsed_s": float(t["elapsed"].max()) if len(t) else math.nan,
            "best_checkpoint_epoch": r.best_checkpoint_epoch,
            "skipped_steps": r.skipped_steps,
            "decoder": r.decoder,
        }
        rows.append(row)
        if first_epoch is not None:
            prev = row
    return rows


# ----------------------------------------------------------------------------- detection


def epoch_table(log: LossLog) -> pd.DataFrame:
    """One value per (run, epoch, split, domain, metric): epoch-level rows (the last one
    when an epoch was logged twice, e.g. after a rollback), or the mean of the step rows
    for a run and split that has no epoch rows. Adds `x`, a position on a timeline where
    each source's runs follow each other (a resume continues its lineage's axis)."""
    t = log.table
    ep = t[t["level"] == "epoch"]
    have = set(zip(ep["run"], ep["split"], ep["metric"]))
    st = t[(t["level"] == "step") & (t["metric"].isin(["recon", "classifier_acc"]))]
    st = st[[(r, s, m) not in have for r, s, m in zip(st["run"], st["split"], st["metric"], strict=True)]]
    keys = ["run", "epoch", "split", "domain", "metric"]
    if len(st):
        agg = st.groupby(keys, dropna=False, sort=False).agg(
            value=("value", "mean"), time=("time", "last"), elapsed=("elapsed", "last"),
            step=("step", "last"), line=("line", "last"), source=("source", "first"),
            kind=("kind", "first"), lineage=("lineage", "first"), rank=("rank", "first"),
        ).reset_index()
        agg["level"] = "epoch"
        ep = pd.concat([ep, agg[_TABLE_ORDER]], ignore_index=True)
    ep = ep.dropna(subset=["epoch"]).sort_values(["run", "line"], kind="stable")
    ep = ep.drop_duplicates(keys, keep="last").sort_values(["run", "epoch", "line"], kind="stable")
    offsets = run_offsets(log.runs)
    ep = ep.assign(x=ep["epoch"] + ep["run"].map(offsets).astype(float))
    return ep.reset_index(drop=True)


def run_offsets(runs: pd.DataFrame) -> dict[int, float]:
    """Per run, what to add to its epochs so that a source's runs follow each other on one
    axis: a resumed run keeps its lineage's offset, any other run starts after the last
    epoch drawn so far."""
    offsets: dict[int, float] = {}
    end: dict[str, float] = {}
    for r in runs.itertuples():
        if r.resumed and r.lineage in offsets:
            off = offsets[r.lineage]
        elif r.source in end and r.first_epoch is not None:
            off = end[r.source] + 1 - r.first_epoch
        else:
            off = 0.0
        offsets[r.index] = float(off)
        if r.last_epoch is not None:
            end[r.source] = max(end.get(r.source, -1.0), off + r.last_epoch)
    return offsets


def robust_z(values: np.ndarray, window: int = 5,
             floor: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """How far each value lies above its neighbours, in robust standard deviations, on a
    log scale (spikes are multiplicative), and the local median it is compared with.

    The residual is taken from a centred rolling median of `window` values and divided by
    1.4826 x the rolling median absolute residual over a wider window, never less than
    `floor` (so on a perfectly smooth curve a value needs a jump of exp(z * floor) to
    stand out). A level shift that lasts longer than half the window moves the median
    with it and is not a spike."""
    v = pd.Series(np.log(np.asarray(values, dtype=float)))
    base = v.rolling(window, center=True, min_periods=1).median()
    resid = v - base
    spread = resid.abs().rolling(max(5 * window, 25), center=True, min_periods=1).median()
    scale = np.maximum(1.4826 * spread.to_numpy(), floor)
    return resid.to_numpy() / scale, np.exp(base.to_numpy())


def find_spikes(log: LossLog, epochs: pd.DataFrame | None = None, *, window: int = 5,
                z: float = 6.0, floor: float = 0.1) -> pd.DataFrame:
    """Reconstruction losses far above their own rolling median, per (run, level, split,
    domain) series: epoch values, and step values where the log has them."""
    epochs = epoch_table(log) if epochs is None else epochs
    steps = log.table[(log.table["level"] == "step") & (log.table["metric"] == "recon")]
    found = []
    offsets = run_offsets(log.runs)
    steps = steps.assign(x=steps["epoch"] + steps["run"].map(offsets).astype(float))
    for part in (epochs[epochs["metric"] == "recon"], steps):
        part = part[np.isfinite(part["value"]) & (part["value"] > 0)]
        for _, g in part.groupby(["run", "level", "split", "domain"], sort=False):
            if len(g) < 3:  # nothing to compare with
                continue
            g = g.sort_values("line", kind="stable")
            score, base = robust_z(g["value"].to_numpy(), window, floor)
            hit = score > z
            if hit.any():
                found.append(g[hit].assign(baseline=base[hit], z=score[hit]))
    cols = ["run", "lineage", "source", "level", "epoch", "step", "split", "domain", "value",
            "baseline", "ratio", "z", "x"]
    if not found:
        return pd.DataFrame(columns=cols)
    out = pd.concat(found, ignore_index=True)
    out["ratio"] = out["value"] / out["baseline"]
    out = out.sort_values(["run", "level", "line"], kind="stable")
    return out[cols].reset_index(drop=True)


def _heldout_split(splits: Sequence[str]) -> str:
    for s in ("test", "val", "train"):
        if s in splits:
            return s
    return ""


def mean_recon(epochs: pd.DataFrame) -> pd.DataFrame:
    """Mean reconstruction loss over domains per (run, epoch, split); a non-finite value
    makes the mean infinite (a nan loss is the worst loss, not a missing one)."""
    r = epochs[epochs["metric"] == "recon"]
    r = r.assign(value=r["value"].where(np.isfinite(r["value"]), np.inf))
    return (r.groupby(["run", "lineage", "epoch", "split"], sort=False)
            .agg(mean_recon=("value", "mean"), x=("x", "first"), n=("value", "size"))
            .reset_index())


def _uniform_tails(log: LossLog, epochs: pd.DataFrame, tol: float):
    """For each WaveNet lineage: (lineage, its mean losses, the epochs' table of them by
    split, and i, where the trailing stretch of epochs with every split within `tol` of
    ln 256 (or above, or non-finite) begins; i == len: the last epoch is not there)."""
    means = mean_recon(epochs)
    # only a cross-entropy has ln 256 as the level of a uniform guess
    spectral = set(log.runs.loc[log.runs["decoder"] != "wavenet", "lineage"])
    for lin, g in means.groupby("lineage", sort=True):
        if lin in spectral:
            continue
        wide = g.pivot_table(index=["run", "epoch"], columns="split", values="mean_recon",
                             aggfunc="last").sort_index()
        near = (wide >= UNIFORM_LOSS - tol).all(axis=1).to_numpy()
        i = len(near)
        while i > 0 and near[i - 1]:
            i -= 1
        yield lin, g, wide, i


def find_never_learned(log: LossLog, epochs: pd.DataFrame | None = None, *,
                       tol: float = 0.5, min_epochs: int = 2) -> pd.DataFrame:
    """Runs of WaveNet decoders whose losses never came below ln 256 - tol in at least
    `min_epochs` logged epochs: a model that blew up (or never started) before it learned
    anything. Not a divergence, which needs something learned first."""
    epochs = epoch_table(log) if epochs is None else epochs
    out = []
    for lin, g, wide, i in _uniform_tails(log, epochs, tol):
        if i != 0 or len(wide) < min_epochs:
            continue
        (run, first), last = wide.index[0], wide.index[-1][1]
        split = _heldout_split(list(wide.columns))
        held = wide[split].to_numpy()
        held = held[np.isfinite(held)]
        out.append({"run": int(run), "lineage": int(lin), "first_epoch": int(first),
                    "last_epoch": int(last), "epochs": len(wide), "split": split,
                    "best_recon": float(held.min()) if held.size else math.inf,
                    "x": float(g["x"].iloc[0])})
    return pd.DataFrame(out, columns=["run", "lineage", "first_epoch", "last_epoch", "epochs",
                                      "split", "best_recon", "x"])


def find_divergence(log: LossLog, epochs: pd.DataFrame | None = None, *, tol: float = 0.5,
                    min_epochs: int = 2) -> pd.DataFrame:
    """Runs of WaveNet decoders whose losses, once learned below ln 256 - tol, came back to within `tol` of
    ln 256 (or above, or non-finite) and stayed there until the end of the lineage for at
    least `min_epochs` logged epochs. Reports the onset epoch and whether the domain
    classifier's held-out accuracy then stayed at one value. (A run that never learned is
    `find_never_learned`'s.)"""
    epochs = epoch_table(log) if epochs is None else epochs
    out = []
    for lin, g, wide, i in _uniform_tails(log, epochs, tol):
        if len(wide) - i < min_epochs or i == 0:  # too short, or never learned at all
            continue
        run, onset = wide.index[i]
        tail = wide.iloc[i:]
        acc = epochs[(epochs["lineage"] == lin) & (epochs["metric"] == "classifier_acc")]
        acc = acc[acc["split"] == _heldout_split(acc["split"].unique())]
        acc = acc.set_index(["run", "epoch"])["value"]
        acc = acc[[k in set(tail.index) for k in acc.index]]
        stuck = len(acc) >= min_epochs and acc.round(4).nunique() == 1
        n_dom = int(log.runs.set_index("index").loc[run, "n_domains"]) or 1
        out.append({
            "run": int(run), "lineage": int(lin), "onset_epoch": int(onset),
            "last_epoch": int(tail.index[-1][1]), "epochs": len(tail),
            "mean_recon": float(np.nanmean(tail.to_numpy())),
            "classifier_acc_stuck": bool(stuck),
            "classifier_acc": float(acc.iloc[-1]) if len(acc) else math.nan,
            "chance": 1.0 / n_dom,
            "x": float(g.loc[(g["run"] == run) & (g["epoch"] == onset), "x"].iloc[0]),
        })
    return pd.DataFrame(out, columns=["run", "lineage", "onset_epoch", "last_epoch", "epochs",
                                      "mean_recon", "classifier_acc_stuck", "classifier_acc",
                                      "chance", "x"])


def best_epochs(log: LossLog, epochs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per run, the epoch with the lowest mean held-out reconstruction loss (test in
    reference logs, val in this project's; train when a run has neither)."""
    epochs = epoch_table(log) if epochs is None else epochs
    means = mean_recon(epochs)
    out = []
    for run, g in means.groupby("run", sort=True):
        split = _heldout_split(g["split"].unique())
        g = g[(g["split"] == split) & np.isfinite(g["mean_recon"])]
        if len(g):
            b = g.loc[g["mean_recon"].idxmin()]
            out.append({"run": int(run), "epoch": int(b["epoch"]), "split": split,
                        "mean_recon": float(b["mean_recon"]), "x": float(b["x"])})
    return pd.DataFrame(out, columns=["run", "epoch", "split", "mean_recon", "x"])


# ----------------------------------------------------------------------------- the analysis


@dataclass
class LossAnalysis:
    log: LossLog
    epochs: pd.DataFrame
    spikes: pd.DataFrame
    divergence: pd.DataFrame
    best: pd.DataFrame
    parameters: dict[str, Any]
    never_learned: pd.DataFrame

    @property
    def runs(self) -> pd.DataFrame:
        return self.log.runs

    def to_json(self) -> dict[str, Any]:
        runs = self.runs.drop(columns=["start_time"], errors="ignore")
        return _plain({
            "sources": list(self.log.lines),
            "runs": runs.to_dict("records"),
            "spikes": self.spikes.drop(columns=["x"]).to_dict("records"),
            "divergence": self.divergence.drop(columns=["x"]).to_dict("records"),
            "never_learned": self.never_learned.drop(columns=["x"]).to_dict("records"),
            "best": self.best.drop(columns=["x"]).to_dict("records"),
            "rollbacks": self.log.events,
            "columns": self.log.columns,
            "skipped": self.log.skipped,
            "lines": self.log.lines,
            "warnings": self.log.warnings,
            "parameters": self.parameters,
            "summary": summarize(self),
        })


def analyze(sources: Sequence[str | Path] | str | Path | LossLog,
            domain_names: Sequence[str] | None = None, *, window: int = 5, z: float = 6.0,
            floor: float = 0.1, uniform_tol: float = 0.5,
            min_diverged_epochs: int = 2) -> LossAnalysis:
    """Read the sources (or take a `LossLog`) and run every detection."""
    log = sources if isinstance(sources, LossLog) else load(sources, domain_names)
    epochs = epoch_table(log)
    return LossAnalysis(
        log, epochs,
        find_spikes(log, epochs, window=window, z=z, floor=floor),
        find_divergence(log, epochs, tol=uniform_tol, min_epochs=min_diverged_epochs),
        best_epochs(log, epochs),
        {"window": window, "z": z, "floor": floor, "uniform_tol": uniform_tol,
         "min_diverged_epochs": min_diverged_epochs, "ln256": UNIFORM_LOSS},
        find_never_learned(log, epochs, tol=uniform_tol, min_epochs=min_diverged_epochs),
    )


def _plain(obj: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN to None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is pd.NA or obj is pd.NaT:
        return None
    return obj


def _fmt_epochs(r) -> str:
    if r.first_epoch is None:
        return "no epochs logged"
    return f"epochs {r.first_epoch}-{r.last_epoch} ({r.epochs} logged)"


def summarize(a: LossAnalysis, max_spikes: int = 4) -> str:
    """One paragraph of findings, in words."""
    runs, out = a.runs, []
    names = sorted({Path(s).name for s in a.log.lines})
    n_dom = sorted({int(n) for n in runs["n_domains"]}) if len(runs) else []
    out.append(f"Read {len(runs)} run{'s' * (len(runs) != 1)} from {len(names)} source"
               f"{'s' * (len(names) != 1)} ({', '.join(names)}; "
               f"{'/'.join(map(str, n_dom)) or 'no'} domains).")
    for r in runs[runs["restarted_from_zero"]].itertuples():
        prev = runs[(runs["source"] == r.source) & (runs["index"] < r.index)
                    & runs["last_epoch"].notna()]
        reached = int(prev["last_epoch"].iloc[-1]) if len(prev) else "?"
        out.append(f"Run {r.index} restarted its epoch counter from 0 after the previous run "
                   f"had reached epoch {reached}: training started again from scratch "
                   "instead of resuming.")
    resumed = runs[runs["resumed"]]
    if len(resumed):
        out.append(f"{len(resumed)} run(s) resumed an earlier one "
                   f"({', '.join(f'run {i}' for i in resumed['index'])}).")
    sp = a.spikes
    if len(sp):
        biggest = sp.sort_values("ratio", ascending=False).head(max_spikes)
        listed = "; ".join(
            f"run {int(s.run)} epoch {int(s.epoch)} {s.split} {s.domain} {s.value:.4g} "
            f"({s.ratio:.0f}x its local median)" for s in biggest.itertuples())
        more = f", and {len(sp) - len(biggest)} more" if len(sp) > len(biggest) else ""
        out.append(f"{len(sp)} loss spike{'s' * (len(sp) != 1)} stand far above their "
                   f"neighbours ({listed}{more}); a fixed plotting range would hide them, so "
                   "the curves mark them instead.")
    else:
        out.append("No loss spikes.")
    for d in a.divergence.itertuples():
        acc = (f"the domain classifier's accuracy stuck at {d.classifier_acc:.3f} "
               f"(chance {d.chance:.3f})" if d.classifier_acc_stuck else
               "the domain classifier's accuracy kept changing")
        out.append(f"Run {d.run} diverged at epoch {d.onset_epoch}: its losses stayed near "
                   f"ln 256 = {UNIFORM_LOSS:.3f} (mean {d.mean_recon:.2f}) until the end, the loss of "
                   f"a model that outputs noise, and {acc}.")
    if not len(a.divergence):
        out.append("No run diverged.")
    for n in a.never_learned.itertuples():
        out.append(f"Run {n.run} never learned: in all {n.epochs} logged epochs "
                   f"({n.first_epoch}-{n.last_epoch}) its losses stayed within "
                   f"{a.parameters['uniform_tol']:g} of ln 256 or above (best {n.split} "
                   f"loss {n.best_recon:.2f}), from the start; not a divergence, which needs "
                   "something learned first.")
    if len(a.best):
        out.append("Best epochs: " + "; ".join(
            f"run {b.run} epoch {b.epoch} (mean {b.split} reconstruction loss "
            f"{b.mean_recon:.3f})" for b in a.best.itertuples()) + ".")
    sk = {k: v for k, v in a.log.skipped.items() if v}
    if sk:
        out.append("Skipped: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sk.items())
                   + ".")
    return " ".join(out)


# ----------------------------------------------------------------------------- command line


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze-log",
        help="find runs, restarts, spikes, divergence and best epochs in training logs",
        description=(
            "Read reference main_<rank>.log files, this project's metrics.jsonl files or run "
            "directories; print a short summary and optionally write the findings as JSON."
        ),
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="main_<rank>.log, metrics.jsonl or a run directory")
    p.add_argument("--domains", default=None,
                   help="comma-separated domain names for reference logs whose Namespace line "
                        "lists no data (None: domain_0, domain_1, ...)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT",
                   help="write the findings to this JSON file (None: print only)")
    p.add_argument("--spike-z", type=positive_float, default=6.0,
                   help="robust z-score above the rolling median that makes a spike")
    p.add_argument("--window", type=positive_int, default=5,
                   help="rolling median window (values)")
    p.add_argument("--uniform-tol", type=positive_float, default=0.5,
                   help="losses within this of ln 256 count as diverged")
    p.set_defaults(func=_cli_analyze)


def _cli_analyze(args: argparse.Namespace) -> int:
    domains = [d.strip() for d in args.domains.split(",")] if args.domains else None
    if args.json:
        output_file(args.json, "--json file")  # before any work
    a = analyze(args.paths, domains, window=args.window, z=args.spike_z,
                uniform_tol=args.uniform_tol)
    print(format_report(a))
    if args.json:
        args.json.write_text(json.dumps(a.to_json(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def format_report(a: LossAnalysis) -> str:
    """The short, line-per-finding summary the command prints."""
    lines = []
    best = a.best.set_index("run")
    div = a.divergence.set_index("run")
    never = a.never_learned.set_index("run")
    for source, counts in a.log.lines.items():
        runs = a.runs[a.runs["source"] == source]
        doms = next((d for d in runs["domains"] if d), [])
        kind = runs["kind"].iloc[0] if len(runs) else "no runs"
        lines.append(f"{source}: {kind}, {counts.get('lines', 0)} lines, {len(doms)} domains"
                     + (f" ({', '.join(doms)})" if doms else ""))
        if kind == "reference" and doms:
            n = len(doms)
            lines.append(f"  columns: train = {n} domain losses + an unused 0.0000 meter (dropped);"
                         f" test = {n} domain losses + domain classifier accuracy (chance 1/{n})")
        for r in runs.itertuples():
            notes = [_fmt_epochs(r)]
            if r.restarted_from_zero:
                notes.append("RESTARTED FROM EPOCH 0")
            if r.resumed:
                notes.append(f"resumes run {r.lineage}")
            if r.index in div.index:
                d = div.loc[r.index]
                notes.append(f"DIVERGED at epoch {int(d['onset_epoch'])}" + (
                    f" (classifier accuracy stuck at {d['classifier_acc']:.3f})"
                    if d["classifier_acc_stuck"] else ""))
            if r.index in never.index:
                notes.append("NEVER LEARNED (losses near ln 256 or above from the start)")
            if r.index in best.index:
                b = best.loc[r.index]
                notes.append(f"best epoch {int(b['epoch'])} (mean {b['split']} recon "
                             f"{b['mean_recon']:.4f})")
            lines.append(f"  run {r.index}: " + ", ".join(notes))
    lines.append(f"spikes: {len(a.spikes)}")
    for s in a.spikes.head(12).itertuples():
        where = f"epoch {int(s.epoch)}" if s.level == "epoch" else f"step {s.step:.0f}"
        lines.append(f"  run {int(s.run)} {where} {s.split} {s.domain}: {s.value:.4g} "
                     f"(local median {s.baseline:.3g}, {s.ratio:.1f}x)")
    if len(a.spikes) > 12:
        lines.append(f"  ... {len(a.spikes) - 12} more in the JSON")
    sk = {k: v for k, v in a.log.skipped.items() if v}
    lines.append("skipped: " + (", ".join(f"{v} {k}" for k, v in sk.items()) or "nothing"))
    lines.extend(f"warning: {w}" for w in a.log.warnings)
    return "\n".join(lines)

"""Loss analysis: reference-format logs and this project's metrics.jsonl, made in the tests,
the real reference excerpt, the analyze-log command and notebook 03."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

import numpy as np
import papermill
import pytest
from conftest import FIXTURES, REPO

from umt_core import analysis as A
from umt_core import train
from umt_core.__main__ import main
from umt_core.data.sampling import DomainAudio

EXCERPT = FIXTURES / "reference_log_excerpt.log"
MUSICNET = ["Bach_Solo_Cello", "Beethoven_Solo_Piano", "Cambini_Wind_Quintet",
            "Bach_Solo_Piano", "Beethoven_Accompanied_Violin", "Beethoven_String_Quartet"]
DOMAINS = ["piano", "cello", "flute"]


# ----------------------------------------------------------------------------- a reference log


class RefLog:
    """Writes lines in the reference format and remembers what it wrote."""

    def __init__(self):
        self.lines: list[str] = []
        self.test_means: dict[int, dict[int, float]] = {}

    def line(self, level: str, start: datetime, elapsed: float, msg: str) -> None:
        stamp = (start + timedelta(seconds=elapsed)).strftime("%m/%d/%y %H:%M:%S")
        self.lines.append(f"{level} - {stamp} - {timedelta(seconds=int(elapsed))} - {msg}\n")

    def namespace(self, start: datetime, checkpoint: str = "") -> None:
        data = ", ".join(f"PosixPath('data/preprocessed/{d}')" for d in DOMAINS)
        self.line("INFO", start, 0, f"Namespace(batch_size=8, checkpoint='{checkpoint}', "
                  f"data=[{data}], epoch_len=100, lr=0.001, n_datasets=3, rank=0, seed=1)")

    def epoch(self, run: int, start, elapsed, epoch, train, test, acc, rank=0) -> None:
        tr = ", ".join(f"{v:.4f}" for v in [*train, 0.0])
        te = ", ".join(f"{v:.4f}" for v in [*test, acc])
        self.line("INFO", start, elapsed, f"Starting epoch, Rank {rank}, Dataset: data/piano")
        self.line("INFO", start, elapsed + 7000,
                  f"Epoch {epoch} Rank {rank} - Train loss: ({tr}), Test loss ({te})")
        if rank == 0:
            self.test_means.setdefault(run, {})[epoch] = float(np.mean(np.round(test, 4)))
            self.line("DEBUG", start, elapsed + 7010,
                      "Saved model to checkpoints/synthetic/lastmodel_0.pth")
            self.line("DEBUG", start, elapsed + 7011, "Ended epoch")


def _curve(rng, epoch: int) -> np.ndarray:
    """Losses that fall from ~3.5 towards 2, one per domain, with 2% noise."""
    base = 2.0 + 1.5 * math.exp(-epoch / 8) + np.array([0.0, 0.2, 0.4])
    return base * (1 + 0.02 * rng.standard_normal(3))


def make_reference_log(path) -> RefLog:
    """Four runs: run 0 (epochs 0-29, two spikes, a numpy dump, another rank's lines),
    run 1 resumes it (epochs 30-39), run 2 starts from scratch and diverges at epoch 15,
    run 3 restarts at epoch 0 without a Namespace line and ends in a cut line."""
    rng = np.random.default_rng(0)
    log, hour = RefLog(), 3600.0
    start = datetime(2020, 2, 29, 6, 54, 47)
    log.namespace(start)
    for e in range(30):
        train, test = _curve(rng, e), _curve(rng, e) * 1.05
        if e == 12:
            train[1] = 45.0  # cello train spike
        if e == 20:
            test[2] = 30.0  # flute test spike
        log.epoch(0, start, e * 2 * hour, e, train, test, 0.40 + 0.05 * rng.random())
        if e == 5:
            log.line("DEBUG", start, e * 2 * hour + 7100, "z_logits: [[ 1307.4045  -2088.2363"
                     "    277.0883 ]")
            log.lines += ["                  [ 1072.8198  -1670.0692    230.40012]\n",
                          "                  [ 1428.28    -2024.1681    305.631  ]\n",
                          "                  [ 1189.7937  -1721.2439    257.8337 ]]\n"]
            log.line("DEBUG", start, e * 2 * hour + 7101, "dset_num: 2")
        if e == 7:  # another process's meters written into this file
            log.epoch(0, start, e * 2 * hour + 60, e, [90.0] * 3, [91.0] * 3, 0.9, rank=1)
    start = datetime(2020, 3, 3, 10, 0, 0)
    log.namespace(start, checkpoint="checkpoints/synthetic/lastmodel")
    for k, e in enumerate(range(30, 40)):
        log.epoch(1, start, k * 2 * hour, e, _curve(rng, e), _curve(rng, e) * 1.05, 0.35)
    start = datetime(2020, 3, 5, 8, 0, 0)
    log.namespace(start)
    for e in range(25):
        if e < 15:
            train, test, acc = _curve(rng, e), _curve(rng, e) * 1.05, 0.5 + 0.1 * rng.random()
        else:  # diverged: a uniform guess over 256 codes, the classifier stuck
            train = 5.50 + 0.01 * rng.standard_normal(3)
            test, acc = 5.53 + 0.01 * rng.standard_normal(3), 0.3125
        log.epoch(2, start, e * 5 * hour, e, train, test, acc)
    for e in range(6):
        log.epoch(3, start, (30 + e) * 5 * hour, e, _curve(rng, e), _curve(rng, e) * 1.05, 0.4)
    log.line("INFO", start, 37 * 5 * hour,
             "Epoch 6 Rank 0 - Train loss: (2.9000, 3.1000, 3.3000, 0.0000), Test loss (2.9")
    log.lines[-1] = log.lines[-1].rstrip("\n")  # the writer was killed mid-line
    path.write_text("".join(log.lines))
    return log


@pytest.fixture(scope="module")
def reference_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "main_0.log"
    return path, make_reference_log(path)


def _spikes(a):
    return {(int(s.run), int(s.epoch), s.split, s.domain) for s in a.spikes.itertuples()}


def test_synthetic_reference_log_runs_and_restarts(reference_log):
    path, _ = reference_log
    a = A.analyze(path)
    runs = a.runs
    assert list(runs["boundary"]) == ["namespace", "namespace", "namespace", "epoch_reset"]
    assert list(runs["first_epoch"]) == [0, 30, 0, 0]
    assert list(runs["last_epoch"]) == [29, 39, 24, 6]
    assert list(runs["epochs"]) == [30, 10, 25, 7]
    assert list(runs["resumed"]) == [False, True, False, False]
    assert list(runs["lineage"]) == [0, 0, 2, 3]
    assert list(runs["restarted_from_zero"]) == [False, False, True, True]
    assert all(d == DOMAINS for d in runs["domains"])
    # Resumed runs continue their lineage's axis, restarted ones follow the previous run.
    assert A.run_offsets(runs) == {0: 0.0, 1: 0.0, 2: 40.0, 3: 65.0}


def test_synthetic_reference_log_columns_and_lines(reference_log):
    path, log = reference_log
    a = A.analyze(path)
    t = a.log.table
    assert set(t["domain"].dropna()) == set(DOMAINS)  # neither last column became a domain
    assert set(t["metric"]) == {"recon", "classifier_acc"}
    assert set(t.loc[t["metric"] == "classifier_acc", "split"]) == {"test"}
    assert t.loc[t["metric"] == "classifier_acc", "domain"].isna().all()
    acc = t[(t["metric"] == "classifier_acc") & (t["run"] == 2)]["value"]
    assert (acc.iloc[15:] == 0.3125).all()
    assert (t.loc[t["metric"] == "recon", "value"] > 1).all()  # the unused 0.0000 is dropped
    assert t["rank"].eq(0).all() and not (t["value"] >= 90).any()  # rank 1 lines skipped
    # Multi-day elapsed times: run 0 epoch 29 ended 29 * 2 h + 7000 s after its start.
    last = t[(t["run"] == 0) & (t["epoch"] == 29)]
    assert last["elapsed"].iloc[0] == 29 * 7200 + 7000
    assert last["time"].iloc[0] - a.runs["start_time"].iloc[0] == 29 * 7200 + 7000
    assert t.loc[t["run"] == 0, "step"].max() == 3000  # (epoch + 1) * epoch_len
    # The cut last line still gave its complete train tuple.
    cut = t[(t["run"] == 3) & (t["epoch"] == 6)]
    assert sorted(cut["split"].unique()) == ["train"] and len(cut) == 3
    sk = a.log.skipped
    assert sk["continuation_lines"] == 3 and sk["other_rank_lines"] == 2
    assert sk["truncated_lines"] == 1 and sk["ignored_messages"] == 2  # z_logits, dset_num
    counts = a.log.lines[str(path)]
    assert counts["lines"] == len(log.lines)
    assert counts["epoch_lines"] == 30 + 10 + 25 + 7
    assert counts["debug_lines"] == 2 * (30 + 10 + 25 + 6) + 2
    cols = a.log.columns["sources"][str(path)]
    assert "unused" in cols["train_tuple"][-1] and "accuracy" in cols["test_tuple"][-1]


def test_synthetic_reference_log_detections(reference_log):
    path, log = reference_log
    a = A.analyze(path)
    assert _spikes(a) == {(0, 12, "train", "cello"), (0, 20, "test", "flute")}
    assert a.spikes["value"].tolist() == [45.0, 30.0]
    assert (a.spikes["ratio"] > 10).all()
    d = a.divergence
    assert len(d) == 1
    row = d.iloc[0]
    assert (row["run"], row["onset_epoch"], row["last_epoch"]) == (2, 15, 24)
    assert row["classifier_acc_stuck"] and row["classifier_acc"] == 0.3125
    assert abs(row["mean_recon"] - A.UNIFORM_LOSS) < 0.1
    best = a.best.set_index("run")
    for run, means in log.test_means.items():
        epoch = min(means, key=means.get)
        assert best.loc[run, "epoch"] == epoch
        assert best.loc[run, "mean_recon"] == pytest.approx(means[epoch], abs=1e-9)
    assert best.loc[2, "epoch"] < 15


def test_no_false_alarms_on_smooth_noisy_training(tmp_path):
    rng = np.random.default_rng(3)
    log = RefLog()
    start = datetime(2021, 1, 1)
    log.namespace(start)
    for e in range(200):
        log.epoch(0, start, e * 600, e, _curve(rng, e) * (1 + 0.05 * rng.standard_normal(3)),
                  _curve(rng, e), 0.4)
    (tmp_path / "main_0.log").write_text("".join(log.lines))
    a = A.analyze(tmp_path)  # a directory: its lowest-rank main_<rank>.log
    assert a.spikes.empty and a.divergence.empty
    assert a.runs["restarted_from_zero"].tolist() == [False]


# ----------------------------------------------------------------------------- the real excerpt


def test_reference_excerpt():
    a = A.analyze(EXCERPT)
    runs = a.runs
    assert len(runs) == 2
    assert runs["restarted_from_zero"].tolist() == [False, True]
    assert runs["first_epoch"].tolist() == [0, 0]
    assert runs["last_epoch"].tolist() == [408, 370]
    assert runs["epochs"].tolist() == [8, 4]
    assert runs["domains"].iloc[0] == MUSICNET and runs["n_domains"].tolist() == [6, 6]
    assert set(a.spikes["epoch"]) == {162} and set(a.spikes["split"]) == {"train"}
    assert a.spikes["domain"].tolist() == ["Bach_Solo_Cello", "Beethoven_Solo_Piano",
                                           "Cambini_Wind_Quintet", "Beethoven_String_Quartet"]
    assert a.spikes["value"].tolist() == [159.1535, 48.6799, 12.3870, 63.5511]
    t = a.log.table
    assert set(t["domain"].dropna()) == set(MUSICNET)
    acc = t[t["metric"] == "classifier_acc"]
    assert len(acc) == 12 and acc["domain"].isna().all()
    assert acc["value"].iloc[0] == 0.31  # the test tuple's last column
    assert len(t[t["metric"] == "recon"]) == 12 * 12  # 6 train + 6 test per epoch line
    assert t["elapsed"].max() == 5 * 86400 + 12 * 3600 + 49 * 60 + 40
    d = a.divergence.iloc[0]
    assert len(a.divergence) == 1 and (d["run"], d["onset_epoch"]) == (1, 369)
    assert d["classifier_acc_stuck"] and d["classifier_acc"] == 0.17
    assert d["chance"] == pytest.approx(1 / 6)
    best = a.best.set_index("run")
    assert best.loc[0, "epoch"] == 407 and best.loc[1, "epoch"] == 1
    assert best.loc[0, "mean_recon"] == pytest.approx(1.50330, abs=1e-4)
    # The reference's own bestmodel saves agree.
    assert runs["best_checkpoint_epoch"].tolist() == [407, 1]
    assert a.log.skipped["continuation_lines"] == 4  # the z_logits dump
    text = A.summarize(a)
    assert "Run 1 restarted its epoch counter from 0" in text
    assert "Run 1 diverged at epoch 369" in text and "4 loss spikes" in text
    assert "\n" not in text


def test_parse_elapsed_and_namespace():
    assert A.parse_elapsed("0:19:49") == 1189
    assert A.parse_elapsed("5 days, 0:00:27") == 5 * 86400 + 27
    assert A.parse_elapsed("1 day, 2:03:04.5") == 86400 + 7384.5
    with pytest.raises(ValueError):
        A.parse_elapsed("yesterday")
    ns = A.parse_namespace(EXCERPT.read_text().splitlines()[0].split(" - ", 3)[3])
    assert ns["domains"] == MUSICNET and ns["epoch_len"] == 1000 and ns["checkpoint"] == ""


def test_domain_names_given_or_numbered(tmp_path):
    log = RefLog()
    start = datetime(2021, 1, 1)
    for e in range(3):
        log.epoch(0, start, e * 600, e, [3.0, 3.1, 3.2], [3.0, 3.1, 3.2], 0.3)
    p = tmp_path / "main_0.log"
    p.write_text("".join(log.lines))
    named = A.load(p, ["a", "b", "c"])
    assert set(named.table["domain"].dropna()) == {"a", "b", "c"}
    assert named.runs["boundary"].tolist() == ["file_start"]
    numbered = A.load(p)
    assert set(numbered.table["domain"].dropna()) == {"domain_0", "domain_1", "domain_2"}
    wrong = A.load(p, ["a", "b"])
    assert set(wrong.table["domain"].dropna()) == {"domain_0", "domain_1", "domain_2"}
    assert wrong.warnings and "2 domain names given for 3 domains" in wrong.warnings[0]
    # The Namespace line's data list wins over given names.
    assert A.load(EXCERPT, ["x"] * 6).runs["domains"].iloc[0] == MUSICNET


def test_not_a_log(tmp_path):
    readme = tmp_path / "notes.txt"
    readme.write_text("Some notes\nabout training\n")
    with pytest.raises(A.LogFormatError, match="notes.txt: not a training log"):
        A.load(readme)
    blob = tmp_path / "weights.pth"
    blob.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(A.LogFormatError, match="weights.pth"):
        A.load(blob)
    bad_json = tmp_path / "metrics.jsonl"
    bad_json.write_text("[1, 2]\nnot json\n")
    with pytest.raises(A.LogFormatError, match="metrics.jsonl: not a metrics.jsonl"):
        A.load(bad_json)
    with pytest.raises(FileNotFoundError, match="missing.log"):
        A.load(tmp_path / "missing.log")
    empty = tmp_path / "main_0.log"  # a run that has not logged yet: no runs, no error
    empty.write_text("")
    a = A.analyze(empty)
    assert a.runs.empty and a.log.warnings == [f"{empty}: empty file"]
    assert A.summarize(a).startswith("Read 0 runs") and json.dumps(a.to_json())
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(A.LogFormatError, match="empty_dir: no metrics.jsonl"):
        A.load(tmp_path / "empty_dir")


# ----------------------------------------------------------------------------- metrics.jsonl


def make_metrics(path) -> None:
    """This project's metrics.jsonl, in the shared schema: run 0 (epochs 0-5, a step spike, a
    skipped step, a rollback), run 1 resumes it (epochs 6-8), run 2 starts again from
    scratch and diverges at epoch 5; the writer was killed mid-line."""
    rng = np.random.default_rng(1)
    doms, steps_per_epoch, events = ["piano", "cello"], 4, []
    t = 1.7e9

    def ev(kind, step, epoch, **kw):
        nonlocal t
        t += 2.0
        events.append({"event": kind, "time": t, "step": step, "epoch": epoch, **kw})

    def train(first_epoch, last_epoch, step, diverge_at=None):
        for e in range(first_epoch, last_epoch + 1):
            bad = diverge_at is not None and e >= diverge_at
            losses = []
            for _ in range(steps_per_epoch):
                step += 1
                level = 5.5 if bad else 2.0 + 3.0 * math.exp(-step / 6)
                recon = {d: level * (1 + 0.01 * rng.standard_normal()) for d in doms}
                if step == 9 and first_epoch == 0 and diverge_at is None:
                    recon["piano"] = 40.0
                losses.append(recon)
                ev("step", step, e, recon=recon, classifier_loss=0.69, classifier_acc=0.5,
                   grad_norm=1.0, lr=1e-3, samples_per_s=100.0)
            mean = {d: float(np.mean([x[d] for x in losses])) for d in doms}
            val = {d: (5.52 if bad else mean[d] * 1.1 + 0.01 * e) for d in doms}
            ev("epoch", step, e, train_recon=mean, val_recon=val,
               val_classifier_acc=0.5 if bad else 0.5 + 0.05 * rng.random(), lr=1e-3)
        return step

    config = {"preset": "smoke", "domains": doms}
    ev("start", 0, 0, config=config, fresh=True, world_size=1)
    step = train(0, 3, 0)
    ev("skip", step, 3, reason="spike", loss=80.0, median=2.1)
    ev("divergence", step, 3, reason="too many skipped steps", rolled_back_to_step=8, lr=5e-4)
    step = train(2, 5, 8)  # the counters go back after the rollback: still run 0
    ev("start", step, 6, config=config, fresh=False, world_size=1)
    ev("resume", step, 6, **{"from": "runs/x/checkpoints/last.pt"})
    step = train(6, 8, step)
    ev("evaluation", step, 8, note="free-form")
    ev("start", 0, 0, config=config, fresh=True, world_size=1)
    train(0, 9, 0, diverge_at=5)
    text = "".join(json.dumps(e) + "\n" for e in events)
    path.write_text(text + '{"event": "step", "time": 1.8e9, "st')


@pytest.fixture(scope="module")
def metrics_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "synthetic"
    run_dir.mkdir()
    make_metrics(run_dir / "metrics.jsonl")
    return run_dir


def test_metrics_jsonl(metrics_run):
    a = A.analyze(metrics_run)  # a run directory
    runs = a.runs
    assert runs["boundary"].tolist() == ["start", "start", "start"]
    assert runs["resumed"].tolist() == [False, True, False]
    assert runs["lineage"].tolist() == [0, 0, 2]
    assert runs["restarted_from_zero"].tolist() == [False, False, True]
    assert runs["first_epoch"].tolist() == [0, 6, 0] and runs["last_epoch"].tolist() == [5, 8, 9]
    assert runs["skipped_steps"].tolist() == [1, 0, 0]
    assert all(d == ["piano", "cello"] for d in runs["domains"])
    t = a.log.table
    assert {"recon", "classifier_loss", "classifier_acc", "grad_norm", "lr", "samples_per_s",
            "skipped_loss"} == set(t["metric"])
    assert set(t["split"]) == {"train", "val"} and set(t["level"]) == {"step", "epoch"}
    assert (t["elapsed"] >= 0).all()
    # The step spike is found among the step values; the epoch means are not fooled.
    assert _spikes(a) == {(0, 2, "train", "piano")}
    assert a.spikes["level"].tolist() == ["step"] and a.spikes["step"].tolist() == [9]
    d = a.divergence
    assert len(d) == 1 and (d["run"].iloc[0], d["onset_epoch"].iloc[0]) == (2, 5)
    assert d["classifier_acc_stuck"].iloc[0] and d["classifier_acc"].iloc[0] == 0.5
    assert a.best["split"].tolist() == ["val"] * 3
    assert a.best["epoch"].tolist()[2] < 5
    assert len(a.log.events) == 1 and a.log.events[0]["rolled_back_to_step"] == 8
    assert a.log.skipped["truncated_lines"] == 1
    assert a.log.lines[str(metrics_run / "metrics.jsonl")]["evaluation_events"] == 1


def test_step_only_metrics_give_epoch_values(tmp_path):
    """A run stopped before its first epoch event still has epoch-level curves."""
    p = tmp_path / "metrics.jsonl"
    lines = [{"event": "start", "time": 0.0, "step": 0, "epoch": 0, "config": {},
              "fresh": True, "world_size": 1}]
    for s in range(1, 7):
        lines.append({"event": "step", "time": float(s), "step": s, "epoch": (s - 1) // 3,
                      "recon": {"a": 5.0 - s * 0.1}, "classifier_acc": 0.5})
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    a = A.analyze(p)
    ep = a.epochs[a.epochs["metric"] == "recon"]
    assert ep["epoch"].tolist() == [0, 1]
    assert ep["value"].tolist() == pytest.approx([4.8, 4.5])
    assert a.best["split"].tolist() == ["train"]


def _epochs_log(path, val_curves):
    """A metrics.jsonl of one fresh run per entry, its epochs' validation losses as given
    (train losses 1.2x higher, a non-finite train loss where the value is inf)."""
    lines, t = [], 0.0
    for curve in val_curves:
        lines.append({"event": "start", "time": t, "step": 0, "epoch": 0, "config": {},
                      "fresh": True, "world_size": 1})
        for e, v in enumerate(curve):
            t += 1.0
            train_loss = None if v == math.inf else v * 1.2
            lines.append({"event": "epoch", "time": t, "step": 10 * (e + 1), "epoch": e,
                          "train_recon": {"a": train_loss, "b": train_loss},
                          "val_recon": {"a": min(v, 5.3), "b": min(v, 5.3)},
                          "val_classifier_acc": 0.5})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_never_learned_is_told_apart_from_divergence(tmp_path):
    """A run that blew up before it learned anything (the batch-32, lr 3e-2 picture) is
    neither missed nor called a divergence; one that learned and came back is a
    divergence only; one that learned is neither; one logged epoch is too little."""
    p = tmp_path / "metrics.jsonl"
    _epochs_log(p, [[40.0, 5.3, math.inf, math.inf],  # blown up from the first epoch
                    [4.0, 3.5, 3.2, 5.4, 5.5],       # learned, then diverged
                    [4.0, 3.5, 3.2, 3.0],            # learned
                    [5.4]])                          # one epoch: not enough to say
    a = A.analyze(p)
    n = a.never_learned
    assert n["run"].tolist() == [0]
    assert (n["first_epoch"].iloc[0], n["last_epoch"].iloc[0], n["epochs"].iloc[0]) == (0, 3, 4)
    assert n["split"].iloc[0] == "val" and n["best_recon"].iloc[0] == pytest.approx(5.3)
    assert a.divergence["run"].tolist() == [1]
    text = A.summarize(a)
    assert "Run 0 never learned" in text and "Run 1 diverged at epoch 3" in text
    assert "Run 2 never" not in text and "Run 3 never" not in text
    assert "run 0: epochs 0-3 (4 logged), NEVER LEARNED" in A.format_report(a)
    assert A.analyze(p, uniform_tol=0.1).never_learned.empty  # 5.3 is learning at tol 0.1
    assert a.to_json()["never_learned"][0]["run"] == 0


def test_mixed_sources_and_json(metrics_run, reference_log):
    a = A.analyze([EXCERPT, metrics_run, reference_log[0]])
    assert a.runs["index"].tolist() == list(range(2 + 3 + 4))
    assert a.runs["kind"].tolist() == ["reference"] * 2 + ["metrics"] * 3 + ["reference"] * 4
    assert set(a.divergence["run"]) == {1, 4, 7}
    doc = a.to_json()
    json.dumps(doc, allow_nan=False)  # strictly valid JSON
    assert {"runs", "spikes", "divergence", "best", "columns", "skipped"} <= set(doc)
    assert doc["runs"][1]["restarted_from_zero"] is True
    assert {"run", "epoch", "split", "domain", "value"} <= set(doc["spikes"][0])
    assert {"run", "onset_epoch"} <= set(doc["divergence"][0])
    assert {"run", "epoch", "mean_recon"} <= set(doc["best"][0])
    assert "recon" in doc["columns"]["table"]["metric"]


def test_cli(tmp_path, capsys):
    out = tmp_path / "out" / "analysis.json"
    assert main(["analyze-log", str(EXCERPT), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "run 1: epochs 0-370 (4 logged), RESTARTED FROM EPOCH 0, DIVERGED at epoch 369" in printed
    assert "run 0 epoch 162 train Bach_Solo_Cello: 159.2" in printed
    doc = json.loads(out.read_text())
    assert [r["restarted_from_zero"] for r in doc["runs"]] == [False, True]
    assert len(doc["spikes"]) == 4 and doc["divergence"][0]["onset_epoch"] == 369
    assert doc["best"][0]["epoch"] == 407 and doc["skipped"]["continuation_lines"] == 4
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    assert main(["analyze-log", str(notes)]) == 2
    assert "notes.txt: not a training log" in capsys.readouterr().err


def test_smoke_training_run(tmp_path, smoke_config):
    """A real metrics.jsonl written by the trainer: one epoch, then a resume for a second."""
    rng = np.random.default_rng(0)
    data = [DomainAudio(name, [0.3 * rng.standard_normal(2000).astype(np.float32)], [name])
            for name in smoke_config.domains]
    smoke_config.train.steps_per_epoch = 3
    run_dir = tmp_path / "run"
    for epochs in (1, 2):
        train.train(smoke_config, run_dir, train_data=data, val_data=data, epochs=epochs,
                    progress=False)
    a = A.analyze(run_dir)
    runs = a.runs
    assert runs["resumed"].tolist() == [False, True] and runs["lineage"].tolist() == [0, 0]
    assert not runs["restarted_from_zero"].any()
    assert runs["first_epoch"].tolist() == [0, 1] and runs["last_epoch"].tolist() == [0, 1]
    assert runs["domains"].iloc[0] == smoke_config.domains
    val = a.epochs[(a.epochs["split"] == "val") & (a.epochs["metric"] == "recon")]
    assert sorted(val["epoch"].unique()) == [0, 1]
    assert set(val["domain"]) == set(smoke_config.domains)
    steps = a.log.table[a.log.table["level"] == "step"]
    assert steps["step"].max() == 6
    assert a.best["split"].tolist() == ["val", "val"]
    assert "Read 2 runs" in A.summarize(a)


# ----------------------------------------------------------------------------- notebook 03


def _run_notebook(tmp_path, **parameters):
    out_nb = tmp_path / "03_out.ipynb"
    papermill.execute_notebook(str(REPO / "notebooks" / "03_loss_analysis.ipynb"), str(out_nb),
                               parameters=parameters, kernel_name="umt-study", cwd=str(REPO),
                               progress_bar=False)
    results = tmp_path / "results"
    return json.loads((results / "03_loss_analysis.json").read_text())


def test_notebook_on_the_reference_excerpt(tmp_path):
    figures = _run_notebook(tmp_path, run_dir="", sources=[str(EXCERPT.relative_to(REPO))],
                            results_dir=str(tmp_path / "results"))
    assert figures["sources"] == 1 and figures["runs"] == 2 and figures["restarted_runs"] == 1
    assert figures["spikes"] == 4 and figures["divergence_onsets"] == "run 1: epoch 369"
    assert figures["never_learned_runs"] == 0  # run 1 learned before it diverged
    assert (figures["best_run"], figures["best_epoch"]) == (0, 407)
    assert figures["best_loss"] == pytest.approx(1.5033, abs=1e-4)
    assert all(isinstance(v, (int, float, str)) for v in figures.values())
    for name in ("03_curves.png", "03_histograms.png"):
        assert (tmp_path / "results" / "figures" / name).is_file()


def test_notebook_on_a_run_beside_a_reference_log(tmp_path, metrics_run, reference_log):
    figures = _run_notebook(tmp_path, run_dir=str(metrics_run), sources=[str(reference_log[0])],
                            domain_names=[], clip_range=[0.0, 6.0], smoothing=3,
                            results_dir=str(tmp_path / "results"))
    assert figures["sources"] == 2 and figures["runs"] == 3 + 4
    assert figures["restarted_runs"] == 1 + 2 and figures["resumed_runs"] == 1 + 1
    assert figures["spikes"] == 1 + 2
    assert figures["divergence_onsets"] == "run 2: epoch 5; run 5: epoch 15"
    assert figures["this_run_never_learned"] == 0 and figures["never_learned_runs"] == 0
    # The best of the first source (this project's run): losses of other data not compared.
    assert figures["best_run"] in (0, 1) and figures["best_loss"] < 3


def test_notebook_replays_the_guard_over_a_guard_off_run(tmp_path):
    """A run trained without the guard: notebook 03 says where the guard would first have
    acted (a spike of 100x at step 12 after steady steps); a guarded run gets no replay."""
    def write(run_dir, guard):
        run_dir.mkdir()
        lines = [{"event": "start", "time": 0.0, "step": 0, "epoch": 0, "fresh": True,
                  "world_size": 1, "config": {"train": {"guard": guard, "spike_factor": 10.0,
                                                        "spike_window": 50}}}]
        for s in range(1, 21):
            loss = 300.0 if s == 12 else 3.0 - 0.01 * s
            lines.append({"event": "step", "time": float(s), "step": s, "epoch": (s - 1) // 10,
                          "recon": {"piano": loss, "cello": loss}, "classifier_acc": 0.5})
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        return run_dir

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    off = _run_notebook(tmp_path / "a", run_dir=str(write(tmp_path / "off", False)),
                        sources=[], results_dir=str(tmp_path / "a" / "results"))
    assert (off["this_run_guard_would_act"], off["guard_replay_first_step"]) == (1, 12)
    assert off["guard_replay_steps"] == 11
    on = _run_notebook(tmp_path / "b", run_dir=str(write(tmp_path / "on", True)),
                       sources=[], results_dir=str(tmp_path / "b" / "results"))
    assert "this_run_guard_would_act" not in on and "guard_replay_first_step" not in on

"""Bad inputs and faults, tried as a user would: each case asserts the message the
user gets (naming the file or value and the fix), the exit code (2: the command line
or an input cannot be used; 1: the command could not be carried out) and that no
existing file changed.

Everything runs in a scratch project (data/, runs/ and results/ of its own) on a tiny
MusicNet-shaped dataset of synthetic recordings prepared by the real `prep`, with the
smoke preset: seconds per case.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from conftest import FIXTURES, REPO, scratch_root
from test_train_notebook import MANIFEST  # a MusicNet-shaped manifest, two domains

from umt_core.__main__ import main

pytestmark = pytest.mark.usefixtures("one_thread")

SR = 16000


# ------------------------------------------------------------------------------ helpers
def tone(seconds: float, freq: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    y = np.sin(2 * np.pi * freq * t) + 0.3 * np.sin(2 * np.pi * 2 * freq * t)
    return (0.5 * y / np.abs(y).max() + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def make_project(root: Path) -> Path:
    """A scratch project with the tiny dataset's source and manifest (not prepared)."""
    src = root / "source" / "musicnet"
    (src / "train_data").mkdir(parents=True)
    rows = ["id,composer,ensemble"]
    for k, (composer, ensemble) in enumerate([("Bach", "Solo Cello"), ("Mozart", "Solo Piano")]):
        for j in range(6):
            i = 1000 + 10 * k + j
            rows.append(f"{i},{composer},{ensemble}")
            sf.write(src / "train_data" / f"{i}.wav", tone(0.5, 110 * (k + 1) * (1 + j / 8), i),
                     SR, subtype="PCM_16")
    (src / "musicnet_metadata.csv").write_text("\n".join(rows) + "\n")
    manifest = root / "tiny.yaml"
    manifest.write_text(MANIFEST.format(src=src))
    return manifest


def snapshot(*folders: Path) -> dict[str, str]:
    """sha256 of every file under `folders` (what "no existing file changed" compares),
    but a run's writer.lock: the record of who last held the lock."""
    out = {}
    for folder in folders:
        if folder.is_file():
            out[str(folder)] = hashlib.sha256(folder.read_bytes()).hexdigest()
            continue
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.name != "writer.lock":
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """`python -m umt_core ARGS` in this process: (exit code, stderr). An option the
    parser refuses exits through SystemExit, as on the command line."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = int(e.code or 0)
    err = capsys.readouterr().err
    return code, err


def env(root: Path) -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", UMT_ROOT=str(root), UMT_DEVICE="cpu",
             PYTHONPATH=str(root))
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        e.pop(k, None)
    return e


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """(root, manifest): a prepared tiny dataset and a 4-step smoke run in runs/base."""
    from umt_core import data
    from umt_core.config import preset
    from umt_core.train import train

    root = scratch_root(tmp_path_factory.mktemp("faults"))
    manifest = make_project(root)
    data.prep(data.load_manifest(manifest), progress=False, log=lambda *a: None)
    train(preset("smoke"), root / "runs" / "base", manifest=manifest, steps=4, progress=False)
    return root, manifest


@pytest.fixture
def root(project, monkeypatch):
    monkeypatch.setenv("UMT_ROOT", str(project[0]))
    return project[0]


@pytest.fixture
def checkpoint(project) -> Path:
    return project[0] / "runs" / "base" / "checkpoints" / "last.pt"


@pytest.fixture
def fresh_project(tmp_path, monkeypatch):
    """A prepared tiny dataset of the test's own (for cases that change it)."""
    from umt_core import data

    root = scratch_root(tmp_path)
    manifest = make_project(root)
    data.prep(data.load_manifest(manifest), progress=False, log=lambda *a: None)
    monkeypatch.setenv("UMT_ROOT", str(root))
    return root, manifest


def a_test_wav(root: Path) -> Path:
    return min((root / "data" / "tiny" / "cello" / "test").glob("*.wav"))


# A training that stops at step `hold_at` until the file `go` appears (or is killed there).
HOLDING_TRAINER = textwrap.dedent("""
    import json, os, sys, time
    import torch
    torch.set_num_threads(1)
    from umt_core.config import preset
    from umt_core.train import train

    run_dir, manifest, steps, hold_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    def on_event(e):
        if e["event"] == "step" and e["step"] == hold_at:
            open(os.path.join(run_dir, "holding"), "w").close()
            while not os.path.exists(os.path.join(run_dir, "go")):
                time.sleep(0.05)

    summary = train(preset("smoke", {"train.steps_per_epoch": 3}), run_dir, manifest=manifest,
                    steps=steps, progress=False, on_event=on_event)
    print(json.dumps(summary))
""")


def start_holding(root: Path, run: Path, manifest: Path, steps: int, hold_at: int):
    script = root / "holding_trainer.py"
    script.write_text(HOLDING_TRAINER)
    proc = subprocess.Popen([sys.executable, str(script), str(run), str(manifest), str(steps),
                             str(hold_at)], env=env(root), cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "holding").exists():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read()[-2000:]}")
        assert time.time() < deadline, "training did not reach the holding step"
        time.sleep(0.05)
    (run / "holding").unlink()
    return proc


# ======================================================================= one writer per run
def test_second_training_in_a_run_directory_is_refused_and_the_first_is_unharmed(
        root, project, capsys):
    manifest = project[1]
    run = root / "runs" / "shared"
    first = start_holding(root, run, manifest, steps=6, hold_at=4)
    try:
        before = snapshot(run)
        code, err = run_cli(["train", "--preset", "smoke", "--manifest", manifest,
                             "--run-dir", run, "--steps", "8", "--no-progress",
                             "-o", "train.steps_per_epoch=3"], capsys)
        assert code == 1
        assert f"is being written by pid {first.pid} on host {os.uname().nodename}" in err
        assert "another run directory" in err and len(err.strip().splitlines()) == 1
        assert snapshot(run) == before
    finally:
        (run / "go").touch()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["steps"] == 6
    from umt_core.checkpoint import load_checkpoint
    from umt_core.train import read_metrics

    steps = [e["step"] for e in read_metrics(run / "metrics.jsonl") if e["event"] == "step"]
    assert steps == list(range(1, 7))  # one writer: no duplicated or interleaved steps
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 6
    assert [e["event"] for e in read_metrics(run / "metrics.jsonl")].count("start") == 1


def test_a_killed_writer_does_not_block_and_the_resume_is_exact(root, project):
    from umt_core.checkpoint import load_checkpoint
    from umt_core.config import preset
    from umt_core.train import train

    manifest = project[1]
    straight = root / "runs" / "straight"
    train(preset("smoke", {"train.steps_per_epoch": 3}), straight, manifest=manifest, steps=7,
          progress=False)
    run = root / "runs" / "killed"
    proc = start_holding(root, run, manifest, steps=7, hold_at=5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3  # the epoch's save
    assert main(["train", "--preset", "smoke", "--manifest", str(manifest), "--run-dir",
                 str(run), "--steps", "7", "--no-progress", "-o", "train.steps_per_epoch=3"]) == 0
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 7
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_held_run_directory_refuses_a_training_in_the_same_process(root, project):
    from umt_core.config import preset
    from umt_core.run_lock import RunBusyError, RunLock
    from umt_core.train import train

    run = root / "runs" / "base"
    before = snapshot(run)
    with RunLock(run), pytest.raises(RunBusyError, match=f"pid {os.getpid()} on host"):
        train(preset("smoke"), run, manifest=project[1], steps=6, progress=False)
    assert snapshot(run) == before


def test_notebook_02_is_refused_while_another_process_writes_its_run(root, project, tmp_path,
                                                                     monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("PYTHONPATH", str(root))  # the kernel imports this tree's umt_core
    from papermill.exceptions import PapermillExecutionError

    from umt_core.run_lock import RunLock

    run = root / "runs" / "base"
    before = snapshot(run)
    with RunLock(run), pytest.raises(PapermillExecutionError) as info:
        papermill.execute_notebook(
            str(REPO / "notebooks" / "02_train.ipynb"), str(tmp_path / "02.ipynb"),
            kernel_name="umt-study", cwd=str(root), progress_bar=False,
            parameters={"preset": "smoke", "manifest": str(project[1]), "run_name": "base",
                        "steps": 6, "results_dir": str(tmp_path / "results")})
    assert info.value.ename == "RunBusyError"
    assert f"is being written by pid {os.getpid()}" in info.value.evalue
    assert snapshot(run) == before


# ======================================================================= data identity
def test_the_run_records_its_datasets_lock(project):
    from umt_core import data
    from umt_core.checkpoint import load_checkpoint
    from umt_core.data.identity import dataset_identity

    root, manifest = project
    identity = dataset_identity(data.load_manifest(manifest))
    recorded = yaml.safe_load((root / "runs" / "base" / "config.yaml").read_text())["data"]
    assert recorded["files_sha256"] == identity["files_sha256"]
    assert recorded["lock_sha256"] == hashlib.sha256(
        (root / "data" / "tiny" / "lock.json").read_bytes()).hexdigest()
    assert recorded["manifest"].endswith("tiny.yaml") and recorded["n_files"] == 12
    state = load_checkpoint(root / "runs" / "base" / "checkpoints" / "last.pt")
    assert state["data"]["files_sha256"] == identity["files_sha256"]
    assert len(state["data"]["files"]) == 12


def test_prep_does_not_rebuild_a_dataset_in_place_with_other_settings(fresh_project, capsys):
    root, manifest = fresh_project
    before = snapshot(root / "data" / "tiny")
    manifest.write_text(manifest.read_text().replace("train: 0.34, val: 0.33, test: 0.33",
                                                     "train: 0.5, val: 0.17, test: 0.33"))
    code, err = run_cli(["prep", "--manifest", manifest, "--no-progress"], capsys)
    assert code == 2
    assert "already holds dataset 'tiny' (12 files) prepared with other settings" in err
    assert "split.train 0.34 -> 0.5" in err and "--replace" in err
    assert snapshot(root / "data" / "tiny") == before
    assert run_cli(["prep", "--manifest", manifest, "--no-progress", "--replace"], capsys)[0] == 0
    lock = json.loads((root / "data" / "tiny" / "lock.json").read_text())
    assert lock["params"]["split"]["train"] == 0.5


def _full_scores_lock(root: Path):
    """data/scores as a full preparation of data_manifests/scores.yaml would leave it
    (its lock; the files are not needed for what is tested)."""
    from umt_core import data
    from umt_core.data.manifest import LOCK_FORMAT, sha_json
    from umt_core.data.prepare import _params

    m = data.load_manifest(root / "data_manifests" / "scores.yaml")
    params = _params(m, None, None)
    lock = {"format": LOCK_FORMAT, "dataset": m.name, "params": params,
            "params_sha256": sha_json(params), "sample_rate": m.sample_rate,
            "domains": m.domains, "files": {f"piano/train/w{i}.wav": {
                "domain": "piano", "split": "train", "sha256": "0" * 64} for i in range(269)}}
    m.data_dir.mkdir(parents=True)
    m.lock_path.write_text(json.dumps(lock))
    return m


def test_prep_minutes_per_domain_prepares_its_own_dataset_beside_the_full_one(
        tmp_path, monkeypatch, capsys):
    """`prep --minutes-per-domain 1` on the full scores dataset: a dataset of its own;
    the library's prep refuses to rebuild the full one in place. Neither renders here."""
    from umt_core import data
    from umt_core.data import prepare

    root = scratch_root(tmp_path)
    monkeypatch.setenv("UMT_ROOT", str(root))
    m = _full_scores_lock(root)
    before = snapshot(m.data_dir)
    prepared = []
    monkeypatch.setattr(prepare, "prep", lambda target, **kw: prepared.append(target) or {
        "status": "stub", "seconds": 0, "files": 0, "produced": 0, "kept": 0, "table": [],
        "skipped": []})
    assert main(["prep", "--minutes-per-domain", "1", "--no-progress"]) == 0
    assert ("scores with these settings is a dataset of its own: scores-1min in "
            "data/scores-1min; train and evaluate it with --manifest "
            "data/manifests/scores-1min.yaml") in capsys.readouterr().out
    (target,) = prepared
    assert target.name == "scores-1min" and target.data_dir == root / "data" / "scores-1min"
    assert target.split["minutes_per_domain"] == 1.0
    derived = yaml.safe_load((root / "data" / "manifests" / "scores-1min.yaml").read_text())
    assert derived["dataset"] == "scores-1min" and derived["split"]["minutes_per_domain"] == 1.0
    assert snapshot(m.data_dir) == before
    monkeypatch.undo()
    monkeypatch.setenv("UMT_ROOT", str(root))
    with pytest.raises(data.DataError) as info:
        data.prep(m, minutes_per_domain=1, progress=False, log=lambda *a: None)
    message = str(info.value)
    assert "already holds dataset 'scores' (269 files)" in message
    assert "split.minutes_per_domain 40.0 -> 1.0" in message
    assert "its own name" in message and "--replace" in message
    assert snapshot(m.data_dir) == before


def test_resume_on_changed_data_is_refused_naming_the_difference(fresh_project, capsys):
    root, manifest = fresh_project
    run = root / "runs" / "r"
    args = ["train", "--preset", "smoke", "--manifest", manifest, "--run-dir", run,
            "--no-progress"]
    assert run_cli([*args, "--steps", "2"], capsys)[0] == 0
    # A smaller preparation of the same dataset, done on purpose (--replace).
    manifest.write_text(manifest.read_text().replace("train: 0.34, val: 0.33, test: 0.33",
                                                     "train: 0.5, val: 0.17, test: 0.33"))
    assert run_cli(["prep", "--manifest", manifest, "--no-progress", "--replace"], capsys)[0] == 0
    before = snapshot(run)
    code, err = run_cli([*args, "--steps", "3"], capsys)
    assert code == 2
    assert f"{run} was trained on other data than" in err
    assert "split.train 0.34 -> 0.5" in err and "gone" in err
    assert "--allow-data-change" in err and "--fresh" in err
    assert snapshot(run) == before
    code, err = run_cli([*args, "--steps", "3", "--allow-data-change"], capsys)
    assert code == 0
    from umt_core.train import read_metrics

    resume = [e for e in read_metrics(run / "metrics.jsonl") if e["event"] == "resume"][-1]
    assert any("split.train" in d for d in resume["data_changed"])


def test_a_training_file_changed_since_prep_is_refused(fresh_project, capsys):
    root, manifest = fresh_project
    run = root / "runs" / "r"
    args = ["train", "--preset", "smoke", "--manifest", manifest, "--run-dir", run,
            "--no-progress", "--steps", "2"]
    assert run_cli(args, capsys)[0] == 0
    wav = min((root / "data" / "tiny" / "piano" / "train").glob("*.wav"))
    sf.write(wav, tone(1.0, 999.0), SR, subtype="PCM_16")  # another valid WAV
    before = snapshot(run, root / "data")
    code, err = run_cli([*args[:-1], "4"], capsys)
    assert code == 2
    assert f"{wav}: changed since prep" in err and "prep --manifest" in err
    assert snapshot(run, root / "data") == before


def test_evaluate_refuses_a_file_swapped_for_another_valid_wav(fresh_project, capsys):
    from umt_core.config import preset
    from umt_core.train import train

    root, manifest = fresh_project
    ckpt = train(preset("smoke"), root / "runs" / "e", manifest=manifest, steps=1,
                 progress=False)["last_checkpoint"]
    # A training file: the first the evaluation reads (its instrument classifier learns
    # from them; this unpaired dataset has no paired works to judge after that).
    wav = min((root / "data" / "tiny" / "cello" / "train").glob("*.wav"))
    audio, _ = sf.read(wav, dtype="float32")
    sf.write(wav, tone(len(audio) / SR, 523.0, 7), SR, subtype="PCM_16")  # same length
    out = root / "results" / "eval.json"
    before = snapshot(root / "data", root / "runs")
    code, err = run_cli(["evaluate", "--checkpoint", ckpt, "--manifest", manifest, "--works", "2",
                         "--segments", "1", "--seconds", "0.25", "--json", out], capsys)
    assert code == 2
    assert f"{wav}: sha256" in err and "differs from the lock's" in err
    assert "prep --manifest" in err
    assert not out.exists() and snapshot(root / "data", root / "runs") == before


def test_translate_refuses_a_dataset_file_that_no_longer_matches_its_lock(
        fresh_project, checkpoint, tmp_path, capsys):
    root, _ = fresh_project
    wav = a_test_wav(root)
    with open(wav, "ab") as f:
        f.write(b"\0" * 64)  # grown: the size check catches it without hashing
    out = tmp_path / "out"
    code, err = run_cli(["translate", "--checkpoint", checkpoint, "--input", wav, "--to", "piano",
                         "--out-dir", out, "--quiet"], capsys)
    assert code == 2
    assert f"{wav}:" in err and "bytes, but" in err and "lists" in err
    assert not any(out.iterdir())


PREP_KILLED = textwrap.dedent("""
    import sys, time
    from umt_core.data import load_manifest, prepare

    def slow(*args, **kwargs):
        time.sleep(300)

    prepare._produce = slow  # the workers (forked) hang in their first file
    prepare.prep(load_manifest(sys.argv[1]), workers=2, progress=False, log=lambda *a: None)
""")


def _children(pid: int) -> list[int]:
    """Running child processes of `pid` (multiprocessing's resource tracker excepted)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and b"resource_tracker" not in cmdline:
            out.append(int(stat.parent.name))
    return out


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_kill_9_of_prep_leaves_no_worker_behind(tmp_path):
    root = scratch_root(tmp_path)
    manifest = make_project(root)
    script = root / "prep_killed.py"
    script.write_text(PREP_KILLED)
    proc = subprocess.Popen([sys.executable, str(script), str(manifest)], env=env(root), cwd=root)
    deadline = time.time() + 60
    while len(workers := _children(proc.pid)) < 2:
        assert proc.poll() is None and time.time() < deadline, "prep did not start its workers"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while any(_running(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    left = [w for w in workers if _running(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    assert not left, f"prep's workers {left} outlived it"
    assert not (root / "data" / "tiny" / "lock.json").exists()


# ======================================================================= outputs and options
def test_translate_out_dir_that_is_a_file_fails_before_any_work(root, checkpoint, tmp_path,
                                                                capsys):
    blocker = tmp_path / "out"
    blocker.write_text("keep me")
    t0 = time.time()
    code, err = run_cli(["translate", "--checkpoint", checkpoint, "--input", a_test_wav(root),
                         "--to", "piano", "--out-dir", blocker], capsys)
    assert code == 2 and time.time() - t0 < 5
    assert err.strip() == (f"error: {blocker}: exists and is not a folder; give a folder as "
                           "the --out-dir")
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize("value, message", [
    ("abc", "'abc' is not 'model', 'input' or a whole number of Hz"),
    ("12.5", "'12.5' is not 'model', 'input' or a whole number of Hz"),
    ("0", "'0' Hz is outside 1000..384000"),
])
def test_translate_output_rate_is_parsed_before_any_work(root, checkpoint, tmp_path, capsys,
                                                         value, message):
    code, err = run_cli(["translate", "--checkpoint", checkpoint, "--input", a_test_wav(root),
                         "--to", "piano", "--out-dir", tmp_path / "out", "--output-rate", value],
                        capsys)
    assert code == 2 and f"argument --output-rate: {message}" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value, message", [
    ("nan", "'nan' is not a finite number"), ("inf", "'inf' is not a finite number"),
    ("-1", "'-1' must be >= 0"),
])
def test_temperature_must_be_finite_and_not_negative(root, checkpoint, tmp_path, capsys,
                                                     value, message):
    for command in (["translate", "--input", a_test_wav(root), "--to", "piano", "--out-dir",
                     tmp_path / "out"], ["evaluate", "--json", tmp_path / "e.json"]):
        code, err = run_cli([command[0], "--checkpoint", checkpoint, *command[1:],
                             "--temperature", value], capsys)
        assert code == 2 and f"argument --temperature: {message}" in err
    assert not any(tmp_path.iterdir())


def test_evaluate_json_where_it_cannot_be_written_fails_before_any_work(root, checkpoint,
                                                                       tmp_path, capsys):
    a_file = tmp_path / "note.txt"
    a_file.write_text("keep me")
    cases = [(a_file / "eval.json", 2, (f"{a_file / 'eval.json'}: cannot be written because "
                                        f"{a_file} is a file, not a folder")),
             (tmp_path, 2, f"{tmp_path}: is a folder; give a file name for the --json file"),
             (Path("/proc/umt-eval/e.json"), 1, ("cannot write the folder of the --json file: "
                                                 "/proc/umt-eval: "))]
    for target, expected, message in cases:
        t0 = time.time()
        code, err = run_cli(["evaluate", "--checkpoint", checkpoint, "--json", target], capsys)
        assert code == expected and time.time() - t0 < 5, err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert a_file.read_text() == "keep me" and sorted(tmp_path.iterdir()) == [a_file]


def test_os_errors_of_analyze_log_and_convert_reference_are_one_line(root, tmp_path, capsys):
    excerpt = FIXTURES / "reference_log_excerpt.log"
    code, err = run_cli(["analyze-log", excerpt, "--json", "/proc/umt/findings.json"], capsys)
    assert code == 1 and err.startswith("error: cannot write the folder of the --json file: "
                                        "/proc/umt: ")
    assert len(err.strip().splitlines()) == 1
    code, err = run_cli(["convert-reference", FIXTURES / "reference_checkpoint", tmp_path],
                        capsys)
    assert code == 2 and f"{tmp_path}: is a folder; give a file name" in err
    assert not any(tmp_path.iterdir())


def test_a_run_directory_that_is_a_file_is_refused(root, project, tmp_path, capsys):
    run = tmp_path / "run"
    run.write_text("keep me")
    code, err = run_cli(["train", "--preset", "smoke", "--manifest", project[1], "--run-dir", run,
                         "--steps", "1", "--no-progress"], capsys)
    assert code == 2 and f"{run}: exists and is not a folder" in err
    assert run.read_text() == "keep me"


def test_overrides_read_numbers_as_numbers(fresh_project, capsys):
    from umt_core.config import apply_overrides, preset

    cfg = apply_overrides(preset("smoke"), {"train.lr": "1e-4", "train.confusion_weight": "5e-4",
                                            "train.steps_per_epoch": "1E3"})
    assert (cfg.train.lr, cfg.train.confusion_weight, cfg.train.steps_per_epoch) == \
        (1e-4, 5e-4, 1000)
    root, manifest = fresh_project
    run = root / "runs" / "lr"
    code, _ = run_cli(["train", "--preset", "smoke", "--manifest", manifest, "--run-dir", run,
                       "--steps", "1", "--no-progress", "-o", "train.lr=1e-4"], capsys)
    assert code == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 1e-4
    code = main(["study", "--preset", "smoke", "--dry-run", "-p", "train.lr=5e-4"])
    out = capsys.readouterr().out
    assert code == 0 and '"train.lr": 0.0005' in out


def test_a_bad_study_override_fails_before_any_notebook_runs(root, capsys):
    before = snapshot(root / "results") if (root / "results").exists() else {}
    t0 = time.time()
    code, err = run_cli(["study", "--preset", "smoke", "--run", "bad", "-p", "train.lr=fast"],
                        capsys)
    assert code == 2 and time.time() - t0 < 10
    assert "config override train.lr='fast': expected float" in err
    assert not list((root / "results" / "bad").glob("*"))
    assert {k: v for k, v in snapshot(root / "results").items() if "/bad/" not in k} == before


def test_non_finite_weights_are_refused_at_load(root, checkpoint, tmp_path, capsys):
    state = torch.load(checkpoint, weights_only=True)
    name = next(k for k in state["model"] if k.startswith("decoders.0"))
    state["model"][name][0] = float("nan")
    bad = tmp_path / "nan.pt"
    torch.save(state, bad)  # behind save_checkpoint's back, which refuses this
    code, err = run_cli(["translate", "--checkpoint", bad, "--input", a_test_wav(root), "--to",
                         "piano", "--out-dir", tmp_path / "out", "--quiet"], capsys)
    assert code == 2
    assert f"{bad}: weight {name} holds NaN or infinite values" in err
    assert not any((tmp_path / "out").iterdir())


def test_truncated_audio_is_translated_with_a_warning_naming_both_lengths(
        root, checkpoint, tmp_path, capsys, caplog):
    full = tmp_path / "clip.wav"
    sf.write(full, tone(1.0, 220.0), SR, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(full.read_bytes()[:44 + 2 * 480])  # a copy that stopped after 0.03 s
    code, err = run_cli(["translate", "--checkpoint", checkpoint, "--input", cut, "--to", "piano",
                         "--out-dir", tmp_path / "out", "--quiet"], capsys)
    assert code == 0
    text = caplog.text + err
    assert f"{cut}: truncated: its header announces 16000 samples (1.00 s), the file holds " \
           "480 (0.03 s)" in text
    assert (tmp_path / "out" / "cut_to_piano.wav").exists()


def test_steps_0_says_nothing_was_trained(root, capsys):
    run = root / "runs" / "base"
    before = snapshot(run / "checkpoints", run / "config.yaml")
    code, err = run_cli(["train", "--preset", "smoke", "--manifest", root / "tiny.yaml",
                         "--run-dir", run, "--steps", "0", "--no-progress"], capsys)
    assert code == 0
    assert "nothing was trained: the run is at step 4" in err
    assert snapshot(run / "checkpoints") == {k: v for k, v in before.items()
                                             if "/checkpoints/" in k}


def test_fresh_removes_only_what_the_run_wrote(fresh_project, capsys):
    root, manifest = fresh_project
    run = root / "runs" / "f"
    args = ["train", "--preset", "smoke", "--manifest", manifest, "--run-dir", run,
            "--no-progress"]
    assert run_cli([*args, "--steps", "2", "-o", "train.checkpoint_every=1"], capsys)[0] == 0
    assert (run / "checkpoints" / "step_1.pt").exists()
    mine = {run / "checkpoints" / "mine.pt": b"user's model", run / "notes.txt": b"user's notes",
            run / "checkpoints" / "last.pt.bak": b"user's copy"}
    for path, content in mine.items():
        path.write_bytes(content)
    assert run_cli([*args, "--steps", "1", "--fresh"], capsys)[0] == 0
    assert all(path.read_bytes() == content for path, content in mine.items())
    assert not (run / "checkpoints" / "step_1.pt").exists()
    from umt_core.checkpoint import load_checkpoint

    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 1


# ======================================================================= hints to the fix
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_device_cuda_without_a_gpu_says_so(root, checkpoint, tmp_path, capsys):
    code, err = run_cli(["translate", "--checkpoint", checkpoint, "--input", a_test_wav(root),
                         "--to", "piano", "--out-dir", tmp_path / "out", "--device", "cuda"],
                        capsys)
    assert code == 2
    assert "--device cuda: no CUDA GPU is visible to torch here" in err
    assert "--device cpu" in err and "cannot be loaded safely" not in err
    assert not (tmp_path / "out").exists()


def test_a_reference_folder_given_as_checkpoint_points_to_convert_reference(root, tmp_path,
                                                                            capsys):
    ref = FIXTURES / "reference_checkpoint"
    before = snapshot(ref)
    code, err = run_cli(["translate", "--checkpoint", ref, "--input", a_test_wav(root), "--to",
                         "piano", "--out-dir", tmp_path / "out"], capsys)
    assert code == 2
    assert f"{ref}: is a folder of the reference implementation" in err
    assert f"python -m umt_core convert-reference {ref} OUT.pt" in err
    assert snapshot(ref) == before


def test_evaluate_on_an_unprepared_dataset_says_run_prep(root, checkpoint, tmp_path, capsys):
    manifest = tmp_path / "other.yaml"
    manifest.write_text((root / "tiny.yaml").read_text().replace("dataset: tiny",
                                                                 "dataset: never-prepared"))
    code, err = run_cli(["evaluate", "--checkpoint", checkpoint, "--manifest", manifest,
                         "--json", tmp_path / "e.json"], capsys)
    assert code == 2
    assert "dataset 'never-prepared' is not prepared" in err
    assert "python -m umt_core prep --manifest" in err and "has no test audio" not in err
    assert not (tmp_path / "e.json").exists()


# ======================================================================= bad inputs
def test_bad_audio_bad_manifest_and_bad_checkpoints_get_one_line_each(root, checkpoint,
                                                                      tmp_path, capsys):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is text")
    manifest = tmp_path / "broken.yaml"
    manifest.write_text("dataset: x\nsample_rate: [16000\n")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(256))
    before = snapshot(tmp_path, root / "runs")
    cases = [
        (["translate", "--checkpoint", checkpoint, "--input", not_audio, "--to", "piano",
          "--out-dir", tmp_path / "out"], f"{not_audio}: cannot be read as audio"),
        (["train", "--preset", "smoke", "--manifest", manifest, "--run-dir", root / "runs" / "x",
          "--steps", "1"], "not valid YAML"),
        (["translate", "--checkpoint", junk, "--input", a_test_wav(root), "--to", "piano",
          "--out-dir", tmp_path / "out"], f"{junk}: cannot be loaded safely"),
        (["translate", "--checkpoint", checkpoint, "--input", a_test_wav(root), "--to", "oboe",
          "--out-dir", tmp_path / "out"], "oboe"),
    ]
    for args, message in cases:
        code, err = run_cli(args, capsys)
        assert code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert {k: v for k, v in snapshot(tmp_path, root / "runs").items() if k in before} == before
    assert not (root / "runs" / "x").exists()


def test_a_hostile_pickle_is_refused_without_running_it(root, tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pt"
    torch.save({"format": "umt_core.checkpoint", "model": Evil()}, bad)
    code, err = run_cli(["translate", "--checkpoint", bad, "--input", a_test_wav(root), "--to",
                         "piano", "--out-dir", tmp_path / "out"], capsys)
    assert code == 2 and f"{bad}: cannot be loaded safely" in err
    assert not marker.exists()


@pytest.mark.parametrize("args, message", [
    (["prep", "--workers", "0"], "argument --workers: '0' must be at least 1"),
    (["train", "--run-dir", "r", "--epochs", "0"], "argument --epochs: '0' must be at least 1"),
    (["train", "--run-dir", "r", "--steps", "-3"], "argument --steps: '-3' must be >= 0"),
    (["evaluate", "--checkpoint", "c.pt", "--json", "e.json", "--works", "two"],
     "argument --works: 'two' is not an integer"),
    (["translate", "--checkpoint", "c.pt", "--input", "a.wav", "--to", "piano", "--out-dir",
      "o", "--seconds", "0"], "argument --seconds: '0' must be > 0"),
])
def test_options_are_checked_by_the_parser(root, capsys, args, message):
    before = snapshot(root / "runs")
    code, err = run_cli(args, capsys)
    assert code == 2 and message in err
    assert snapshot(root / "runs") == before


# ======================================================================= first use
def _parsers():
    import argparse

    from umt_core.__main__ import build_parser

    todo, out = [("python -m umt_core", build_parser())], []
    while todo:
        name, parser = todo.pop()
        out.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {n}", p) for n, p in action.choices.items()]
    return out


def test_every_option_has_help_and_shows_its_default():
    import argparse

    missing = []
    for name, parser in _parsers():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            text = formatter._expand_help(action) if action.help else ""
            if not text:
                missing.append(f"{name} {action.dest}: no help")
            elif action.option_strings and not action.required and \
                    "(default:" not in text and "(None:" not in text:
                missing.append(f"{name} {action.dest}: no default shown")
    assert not missing, missing
    help_text = _parsers()[0][1].format_help()
    assert "prep" in help_text


def test_commands_that_take_a_manifest_default_to_their_presets(root, capsys, monkeypatch):
    from umt_core import train as train_module

    seen = {}
    monkeypatch.setattr(train_module, "train", lambda cfg, run_dir, manifest, **kw:
                        seen.setdefault(cfg.preset, manifest) and {"trained_steps": 1})
    for preset_name, expected in [("cpu", "data_manifests/scores-8k.yaml"),
                                  ("paper", "data_manifests/scores.yaml"),
                                  ("smoke", "data/manifests/scores-smoke.yaml")]:
        main(["train", "--preset", preset_name, "--run-dir", "r"])
        assert seen[preset_name] == expected
    capsys.readouterr()


def test_index_opens_with_a_verdict_marks_reference_figures_and_plays_one_translation(tmp_path):
    from umt_core.study.report import NotebookRun, StudyReport, index_html

    out = tmp_path / "results" / "smoke"
    (out / "examples").mkdir(parents=True)
    (out / "figures").mkdir()
    for role in ("source", "translation", "ground_truth"):
        sf.write(out / "examples" / f"0_bwv1.6_piano-to-cello_{role}.wav", tone(0.1, 220.0), SR)
    (out / "figures" / "04_sample_0.png").write_bytes(b"\x89PNG")
    metrics = {
        "01_data_prep": {"dataset": "scores-smoke", "sample_rate": 16000, "total_minutes": 1.2,
                         "files": 24},
        "02_train": {"domains": "piano,cello", "steps": 20, "epochs": 2, "train_minutes": 0.1,
                     "devices": 1, "best_val_recon": 5.4},
        "03_loss_analysis": {"runs": 3, "spikes": 4, "divergent_runs": 1,
                             "bundled_reference": "tests/fixtures/reference_log_excerpt.log",
                             "this_run_spikes": 0, "this_run_divergent_runs": 0},
        "04_listening_tests": {"m-best_translation_success": 0.25,
                               "m-best_translation_instrument": 0.5,
                               "m-best_translation_notes_kept_score": 0.1,
                               "m-best_ground_truth_chroma": 0.46,
                               "m-best_ground_truth_success": 1.0},
    }
    report = StudyReport("smoke", "smoke", out, [NotebookRun(s, {}, "ok", 1.0) for s in metrics],
                         metrics=metrics)
    page = index_html(report)
    verdict = page[page.index('class="warning"'):page.index("<h2>Notebooks</h2>")]
    assert "smoke</b> preset" in verdict and "say nothing about the method" in verdict
    assert "piano, cello</b> for 0.1 minutes of training (20 steps" in verdict
    assert "scores-smoke</b> (16000 Hz" in verdict
    assert "25% of translations succeed" in verdict and "succeeds 100% of the time" in verdict
    assert "reference_log_excerpt.log" in verdict and "This run alone: spikes 0" in verdict
    for role in ("source", "translation", "ground_truth"):
        assert f'src="examples/0_bwv1.6_piano-to-cello_{role}.wav"' in verdict
    assert 'src="figures/04_sample_0.png"' in verdict
    summary = page[page.index("<h2>Summary</h2>"):]
    assert "spikes &dagger;" in summary and "divergent_runs &dagger;" in summary
    assert "this_run_spikes</td>" in summary and "this_run_spikes &dagger;" not in summary
    report.preset = "cpu"
    assert 'class="warning"' not in index_html(report)

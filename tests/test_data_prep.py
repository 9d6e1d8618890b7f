"""The embedded dataset: scores rendered by FluidSynth, on a tiny size.

Two preps give identical checksums; the test set is paired, training works are
disjoint across domains; the lock makes a re-run a no-op and catches changed files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from umt_core import data
from umt_core.__main__ import main
from umt_core.data import DataError, load_manifest, render

REPO = Path(__file__).resolve().parents[1]
SCORES = REPO / "data_manifests" / "scores.yaml"
FLUID = "/usr/share/sounds/sf2/FluidR3_GM.sf2"

pytestmark = pytest.mark.skipif(not Path(FLUID).exists(), reason="fluid-soundfont-gm not installed")


def tiny_manifest(folder: Path, minutes: float = 0.05) -> Path:
    """The shipped manifest cut down: one test work, 3-second excerpts."""
    text = SCORES.read_text()
    for old, new in (("test_works: 8 ", "test_works: 1 "), ("val_works: 8 ", "val_works: 1 "),
                     ("minutes_per_domain: 40 ", f"minutes_per_domain: {minutes} "),
                     ("excerpt_seconds: null ", "excerpt_seconds: 3.0 ")):
        assert old in text
        text = text.replace(old, new)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def note_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("notes")


def test_arrange_and_render_handle_the_pitfalls():
    notes = {"parts": [
        [[40, 0.0, 1.0], [41, 1.0, 0.01], [100, 1.0, 1.0]],  # 0.01 q = 10 ms: dropped
        [[52, 0.0, 2.0], [52, 2.0, 1.0]],                     # repeated pitch, back to back
        [[52, 0.0, 2.0]],                                     # unison with another voice
    ], "quarters": 3.0}
    ev = render.arrange(notes, low=60, high=96, tempo_qpm=60.0)
    assert set(ev[:, 0]) == {0, 1, 2}  # one channel per part: unisons do not cut each other
    assert ev[:, 1].min() >= 60 and ev[:, 1].max() <= 96  # moved and folded into range
    assert np.all(ev[:, 3] - ev[:, 2] >= 0.02) and len(ev) == 5
    a = render.render(ev, soundfont=FLUID, program=73, sample_rate=16000, tail_seconds=0.5)
    assert a.dtype == np.float32 and a.ndim == 1  # stereo mixed down
    assert len(a) == round(3.5 * 16000)  # last note-off + tail: nothing rings forever
    assert abs(np.abs(a).max() - 0.7) < 1e-6
    assert np.array_equal(a, render.render(ev, soundfont=FLUID, program=73, sample_rate=16000,
                                           tail_seconds=0.5))
    with pytest.raises(FileNotFoundError, match="apt-get install"):
        render.render(ev, soundfont="/nowhere.sf2", program=0, sample_rate=16000)


def test_works_and_repeats():
    works = render.list_works()
    assert len(works) > 350 and works == sorted(works, key=render._natural_key)
    assert "bwv277" in works and not any("-" in w for w in works)
    notes = render.parse_work("bwv277")  # its repeat marks cannot be expanded: played as written
    assert not notes["repeats_expanded"] and len(notes["parts"]) == 4 and notes["quarters"] > 0


def _checksums(m) -> dict[str, str]:
    return {rel: e["sha256"] for rel, e in data.read_lock(m)["files"].items()}


def test_prep_is_reproducible_paired_and_locked(tmp_path, note_cache):
    path = tiny_manifest(tmp_path / "manifests")
    quiet = {"progress": False, "note_cache": note_cache, "log": lambda s: None}
    a = load_manifest(path, data_root=tmp_path / "a")
    b = load_manifest(path, data_root=tmp_path / "b")
    ra = data.prep(a, workers=1, **quiet)
    rb = data.prep(b, workers=2, **quiet)
    assert ra["status"] == rb["status"] == "prepared"
    assert _checksums(a) == _checksums(b) and len(_checksums(a)) >= 4 * 4

    # Paired test sets, disjoint unpaired training works, another soundfont for test_alt.
    test = data.split_files(a, "test")
    stems = {d: [p.stem for p in files] for d, files in test.items()}
    assert all(s == stems["piano"] and len(s) == 1 for s in stems.values())
    alt = data.split_files(a, "test_alt")
    assert {d: [p.stem for p in f] for d, f in alt.items()} == stems
    assert sf.read(alt["piano"][0])[0].shape != sf.read(test["piano"][0])[0].shape or \
        not np.array_equal(sf.read(alt["piano"][0])[0], sf.read(test["piano"][0])[0])
    # Paired validation works too: the same in every domain, in neither train nor test.
    train_stems = {d: {p.stem for p in f} for d, f in data.split_files(a, "train").items()}
    val_stems = {d: {p.stem for p in f} for d, f in data.split_files(a, "val").items()}
    assert all(v == val_stems["piano"] and len(v) == 1 for v in val_stems.values())
    assert not val_stems["piano"] & set(stems["piano"])
    seen: set[str] = set()
    for d in a.domains:
        own = train_stems[d]
        assert own and not (own & seen) and not (own & set(stems[d])) and not (own & val_stems[d])
        seen |= own
    info = sf.info(str(test["cello"][0]))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert 3.0 <= info.duration <= 4.01  # 3 s excerpt + 1 s tail
    table = {(r["domain"], r["split"]): r for r in ra["table"]}
    assert table[("flute", "test_alt")]["files"] == 1 and table[("piano", "train")]["minutes"] > 0

    # Re-run: a no-op. A changed file: refused by training_data, restored by prep.
    assert data.prep(a, **quiet)["status"] == "up to date"
    first = data.training_data(a, "train")
    assert [d.name for d in first] == a.domains and all(d.cache_path for d in first)
    victim = data.split_files(a, "train")["cello"][0]
    original = victim.read_bytes()
    audio, sr = sf.read(victim, dtype="float32")
    sf.write(victim, audio * 0.5, sr, subtype="PCM_16")
    with pytest.raises(DataError, match=rf"{victim.name}: changed since prep"):
        data.training_data(a, "train")
    assert any(victim.name in line and "sha256" in line for line in data.verify(a))
    log: list[str] = []
    report = data.prep(a, progress=False, note_cache=note_cache, log=log.append)
    assert report["produced"] == 1 and any("changed since the last prep" in s for s in log)
    assert victim.read_bytes() == original and data.verify(a) == []
    again = data.training_data(a, "train")  # same lock checksums: the cache is still valid
    assert np.array_equal(again[2].clips[0], first[2].clips[0])

    # Another size in place only when asked (--replace); it keeps what it can and removes
    # what the new plan drops.
    with pytest.raises(data.DataError, match="split.minutes_per_domain 0.05 -> 0.12"):
        data.prep(a, minutes_per_domain=0.12, **quiet)
    bigger = data.prep(a, minutes_per_domain=0.12, replace=True, **quiet)
    assert bigger["kept"] > 0 and bigger["files"] > ra["files"]
    assert set(_checksums(a)) >= {rel for rel in _checksums(b) if "/test" in rel}
    assert data.verify(a) == [] and data.read_lock(a)["params"]["split"]["minutes_per_domain"] == 0.12
    path.write_text(path.read_text().replace("tempo_qpm: 80", "tempo_qpm: 90"))
    assert data.verify(load_manifest(path, data_root=tmp_path / "a")) == [
        f"{path}: changed since the lock was made; run prep again"]


def test_cli_prep_and_verify(tmp_path, note_cache, capsys, monkeypatch):
    path = tiny_manifest(tmp_path / "proj" / "data_manifests")
    monkeypatch.chdir(tmp_path / "proj")  # data goes to <manifest's project>/data
    m = load_manifest(path)
    data.prep(m, progress=False, note_cache=note_cache, log=lambda s: None)
    assert main(["prep", "--manifest", str(path), "--no-progress"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["prep", "--manifest", str(path), "--verify"]) == 0
    next(iter(data.split_files(m, "val").values()))[0].unlink()
    assert main(["prep", "--manifest", str(path), "--verify"]) == 1
    assert "missing" in capsys.readouterr().out
    assert main(["prep", "--manifest", str(path), "--minutes-per-domain", "-1"]) == 2


def test_notebook_01_runs_under_papermill(tmp_path):
    import json

    import nbformat
    import papermill

    path = tiny_manifest(tmp_path / "proj" / "data_manifests")
    out = tmp_path / "01_data_prep.ipynb"
    results = tmp_path / "results"
    papermill.execute_notebook(
        str(REPO / "notebooks" / "01_data_prep.ipynb"), str(out), kernel_name="umt-study",
        cwd=str(REPO), progress_bar=False,
        parameters={"manifest": str(path), "workers": 1, "example_seconds": 2.0,
                    "results_dir": str(results)})
    figures = json.loads((results / "01_data_prep.json").read_text())
    assert figures["dataset"] == "scores" and figures["status"] == "prepared"
    # per domain: 2 training works, 1 paired validation work, the test work and its test_alt
    assert figures["files"] == 4 * 5 and figures["files_skipped"] == 0
    assert figures["minutes_flute_test_alt"] > 0 and figures["paired_example"]
    for name in ("01_durations.png", "01_domains.png", "01_paired.png", "01_paired_alt.png"):
        assert (results / "figures" / name).stat().st_size > 0
    outputs = [o for c in nbformat.read(out, 4).cells if c.cell_type == "code" for o in c.outputs]
    assert sum("audio" in json.dumps(o.get("data", {})) for o in outputs) >= 3 * 4
    assert (tmp_path / "proj" / "data" / "scores" / "lock.json").exists()

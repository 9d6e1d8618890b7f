"""Manifests, MusicNet selection on a fake tree, bad inputs, sampling, augmentation.

All audio is made here; nothing is rendered (see test_data_prep.py for that).
"""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from umt_core import data
from umt_core.config import preset
from umt_core.data import DataError, load_manifest
from umt_core.data.sampling import DomainAudio, PitchShiftAugmenter, SegmentSampler, prefetch

REPO = Path(__file__).resolve().parents[1]
SCORES = REPO / "data_manifests" / "scores.yaml"
MUSICNET = REPO / "data_manifests" / "musicnet.yaml"
DOMAINS = [  # (name, composer, ensemble) of the released model, decoder order
    ("Bach_Solo_Cello", "Bach", "Solo Cello"),
    ("Beethoven_Solo_Piano", "Beethoven", "Solo Piano"),
    ("Cambini_Wind_Quintet", "Cambini", "Wind Quintet"),
    ("Bach_Solo_Piano", "Bach", "Solo Piano"),
    ("Beethoven_Accompanied_Violin", "Beethoven", "Accompanied Violin"),
    ("Beethoven_String_Quartet", "Beethoven", "String Quartet"),
]


# ----------------------------------------------------------------------------- manifests

def test_shipped_manifests_load():
    m = load_manifest(SCORES)
    assert m.name == "scores" and m.sample_rate == 16000
    assert m.domains[:4] == ["piano", "harpsichord", "cello", "flute"]
    assert m.data_dir == REPO / "data" / "scores" and m.path == SCORES
    assert m.splits == ("train", "val", "test", "test_alt")
    mn = load_manifest(MUSICNET)
    assert mn.domains == [d[0] for d in DOMAINS]
    assert mn.splits == ("train", "val", "test")
    assert load_manifest(SCORES, sample_rate=8000).data_dir.name == "scores-8000hz"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "m.yaml"
    p.write_text(text)
    return p


def _scores_text(**changes: str) -> str:
    text = SCORES.read_text()
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("change, expected", [
    ({"dataset: scores": "dataset: [scores"}, r"m\.yaml:\d+: not valid YAML"),
    ({"sample_rate: 16000": "sample_rate: fast"}, r"field 'sample_rate' must be int"),
    ({"sample_rate: 16000": "samplerate: 16000"}, r"unknown field\(s\) \['samplerate'\]"),
    ({"on_error: fail ": "on_error: ignore "}, r"field 'on_error' is 'ignore'"),
    ({"instrument: flute,": "instrument: kazoo,"}, r"domains\[3\] \(flute\): unknown instrument 'kazoo'"),
    ({"name: cello,": "name: piano,"}, r"duplicate domain name\(s\) \['piano'\]"),
    ({"low: 60, high: 96": "low: 60, high: 64"}, r"domains\[3\] \(flute\): range .* at least an octave"),
    ({"test_works: 8 ": "test_works: 0 "}, r"split: field 'test_works' = 0 must be positive"),
    ({"val_works: 8 ": "val_works: 8\n  val_fraction: 0.1 "}, r"split: give val_works .* not both"),
    ({"val_works: 8 ": "val_works: 0 "}, r"split: field 'val_works' = 0 must be positive"),
    ({"name: cello,": "name: cel/lo,"}, r"domains\[2\]: field 'name'"),
])
def test_manifest_errors_name_file_and_field(tmp_path, change, expected):
    path = _write(tmp_path, _scores_text(**change))
    with pytest.raises(DataError, match=expected) as e:
        load_manifest(path)
    assert str(path) in str(e.value)


def test_manifest_missing_file_and_not_a_mapping(tmp_path):
    with pytest.raises(DataError, match="no such manifest"):
        load_manifest(tmp_path / "nope.yaml")
    with pytest.raises(DataError, match="expected a mapping"):
        load_manifest(_write(tmp_path, "- just\n- a list\n"))
    bad = MUSICNET.read_text().replace("train: 0.8", "train: 0.7")
    with pytest.raises(DataError, match="must sum to 1"):
        load_manifest(_write(tmp_path, bad))


def test_unknown_domain_and_split_names():
    m = load_manifest(SCORES)
    with pytest.raises(DataError, match="unknown domain 'oboe'.*piano"):
        m.domain_index("oboe")
    with pytest.raises(DataError, match="unknown domain 'oboe'"):
        data.training_data(m, "train", domains=["oboe"])
    with pytest.raises(DataError, match="unknown split 'training'"):
        data.split_files(m, "training")
    with pytest.raises(DataError, match="no split 'test_alt'"):
        data.training_data(load_manifest(MUSICNET), "test_alt")


# ----------------------------------------------------------------------------- MusicNet

def _tone(seconds=0.3, sr=44100, freq=220.0, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, 1) if channels > 1 else x


def fake_musicnet(root: Path, per_domain: int = 3, bad: dict[int, str] | None = None) -> Path:
    """A MusicNet-shaped folder: metadata for the six domains plus distractors,
    44.1 kHz mono wavs split over train_data/ and test_data/."""
    top = root / "musicnet"
    (top / "train_data").mkdir(parents=True)
    (top / "test_data").mkdir()
    rows = ["id,composer,composition,movement,ensemble,source,transcriber,catalog_name,seconds"]
    ids = iter(range(1700, 9999, 7))
    layout = [(c, e) for _, c, e in DOMAINS] + [("Mozart", "Solo Piano"), ("Bach", "Solo Violin")]
    for k, (composer, ensemble) in enumerate(layout):
        for j in range(per_domain):
            i = next(ids)
            rows.append(f"{i},{composer},Piece {j},1,{ensemble},src,tr,cat,1")
            folder = "test_data" if j == 0 else "train_data"
            sf.write(top / folder / f"{i}.wav", _tone(freq=110.0 * (k + 1) + j), 44100)
    (top / "musicnet_metadata.csv").write_text("\n".join(rows) + "\n")
    return top


def _musicnet(tmp_path: Path, on_error: str = "skip", domains: int = 6) -> data.Manifest:
    text = MUSICNET.read_text().replace("on_error: skip ", f"on_error: {on_error} ")
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("  - {name:"))
    text = "\n".join(lines[:first + domains]) + "\n"
    return load_manifest(_write(tmp_path, text), data_root=tmp_path / "data")


def _wav_ids(folder: Path) -> dict[str, int]:
    return {p.stem: int(p.stem) for p in folder.rglob("*.wav")}


def test_musicnet_selection_on_a_fake_tree(tmp_path):
    src = fake_musicnet(tmp_path / "dl", per_domain=10)
    m = _musicnet(tmp_path)
    report = data.prep(m, source=src, progress=False, workers=1, log=lambda s: None)
    assert report["skipped"] == []
    lock = data.read_lock(m)
    meta = (src / "musicnet_metadata.csv").read_text().splitlines()[1:]
    for k, (name, composer, ensemble) in enumerate(DOMAINS):
        want = sorted(int(r.split(",")[0]) for r in meta if f",{composer},Piece" in r and f",{ensemble}," in r)
        got = lock["musicnet_ids"][name]
        assert sorted(got["train"] + got["val"] + got["test"]) == want  # both folders, no strays
        assert (len(got["train"]), len(got["val"]), len(got["test"])) == (8, 1, 1)
        assert got == data.split_by_file(want, (0.8, 0.1, 0.1), seed=m.seed + k)
        files = data.split_files(m, "train")[name]
        assert [int(p.stem) for p in files] == got["train"] and files == sorted(files)
    # Converted to 16 kHz mono 16-bit.
    info = sf.info(str(data.split_files(m, "val")["Bach_Solo_Cello"][0]))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    # The same selection and bytes from the tar.gz, and a re-run is a no-op.
    tar = tmp_path / "musicnet.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(src, arcname="musicnet")
    m2 = load_manifest(m.path, data_root=tmp_path / "data2")
    data.prep(m2, source=tar, progress=False, log=lambda s: None)
    lock2 = data.read_lock(m2)
    assert {k: v["sha256"] for k, v in lock2["files"].items()} == \
        {k: v["sha256"] for k, v in lock["files"].items()}
    assert data.prep(m2, progress=False, log=lambda s: None)["status"] == "up to date"


def test_split_by_file_is_sorted_and_seeded():
    ids = list(range(100, 120))
    a = data.split_by_file(list(reversed(ids)), (0.8, 0.1, 0.1), seed=3)
    assert a == data.split_by_file(ids, (0.8, 0.1, 0.1), seed=3)
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (16, 2, 2)
    assert sorted(a["train"] + a["val"] + a["test"]) == ids
    assert a != data.split_by_file(ids, (0.8, 0.1, 0.1), seed=4)


def test_musicnet_missing_source_says_where_to_get_it(tmp_path):
    m = _musicnet(tmp_path)
    with pytest.raises(DataError, match=r"zenodo\.org/records/5120004.*--source"):
        data.prep(m, progress=False, log=lambda s: None)
    with pytest.raises(DataError, match="no such file or folder"):
        data.prep(m, source=tmp_path / "nowhere", progress=False, log=lambda s: None)
    src = fake_musicnet(tmp_path / "dl")
    (src / "musicnet_metadata.csv").unlink()
    with pytest.raises(DataError, match="musicnet_metadata.csv not found"):
        data.prep(m, source=src, progress=False, log=lambda s: None)


def test_musicnet_unknown_ensemble_is_named(tmp_path):
    src = fake_musicnet(tmp_path / "dl")
    text = MUSICNET.read_text().replace("ensemble: Wind Quintet", "ensemble: Wind Octet")
    m = load_manifest(_write(tmp_path, text), data_root=tmp_path / "data")
    with pytest.raises(DataError, match=r"Cambini_Wind_Quintet.*ensemble='Wind Octet'.*Wind Quintet"):
        data.prep(m, source=src, progress=False, log=lambda s: None)


def _spoil(path: Path, kind: str) -> None:
    """Replace a source recording with one bad in the way `kind` says."""
    if kind == "corrupt":
        path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    elif kind == "empty":
        sf.write(path, np.zeros(0, np.float32), 44100)
    elif kind == "silent":
        sf.write(path, np.zeros(8000, np.float32), 44100)
    elif kind == "nan":
        x = _tone()
        x[100] = np.nan
        sf.write(path, x, 44100, subtype="FLOAT")
    elif kind == "wrong_rate":
        sf.write(path, _tone(sr=22050), 22050)
    elif kind == "stereo":
        sf.write(path, _tone(channels=2), 44100)
    elif kind == "missing":
        path.unlink()


BAD = {"corrupt": "cannot be read as audio", "empty": "no samples", "silent": "is silent",
       "nan": "NaN", "wrong_rate": "sample rate 22050 Hz, expected 44100 Hz",
       "stereo": "2 channels, expected 1", "missing": "missing"}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_source_fails_naming_the_file(tmp_path, kind):
    src = fake_musicnet(tmp_path / "dl")
    victim = min((src / "train_data").glob("*.wav"))
    _spoil(victim, kind)
    m = _musicnet(tmp_path, on_error="fail", domains=1)
    with pytest.raises(DataError) as e:
        data.prep(m, source=src, progress=False, workers=1, log=lambda s: None)
    assert victim.stem in str(e.value) and BAD[kind] in str(e.value)


def test_on_error_skip_goes_on_and_lists_skipped(tmp_path):
    src = fake_musicnet(tmp_path / "dl", per_domain=12)
    victims = sorted((src / "train_data").glob("*.wav"))[:len(BAD)]  # all in the first domain
    for victim, kind in zip(victims, sorted(BAD), strict=True):
        _spoil(victim, kind)
    m = _musicnet(tmp_path, on_error="skip", domains=1)
    log: list[str] = []
    report = data.prep(m, source=src, progress=False, workers=2, log=log.append)
    skipped = {s["item"]: s["reason"] for s in report["skipped"]}
    assert len(skipped) == len(BAD)
    for victim, kind in zip(victims, sorted(BAD), strict=True):
        assert any(victim.stem in k and BAD[kind] in r for k, r in skipped.items()), (kind, skipped)
    assert sum(len(v) for v in data.split_files(m, "train").values()) + \
        sum(len(v) for v in data.split_files(m, "val").values()) + \
        sum(len(v) for v in data.split_files(m, "test").values()) == 12 - len(BAD)
    assert data.read_lock(m)["skipped"] == report["skipped"]
    assert sum("skipped" in line for line in log) == len(BAD)


def test_changed_or_replaced_files_are_never_used_silently(tmp_path):
    src = fake_musicnet(tmp_path / "dl")
    m = _musicnet(tmp_path, domains=2)
    data.prep(m, source=src, progress=False, workers=1, log=lambda s: None)
    assert data.verify(m) == []
    first = data.training_data(m, "train")
    assert [d.name for d in first] == m.domains[:2]
    target = data.split_files(m, "train")["Bach_Solo_Cello"][0]
    original = target.read_bytes()
    problems = {
        "stereo": lambda: sf.write(target, _tone(sr=16000, channels=2), 16000, subtype="PCM_16"),
        "wrong_rate": lambda: sf.write(target, _tone(sr=8000), 8000, subtype="PCM_16"),
        "nan": lambda: sf.write(target, np.full(4000, np.nan, np.float32), 16000, subtype="FLOAT"),
        "missing": target.unlink,
    }
    for kind, spoil in problems.items():
        spoil()
        with pytest.raises(DataError, match=rf"{target.name}: (changed since prep|missing)"):
            data.training_data(m, "train")
        lines = data.verify(m)
        assert any(target.name in line for line in lines), (kind, lines)
        if kind == "stereo":
            assert any("2 channels, expected mono" in line for line in lines)
        if kind == "wrong_rate":
            assert any("sample rate 8000 Hz" in line for line in lines)
        target.write_bytes(original)
    assert data.verify(m) == []
    # An extra file and a broken lock are reported too.
    extra = target.with_name("999999.wav")
    extra.write_bytes(original)
    assert any("not in the lock" in line for line in data.verify(m))
    extra.unlink()
    m.lock_path.write_text("{ not json")
    assert "corrupt lock file" in data.verify(m)[0]
    with pytest.raises(DataError, match="corrupt lock file"):
        data.training_data(m, "train")


# ----------------------------------------------------------------------------- sampling

def test_sampling_is_duration_weighted_and_deterministic(tmp_path):
    seg = 100
    short = np.ones(1000 + seg - 1, np.float32) * 0.1   # 1000 distinct starts
    long = np.ones(3000 + seg - 1, np.float32) * -0.1   # 3000 distinct starts
    tiny = np.zeros(seg - 1, np.float32)                # shorter than a segment: never drawn
    dom = DomainAudio("d", [short, long, tiny], ["short", "long", "tiny"])
    sampler = SegmentSampler([dom], seg, seed=5)
    draws = np.array([sampler.segment(0, i, step=0)[0][0] for i in range(4000)])
    share_long = float(np.mean(draws < 0))
    assert 0.72 < share_long < 0.78  # 3/4 of the starts
    assert not np.any(draws == 0)
    clean, _ = sampler.batch(0, range(8), step=3)
    again, _ = SegmentSampler([dom], seg, seed=5).batch(0, range(8), step=3)
    other, _ = SegmentSampler([dom], seg, seed=6).batch(0, range(8), step=3)
    assert clean.equal(again) and not clean.equal(other)
    # A rank's slice of the global batch equals that slice of the whole batch.
    assert sampler.batch(0, range(4, 8), step=3)[0].equal(clean[4:])


def test_memory_mapped_domains_pickle_as_a_path(tmp_path):
    audio = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    np.save(tmp_path / "d.npy", audio)
    dom = DomainAudio.from_cache("d", tmp_path / "d.npy", [0, 2000, 5000], ["a", "b"])
    assert isinstance(dom.clips[0], np.memmap) and dom.total_samples == 5000
    blob = pickle.dumps(dom)
    assert len(blob) < 1000  # the path, not the audio
    back = pickle.loads(blob)
    assert np.array_equal(back.clips[1], audio[2000:])
    sampler = SegmentSampler([dom], 256, seed=1)
    requests = [(0, range(4), s, 0) for s in range(3)]
    inline = [c for c, _ in prefetch(sampler, requests, num_workers=0)]
    workers = [c for c, _ in prefetch(sampler, requests, num_workers=2)]
    assert all(a.equal(b) for a, b in zip(inline, workers, strict=True))


# ----------------------------------------------------------------------------- augmentation

def _peak_hz(x: np.ndarray, sr: int) -> float:
    n = 1 << 17  # zero-padded: 0.12 Hz bins
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    return float(np.argmax(spec) * sr / n)


def test_pitch_shift_moves_the_pitch_and_keeps_the_rest():
    sr, f0 = 16000, 440.0
    t = np.arange(12000) / sr
    sine = (0.5 * np.sin(2 * np.pi * f0 * t)).astype(np.float32)
    aug = PitchShiftAugmenter(sr, 0.5)
    for semitones in (0.5, -0.5, 0.25):
        shifted = aug.shift(sine[:6000], semitones)
        assert shifted.shape == (6000,) and shifted.dtype == np.float32
        want = f0 * 2 ** (semitones / 12)
        assert abs(_peak_hz(shifted[1000:5000], sr) - want) < 2.0, semitones  # 13 Hz per half step
    assert abs(_peak_hz(sine, sr) - f0) < 0.5
    for seed in range(20):
        start, n, semitones = aug.draw(12000, np.random.default_rng(seed))
        assert 3000 <= n <= 6000 and 0 <= start <= 12000 - n and abs(semitones) <= 0.5
        out = aug(sine, np.random.default_rng(seed))
        assert out.shape == sine.shape and out.dtype == np.float32
        outside = np.ones(12000, bool)
        outside[start:start + n] = False
        assert np.array_equal(out[outside], sine[outside])
        assert not np.allclose(out[start:start + n], sine[start:start + n], atol=1e-3)
    assert np.array_equal(aug(sine, np.random.default_rng(7)), aug(sine, np.random.default_rng(7)))


def test_make_augmenter_follows_the_config():
    cfg = preset("paper")
    aug = data.make_augmenter(cfg)
    assert isinstance(aug, PitchShiftAugmenter)
    assert aug.max_semitones == 0.5 and aug.sample_rate == 16000 and aug.fraction == (0.25, 0.5)
    assert data.make_augmenter(preset("smoke")) is None  # smoke trains without it
    with pytest.raises(ValueError, match="unknown pitch-shift method"):
        PitchShiftAugmenter(16000, method="sox")

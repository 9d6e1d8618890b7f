"""Chunked parallel translation: exact against sequential generation, seamless seams,
options checked by value."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from umt_core.audio import mu_law_decode
from umt_core.config import preset
from umt_core.generate import generate, translate
from umt_core.generate.chunked import (
    Chunking,
    chunk_seed,
    cross_fade,
    encode_audio,
    seam_weights,
    spans,
)
from umt_core.model import UMTN

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTH, OVERLAP = 512, 64  # smoke preset: pool 16, training segment 256


@pytest.fixture(scope="module")
def model():
    cfg = preset("smoke")
    cfg.domains = ["piano", "cello", "flute"]
    torch.manual_seed(0)
    return UMTN(cfg).eval()


def melody(n: int, rate: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = np.repeat(220 * 2 ** (rng.integers(0, 12, n // 400 + 1) / 12), 400)[:n]
    return (0.4 * np.sin(2 * np.pi * np.cumsum(f) / rate)).astype(np.float32)


def chunked(model, audio, targets, seed=5, **kw):
    return translate(model, audio, model.config.sample_rate, targets, seed=seed,
                     chunk_samples=LENGTH, overlap_samples=OVERLAP, **kw)


def test_spans_cover_the_input_with_fixed_overlaps():
    assert spans(300, 512, 64) == [(0, 300)]
    s = spans(3008, 512, 64)
    assert s[0] == (0, 512) and s[-1][1] == 3008
    for (a0, a1), (b0, _) in itertools.pairwise(s):
        assert b0 == a1 - 64 and a1 - a0 == 512
    assert s[-1][1] - s[-1][0] > 64


def test_first_chunk_equals_the_sequential_translation_up_to_the_first_seam(model):
    rate = model.config.sample_rate
    clips = [melody(3000, rate), melody(1700, rate, 1)]
    targets = ["cello", "flute"]
    # four chunks per batch: the batch holds chunks of both clips
    out = chunked(model, clips, targets, chunk_batch=4)
    for b, clip in enumerate(clips):
        alone = translate(model, clip, rate, targets, seed=5, chunk_samples=0)
        for t in targets:
            assert out[t][b].shape == clip.shape
            seam = LENGTH - OVERLAP
            np.testing.assert_array_equal(out[t][b][:seam], alone[t][:seam])
            assert not np.array_equal(out[t][b][seam:], alone[t][seam:len(out[t][b])])


def test_every_chunk_is_the_generation_of_its_own_span_from_an_empty_history(model):
    rate, pool = model.config.sample_rate, model.config.model.pool
    clip = melody(2900, rate, 2)
    targets = ["piano", "cello"]
    out = chunked(model, clip, targets, seed=9, chunk_batch=3)
    padded = -(-len(clip) // pool) * pool
    z = encode_audio(model, clip, padded)
    decs = [model.decoder(t) for t in targets]
    parts = spans(padded, LENGTH, OVERLAP)
    own = []
    for i, (s, e) in enumerate(parts):
        codes = generate(decs, z[..., s // pool:e // pool], e - s, seed=chunk_seed(9, i))
        own.append(mu_law_decode(codes[:, 0], model.config.mu_law).numpy())
    for d, t in enumerate(targets):
        y = np.concatenate([out[t], np.zeros(padded - len(clip), np.float32)])
        for i, (s, e) in enumerate(parts):
            head = OVERLAP if i else 0
            tail = OVERLAP if i + 1 < len(parts) else 0
            # untouched by any fade: exactly the chunk's own generation
            np.testing.assert_array_equal(y[s + head:e - tail][:len(clip) - s - head],
                                          own[i][d, head:e - s - tail][:len(clip) - s - head])
            if i:  # the seam: the previous chunk's tail fading out under this one's head
                tail, head = own[i - 1][d, -OVERLAP:], own[i][d, :OVERLAP]
                w_out, w_in = seam_weights(tail, head)
                mix = np.clip(tail * w_out + head * w_in, -1, 1)
                n = min(OVERLAP, len(clip) - s)
                np.testing.assert_allclose(y[s:s + n], mix[:n], rtol=0, atol=1e-6)
    assert len({chunk_seed(9, i) for i in range(len(parts))}) == len(parts)


def test_a_clip_translates_the_same_whatever_else_is_in_the_batch(model):
    rate = model.config.sample_rate
    a, b = melody(2000, rate, 3), melody(2600, rate, 4)
    together = chunked(model, [a, b], ["piano"], chunk_batch=5)["piano"]
    alone = chunked(model, b, ["piano"], chunk_batch=2)["piano"]
    np.testing.assert_array_equal(together[1], alone)


def _seam_mask(n: int, parts: list[tuple[int, int]], overlap: int) -> np.ndarray:
    """Jumps y[t+1] - y[t] with t or t+1 inside a seam."""
    mask = np.zeros(n - 1, dtype=bool)
    for s, _ in parts[1:]:
        mask[max(s - 1, 0):s + overlap] = True
    return mask


def test_seams_have_no_step_on_independent_renditions_of_a_tone():
    """Chunks as translations are: the same tone, each with its own phase and level.
    Cross-faded, the jumps at the seams stay within those elsewhere; cut hard, they
    would not (the check has teeth)."""
    rate, n = 16000, 16000
    parts = spans(n, 4000, 800)
    rng = np.random.default_rng(0)
    pieces = []
    for s, e in parts:
        t = np.arange(s, e) / rate
        pieces.append((0.3 + 0.2 * rng.random()) * np.sin(2 * np.pi * 220 * t
                                                          + rng.uniform(0, 2 * np.pi)))

    def assemble(overlap: int) -> np.ndarray:
        y = np.zeros(n, np.float32)
        for (s, _), p in zip(parts, pieces):
            if overlap:
                cross_fade(y, p.astype(np.float32), s, overlap)
            else:  # hard cut at the middle of the overlap
                cut = 400 if s else 0
                y[s + cut:s + len(p)] = p[cut:]
        return y

    for overlap, ok in ((800, True), (0, False)):
        y = assemble(overlap)
        jumps = np.abs(np.diff(y))
        at_seams = _seam_mask(n, parts, 800)
        assert (jumps[at_seams].max() <= jumps[~at_seams].max() * 1.05) == ok


def test_seams_keep_the_jump_distribution_of_the_generated_audio(model):
    """On real generated audio (an untrained smoke model: broadband), the sample-to-sample
    jumps inside seams have the level of the jumps elsewhere (a wrong fade, e.g. summing
    both chunks or dropping one, moves it by 40% or more)."""
    rate, pool = model.config.sample_rate, model.config.model.pool
    clip = melody(16000, rate, 5)
    y = chunked(model, clip, ["piano"], chunk_batch=32)["piano"]
    parts = spans(-(-len(clip) // pool) * pool, LENGTH, OVERLAP)
    jumps = np.abs(np.diff(y))
    at_seams = _seam_mask(len(y), parts, OVERLAP)[:len(jumps)]
    inside, outside = jumps[at_seams], jumps[~at_seams]
    assert len(inside) > 1500
    ratio = inside.mean() / outside.mean()
    assert 0.85 < ratio < 1.15, ratio
    assert inside.max() <= outside.max()


def test_chunking_options_are_checked_by_value(model):
    cfg = model.config
    default = Chunking.for_model(cfg)
    assert default.length >= cfg.train.segment_samples and default.length % cfg.model.pool == 0
    assert default.overlap % cfg.model.pool == 0 and 0 < default.overlap < default.length
    with pytest.raises(ValueError, match="chunk length 100"):
        Chunking.for_model(cfg, 100)
    with pytest.raises(ValueError, match="chunk length 520"):
        Chunking.for_model(cfg, 520)
    with pytest.raises(ValueError, match="chunk overlap 40"):
        Chunking.for_model(cfg, 512, 40)
    with pytest.raises(ValueError, match="chunk overlap 320"):
        Chunking.for_model(cfg, 512, 320)
    with pytest.raises(ValueError, match="chunk batch 0"):
        Chunking.for_model(cfg, 512, 64, 0)


def test_short_clips_are_translated_in_one_piece_as_before(model):
    rate = model.config.sample_rate
    clip = melody(LENGTH - 20, rate, 6)
    a = chunked(model, clip, ["flute"])["flute"]
    b = translate(model, clip, rate, ["flute"], seed=5, chunk_samples=0)["flute"]
    np.testing.assert_array_equal(a, b)


def test_seam_weights_keep_the_level_of_independent_and_of_identical_signals():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 4000))
    b -= a * (a @ b) / (a @ a)  # uncorrelated
    w_out, w_in = seam_weights(a.astype(np.float32), b.astype(np.float32))
    np.testing.assert_allclose(w_out**2 + w_in**2, 1.0, atol=1e-5)  # independent: power
    w_out, w_in = seam_weights(a, a)
    np.testing.assert_allclose(w_out + w_in, 1.0, atol=1e-5)  # identical: amplitude
    assert w_in[0] < 0.01 and w_out[-1] < 0.01 and np.all(np.diff(w_in) > 0)


def test_generation_state_is_bounded_by_the_batch_not_the_length(model, monkeypatch):
    """However long the input, no generation step holds more than `chunk_batch` chunks
    of `chunk_samples` samples."""
    from umt_core.generate import chunked as gen

    sizes = []
    real = gen.IncrementalDecoder

    class Recording(real):
        def __init__(self, decoders, z, length, **kw):
            super().__init__(decoders, z, length, **kw)
            sizes.append((self.state.rows, length))

    monkeypatch.setattr(gen, "IncrementalDecoder", Recording)
    rate = model.config.sample_rate
    out = chunked(model, [melody(20000, rate, 7), melody(9000, rate, 8)], ["piano", "cello"],
                  chunk_batch=8)
    assert [len(y) for y in out["piano"]] == [20000, 9000]
    assert len(sizes) == -(-(len(spans(20000, 512, 64)) + len(spans(9008, 512, 64))) // 8)
    assert all(rows <= 8 * 2 and steps <= LENGTH for rows, steps in sizes)


def test_translate_command_takes_the_chunk_options(tmp_path, model):
    import soundfile as sf

    from umt_core.__main__ import main
    from umt_core.audio import save_audio
    from umt_core.checkpoint import save_checkpoint

    ckpt = tmp_path / "m.pt"
    save_checkpoint({"config": model.config.to_dict(), "model": model.state_dict()}, ckpt)
    rate = model.config.sample_rate
    clip = melody(2500, rate, 9)
    save_audio(tmp_path / "in.wav", clip, rate)
    args = ["translate", "--checkpoint", str(ckpt), "--input", str(tmp_path / "in.wav"),
            "--to", "cello", "--seed", "5", "--quiet", "--chunk", str(LENGTH),
            "--overlap", str(OVERLAP), "--chunk-batch", "2"]
    assert main([*args, "--out-dir", str(tmp_path / "out")]) == 0
    written, _ = sf.read(tmp_path / "out" / "in_to_cello.wav", dtype="float32")
    read, _ = sf.read(tmp_path / "in.wav", dtype="float32")
    expected = chunked(model, read, ["cello"])["cello"]
    np.testing.assert_allclose(written, expected, rtol=0, atol=2 / 32768)  # 16-bit PCM
    assert main([*args[:-6], "--chunk", "100", "--out-dir", str(tmp_path / "x")]) == 2


def test_bench_translate_prints_every_row(capsys):
    from umt_core.__main__ import main

    assert main(["bench", "translate", "--preset", "smoke", "--seconds", "0.2", "--chunk",
                 "1024", "--overlap", "64", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[:2] for line in out.splitlines()[2:]]
    assert ["sequential", "fp32"] in rows and ["chunked", "fp32"] in rows
    assert "real-time factor" in out

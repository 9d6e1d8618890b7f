"""Incremental generation equals the teacher-forced forward pass; translate and its CLI."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from conftest import FIXTURES

from umt_core.__main__ import main
from umt_core.audio import mu_law_encode, resample, save_audio
from umt_core.checkpoint import save_checkpoint
from umt_core.config import ModelConfig, preset
from umt_core.generate import (
    IncrementalDecoder,
    encode,
    generate,
    reconstruct,
    resolve_method,
    teacher_forced_logits,
    translate,
)
from umt_core.generate import cpu as generate_cpu
from umt_core.model import UMTN, WaveNetDecoder
from umt_core.reference import load_reference

HAVE_CPP = generate_cpu.cpp_kernel() is not None
CPU_METHODS = ["eager", "torch", pytest.param("cpp", marks=pytest.mark.skipif(
    not HAVE_CPP, reason="no C++ compiler: the kernel falls back to the torch step"))]


pytestmark = pytest.mark.usefixtures("one_thread")


def decoders(cfg: ModelConfig, n: int, seed: int = 0) -> list[WaveNetDecoder]:
    torch.manual_seed(seed)
    return [WaveNetDecoder(cfg).eval() for _ in range(n)]


@pytest.fixture(scope="module")
def paper_decoder():
    torch.manual_seed(0)
    return WaveNetDecoder(preset("paper").model).eval()


def smoke_model_config(kernel: int = 2) -> ModelConfig:
    cfg = preset("smoke").model
    cfg.decoder_kernel = kernel
    return cfg


# ------------------------------------------------------------- incremental == forward


@pytest.mark.parametrize("method", CPU_METHODS)
@pytest.mark.parametrize("kernel", [2, 3])
def test_incremental_logits_equal_forward_smoke(method, kernel):
    cfg = smoke_model_config(kernel)
    decs = decoders(cfg, 2)
    codes = torch.randint(0, 256, (2, 90), generator=torch.Generator().manual_seed(1))
    z = torch.randn(2, cfg.latent_channels, 4)  # 90 // 4 = 22 samples per frame, last longer
    with torch.no_grad():
        full = torch.stack([d(codes, z) for d in decs])
    # chunk=37: two chunk boundaries, one inside a latent frame
    inc = teacher_forced_logits(decs, z, codes, method=method, chunk=37)
    assert inc.shape == full.shape
    torch.testing.assert_close(inc, full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", CPU_METHODS)
def test_incremental_logits_equal_forward_paper_shape(paper_decoder, method):
    codes = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(2))
    z = torch.randn(2, 64, 2)
    with torch.no_grad():
        full = paper_decoder(codes, z)
    inc = teacher_forced_logits(paper_decoder, z, codes, method=method, chunk=10)
    torch.testing.assert_close(inc, full, atol=1e-4, rtol=0)


@pytest.mark.skipif(not HAVE_CPP, reason="no C++ compiler")
@pytest.mark.parametrize(("residual", "skip", "n_dec", "batch", "threads"), [
    (8, 8, 3, 2, 2),     # rows split across threads, one split inside a decoder's rows
    (8, 8, 3, 2, 4),
    (16, 24, 3, 2, 2),   # few rows: threads share every matmul's output panels
    (32, 24, 3, 1, 3),   # uneven panel shares, one member without skip panels
    (16, 16, 3, 5, 2),   # many rows again: split by rows
    (8, 16, 3, 13, 1),   # several row tiles per decoder
    (16, 8, 1, 8, 2),    # threads sharing panels, two row tiles
])
def test_cpp_threads_equal_eager(residual, skip, n_dec, batch, threads):
    cfg = smoke_model_config()
    cfg.residual_channels, cfg.skip_channels = residual, skip
    decs = decoders(cfg, n_dec)
    codes = torch.randint(0, 256, (batch, 40), generator=torch.Generator().manual_seed(3))
    z = torch.randn(batch, cfg.latent_channels, 2)
    ref = teacher_forced_logits(decs, z, codes, method="eager")
    inc = IncrementalDecoder(decs, z, 40, method="cpp")
    inc.step.threads = threads
    _, logits = inc.run(40, forced=codes, return_logits=True)
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=0)
    shared = threads > 1 and residual % 16 == 0 and n_dec * batch < 6 * threads
    assert bool(inc.step.report[0]) == shared  # the case covers what it says
    sampled = IncrementalDecoder(decs, z, 40, method="cpp")
    sampled.step.threads = threads
    eager = generate(decs, z, 40, seed=2, method="eager")
    assert torch.equal(sampled.run(40, generator=torch.Generator().manual_seed(2))[0], eager)


@pytest.mark.skipif(not HAVE_CPP, reason="no C++ compiler")
def test_cpp_portable_build_equals_eager():
    """The kernel built without AVX2 (plain loops, for other CPUs) computes the same."""
    lib = generate_cpu.load_kernel(("-O2", "-std=c++17", "-fPIC", "-shared", "-pthread"))
    cfg = smoke_model_config()
    cfg.residual_channels = 16
    decs = decoders(cfg, 2)
    codes = torch.randint(0, 256, (3, 30), generator=torch.Generator().manual_seed(8))
    z = torch.randn(3, cfg.latent_channels, 2)
    ref = teacher_forced_logits(decs, z, codes, method="eager")
    for threads in (1, 2):
        inc = IncrementalDecoder(decs, z, 30, method="cpp")
        inc.step.lib, inc.step.threads = lib, threads
        _, logits = inc.run(30, forced=codes, return_logits=True)
        torch.testing.assert_close(logits, ref, atol=1e-4, rtol=0)


@pytest.mark.skipif(not HAVE_CPP, reason="no C++ compiler")
def test_cpp_bfloat16_weights_are_close(paper_decoder):
    codes = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(4))
    z = torch.randn(1, 64, 1)
    fp32 = teacher_forced_logits(paper_decoder, z, codes, method="cpp")
    bf16 = teacher_forced_logits(paper_decoder, z, codes, method="cpp", precision="bfloat16")
    assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max()
    p32, p16 = F.softmax(fp32, 1), F.softmax(bf16, 1)
    assert (p32 - p16).abs().sum(1).max() < 0.05  # total variation of the sampled law


# -------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.7])
def test_fast_paths_sample_the_same_codes_as_eager(temperature):
    cfg = smoke_model_config()
    decs = decoders(cfg, 2, seed=5)
    z = torch.randn(3, cfg.latent_channels, 3)
    ref = generate(decs, z, 120, temperature=temperature, seed=7, method="eager")
    methods = ["torch"] + (["cpp"] if HAVE_CPP else [])
    for method in methods:
        out = generate(decs, z, 120, temperature=temperature, seed=7, method=method, chunk=50)
        assert torch.equal(out, ref), method


def test_same_seed_same_output_whatever_the_chunking():
    cfg = smoke_model_config()
    (dec,) = decoders(cfg, 1, seed=6)
    z = torch.randn(2, cfg.latent_channels, 5)
    a = generate(dec, z, 200, seed=11)
    b = generate(dec, z, 200, seed=11, chunk=33)
    c = generate(dec, z, 200, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_output_shapes_and_range():
    cfg = smoke_model_config()
    decs = decoders(cfg, 2)
    z = torch.randn(3, cfg.latent_channels, 2)
    one = generate(decs[0], z, 77)
    both = generate(decs, z, 77)
    assert one.shape == (3, 77) and both.shape == (2, 3, 77)
    assert one.dtype == torch.long and 0 <= int(both.min()) and int(both.max()) <= 255
    with pytest.raises(ValueError, match="no frames"):
        generate(decs[0], z[..., :0], 10)


def test_resolve_method():
    assert resolve_method("eager", "cpu") == "eager"
    assert resolve_method("auto", "cpu") == ("cpp" if HAVE_CPP else "torch")
    with pytest.raises(ValueError, match="CUDA"):
        resolve_method("cuda-graph", "cpu")
    with pytest.raises(ValueError, match="unknown generation method"):
        resolve_method("fast", "cpu")


def test_without_a_compiler_generation_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("UMT_KERNEL_CACHE", str(tmp_path / "cache"))
    generate_cpu.reset_cpp_kernel()
    try:
        with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
            assert resolve_method("auto", "cpu") == "torch"
        cfg = smoke_model_config()
        (dec,) = decoders(cfg, 1)
        assert generate(dec, torch.randn(1, cfg.latent_channels, 1), 20).shape == (1, 20)
    finally:
        generate_cpu.reset_cpp_kernel()


def test_greedy_generation_reproduces_a_tone_the_decoder_learned():
    """A decoder trained (teacher forced) on one tone until it predicts every sample
    regenerates that tone from nothing, sample for sample."""
    torch.manual_seed(0)
    cfg = ModelConfig(decoder_blocks=1, decoder_layers=5, residual_channels=16,
                      skip_channels=16, latent_channels=4)
    dec = WaveNetDecoder(cfg)
    tone = 0.5 * np.sin(2 * np.pi * np.arange(320) / 20)
    codes = mu_law_encode(torch.tensor(tone, dtype=torch.float32))[None]
    z = torch.zeros(1, 4, 1)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    for _ in range(400):
        logits = dec(codes, z)
        if bool((logits.argmax(1) == codes).all()):
            break
        loss = F.cross_entropy(logits, codes)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dec.eval()
    for method in ["eager", "auto"]:
        out = generate(dec, z, 320, temperature=0.0, method=method)
        assert torch.equal(out, codes), method


# --------------------------------------------------------------------------- encoder


def test_encode_in_chunks_equals_one_pass(smoke_config):
    torch.manual_seed(0)
    model = UMTN(smoke_config).eval()
    codes = torch.randint(0, 256, (2, 16 * 41 + 5))
    with torch.no_grad():
        full = model.encoder(codes)
    torch.testing.assert_close(encode(model, codes, chunk_frames=8), full, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------- translate


@pytest.fixture(scope="module")
def reference_model():
    model, _ = load_reference(FIXTURES / "reference_checkpoint")
    return model.eval()


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_translate_converted_reference_model(reference_model):
    model = reference_model
    assert model.config.mu_law == "reference"
    audio = tone(0.03, 22050)
    names = model.domains
    out = translate(model, audio, 22050, [0, names[2]], seed=1)
    assert list(out) == [names[0], names[2]]
    n_model = len(resample(audio, 22050, model.config.sample_rate))
    for y in out.values():
        assert y.dtype == np.float32 and y.shape == (n_model,)
        assert np.isfinite(y).all() and np.abs(y).max() <= 1.0
    back = translate(model, audio, 22050, names[1], output_rate=22050, seed=1)
    assert back[names[1]].shape == audio.shape


def test_translate_a_batch_of_clips_of_different_lengths(reference_model):
    model = reference_model
    rate = model.config.sample_rate
    clips = [tone(0.02, rate), tone(0.035, rate, 300.0), tone(0.001, rate)]
    out = translate(model, clips, rate, [1, 2], temperature=0.0)
    for name in (model.domains[1], model.domains[2]):
        assert [len(y) for y in out[name]] == [len(c) for c in clips]
    again = translate(model, clips, rate, [1, 2], temperature=0.0)
    assert all(np.array_equal(a, b) for a, b in zip(out[model.domains[1]], again[model.domains[1]]))
    with pytest.raises(ValueError, match="unknown domain"):
        translate(model, clips, rate, ["oboe"])


def test_reconstruct_is_translation_to_the_own_domain(reference_model):
    audio = tone(0.02, 16000)
    name = reference_model.domains[2]
    a = reconstruct(reference_model, audio, 16000, name, seed=4)
    b = translate(reference_model, audio, 16000, [name], seed=4)[name]
    assert np.array_equal(a, b)


# ------------------------------------------------------------------------------- CLI


@pytest.fixture
def smoke_checkpoint(tmp_path, smoke_config):
    torch.manual_seed(0)
    model = UMTN(smoke_config)
    path = tmp_path / "smoke.pt"
    save_checkpoint({"config": smoke_config.to_dict(), "model": model.state_dict()}, path)
    return path


def test_cli_translate_writes_one_wav_per_input_and_target(tmp_path, smoke_checkpoint):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    save_audio(a, tone(0.05, 16000), 16000)
    save_audio(b, tone(0.04, 22050, 330.0), 22050)
    out = tmp_path / "out"
    args = ["translate", "--checkpoint", str(smoke_checkpoint), "--input", str(a),
            "--input", str(b), "--to", "cello", "--to", "2", "--out-dir", str(out), "--quiet"]
    assert main(args) == 0
    expect = {"a": 800, "b": len(resample(np.zeros(882, np.float32), 22050, 16000))}
    for stem, n in expect.items():
        for target in ("cello", "flute"):
            info = sf.info(str(out / f"{stem}_to_{target}.wav"))
            assert (info.samplerate, info.frames) == (16000, n)
    assert main([*args, "--output-rate", "input", "--seconds", "0.02"]) == 0
    info = sf.info(str(out / "b_to_flute.wav"))
    assert (info.samplerate, info.frames) == (22050, 441)


def test_cli_translate_errors_are_clear(tmp_path, smoke_checkpoint, capsys):
    wav = tmp_path / "in.wav"
    save_audio(wav, tone(0.05, 16000), 16000)
    base = ["translate", "--checkpoint", str(smoke_checkpoint), "--out-dir", str(tmp_path)]

    assert main([*base, "--input", str(wav), "--to", "oboe"]) == 2
    err = capsys.readouterr().err
    assert "oboe" in err and "piano" in err and "cello" in err

    bad = tmp_path / "broken.wav"
    bad.write_text("not audio")
    assert main([*base, "--input", str(bad), "--to", "cello"]) == 2
    assert "broken.wav" in capsys.readouterr().err

    foreign = tmp_path / "lastmodel_0.pth"
    torch.save({"decoder_state": {}, "encoder_state": {}}, foreign)
    assert main(["translate", "--checkpoint", str(foreign), "--input", str(wav), "--to", "cello",
                 "--out-dir", str(tmp_path)]) == 2
    assert "convert-reference" in capsys.readouterr().err


# ------------------------------------------------------------------------- benchmark


def test_benchmark_prints_a_table(capsys):
    assert main(["bench", "generate", "--preset", "smoke", "--batch", "1", "2", "--samples", "24",
                 "--repeats", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "eager" in out and "speed-up" in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("1 ", "2 "))]) == 2


# ------------------------------------------------------------------------------ CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_step_equals_eager(exact_fp32):
    cfg = smoke_model_config()
    decs = [d.cuda() for d in decoders(cfg, 2)]
    codes = torch.randint(0, 256, (3, 64), device="cuda")
    z = torch.randn(3, cfg.latent_channels, 2, device="cuda")
    with torch.no_grad():
        full = torch.stack([d(codes, z) for d in decs])
    graph = teacher_forced_logits(decs, z, codes, method="cuda-graph", chunk=24)
    torch.testing.assert_close(graph, full, atol=1e-4, rtol=0)
    a = generate(decs, z, 100, seed=3, method="cuda-graph", chunk=40)
    b = generate(decs, z, 100, seed=3, method="torch")
    assert torch.equal(a, b)

"""Reference checkpoints: exact outputs, safe loading, conversion and its errors."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path, PosixPath

import pytest
import torch
from conftest import FIXTURES

from umt_core.__main__ import main
from umt_core.audio import mu_law_decode, mu_law_encode
from umt_core.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from umt_core.config import preset
from umt_core.model import UMTN
from umt_core.reference import (
    MUSICNET_DOMAINS,
    ReferenceCheckpointError,
    converted_state,
    extend_domains,
    load_reference,
    model_from_reference_states,
)

REF = FIXTURES / "reference_checkpoint"
TOL = 1e-5


@pytest.fixture(scope="module")
def expected():
    return torch.load(REF / "expected_outputs.pt", weights_only=True)


@pytest.fixture
def ref_dir(tmp_path):
    """A writable copy of the reference fixture, for breaking it."""
    d = tmp_path / "ref"
    shutil.copytree(REF, d)
    (d / "expected_outputs.pt").unlink()
    return d


def _read_args(d: Path):
    with torch.serialization.safe_globals([argparse.Namespace, PosixPath]):
        return torch.load(d / "args.pth", weights_only=True)


def _edit_file(path: Path, edit) -> None:
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def _assert_reproduces(model: UMTN, expected) -> None:
    codes = expected["x_mu"]
    with torch.no_grad():
        z = model.encoder(codes)
        assert (z - expected["z"]).abs().max() < TOL
        assert (model.domain_classifier(z) - expected["disc_logits"]).abs().max() < TOL
        for k in range(expected["decoder_logits"].shape[0]):
            logits = model.decoders[k](codes, z)
            assert (logits - expected["decoder_logits"][k]).abs().max() < TOL, f"decoder {k}"


# ------------------------------------------------------------------ exact outputs


def test_converted_fixture_reproduces_reference_outputs(expected):
    model, epoch = load_reference(REF)
    assert not model.training
    assert epoch == 17
    assert model.domains == ["domain_0", "domain_1", "domain_2"]
    assert model.config.mu_law == "reference"
    assert model.config.preset == "reference"  # fixture sizes are not the paper's
    assert model.config.sample_rate == 16000
    assert model.config.train.batch_per_domain == 8
    _assert_reproduces(model, expected)


def test_cli_roundtrip_through_load_model(expected, tmp_path, capsys):
    out = tmp_path / "converted.pt"
    assert main(["convert-reference", str(REF), str(out), "--domains", "cello,piano,flute"]) == 0
    assert "mu-law reference" in capsys.readouterr().out
    model = load_model(out)
    assert model.domains == ["cello", "piano", "flute"]
    assert model.config.mu_law == "reference"
    _assert_reproduces(model, expected)
    state = load_checkpoint(out)
    assert state["epoch"] == 17 and state["step"] == 0
    assert state["source"] == f"reference:{REF}"
    assert state["reference_args"]["data"][0] == "musicnet/preprocessed/Domain_0"


def test_mu_law_matches_reference_vectors_exactly(expected):
    codes = mu_law_encode(expected["mu_law_grid"], "reference")
    assert torch.equal(codes, expected["mu_law_codes"])
    assert torch.equal(mu_law_encode(expected["wav"], "reference"), expected["x_mu"])
    inverse = mu_law_decode(torch.arange(256), "reference")
    assert torch.equal(inverse, expected["inv_mu_law_of_codes"])


# ------------------------------------------------------- released model's layout


def _paper_args(n: int) -> argparse.Namespace:
    return argparse.Namespace(
        batch_size=8, blocks=4, checkpoint="", d_channels=100, d_cond=1024, d_lambda=0.01,
        d_layers=3, data=[PosixPath(f"musicnet/preprocessed/{d}") for d in MUSICNET_DOMAINS],
        data_aug=True, encoder_blocks=3, encoder_channels=128, encoder_final_kernel_size=1,
        encoder_func="relu", encoder_layers=10, encoder_pool=800, epoch_len=1000,
        epochs=10000, grad_clip=1.0, kernel_size=2, latent_d=64, layers=14, lr=0.001,
        lr_decay=0.995, magnitude=0.5, n_datasets=n, p_dropout_discriminator=0.0,
        residual_channels=128, seed=1, seq_len=12000, skip_channels=128,
    )


def test_released_model_shapes_convert_to_paper_preset(tmp_path):
    shapes = json.loads((FIXTURES / "pretrained_musicnet_state_shapes.json").read_text())
    gen = torch.Generator().manual_seed(0)

    def random_state(section):
        return {k: torch.randn(v, generator=gen) * 0.01 for k, v in shapes[section].items()}

    encoder, classifier = random_state("encoder_state"), random_state("discriminator_state")
    decoder = random_state("decoder_state")
    torch.save([_paper_args(6), 41], tmp_path / "args.pth")
    for k in range(6):
        dec = dict(decoder)
        dec["logits.bias"] = torch.full_like(decoder["logits.bias"], float(k))
        torch.save({"encoder_state": encoder, "decoder_state": dec,
                    "discriminator_state": classifier, "model_optimizer_state": {},
                    "d_optimizer_state": {}}, tmp_path / f"lastmodel_{k}.pth")

    state = converted_state(tmp_path)
    cfg = preset("paper")
    assert state["config"]["preset"] == "paper"
    assert state["config"]["model"] == cfg.to_dict()["model"]
    assert state["config"]["domains"] == MUSICNET_DOMAINS
    assert state["config"]["mu_law"] == "reference"
    assert state["epoch"] == 41
    # every released tensor lands in the paper model, nothing missing or extra
    released = {f"encoder.{k}": v for k, v in shapes["encoder_state"].items()}
    released.update({f"domain_classifier.{k}": v for k, v in shapes["discriminator_state"].items()})
    for k in range(6):
        released.update({f"decoders.{k}.{n}": v for n, v in shapes["decoder_state"].items()})
    assert {k: list(v.shape) for k, v in state["model"].items()} == released
    for k in range(6):
        assert torch.all(state["model"][f"decoders.{k}.logits.bias"] == k)
    assert torch.equal(state["model"]["encoder.start.weight"], encoder["start.weight"])


def test_in_memory_states_with_ddp_prefix():
    model, _ = load_reference(REF)
    args = _read_args(REF)[0]
    states = []
    for k in range(3):
        s = torch.load(REF / f"lastmodel_{k}.pth", weights_only=True)
        s["decoder_state"] = {f"module.{n}": t for n, t in s["decoder_state"].items()}
        states.append(s)
    again = model_from_reference_states(vars(args), states, ["a", "b", "c"])
    for (n, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), n


# ------------------------------------------------------------------------- errors


def test_missing_args(ref_dir):
    (ref_dir / "args.pth").unlink()
    with pytest.raises(ReferenceCheckpointError, match=r"args\.pth: missing"):
        load_reference(ref_dir)


def test_missing_decoder_files_suggests_other_kind(ref_dir):
    for k in range(3):
        (ref_dir / f"lastmodel_{k}.pth").rename(ref_dir / f"bestmodel_{k}.pth")
    with pytest.raises(ReferenceCheckpointError,
                       match=r"missing decoder files lastmodel_<k>.*--which best"):
        load_reference(ref_dir)
    assert load_reference(ref_dir, "best")[0].domains == ["domain_0", "domain_1", "domain_2"]


def test_missing_last_decoder_file(ref_dir):
    (ref_dir / "lastmodel_2.pth").unlink()
    with pytest.raises(ReferenceCheckpointError, match=r"n_datasets=3 .* missing lastmodel_2\.pth"):
        load_reference(ref_dir)


def test_gap_in_decoder_numbering(ref_dir):
    (ref_dir / "lastmodel_1.pth").unlink()
    with pytest.raises(ReferenceCheckpointError, match=r"without gaps; missing lastmodel_1\.pth"):
        load_reference(ref_dir)


def test_more_decoders_than_domains(ref_dir):
    shutil.copy(ref_dir / "lastmodel_2.pth", ref_dir / "lastmodel_3.pth")
    with pytest.raises(ReferenceCheckpointError,
                       match=r"n_datasets=3 .*lastmodel_3\.pth have no domain"):
        load_reference(ref_dir)


def test_single_decoder_run_needs_shared_decoder(ref_dir, expected):
    for k in (1, 2):
        (ref_dir / f"lastmodel_{k}.pth").unlink()
    with pytest.raises(ReferenceCheckpointError, match="--shared-decoder"):
        load_reference(ref_dir)
    model, _ = load_reference(ref_dir, shared_decoder=True)
    assert len(model.decoders) == 1 and model.config.model.shared_decoder
    with torch.no_grad():
        z = model.encoder(expected["x_mu"])
        assert (model.domain_classifier(z) - expected["disc_logits"]).abs().max() < TOL
        logits = model.decoder("domain_2")(expected["x_mu"], z)
        assert (logits - expected["decoder_logits"][0]).abs().max() < TOL


@pytest.mark.parametrize("section", ["encoder_state", "discriminator_state"])
def test_shared_parts_must_agree_between_files(ref_dir, section):
    def nudge(state):
        name = next(iter(state[section]))
        state[section][name] = state[section][name] + 1e-3

    _edit_file(ref_dir / "lastmodel_1.pth", nudge)
    with pytest.raises(ReferenceCheckpointError,
                       match=rf"lastmodel_1\.pth: its {section} differs from .*lastmodel_0"):
        load_reference(ref_dir)


def test_missing_and_unexpected_keys_are_listed(ref_dir):
    def rename(state):
        dec = state["decoder_state"]
        dec["logits.kernel"] = dec.pop("logits.weight")

    _edit_file(ref_dir / "lastmodel_2.pth", rename)
    with pytest.raises(ReferenceCheckpointError,
                       match=r"lastmodel_2\.pth: decoder_state does not fit .*1 missing keys: "
                             r"logits\.weight; 1 unexpected keys: logits\.kernel"):
        load_reference(ref_dir)


def test_shape_mismatch_is_listed(ref_dir):
    args, epoch = _read_args(ref_dir)
    args.latent_d = 10
    torch.save([args, epoch], ref_dir / "args.pth")
    with pytest.raises(ReferenceCheckpointError,
                       match=r"encoder_state does not fit .*shape mismatches: conv_1x1\.weight "
                             r"\(8, 16, 1\) \(expected \(10, 16, 1\)\)"):
        load_reference(ref_dir)


def test_domain_names_must_match_count():
    with pytest.raises(ReferenceCheckpointError, match="2 domain names given .* give exactly 3"):
        load_reference(REF, domains=["a", "b"])


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    assert main(["convert-reference", str(tmp_path / "nope"), str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such checkpoint folder" in err
    assert not (tmp_path / "o.pt").exists()


# ------------------------------------------------------------------ unsafe pickles


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_tampered_args_is_refused(ref_dir):
    marker = ref_dir / "pwned"
    args, epoch = _read_args(ref_dir)
    torch.save([args, epoch, _RunsCode(marker)], ref_dir / "args.pth")
    with pytest.raises(ReferenceCheckpointError, match=r"args\.pth: refused to load"):
        load_reference(ref_dir)
    assert not marker.exists()


def test_tampered_model_file_is_refused(ref_dir):
    marker = ref_dir / "pwned"
    _edit_file(ref_dir / "lastmodel_1.pth",
               lambda s: s.__setitem__("model_optimizer_state", _RunsCode(marker)))
    with pytest.raises(ReferenceCheckpointError, match=r"lastmodel_1\.pth: refused to load"):
        load_reference(ref_dir)
    assert not marker.exists()


def test_tampered_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "umt_core.checkpoint", "version": 1, "config": {}, "model": {},
                "rng": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        load_model(path)
    assert not marker.exists()


# ------------------------------------------------------------------- fine-tuning


def test_extend_domains_keeps_trained_parts(tmp_path, expected):
    model, _ = load_reference(REF)
    grown = extend_domains(model, ["harpsichord"], seed=3)
    assert grown.domains == ["domain_0", "domain_1", "domain_2", "harpsichord"]
    assert len(grown.decoders) == 4 and not grown.training
    with torch.no_grad():
        z = grown.encoder(expected["x_mu"])
        assert (z - expected["z"]).abs().max() < TOL
        for k in range(3):
            logits = grown.decoders[k](expected["x_mu"], z)
            assert (logits - expected["decoder_logits"][k]).abs().max() < TOL
        disc = grown.domain_classifier(z)
    assert disc.shape == (2, 4)
    assert (disc[:, :3] - expected["disc_logits"]).abs().max() < TOL  # old rows kept
    again = extend_domains(model, ["harpsichord"], seed=3)
    assert torch.equal(grown.decoders[3].logits.weight, again.decoders[3].logits.weight)
    # the result is an ordinary model: it saves and loads like any checkpoint
    save_checkpoint({"config": grown.config.to_dict(), "model": grown.state_dict()},
                    tmp_path / "grown.pt")
    assert load_model(tmp_path / "grown.pt").domains == grown.domains
    with pytest.raises(ValueError, match="already in"):
        extend_domains(model, ["domain_1"])


def test_truncated_model_file_is_named(ref_dir):
    path = ref_dir / "lastmodel_0.pth"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ReferenceCheckpointError, match=r"lastmodel_0\.pth: cannot read"):
        load_reference(ref_dir)

"""Model structure and conventions."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES

from umt_core.audio import mu_law_decode, mu_law_encode
from umt_core.config import preset
from umt_core.model import UMTN, count_parameters, upsample_frames


def test_shapes_smoke(smoke_config):
    model = UMTN(smoke_config)
    codes = torch.randint(0, 256, (2, 160))
    z = model.encoder(codes)
    assert z.shape == (2, smoke_config.model.latent_channels, 160 // smoke_config.model.pool)
    for k in range(len(smoke_config.domains)):
        assert model.decoders[k](codes, z).shape == (2, 256, 160)
    assert model.domain_classifier(z).shape == (2, 3)


def test_decoder_is_causal(smoke_config):
    torch.manual_seed(0)
    dec = UMTN(smoke_config).decoders[0]
    codes = torch.randint(0, 256, (1, 64))
    z = torch.randn(1, smoke_config.model.latent_channels, 4)
    a = dec(codes, z)
    codes2 = codes.clone()
    codes2[0, 40:] = (codes2[0, 40:] + 7) % 256
    b = dec(codes2, z)
    # output t depends on codes < t only (the input is shifted right by one)
    assert torch.allclose(a[..., :41], b[..., :41])
    assert not torch.allclose(a[..., 41:], b[..., 41:])


def test_upsample_pads_with_last_frame():
    c = torch.arange(3.0).view(1, 1, 3)
    up = upsample_frames(c, 10)
    assert up.tolist() == [[[0, 0, 0, 1, 1, 1, 2, 2, 2, 2]]]


def test_paper_state_dict_matches_released_model_shapes():
    """Key mapping: reference `encoder_state.K` -> `encoder.K`, `decoder_state.K` of
    lastmodel_k.pth -> `decoders.k.K`, `discriminator_state.K` -> `domain_classifier.K`."""
    shapes = json.loads((FIXTURES / "pretrained_musicnet_state_shapes.json").read_text())
    cfg = preset("paper")
    cfg.domains = [f"d{i}" for i in range(6)]
    model = UMTN(cfg)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    prefixes = {"encoder_state": "encoder.", "discriminator_state": "domain_classifier."}
    expected = {}
    for section, prefix in prefixes.items():
        expected.update({prefix + k: v for k, v in shapes[section].items()})
    for k in range(6):
        expected.update({f"decoders.{k}.{n}": v for n, v in shapes["decoder_state"].items()})
    assert ours == expected
    assert count_parameters(model.encoder) == 1_982_528
    assert count_parameters(model.decoders[0]) == 6_540_288
    assert count_parameters(model.domain_classifier) == 27_306


def test_shared_decoder_has_one_decoder(smoke_config):
    smoke_config.model.shared_decoder = True
    model = UMTN(smoke_config)
    assert len(model.decoders) == 1
    assert model.decoder("cello") is model.decoder("flute")


def test_unknown_domain_is_named(smoke_config):
    with pytest.raises(ValueError, match="oboe"):
        UMTN(smoke_config).decoder("oboe")


def test_mu_law_roundtrip_torchaudio():
    x = torch.linspace(-1, 1, 1001)
    codes = mu_law_encode(x)
    assert codes.min() == 0 and codes.max() == 255 and codes.dtype == torch.int64
    # half the widest mu-law step (at full scale) is about 0.021
    assert (mu_law_decode(codes) - x).abs().max() < 0.022
    # the reference's truncation is up to a whole step off, so its error is larger
    ref = mu_law_decode(mu_law_encode(x, "reference"), "reference")
    assert (ref - x).abs().max() > 0.04

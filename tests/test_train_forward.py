"""The two training forward paths compute the model's own function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from umt_core import forward as fw
from umt_core.config import preset
from umt_core.model import UMTN


def _model(**model_overrides):
    cfg = preset("smoke", {f"model.{k}": v for k, v in model_overrides.items()})
    cfg.domains = ["a", "b"]
    torch.manual_seed(0)
    return UMTN(cfg)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("length", [256, 250])  # 250: frames do not tile the segment
def test_fast_and_reference_paths_equal_module_forward(length):
    model = _model(decoder_kernel=3)  # kernel 3 checks the tap order of causal convs
    codes = torch.randint(0, 256, (2, length), generator=torch.Generator().manual_seed(1))
    z = model.encoder(codes)
    expected = model.decoders[1](codes, z)
    assert torch.allclose(fw.fast_encode(model.encoder, codes), z, atol=1e-6)
    assert torch.allclose(fw.fast_decode(model.decoders[1], codes, z), expected, atol=1e-5)
    assert torch.equal(fw.reference_decode(model.decoders[1], codes, z), expected)


def test_fast_path_gradients_equal_module_gradients():
    model = _model()
    codes = torch.randint(0, 256, (2, 256), generator=torch.Generator().manual_seed(2))

    def loss_module():
        z = model.encoder(codes)
        return F.cross_entropy(model.decoders[0](codes, z), codes, reduction="sum")

    def loss_fast():
        z = fw.fast_encode(model.encoder, codes)
        return fw.recon_loss_sum(model.decoders[0], codes, z)

    model.zero_grad(set_to_none=True)
    a = loss_module()
    a.backward()
    ga = _grads(model)
    model.zero_grad(set_to_none=True)
    b = loss_fast()
    b.backward()
    gb = _grads(model)
    assert torch.allclose(a, b, rtol=1e-5)
    assert ga.keys() == gb.keys() and not any(k.startswith("decoders.1") for k in ga)
    for k in ga:
        assert torch.allclose(ga[k], gb[k], rtol=1e-4, atol=1e-5), k


def test_state_dict_keys_unchanged_by_fast_path():
    model = _model()
    keys = list(model.state_dict())
    fw.recon_loss_sum(model.decoders[0], torch.zeros(1, 64, dtype=torch.long),
                      fw.fast_encode(model.encoder, torch.zeros(1, 64, dtype=torch.long))).backward()
    assert list(model.state_dict()) == keys

"""The two training forward paths compute the model's own function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from umt_core import forward as fw
from umt_core.__main__ import main
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


def test_fast_path_under_bf16_autocast_gives_fp32_gradients_close_to_fp32():
    """The GPU recipe (bf16 autocast) exercised on CPU: same code path, loose tolerance."""
    model = _model()
    codes = torch.randint(0, 256, (2, 256), generator=torch.Generator().manual_seed(3))

    def grads(autocast: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            z = fw.fast_encode(model.encoder, codes)
            loss = fw.recon_loss_sum(model.decoders[0], codes, z)
        loss.backward()
        return loss.detach(), _grads(model)

    l32, g32 = grads(False)
    l16, g16 = grads(True)
    assert abs(float(l16 - l32)) / float(l32) < 1e-2
    assert g16.keys() == g32.keys()
    for k in g32:
        assert g16[k].dtype == torch.float32
        cos = F.cosine_similarity(g16[k].flatten(), g32[k].flatten(), dim=0)
        assert cos > 0.95, (k, float(cos))


def test_bench_train_runs_both_paths_and_checks_equality(capsys):
    rc = main(["bench", "train", "--preset", "smoke", "--batch", "1", "--segment", "256",
               "--repeats", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "reference" in out and "equal within float tolerance" in out
    rows = {line.split()[1] for line in out.splitlines() if line.startswith("optimized ")}
    assert rows == {"fp32", "bf16"}

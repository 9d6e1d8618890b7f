"""Two ways to compute the training forward pass of a `UMTN`, on its own parameters.

- `reference_*`: computes exactly as the reference implementation does, with the
  model's `Conv1d` modules in (B, C, T) layout: the latent is first repeated to audio
  rate and every conditioning 1x1 convolution runs at every sample, and the residual
  and skip 1x1 convolutions run separately. It is the eager baseline of
  ``python -m umt_core bench train``.
- `fast_*`: the same function, computed time-major, (B, T, C), where every
  convolution is a single matrix product: a dilated convolution of kernel k is one
  ``linear`` on k shifted copies of its input laid side by side, the conditioning is
  projected once per latent frame and added by broadcasting (no upsampled copy),
  and the residual and skip outputs are one product on the concatenated weights.
  On CPU this avoids the layout copies PyTorch makes around small 1x1 convolutions
  and runs at matrix-product speed; on CUDA it is as fast as cuDNN and bf16-friendly.

Both read the weights of the modules (``weight.permute(0, 2, 1)`` is a view, no
copy is kept), so gradients land on the model's own parameters and its state-dict
keys do not change: reference checkpoints load and train as usual. The results
agree within float tolerance (only the order of summation differs); a test checks
outputs and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import spectral
from .model import UMTN, Encoder, WaveNetDecoder, scale_codes, upsample_frames


# --------------------------------------------------------------------------- reference
def reference_encode(encoder: Encoder, codes: torch.Tensor) -> torch.Tensor:
    """The model's own encoder forward: already exactly the reference's computation."""
    return encoder(codes)


def reference_decode(decoder: WaveNetDecoder, codes: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Logits (B, 256, T) computed as the reference does (see module docstring)."""
    x = scale_codes(codes)
    x = F.pad(x, (1, 0))[..., :-1]
    z_up = upsample_frames(z, x.shape[-1])  # the latent at audio rate, then 1x1 convs
    residual = decoder.first_conv(x)
    skip = decoder.skip_conv(residual)
    for layer in decoder.layers:
        h = layer.causal(residual) + layer.condition(z_up)
        sig, tanh = h.chunk(2, dim=1)
        g = torch.sigmoid(sig) * torch.tanh(tanh)
        residual = residual + layer.residual(g)
        skip = skip + layer.skip(g)
    h = decoder.fc(F.relu(skip)) + decoder.condition(z_up)
    return decoder.logits(F.relu(h))


# --------------------------------------------------------------------------- time-major
def _matrix(conv: nn.Conv1d) -> torch.Tensor:
    """Conv1d weight (O, C, k) as the (O, k*C) matrix that multiplies k taps side by side."""
    w = conv.weight
    return w.permute(0, 2, 1).reshape(w.shape[0], -1)


def _shift(x: torch.Tensor, offset: int) -> torch.Tensor:
    """(B, T, C) -> y[:, t] = x[:, t + offset], zero outside."""
    if offset == 0:
        return x
    length = x.shape[1]
    if offset < 0:
        return F.pad(x, (0, 0, -offset, 0))[:, :length]
    return F.pad(x, (0, 0, 0, offset))[:, offset:]


def _taps(x: torch.Tensor, offsets: list[int]) -> torch.Tensor:
    """(B, T, C) -> (B, T, k*C): the k shifted copies of x side by side."""
    return torch.cat([_shift(x, o) for o in offsets], dim=-1)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


class _TapLinear(torch.autograd.Function):
    """``linear(taps(x), w, b)`` that keeps x for the backward pass, not its k shifted
    copies (they are rebuilt there): the same products, 1/k of the activation memory.
    Follows autocast explicitly (computes in its dtype, returns gradients in the inputs')."""

    @staticmethod
    def forward(ctx, x, w, b, offsets):
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            xc, wc, bc = x.to(dtype), w.to(dtype), b.to(dtype)
            out = F.linear(_taps(xc, offsets), wc, bc)
        ctx.offsets = offsets
        ctx.dtypes = (x.dtype, w.dtype, b.dtype)
        ctx.save_for_backward(xc, wc)
        return out

    @staticmethod
    def backward(ctx, grad):
        xc, wc = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        with torch.autocast(xc.device.type, enabled=False):
            grad = grad.to(wc.dtype)
            flat = grad.reshape(-1, grad.shape[-1])
            taps = _taps(xc, ctx.offsets)
            grad_w = flat.t() @ taps.reshape(-1, taps.shape[-1])
            del taps
            grad_b = flat.sum(0, dtype=torch.float32)
            grad_taps = grad @ wc
            ch = xc.shape[-1]
            grad_x = None
            for j, offset in enumerate(ctx.offsets):
                part = _shift(grad_taps[..., j * ch:(j + 1) * ch], -offset)
                grad_x = part if grad_x is None else grad_x + part
        return grad_x.to(x_dtype), grad_w.to(w_dtype), grad_b.to(b_dtype), None


def _conv(x: torch.Tensor, conv: nn.Conv1d, offsets: list[int]) -> torch.Tensor:
    """A Conv1d whose tap j reads x[t + offsets[j]], as one matrix product."""
    if offsets == [0]:
        return F.linear(x, _matrix(conv), conv.bias)
    return _TapLinear.apply(x, _matrix(conv), conv.bias, offsets)


def _same_offsets(conv: nn.Conv1d) -> list[int]:
    k, d, p = conv.kernel_size[0], conv.dilation[0], conv.padding[0]
    return [j * d - p for j in range(k)]


def _causal_offsets(conv: nn.Conv1d) -> list[int]:
    k, d = conv.kernel_size[0], conv.dilation[0]
    return [-(k - 1 - j) * d for j in range(k)]


def _add_frames(h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """h (B, T, C) + per-frame c (B, L, C) repeated in time as `upsample_frames` does."""
    b, length, ch = h.shape
    frames = c.shape[1]
    per_frame = max(length // frames, 1)
    if per_frame * frames == length:
        return (h.view(b, frames, per_frame, ch) + c[:, :, None, :]).view(b, length, ch)
    return h + upsample_frames(c.transpose(1, 2), length).transpose(1, 2)


def fast_encode(encoder: Encoder, codes: torch.Tensor) -> torch.Tensor:
    """z (B, latent, T // pool), equal to ``encoder(codes)`` within float tolerance."""
    x = scale_codes(codes).transpose(1, 2)  # (B, T, 1)
    h = _conv(x, encoder.start, _same_offsets(encoder.start))
    for layer in encoder.dilated_convs:
        inner = F.relu(_conv(h, layer.dilated_conv, _same_offsets(layer.dilated_conv)))
        h = h + _conv(inner, layer.conv_1x1, [0])
    h = _conv(h, encoder.conv_1x1, [0])  # (B, T, latent)
    pool = encoder.pool.kernel_size[0] if isinstance(encoder.pool.kernel_size, tuple) \
        else encoder.pool.kernel_size
    b, length, ch = h.shape
    frames = length // pool
    z = h[:, :frames * pool].reshape(b, frames, pool, ch).mean(dim=2)
    return encoder.finish(z.transpose(1, 2))


def fast_decode_time_major(decoder: WaveNetDecoder, codes: torch.Tensor,
                           z: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, 256), time-major (ready for a flat cross-entropy)."""
    x = scale_codes(codes)
    x = F.pad(x, (1, 0))[..., :-1].transpose(1, 2)  # (B, T, 1), shifted right
    zt = z.transpose(1, 2)  # (B, L, latent)
    residual = _conv(x, decoder.first_conv, _causal_offsets(decoder.first_conv))
    skip = _conv(residual, decoder.skip_conv, [0])
    r_ch = residual.shape[-1]
    last = len(decoder.layers) - 1
    for i, layer in enumerate(decoder.layers):
        h = _conv(residual, layer.causal, _causal_offsets(layer.causal))
        h = _add_frames(h, _conv(zt, layer.condition, [0]))
        g = torch.sigmoid(h[..., :r_ch]) * torch.tanh(h[..., r_ch:])
        if i == last:  # its residual output feeds nothing (and gets no gradient)
            skip = skip + _conv(g, layer.skip, [0])
            break
        # residual and skip 1x1 convolutions as one product
        w = torch.cat([_matrix(layer.residual), _matrix(layer.skip)])
        bias = torch.cat([layer.residual.bias, layer.skip.bias])
        out = F.linear(g, w, bias)
        residual = residual + out[..., :r_ch]
        skip = skip + out[..., r_ch:]
    h = _add_frames(_conv(F.relu(skip), decoder.fc, [0]), _conv(zt, decoder.condition, [0]))
    return _conv(F.relu(h), decoder.logits, [0])


def fast_decode(decoder: WaveNetDecoder, codes: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Logits (B, 256, T), equal to ``decoder(codes, z)`` within float tolerance."""
    return fast_decode_time_major(decoder, codes, z).transpose(1, 2)


def recon_loss_sum(decoder: WaveNetDecoder, codes: torch.Tensor, z: torch.Tensor,
                   fast: bool = True, inputs: torch.Tensor | None = None) -> torch.Tensor:
    """Summed (not averaged) reconstruction cross-entropy of `codes` over batch and time.

    `inputs` (same shape as `codes`) replaces the teacher-forced input the decoder reads
    (e.g. partly corrupted codes) while the targets stay `codes`."""
    inputs = codes if inputs is None else inputs
    if inputs.shape != codes.shape:
        raise ValueError(f"decoder inputs {tuple(inputs.shape)} and targets "
                         f"{tuple(codes.shape)} differ in shape")
    if fast:
        logits = fast_decode_time_major(decoder, inputs, z)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), codes.reshape(-1),
                               reduction="sum")
    logits = reference_decode(decoder, inputs, z)
    return F.cross_entropy(logits.float(), codes, reduction="sum")


def reconstruction_loss_sum(model: UMTN, domain: int, clean: torch.Tensor, z: torch.Tensor,
                            inputs: torch.Tensor | None = None) -> torch.Tensor:
    """The training loop's reconstruction term for either decoder kind: the WaveNet's
    summed cross-entropy (teacher forced on `inputs`), or the spectral loss sum (the
    spectral decoder reads only the latent, so `inputs` does not apply)."""
    cfg = model.config
    if cfg.model.decoder == "spectral":
        return spectral.spectral_loss_sum(model.decoder(domain), clean, z, cfg.model, cfg.mu_law)
    return recon_loss_sum(model.decoder(domain), clean, z, inputs=inputs)


def encode(encoder: Encoder, codes: torch.Tensor, fast: bool = True) -> torch.Tensor:
    return fast_encode(encoder, codes) if fast else reference_encode(encoder, codes)

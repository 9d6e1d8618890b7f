"""Per-sample WaveNet decoder steps for incremental generation.

Every backend advances D decoders x B clips by one audio sample at a time and keeps
the same state: for each layer a ring buffer of its past inputs (the causal
convolution's earlier taps) and the last ``kernel`` scaled input samples. They differ
only in how the step is computed:

- `EagerStep`: the decoder's own modules, layer by layer; the readable reference and
  the speed baseline.
- `TorchStep`: the decoders' weights stacked and packed once, the whole step as a few
  batched matmuls over decoders with preallocated buffers and device-side indices, so
  that on CUDA it is captured once in a CUDA graph and replayed per sample.
- `umt_core.generate.cpu.CppStep` (CPU): a compiled kernel that runs a whole chunk of
  samples per call.

Conventions shared with `umt_core.model.WaveNetDecoder`: the input at step t is the
code emitted at t-1 scaled to ``c / 255 - 0.5`` (0.0 at t = 0, the forward pass's left
padding); a layer with dilation d reads its own input at t - d (zero before the
start); the conditioning of frame f covers steps ``f * per_frame`` onwards.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model import N_CLASSES, WaveNetDecoder, code_values


@dataclass(frozen=True)
class Layout:
    """Shape of a decoder stack and where each layer's ring buffer lives."""

    kernel: int
    residual: int
    skip: int
    dilations: tuple[int, ...]

    @property
    def layers(self) -> int:
        return len(self.dilations)

    @property
    def lengths(self) -> tuple[int, ...]:
        """Samples of past input each layer keeps: (kernel - 1) * dilation."""
        return tuple((self.kernel - 1) * d for d in self.dilations)

    @property
    def offsets(self) -> tuple[int, ...]:
        out, total = [], 0
        for n in self.lengths:
            out.append(total)
            total += n
        return tuple(out)

    @property
    def total(self) -> int:
        return sum(self.lengths)

    @classmethod
    def of(cls, decoders: list[WaveNetDecoder]) -> Layout:
        layouts = {
            cls(
                kernel=d.first_conv.kernel_size[0],
                residual=d.first_conv.out_channels,
                skip=d.skip_conv.out_channels,
                dilations=tuple(layer.dilation for layer in d.layers),
            )
            for d in decoders
        }
        if len(layouts) != 1:
            raise ValueError("decoders generated together must have the same shape")
        layout = layouts.pop()
        if layout.kernel < 2:
            raise ValueError("incremental generation needs a causal kernel of at least 2")
        return layout


class State:
    """What a decoder stack remembers between samples, for ``rows = D * B`` streams."""

    def __init__(self, layout: Layout, rows: int, device: torch.device | str = "cpu"):
        self.layout = layout
        self.rows = rows
        self.ring = torch.empty(rows, max(layout.total, 1), layout.residual, device=device)
        if self.ring.device.type == "cpu":
            _advise_huge_pages(self.ring)
        self.ring.zero_()
        self.inputs = torch.zeros(rows, layout.kernel, device=device)
        self.t = 0  # samples generated so far


def _advise_huge_pages(t: torch.Tensor) -> None:
    """Ask Linux for 2 MiB pages under a large, not yet touched CPU tensor: every step
    reads one slot of every layer's ring buffer, scattered over hundreds of MiB, and
    with 4 KiB pages nearly each of those reads also misses the TLB."""
    size = t.numel() * t.element_size()
    huge = 2 << 20
    if size < 4 * huge or not sys.platform.startswith("linux"):
        return
    start = -(-t.data_ptr() // huge) * huge
    length = (t.data_ptr() + size - start) // huge * huge
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), 14)  # MADV_HUGEPAGE
    except (OSError, AttributeError):
        pass


def pick_codes(logits: torch.Tensor, uniforms: torch.Tensor | None,
               inv_temperature: float | torch.Tensor) -> torch.Tensor:
    """(N, 256) logits -> (N,) codes: arg max without `uniforms`, else the inverse CDF of
    softmax(logits / T) at the uniforms (one per row). The C++ kernel does the same."""
    if uniforms is None:
        return logits.argmax(-1)
    e = torch.exp((logits - logits.amax(-1, keepdim=True)) * inv_temperature)
    cdf = torch.cumsum(e, -1)
    return (cdf < uniforms.unsqueeze(-1) * cdf[:, -1:]).sum(-1).clamp_(max=N_CLASSES - 1)


@dataclass
class Chunk:
    """Inputs of one chunk of samples, shared by every backend.

    ``cond`` (D, B, F, layers, 2R) and ``head`` (D, B, F, S) are the decoders'
    `project_latent` outputs for the F frames this chunk touches (no biases added);
    ``frame_of_step`` (steps,) indexes them. Exactly one of ``uniforms`` (rows, steps),
    ``forced`` (rows, steps) or neither (greedy) is given.
    """

    cond: torch.Tensor
    head: torch.Tensor
    frame_of_step: torch.Tensor
    steps: int
    uniforms: torch.Tensor | None = None
    forced: torch.Tensor | None = None
    inv_temperature: float = 1.0
    want_logits: bool = False


# ----------------------------------------------------------------------------- eager


class EagerStep:
    """The plain loop: each decoder's own weights (as contiguous matrices, taken once),
    one layer and one decoder at a time; separate ops for every tap, gate and 1x1."""

    name = "eager"

    def __init__(self, decoders: list[WaveNetDecoder], state: State):
        self.decoders, self.state = decoders, state
        self.batch = state.rows // len(decoders)
        k = state.layout.kernel

        def mat(conv: torch.nn.Conv1d, tap: int = 0) -> torch.Tensor:
            return conv.weight.detach()[:, :, tap].contiguous()

        self.weights = [{
            "first": (d.first_conv.weight.detach()[:, 0, :].contiguous(), d.first_conv.bias),
            "skip0": (mat(d.skip_conv), d.skip_conv.bias),
            "layers": [([mat(m.causal, j) for j in range(k)], m.causal.bias,
                        (mat(m.residual), m.residual.bias), (mat(m.skip), m.skip.bias))
                       for m in d.layers],
            "fc": (mat(d.fc), d.fc.bias),
            "logits": (mat(d.logits), d.logits.bias),
        } for d in decoders]

    def run(self, c: Chunk) -> tuple[torch.Tensor, torch.Tensor | None]:
        st, lay, B = self.state, self.state.layout, self.batch
        k, R = lay.kernel, lay.residual
        codes = torch.empty(st.rows, c.steps, dtype=torch.long, device=st.ring.device)
        logits_out = (torch.empty(st.rows, c.steps, N_CLASSES, device=st.ring.device)
                      if c.want_logits else None)
        frames = c.frame_of_step.tolist()
        for i in range(c.steps):
            t, f = st.t, frames[i]
            for d, w in enumerate(self.weights):
                rows = slice(d * B, (d + 1) * B)
                res = F.linear(st.inputs[rows], *w["first"])
                skip = F.linear(res, *w["skip0"])
                for l, (taps, bias, res_1x1, skip_1x1) in enumerate(w["layers"]):
                    n = lay.lengths[l]
                    ring = st.ring[rows, lay.offsets[l]:lay.offsets[l] + n]
                    h = F.linear(res, taps[k - 1], bias) + c.cond[d, :, f, l]
                    for j in range(k - 1):
                        past = ring[:, (t - (k - 1 - j) * lay.dilations[l]) % n]
                        h = h + F.linear(past, taps[j])
                    ring[:, t % n] = res
                    g = torch.sigmoid(h[:, :R]) * torch.tanh(h[:, R:])
                    res = res + F.linear(g, *res_1x1)
                    skip = skip + F.linear(g, *skip_1x1)
                h = F.linear(F.relu(skip), *w["fc"]) + c.head[d, :, f]
                logits = F.linear(F.relu(h), *w["logits"])
                if logits_out is not None:
                    logits_out[rows, i] = logits
                if c.forced is not None:
                    code = c.forced[rows, i]
                else:
                    u = None if c.uniforms is None else c.uniforms[rows, i]
                    code = pick_codes(logits, u, c.inv_temperature)
                codes[rows, i] = code
                st.inputs[rows] = torch.cat([st.inputs[rows, 1:], code_values(code)[:, None]], 1)
            st.t += 1
        return codes, logits_out


# ----------------------------------------------------------------------- packed weights


def stack_weights(decoders: list[WaveNetDecoder]) -> dict[str, torch.Tensor]:
    """The decoders' weights as matrices (out, in), stacked over decoders (and layers).

    conv (D, L, 2R, kernel*R): the causal taps side by side, oldest first; out
    (D, L, R+S, R): residual and skip 1x1 convs fused into one matrix.
    """
    def mat(conv: torch.nn.Conv1d) -> torch.Tensor:
        return conv.weight.detach()[:, :, 0]

    def each(fn) -> torch.Tensor:
        return torch.stack([fn(d) for d in decoders])

    def per_layer(fn) -> torch.Tensor:
        return torch.stack([torch.stack([fn(layer) for layer in d.layers]) for d in decoders])

    w = {
        "first_w": each(lambda d: d.first_conv.weight.detach()[:, 0, :].t()),  # (k, R)
        "first_b": each(lambda d: d.first_conv.bias.detach()),
        "skip0_w": each(lambda d: mat(d.skip_conv)),
        "skip0_b": each(lambda d: d.skip_conv.bias.detach()),
        "conv_w": per_layer(lambda m: m.causal.weight.detach().permute(0, 2, 1).flatten(1)),
        "conv_b": per_layer(lambda m: m.causal.bias.detach()),
        "out_w": per_layer(lambda m: torch.cat([mat(m.residual), mat(m.skip)])),
        "out_b": per_layer(lambda m: torch.cat([m.residual.bias.detach(), m.skip.bias.detach()])),
        "fc_w": each(lambda d: mat(d.fc)),
        "fc_b": each(lambda d: d.fc.bias.detach()),
        "logit_w": each(lambda d: mat(d.logits)),
        "logit_b": each(lambda d: d.logits.bias.detach()),
    }
    return {k: v.float().contiguous() for k, v in w.items()}


# ------------------------------------------------------------------ batched torch step


class TorchStep:
    """The step as batched matmuls over the decoder stack (``baddbmm``), for any device.

    Everything the step reads or writes lives in preallocated tensors and every index
    (sample, frame, ring slot) is computed on the device, so the step has no host
    synchronisation: on CUDA it is captured once per mode in a CUDA graph and each
    sample is one ``graph.replay()``. Two exact rewrites save kernels: the gate
    ``sigmoid(a) * tanh(b)`` is ``(1 + tanh(a/2)) / 2 * tanh(b)`` (the halves go into
    the conv weights and the 1x1 output weights), and the output 1x1's bias rides as
    an extra input column fixed at 1.
    """

    name = "torch"

    def __init__(self, decoders: list[WaveNetDecoder], state: State, *, max_steps: int,
                 max_frames: int, cuda_graph: bool = False):
        lay, dev = state.layout, state.ring.device
        self.state, self.layout = state, lay
        self.D = len(decoders)
        self.B = state.rows // self.D
        self.max_steps, self.max_frames = max_steps, max_frames
        self.cuda_graph = cuda_graph
        if cuda_graph:
            self.name = "cuda-graph"
        D, B, L, k, R, S = self.D, self.B, lay.layers, lay.kernel, lay.residual, lay.skip
        w = {n: t.to(dev) for n, t in stack_weights(decoders).items()}
        self.half = torch.cat([torch.full((R,), 0.5), torch.ones(R)]).to(dev)
        self.conv_wT = (w["conv_w"] * self.half[:, None]).transpose(-1, -2).contiguous()
        self.conv_b = w["conv_b"]
        out = torch.cat([w["out_w"] * 0.5, w["out_b"][..., None]], -1)  # (D, L, R+S, R+1)
        self.out_wT = out.transpose(-1, -2).contiguous()
        self.first_w, self.first_b = w["first_w"], w["first_b"][:, None]
        self.skip0_wT, self.skip0_b = w["skip0_w"].transpose(1, 2).contiguous(), w["skip0_b"][:, None]
        self.fc_wT, self.fc_b = w["fc_w"].transpose(1, 2).contiguous(), w["fc_b"]
        self.logit_wT = w["logit_w"].transpose(1, 2).contiguous()
        self.logit_b = w["logit_b"][:, None]
        # Static inputs and outputs of a chunk.
        rows = state.rows
        self.cond = torch.zeros(D, B, max_frames, L, 2 * R, device=dev)
        self.head = torch.zeros(D, B, max_frames, S, device=dev)
        self.frame_of_step = torch.zeros(max_steps, dtype=torch.long, device=dev)
        self.uniforms = torch.zeros(rows, max_steps, device=dev)
        self.forced = torch.zeros(rows, max_steps, dtype=torch.long, device=dev)
        self.codes = torch.zeros(rows, max_steps, dtype=torch.long, device=dev)
        self.logits: torch.Tensor | None = None
        self.inv_t = torch.ones(1, device=dev)
        self.i = torch.zeros(1, dtype=torch.long, device=dev)
        self.t = torch.zeros(1, dtype=torch.long, device=dev)
        # Working buffers: A holds each layer's conv input [past taps..., current].
        self.A = torch.zeros(D, B, L, k * R, device=dev)
        self.acc = torch.zeros(D, B, R + S, device=dev)  # [residual | skip]
        self.g = torch.ones(D, B, R + 1, device=dev)  # [gate | 1]
        delays = [(k - 1 - j) * d for d in lay.dilations for j in range(k - 1)]
        self.tap_delay = torch.tensor(delays, device=dev)
        self.tap_len = torch.tensor([n for n in lay.lengths for _ in range(k - 1)], device=dev)
        self.tap_off = torch.tensor([o for o in lay.offsets for _ in range(k - 1)], device=dev)
        self.ring_len = torch.tensor(lay.lengths, device=dev)
        self.ring_off = torch.tensor(lay.offsets, device=dev)
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        # One decoder: plain matrix products (batched ones are slow for few rows on CPU).
        self.single = self.D == 1

    def _mm(self, bias: torch.Tensor, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """bias + a @ w over the decoder stack: (D, B, K) @ (D, K, N) -> (D, B, N)."""
        if self.single:
            return torch.addmm(bias[0], a[0], w[0]).unsqueeze(0)
        return torch.baddbmm(bias, a, w)

    def _mm_(self, out: torch.Tensor, a: torch.Tensor, w: torch.Tensor) -> None:
        """out += a @ w, in place."""
        if self.single:
            out[0].addmm_(a[0], w[0])
        else:
            out.baddbmm_(a, w)

    def _step(self, mode: str, want_logits: bool) -> None:
        st, lay = self.state, self.layout
        D, B, L, k, R = self.D, self.B, lay.layers, lay.kernel, lay.residual
        ring, inputs, acc, A = st.ring, st.inputs, self.acc, self.A
        taps = torch.remainder(self.t - self.tap_delay, self.tap_len) + self.tap_off
        A[..., :(k - 1) * R].copy_(ring.index_select(1, taps).view(D, B, L, (k - 1) * R))
        frame = self.frame_of_step.index_select(0, self.i)
        cond = self.cond.index_select(2, frame).squeeze(2)  # (D, B, L, 2R)
        head = self.head.index_select(2, frame).squeeze(2)  # (D, B, S)
        acc[..., :R].copy_(self._mm(self.first_b.expand(D, B, R), inputs.view(D, B, k),
                                    self.first_w))
        acc[..., R:].copy_(self._mm(self.skip0_b.expand(D, B, -1), acc[..., :R], self.skip0_wT))
        gate = self.g[..., :R]
        for l in range(L):
            A[:, :, l, (k - 1) * R:].copy_(acc[..., :R])
            th = torch.tanh(self._mm(cond[:, :, l], A[:, :, l], self.conv_wT[:, l]))
            torch.addcmul(th[..., R:], th[..., :R], th[..., R:], out=gate)
            self._mm_(acc, self.g, self.out_wT[:, l])
        slots = torch.remainder(self.t, self.ring_len) + self.ring_off
        ring.index_copy_(1, slots, A[..., (k - 1) * R:].reshape(D * B, L, R))
        h = self._mm(head, F.relu(acc[..., R:]), self.fc_wT)
        logits = self._mm(self.logit_b.expand(D, B, N_CLASSES), F.relu(h),
                          self.logit_wT).view(D * B, N_CLASSES)
        if want_logits:
            self.logits.index_copy_(1, self.i, logits.unsqueeze(1))
        if mode == "forced":
            code = self.forced.index_select(1, self.i).squeeze(1)
        elif mode == "greedy":
            code = pick_codes(logits, None, 1.0)
        else:
            u = self.uniforms.index_select(1, self.i).squeeze(1)
            code = pick_codes(logits, u, self.inv_t)
        self.codes.index_copy_(1, self.i, code.unsqueeze(1))
        if k > 2:
            inputs[:, :-1].copy_(inputs[:, 1:].clone())
        else:
            inputs[:, 0].copy_(inputs[:, 1])
        inputs[:, -1].copy_(code_values(code))
        self.t.add_(1)
        self.i.add_(1)

    def _stepper(self, mode: str, want_logits: bool):
        if not self.cuda_graph:
            return lambda: self._step(mode, want_logits)
        key = (mode, want_logits)
        if key not in self.graphs:
            # Warm up on a side stream (cuBLAS handles, workspaces), then put back the
            # state the warm-up advanced, and capture one step.
            st = self.state
            saved = [x.clone() for x in (st.ring, st.inputs, self.t, self.i, self.codes)]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(min(2, self.max_steps)):
                    self._step(mode, want_logits)
            torch.cuda.current_stream().wait_stream(side)
            for x, s in zip((st.ring, st.inputs, self.t, self.i, self.codes), saved):
                x.copy_(s)
            del saved
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step(mode, want_logits)
            self.graphs[key] = graph
        return self.graphs[key].replay

    def run(self, c: Chunk) -> tuple[torch.Tensor, torch.Tensor | None]:
        if c.steps > self.max_steps or c.cond.shape[2] > self.max_frames:
            raise ValueError("chunk larger than this step was prepared for")
        n, frames = c.steps, c.cond.shape[2]
        self.cond[:, :, :frames].copy_((c.cond + self.conv_b[:, None, None]) * self.half)
        self.head[:, :, :frames].copy_(c.head + self.fc_b[:, None, None])
        self.frame_of_step[:n].copy_(c.frame_of_step)
        if c.uniforms is not None:
            self.uniforms[:, :n].copy_(c.uniforms)
            self.inv_t.fill_(c.inv_temperature)
        if c.forced is not None:
            self.forced[:, :n].copy_(c.forced)
        if c.want_logits and self.logits is None:
            self.logits = torch.zeros(self.state.rows, self.max_steps, N_CLASSES,
                                      device=self.codes.device)
        mode = "forced" if c.forced is not None else "sample" if c.uniforms is not None else "greedy"
        self.i.zero_()
        self.t.fill_(self.state.t)
        step = self._stepper(mode, c.want_logits)
        for _ in range(n):
            step()
        self.state.t += n
        logits = self.logits[:, :n].clone() if c.want_logits else None
        return self.codes[:, :n].clone(), logits

"""The compiled CPU step of incremental WaveNet generation.

A small C++ kernel (`wavenet_step.cpp`, shipped beside this file), compiled with the system compiler on first use
(``-O3 -march=native``), cached under `kernel_cache_dir()` by source, compiler and CPU,
and called through ctypes (no Python headers or build tools beyond the compiler). One
call runs a whole chunk of samples for all D*B streams:

- weights are packed once in panels of 16 outputs ([panel][input][16], float32 or
  bfloat16), so a register tile of up to 6 rows x 16 outputs accumulates with AVX2/FMA
  while each weight vector is loaded once for all its rows;
- each matmul walks blocks of 4 panels outside and row tiles inside, so a block of
  weights comes from memory once per step and from cache for the other rows;
- many rows: the rows are split across threads, which never wait for each other;
  a handful of rows: the threads form a team that shares every matmul's output panels
  (each reads only its share of the weights) and meets at barriers twice per layer;
  when those barriers stall (a busy machine deschedules a member), the team hands
  the work to one thread for the rest of the chunk and later chunks do not share;
- the gate's exponentials are a vectorised polynomial; sampling is the same inverse
  CDF as `umt_core.generate.steps.pick_codes`.

Without a working compiler `cpp_kernel()` warns once and returns None, and generation
uses `umt_core.generate.steps.TorchStep`.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.resources
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..model import N_CLASSES, WaveNetDecoder
from .steps import Chunk, State, stack_weights

# The kernel's source, a package data file read once at import.
CPP_SOURCE = importlib.resources.files(__package__).joinpath("wavenet_step.cpp").read_text()


class _Weights(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in (
        "decoders", "residual", "skip", "kernel", "layers",
        "conv_panels", "out_panels", "skip_panels", "bf16")] + [
        (n, ctypes.c_void_p) for n in (
            "first_w", "first_b", "skip0_p", "skip0_b", "conv_p", "out_p", "out_b",
            "fc_p", "logit_p", "logit_b")]


class _Chunk(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in ("batch", "steps", "frames", "t0", "threads")] + [
        ("cond", ctypes.c_void_p), ("head", ctypes.c_void_p), ("frame_of_step", ctypes.c_void_p),
        ("ring", ctypes.c_void_p), ("ring_total", ctypes.c_int64),
        ("ring_offset", ctypes.c_void_p), ("ring_length", ctypes.c_void_p),
        ("dilation", ctypes.c_void_p), ("inputs", ctypes.c_void_p),
        ("uniforms", ctypes.c_void_p), ("forced", ctypes.c_void_p),
        ("inv_temperature", ctypes.c_float), ("greedy", ctypes.c_int64),
        ("out_codes", ctypes.c_void_p), ("out_logits", ctypes.c_void_p),
        ("share_panels", ctypes.c_int64), ("report", ctypes.c_void_p),
    ]


_ABI_VERSION = 2
_kernel_lock = threading.Lock()
_kernel: ctypes.CDLL | None = None
_kernel_error: str | None = None


def kernel_cache_dir() -> Path:
    """Where compiled kernels are kept: $UMT_KERNEL_CACHE, else ~/.cache/umt_core."""
    if os.environ.get("UMT_KERNEL_CACHE"):
        return Path(os.environ["UMT_KERNEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "umt_core"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_signature() -> str:
    """Identifies the instruction set the kernel is compiled for (-march=native)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


# -march=native: the kernel is built on the machine that runs it (cached per CPU).
CXX_FLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC", "-shared", "-pthread")


def _build(cxx: str, flags: Sequence[str], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src = Path(tmp) / "wavenet_step.cpp"
        src.write_text(CPP_SOURCE)
        lib = Path(tmp) / out.name
        proc = subprocess.run([cxx, *flags, str(src), "-o", str(lib)],
                              check=False, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip()[-2000:] or f"{cxx} failed")
        os.replace(lib, out)  # atomic: concurrent builders each install a whole file


def load_kernel(flags: Sequence[str] = CXX_FLAGS, *, rebuild: bool = False) -> ctypes.CDLL:
    """Build (unless cached) and load the kernel with these compiler flags.
    Raises RuntimeError when no compiler works."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    key = hashlib.sha256("\0".join(
        [CPP_SOURCE, cxx, shutil.which(cxx) or "", " ".join(flags), _cpu_signature()]
    ).encode()).hexdigest()[:16]
    path = kernel_cache_dir() / f"wavenet_step_{key}.so"
    if rebuild or not path.exists():
        _build(cxx, flags, path)
    lib = ctypes.CDLL(str(path))
    if lib.umt_abi_version() != _ABI_VERSION:
        raise RuntimeError(f"{path}: unexpected kernel version")
    lib.umt_run_chunk.argtypes = [ctypes.POINTER(_Weights), ctypes.POINTER(_Chunk)]
    lib.umt_run_chunk.restype = ctypes.c_int
    return lib


def cpp_kernel(*, rebuild: bool = False) -> ctypes.CDLL | None:
    """The compiled CPU kernel, built on first use and cached by source, compiler, flags
    and CPU; None (with one warning) when no C++ compiler works here."""
    global _kernel, _kernel_error
    with _kernel_lock:
        if _kernel is not None and not rebuild:
            return _kernel
        if _kernel_error is not None and not rebuild:
            return None
        try:
            _kernel, _kernel_error = load_kernel(rebuild=rebuild), None
            return _kernel
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            _kernel_error = str(e)
            warnings.warn(
                f"the fast CPU generation kernel is unavailable ({_kernel_error}); "
                "using the slower batched torch step", RuntimeWarning, stacklevel=2,
            )
            return None


def reset_cpp_kernel() -> None:
    """Forget the loaded kernel or the last failure (the next use tries again)."""
    global _kernel, _kernel_error
    with _kernel_lock:
        _kernel, _kernel_error = None, None


def _panels(w: torch.Tensor, bf16: bool) -> torch.Tensor:
    """(..., N, K) -> (..., ceil(N/16), K, 16), zero padded: 16 outputs side by side."""
    *lead, n, k = w.shape
    p = -(-n // 16)
    w = F.pad(w, (0, 0, 0, p * 16 - n)).reshape(*lead, p, 16, k).transpose(-1, -2)
    return w.to(torch.bfloat16 if bf16 else torch.float32).contiguous()


def _pad_last(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[-1]
    return F.pad(b, (0, -(-n // 16) * 16 - n)).contiguous()


class CppStep:
    """The compiled kernel: a whole chunk of samples per call. CPU tensors only.

    ``precision="bfloat16"`` stores the weights as bfloat16 (half the memory traffic,
    activations and sums stay float32); its logits differ from float32 by ~1e-2.
    """

    name = "cpp"

    def __init__(self, decoders: list[WaveNetDecoder], state: State, lib: ctypes.CDLL,
                 precision: str = "float32", threads: int | None = None):
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be float32 or bfloat16, not {precision!r}")
        if state.ring.device.type != "cpu":
            raise ValueError("the C++ generation kernel runs on the CPU only")
        lay = state.layout
        self.lib, self.state, self.D = lib, state, len(decoders)
        self.threads = threads  # None: torch.get_num_threads()
        # With few rows the threads share each matmul's outputs, synchronising at every
        # layer; on a busy machine that stalls, the kernel gives it up, and so do we.
        self.share_panels = True
        self.report = torch.zeros(2, dtype=torch.long)
        self.B = state.rows // self.D
        bf16 = precision == "bfloat16"
        w = stack_weights(decoders)
        self.conv_b, self.fc_b = w["conv_b"], w["fc_b"]
        keep = {
            "first_w": w["first_w"], "first_b": w["first_b"],
            "skip0_p": _panels(w["skip0_w"], bf16), "skip0_b": _pad_last(w["skip0_b"]),
            "conv_p": _panels(w["conv_w"], bf16),
            "out_p": _panels(w["out_w"], bf16), "out_b": _pad_last(w["out_b"]),
            "fc_p": _panels(w["fc_w"], bf16),
            "logit_p": _panels(w["logit_w"], bf16), "logit_b": w["logit_b"],
        }
        self._keep = keep  # the kernel reads these buffers directly
        R, S = lay.residual, lay.skip
        self.weights = _Weights(
            decoders=self.D, residual=R, skip=S, kernel=lay.kernel, layers=lay.layers,
            conv_panels=-(-2 * R // 16), out_panels=-(-(R + S) // 16), skip_panels=-(-S // 16),
            bf16=int(bf16), **{n: t.data_ptr() for n, t in keep.items()},
        )
        self.ring_offset = torch.tensor(lay.offsets, dtype=torch.long)
        self.ring_length = torch.tensor(lay.lengths, dtype=torch.long)
        self.dilation = torch.tensor(lay.dilations, dtype=torch.long)

    def run(self, c: Chunk) -> tuple[torch.Tensor, torch.Tensor | None]:
        st, n = self.state, c.steps
        rows = st.rows
        cond = (c.cond + self.conv_b[:, None, None]).reshape(rows, *c.cond.shape[2:]).contiguous()
        head = (c.head + self.fc_b[:, None, None]).reshape(rows, *c.head.shape[2:]).contiguous()
        frame_of_step = c.frame_of_step.to(torch.long).contiguous()
        codes = torch.empty(rows, n, dtype=torch.long)
        logits = torch.empty(rows, n, N_CLASSES) if c.want_logits else None
        uniforms = c.uniforms.float().contiguous() if c.uniforms is not None else None
        forced = c.forced.to(torch.long).contiguous() if c.forced is not None else None

        def ptr(t: torch.Tensor | None) -> int | None:
            return None if t is None else t.data_ptr()

        chunk = _Chunk(
            batch=self.B, steps=n, frames=cond.shape[1], t0=st.t,
            threads=max(1, self.threads or torch.get_num_threads()),
            cond=ptr(cond), head=ptr(head), frame_of_step=ptr(frame_of_step),
            ring=ptr(st.ring), ring_total=st.ring.shape[1], ring_offset=ptr(self.ring_offset),
            ring_length=ptr(self.ring_length), dilation=ptr(self.dilation),
            inputs=ptr(st.inputs), uniforms=ptr(uniforms), forced=ptr(forced),
            inv_temperature=c.inv_temperature, greedy=int(uniforms is None and forced is None),
            out_codes=ptr(codes), out_logits=ptr(logits),
            share_panels=int(self.share_panels), report=ptr(self.report),
        )
        if not (st.ring.is_contiguous() and st.inputs.is_contiguous()):
            raise ValueError("generation state must be contiguous")
        if self.lib.umt_run_chunk(ctypes.byref(self.weights), ctypes.byref(chunk)) != 0:
            raise RuntimeError("the C++ generation kernel failed (out of memory?)")
        if self.report[1]:
            self.share_panels = False
        st.t += n
        return codes, logits
